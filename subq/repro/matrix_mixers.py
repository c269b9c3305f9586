"""Hydra's matrix-mixer ablation (Hwang et al., NeurIPS 2024) next to attention and Monarch Mixer, as a
small masked-LM study on the standard library's docstrings and comments (no download).

    subq repro matrix_mixers --quick    # one CPU thread: about 10 minutes on a 2-core CPU
    subq repro matrix_mixers            # sized for one GPU (wider, deeper, longer, two seeds)

Every model is an :class:`~subq.models.Encoder` of the same width, depth, embedding (byte-level,
learned absolute positions, tied MLM head) and channel mixer (SwiGLU ``glu``), trained for the same
steps on the same batches with the same optimizer; only the sequence mixer differs:

- ``attention``: bidirectional softmax attention (SDPA);
- ``m2``: Monarch Mixer's bidirectional ``monarch_mixer`` (gated implicit long convolutions; its
  implicit-filter MLP width ``m2_filter_order`` scaled down with the model);
- ``hydra``: Hydra's quasiseparable mixer ``S M_f + J S M_b J + diag(delta)``;
- ``hydra_additive``, ``hydra_shift_only``, ``hydra_diag_only``: the paper's ablations "Add"
  (``M_f + J M_b J``), "Add + Shift" (``S M_f + J S M_b J``) and "Add + Diag" (``M_f + J M_b J +
  diag(delta)``) — the ``variant`` of the ``hydra`` mixer (see :mod:`subq.layers.hydra`).

The channel mixer is the same SwiGLU for every model, so that only the sequence mixer differs (M2's
own ``monarch_glu`` is not used). Its hidden width absorbs the sequence mixers' different parameter
counts: every model's hidden width is chosen so that its total parameter count is closest to the
``hydra`` model's with ``channel_expand`` (equal parameters, up to one multiple of 8 of the hidden
width).

Data: ``stdlib_mlm`` windows (byte tokens, ``[CLS] .. [SEP]``, file-level train/test split). Training
re-masks every batch (BERT's 80/10/10 at ``mask_prob``, a fresh draw per step: dynamic masking, so
that many steps over the ~24k training windows do not memorise one mask); the held-out set keeps the
task's fixed masks. Reported: masked-token accuracy and MLM loss on the held-out windows, parameter
counts. The paper's claim: quasiseparable is best among the matrix-mixer variants (GLUE average at
~70M: Add 80.6, Add + Shift 80.7, Add + Diag 80.7, Quasi 81.7; at small scale the expected ordering of
held-out MLM loss is Add ~ Add + Shift ~ Add + Diag > Quasi).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from rich.console import Console
from rich.table import Table
from torch import Tensor

from subq.models import Encoder, EncoderConfig, count_params
from subq.tasks.base import IGNORE_INDEX
from subq.tasks.stdlib_mlm import StdlibMLMConfig, get_tokenizer, mask_tokens

CLAIM = (
    "Hydra's quasiseparable mixer (shift + free diagonal) gives the best masked-LM accuracy among its "
    "matrix-mixer ablations (additive, shift only, diagonal only) at equal parameters and steps (Hydra)."
)

MODELS = {
    "attention": "bidirectional softmax attention (SDPA)",
    "m2": "Monarch Mixer sequence mixer (bidirectional gated long convolutions)",
    "hydra": "Hydra quasiseparable: S M_f + J S M_b J + diag(delta)",
    "hydra_additive": "Add: M_f + J M_b J (two SSMs added)",
    "hydra_shift_only": "Add + Shift: S M_f + J S M_b J (no diagonal)",
    "hydra_diag_only": "Add + Diag: M_f + J M_b J + diag(delta) (no shift)",
}
"""Model names -> what their sequence mixer is."""

HYDRA_FAMILY = ("hydra", "hydra_additive", "hydra_shift_only", "hydra_diag_only")
"""The matrix-mixer variants the claim ranks."""


class ReproConfig(BaseModel):
    """Sizes and budgets; every model shares all of them. ``max_files`` reads only the first standard-
    library files (tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    hydra_headdim: PositiveInt = 32
    hydra_d_state: PositiveInt = 16
    hydra_chunk_size: PositiveInt = 32
    m2_filter_order: PositiveInt = 32
    channel_expand: float = Field(8 / 3, gt=0)
    seq_len: int = Field(128, ge=8)
    mask_prob: float = Field(0.3, gt=0, lt=1)
    num_train_examples: PositiveInt = 24000
    num_test_examples: PositiveInt = 512
    max_files: PositiveInt | None = None
    models: tuple[str, ...] = tuple(MODELS)
    seeds: PositiveInt = 2
    steps: PositiveInt = 400
    batch_size: PositiveInt = 32
    lr: float = Field(2e-3, gt=0)
    warmup: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: PositiveInt = 100
    eval_batch_size: PositiveInt = 128

    def model_post_init(self, __context) -> None:
        unknown = set(self.models) - set(MODELS)
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; valid: {', '.join(MODELS)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")


QUICK = ReproConfig()
FULL = ReproConfig(
    d_model=256,
    n_layers=4,
    num_heads=4,
    hydra_headdim=64,
    hydra_d_state=64,
    hydra_chunk_size=64,
    m2_filter_order=64,
    num_test_examples=2048,
    seeds=2,
    steps=2000,
    batch_size=128,
    lr=1e-3,
    eval_every=500,
)
"""The paper's small-scale setting (4 layers, d = 256, 30% masking, length 128), for one GPU."""


# ---- models --------------------------------------------------------------------------------------------
def mixer_config(name: str, cfg: ReproConfig) -> dict:
    """The sequence-mixer config of model ``name``."""
    if name == "attention":
        return {"name": "attention", "num_heads": cfg.num_heads}
    if name == "m2":
        return {"name": "monarch_mixer", "filter_order": cfg.m2_filter_order, "max_seq_len": cfg.seq_len}
    variant = "quasiseparable" if name == "hydra" else name.removeprefix("hydra_")
    return {
        "name": "hydra",
        "variant": variant,
        "headdim": cfg.hydra_headdim,
        "d_state": cfg.hydra_d_state,
        "chunk_size": cfg.hydra_chunk_size,
    }


def encoder_config(name: str, cfg: ReproConfig, hidden: int, vocab_size: int) -> EncoderConfig:
    """Model ``name`` with a SwiGLU channel mixer of hidden width ``hidden``."""
    return EncoderConfig(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        max_seq_len=cfg.seq_len,
        pos_emb="learned",
        mixer=mixer_config(name, cfg),
        channel_mixer={"name": "glu", "expand": hidden / cfg.d_model},
    )


def _params(name: str, cfg: ReproConfig, hidden: int, vocab_size: int) -> int:
    return count_params(Encoder(encoder_config(name, cfg, hidden, vocab_size), device="meta"))


def matched_hidden(cfg: ReproConfig, vocab_size: int) -> dict[str, int]:
    """Per model, the SwiGLU hidden width (a multiple of 8) whose total parameter count is closest to
    the ``hydra`` model's at ``channel_expand``. Raises if a sequence mixer alone has more parameters
    than that target."""
    base = max(8, math.ceil(cfg.channel_expand * cfg.d_model / 8) * 8)
    target = _params("hydra", cfg, base, vocab_size)
    per_unit = 3 * cfg.d_model * cfg.n_layers  # gate, up and down weights per hidden unit
    out = {}
    for name in cfg.models:
        rest = _params(name, cfg, base, vocab_size) - per_unit * base
        hidden = round((target - rest) / per_unit / 8) * 8
        if hidden < 8:
            raise ValueError(
                f"{name}: its sequence mixer alone has more parameters than the hydra model "
                f"({rest:,} > {target:,}); shrink it (m2_filter_order) or raise channel_expand"
            )
        out[name] = hidden
    return out


def build_model(name: str, cfg: ReproConfig, hidden: int, vocab_size: int, seed: int, device: str) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(encoder_config(name, cfg, hidden, vocab_size)).to(device)


# ---- data and training ------------------------------------------------------------------------------------
def load_data(cfg: ReproConfig):
    """``(train originals [N, T] int64 numpy, test inputs [M, T], test labels [M, T], tokenizer)``: the
    training windows unmasked (re-masked every step), the held-out windows with the task's fixed masks."""
    task = StdlibMLMConfig(
        tokenizer="bytes",
        seq_len=cfg.seq_len,
        mask_prob=cfg.mask_prob,
        num_train_examples=cfg.num_train_examples,
        num_test_examples=cfg.num_test_examples,
        max_files=cfg.max_files,
    )
    train, test = task.build("train"), task.build("test")
    originals = torch.where(train.labels != IGNORE_INDEX, train.labels, train.inputs).numpy()
    return originals, test.inputs, test.labels, get_tokenizer("bytes")


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: Encoder, inputs: Tensor, labels: Tensor, batch_size: int) -> dict:
    """Masked-token accuracy and mean MLM loss (nats) over the positions whose label is not -100."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    loss = 0.0
    for x, y in zip(inputs.split(batch_size), labels.split(batch_size), strict=True):
        x, y = x.to(device), y.to(device)
        with _autocast(str(device)):
            logits = model.mlm_logits(x)
        keep = y != IGNORE_INDEX
        logits, y = logits[keep].float(), y[keep]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    model.train()
    return {"accuracy": correct / total, "loss": loss / total}


def train_mlm(
    model: Encoder, originals: np.ndarray, tok, test: tuple[Tensor, Tensor], cfg: ReproConfig, seed: int
) -> dict:
    """AdamW (betas 0.9/0.98, eps 1e-6, M2's and Hydra's), linear warm-up over ``warmup`` of the steps
    then linear decay to 0.02x, gradient clipping; batches and masks from ``seed`` (the same for every
    model); bf16 autocast on CUDA. Evaluates on ``test`` every ``eval_every`` steps and at the end.

    Returns ``{"losses": per-step training loss, "curve": [{"step", "accuracy", "loss"}], "seconds"}``.
    """
    device = str(next(model.parameters()).device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay
    )
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.02, (cfg.steps - s) / max(1, cfg.steps - warm))
    )
    rng = np.random.default_rng(seed)
    losses, curve = [], []
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        rows = originals[rng.integers(0, len(originals), cfg.batch_size)]
        x, y = (torch.from_numpy(a).to(device) for a in mask_tokens(rows, rng, tok, cfg.mask_prob))
        with _autocast(device):
            logits = model.mlm_logits(x)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, **evaluate(model, *test, cfg.eval_batch_size)})
    return {"losses": losses, "curve": curve, "seconds": time.perf_counter() - t0}


def run_models(cfg: ReproConfig, seed: int, device: str, status=None) -> list[dict]:
    """One row per model: held-out accuracy and loss of each seed, their mean and spread, parameters."""
    originals, test_x, test_y, tok = load_data(cfg)
    hidden = matched_hidden(cfg, tok.vocab_size)
    rows = []
    for name in cfg.models:
        runs = []
        for s in range(seed, seed + cfg.seeds):
            if status is not None:
                status.update(f"{name}, seed {s} ({cfg.steps} steps x batch {cfg.batch_size})")
            model = build_model(name, cfg, hidden[name], tok.vocab_size, s, device)
            result = train_mlm(model, originals, tok, (test_x, test_y), cfg, s)
            runs.append({"seed": s, **result["curve"][-1], **result})
        acc = np.array([r["accuracy"] for r in runs])
        loss = np.array([r["loss"] for r in runs])
        mixer = model.backbone.blocks[0].mixer
        rows.append(
            {
                "model": name,
                "description": MODELS[name],
                "mixer": mixer_config(name, cfg),
                "glu_hidden": hidden[name],
                "params": count_params(model),
                "mixer_params": count_params(mixer) * cfg.n_layers,
                "accuracy": float(acc.mean()),
                "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "loss": float(loss.mean()),
                "loss_std": float(loss.std(ddof=1)) if len(loss) > 1 else 0.0,
                "seconds": float(np.mean([r["seconds"] for r in runs])),
                "runs": runs,
            }
        )
    return rows


# ---- report ------------------------------------------------------------------------------------------------
def verdicts(rows: list[dict]) -> list[str]:
    """Whether ``hydra`` (quasiseparable) has the best held-out accuracy among the variants run, the
    margins, and how attention and M2 compare."""
    by = {r["model"]: r for r in rows}
    lines = []
    family = [m for m in HYDRA_FAMILY if m in by]
    if "hydra" in by and len(family) > 1:
        ranked = sorted(family, key=lambda m: by[m]["accuracy"], reverse=True)
        spread = max(by[m]["accuracy_std"] for m in family)
        margins = ", ".join(
            f"{m} {100 * (by['hydra']['accuracy'] - by[m]['accuracy']):+.2f}" for m in family if m != "hydra"
        )
        if ranked[0] == "hydra":
            lead = by["hydra"]["accuracy"] - by[ranked[1]]["accuracy"]
            verdict = "reproduced"
            if spread > 0 and lead <= spread:
                verdict += f" (but its lead over {ranked[1]} is within the seed spread)"
        else:
            verdict = f"not reproduced (best: {ranked[0]})"
        noise = f"; largest seed std {100 * spread:.2f} points" if spread > 0 else " (one seed: no spread)"
        lines.append(
            f"quasiseparable best among the matrix-mixer variants: {verdict}; hydra minus each variant "
            f"(accuracy points): {margins}{noise}"
        )
    for other in ("attention", "m2"):
        if other in by and "hydra" in by:
            gap = 100 * (by["hydra"]["accuracy"] - by[other]["accuracy"])
            lines.append(f"hydra - {other}: {gap:+.2f} accuracy points")
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
    ax = axes[0]
    for row in rows:
        curve = row["runs"][0]["curve"]
        ax.plot(
            [c["step"] for c in curve], [100 * c["accuracy"] for c in curve], "o-", ms=3, label=row["model"]
        )
    ax.set(title="held-out masked-token accuracy (first seed)", xlabel="step", ylabel="accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    names = [r["model"] for r in rows]
    bars = ax.bar(
        names,
        [100 * r["accuracy"] for r in rows],
        yerr=[100 * r["accuracy_std"] for r in rows],
        capsize=3,
        color=["tab:red" if n == "hydra" else "tab:blue" if n in HYDRA_FAMILY else "tab:gray" for n in names],
    )
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    low, high = min(100 * r["accuracy"] for r in rows), max(100 * r["accuracy"] for r in rows)
    ax.set_ylim(max(0.0, low - 0.5 * (high - low) - 1), high + 0.25 * (high - low) + 1)
    ax.set(title="final held-out masked-token accuracy", ylabel="accuracy (%)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_table(console: Console, rows: list[dict], cfg: ReproConfig) -> None:
    table = Table(
        title=f"stdlib bytes MLM ({100 * cfg.mask_prob:.0f}% masked), T={cfg.seq_len}, d={cfg.d_model}, "
        f"{cfg.n_layers} layers, {cfg.steps} steps x batch {cfg.batch_size}, {cfg.seeds} seed(s)"
    )
    for col in ("model", "params", "mixer params", "glu hidden", "MLM acc (%)", "MLM loss", "train s/run"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        std = len(r["runs"]) > 1
        table.add_row(
            r["model"],
            f"{r['params']:,}",
            f"{r['mixer_params']:,}",
            str(r["glu_hidden"]),
            f"{100 * r['accuracy']:.2f}" + (f" ± {100 * r['accuracy_std']:.2f}" if std else ""),
            f"{r['loss']:.4f}" + (f" ± {r['loss_std']:.4f}" if std else ""),
            f"{r['seconds']:.0f}",
        )
    console.print(table)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    config: ReproConfig | None = None,
    device: str | None = None,
) -> dict:
    """Train every model; print the table; write ``matrix_mixers.json`` and ``matrix_mixers.png``.

    Args:
        quick: :data:`QUICK` (one CPU thread, about 10 minutes on a 2-core CPU) instead of :data:`FULL`
            (one GPU).
        out_dir: folder for the outputs (created if missing).
        seed: first seed; runs use ``seed, seed + 1, ...`` (init, batches and masks; every model sees the
            same batches and masks for a given seed).
        console: where the table goes (a new ``Console()`` if None).
        config: overrides the preset (tests use a tiny one).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).

    Returns the JSON record: settings, one row per model (parameters, held-out accuracy and loss per
    seed, curves, seconds) and verdict lines.
    """
    console = console or Console()
    cfg = config or (QUICK if quick else FULL)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with console.status("training") as status:
        rows = run_models(cfg, seed, device, status)
    _print_table(console, rows, cfg)
    lines = verdicts(rows)
    for line in lines:
        console.print(line)
    record = {
        "claim": CLAIM,
        "settings": {
            "quick": quick,
            "seed": seed,
            "device": device,
            "config": cfg.model_dump(),
            "data": "stdlib_mlm: standard-library docstrings and comments, UTF-8 bytes, file-level split; "
            "training batches re-masked every step, held-out windows with fixed masks",
            "channel_mixer": "SwiGLU for every model, hidden width matched to equal parameter counts",
            "optimizer": "AdamW betas (0.9, 0.98), eps 1e-6, linear warm-up then linear decay to 0.02x, "
            "gradient clipping",
            "torch": torch.__version__,
            "elapsed_s": round(time.perf_counter() - t0, 1),
        },
        "rows": rows,
        "verdicts": lines,
    }
    (out_dir / "matrix_mixers.json").write_text(json.dumps(record, indent=1))
    _plot(rows, out_dir / "matrix_mixers.png")
    return record
