"""Reproduction of HyenaDNA (Nguyen et al., arXiv 2306.15794) on the two synthetic genome tasks of
:mod:`subq.tasks.dna`: does a long implicit convolution use context that local models cannot see?

    subq repro hyena_dna --quick    # reduced sizes, about 10 minutes on a 2-core CPU
    subq repro hyena_dna            # the full sizes: for a GPU (bf16 autocast on CUDA)

(a) **Long vs short context** on ``dna_markov_copy`` (an order-2 Markov genome in which segments of
half of every ``copy_period`` bases repeat the bases ``copy_distance`` back). Two HyenaDNA-tiny
language models (:func:`~subq.models.hyena_dna.hyena_dna_config`, the layer, width and depth of
``tiny-1k``) see the same number of tokens per step:

- *long*: context ``long_len >= 2 copy_distance``, reached through the paper's sequence-length
  warm-up (:class:`~subq.train.seqlen_warmup.SeqLenWarmup`: start at ``warmup_start_len`` tokens,
  double the length each stage, halve the batch so every step holds ``tokens_per_batch`` tokens; the
  last stage, at ``long_len``, runs to the end). Shorter stages train on random crops of the
  training sequences;
- *short*: context ``short_len < copy_distance``, random crops of ``short_len`` of the same sequences.

An ablation adds a long-context model whose only change is the Hyena filter's positional features,
``emb_dim`` 33 (Safari's Pile setting) instead of HyenaDNA's 5: with two frequency bands the
implicit filter is slow to form a sharp tap at one lag, which is what copying needs.

All are scored per target base on the held-out sequences at ``long_len``: the long models in one
pass, the short model on windows of ``short_len`` moved by ``short_len / 2`` (every target is scored
in the window where it has between ``short_len / 2`` and ``short_len - 1`` bases of context, so never
the copy source). Next to them: the exact losses of :meth:`DNAMarkovCopyConfig.entropy` -- a model
that knows the source and recalls the base ``copy_distance`` back, and the best model that sees
only the last ``order`` bases. Losses are also split between copied and freshly drawn targets.

(b) **Motif distance** on ``dna_motif_distance`` (label 1 iff motif B starts exactly ``d`` bases
after motif A; balanced, with decoys of the wrong distance, the wrong order or one motif) for
``d`` in a sweep, each at ``seq_len = max(64, 2 d)``. Three classifiers
(:class:`~subq.models.classifier.SequenceClassifier`) that differ only in the sequence mixer of the
HyenaDNA block (``LN -> mixer -> LN -> MLP 4d``): ``hyena`` (HyenaDNA's layer), ``sliding_window``
(softmax attention over the last ``window`` tokens, rotary positions) and ``attention`` (full causal
softmax attention, rotary positions; only while ``seq_len <= attention_max_len``). All pool by the
**mean** over positions, the reference's GenomicBenchmarks head (``mode: pool``). Last-token pooling
would ask the final position to see both motifs, which a sliding window cannot do once the motifs
lie more than ``n_layers (window - 1)`` tokens from the end: the comparison would measure where the
motifs happen to sit. With mean pooling any position that sees both motifs can carry the answer,
so each mixer is limited only by how far back it can relate two tokens. Embedding dropout is 0 in
(b), where a dropped base hides part of a motif; (a) keeps the preset's 0.1.

Training (both parts, a loop of its own: :mod:`subq.train.trainer` trains language models at one
length): AdamW (0.9, 0.999), weight decay 0.1 on matrices outside the Hyena layers and 0 on the Hyena
layers, biases and norms (as HyenaDNA), linear warm-up over the first 10% of steps then cosine
decay to 0, gradient norm clipped at 1, bf16 autocast on CUDA only.

The quick mode reduces what the paper would train (and says so in its output): for (a) the tiny-1k
layer, width and depth (d = 128, 2 layers) at ``long_len = 128`` with ``copy_distance = 64`` and
``short_len = 32``, 600 steps of 2,048 tokens; for (b) d = 64, a window of 16 and distances 8, 32
and 96 (sequences of 64, 64 and 192), 600 steps of up to 32 sequences. Smaller batches (4 to 16
sequences at distances 64 and 256) left every model at chance in 500 steps on this CPU, and larger
distances need longer sequences than the CPU budget allows. The full mode (tiny-1k at its 1,024
tokens with copy distance 512, 4,000 steps of 65,536 tokens; distances up to 131,072 with sequences
of 262,144) is written for one GPU and has not been run on the CPU this module was developed on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from rich.console import Console
from rich.status import Status
from rich.table import Table
from torch import Tensor, nn

from subq.layers.hyena import Hyena
from subq.models import LanguageModel, LMConfig, SequenceClassifier, count_params
from subq.models.hyena_dna import HYENA_DNA_SIZES, HYENA_LAYER, L_MAX_EXTRA, hyena_dna_config
from subq.tasks.base import SequenceDataset
from subq.tasks.dna import DNAMarkovCopyConfig, DNAMotifDistanceConfig, class_labels, copy_layout
from subq.train.seqlen_warmup import SeqLenWarmup, SeqLenWarmupConfig
from subq.train.trainer import lr_at

CLAIM = (
    "HyenaDNA's long implicit convolutions use context that local models cannot reach: a model whose "
    "context covers a repeat predicts it (lower perplexity than a short-context model), and it relates "
    "motifs far apart where sliding-window attention cannot, at lengths beyond what attention affords."
)

BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.1
MotifModel = Literal["hyena", "sliding_window", "attention"]


class CopySettings(BaseModel):
    """Part (a): the task, the two context lengths and the training of both models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str = "tiny-1k"
    d_model: PositiveInt | None = None  # None: the size's width
    copy_distance: PositiveInt
    segment_len: PositiveInt = 64
    copy_period: PositiveInt = 128
    long_len: PositiveInt
    short_len: PositiveInt
    tokens_per_batch: PositiveInt
    steps: PositiveInt
    warmup_start_len: PositiveInt = 64
    steps_per_stage: PositiveInt
    lr: float = Field(gt=0.0)
    embed_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    ablation_emb_dims: tuple[PositiveInt, ...] = (33,)
    num_train: PositiveInt
    num_test: PositiveInt
    eval_batch: PositiveInt = 16

    @model_validator(mode="after")
    def _check(self):
        if self.size not in HYENA_DNA_SIZES:
            raise ValueError(
                f"unknown HyenaDNA size {self.size!r}; valid sizes: {', '.join(HYENA_DNA_SIZES)}"
            )
        if self.long_len < 2 * self.copy_distance:
            raise ValueError(
                f"long_len={self.long_len} must be >= 2 copy_distance = {2 * self.copy_distance}"
            )
        if not 2 <= self.short_len < self.copy_distance or self.short_len % 2:
            raise ValueError(
                f"short_len={self.short_len} must be even and in [2, copy_distance={self.copy_distance})"
            )
        if self.long_len % (self.short_len // 2):
            raise ValueError(
                f"long_len={self.long_len} must be a multiple of short_len / 2 = {self.short_len // 2} "
                "(the stride of the short model's evaluation windows)"
            )
        if self.tokens_per_batch % self.long_len or self.tokens_per_batch % self.short_len:
            raise ValueError(
                f"tokens_per_batch={self.tokens_per_batch} must be a multiple of long_len={self.long_len} "
                f"and of short_len={self.short_len} (both models see the same tokens per step)"
            )
        if self.warmup_start_len > self.long_len:
            raise ValueError(f"warmup_start_len={self.warmup_start_len} must be <= long_len={self.long_len}")
        return self

    def task(self) -> DNAMarkovCopyConfig:
        return DNAMarkovCopyConfig(
            seq_len=self.long_len,
            copy_distance=self.copy_distance,
            segment_len=self.segment_len,
            copy_period=self.copy_period,
            num_train_examples=self.num_train,
            num_test_examples=self.num_test,
        )

    def warmup(self) -> SeqLenWarmup:
        return SeqLenWarmup(
            SeqLenWarmupConfig(
                start_len=self.warmup_start_len,
                max_len=self.long_len,
                steps_per_stage=self.steps_per_stage,
                tokens_per_batch=self.tokens_per_batch,
            )
        )


class MotifSettings(BaseModel):
    """Part (b): the distances, the three models and their training (the same for every distance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distances: tuple[PositiveInt, ...]
    models: tuple[MotifModel, ...] = ("hyena", "sliding_window", "attention")
    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    num_heads: PositiveInt = 2
    hyena_emb_dim: int = Field(HYENA_LAYER["emb_dim"], ge=3)  # HyenaDNA's 5; 33 is Safari's Pile setting
    window: PositiveInt = 32
    attention_max_len: PositiveInt = 1024
    pooling: Literal["mean", "last"] = "mean"
    motif_len: int = Field(8, ge=2, le=24)
    min_len: PositiveInt = 64
    tokens_per_batch: PositiveInt
    max_batch: PositiveInt = 32
    steps: PositiveInt
    lr: float = Field(gt=0.0)
    embed_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_train: PositiveInt
    num_test: PositiveInt
    eval_batch: PositiveInt = 32

    def seq_len(self, distance: int) -> int:
        """``max(min_len, 2 distance)``: the planted pair fits anywhere in the first half."""
        return max(self.min_len, 2 * distance)

    def batch_size(self, seq_len: int) -> int:
        """``tokens_per_batch // seq_len`` sequences, at least 1 and at most ``max_batch``."""
        return max(1, min(self.max_batch, self.tokens_per_batch // seq_len))


QUICK_COPY = CopySettings(
    copy_distance=64,
    segment_len=32,
    copy_period=64,
    long_len=128,
    short_len=32,
    tokens_per_batch=2048,
    steps=600,
    warmup_start_len=32,
    steps_per_stage=20,
    lr=2e-3,
    num_train=1000,
    num_test=200,
)
FULL_COPY = CopySettings(
    copy_distance=512,
    long_len=1024,
    short_len=256,
    tokens_per_batch=2**16,
    steps=4000,
    steps_per_stage=250,
    lr=6e-4,
    num_train=20_000,
    num_test=500,
    eval_batch=64,
)
QUICK_MOTIF = MotifSettings(
    distances=(8, 32, 96),
    window=16,
    attention_max_len=1024,
    tokens_per_batch=4096,
    steps=600,
    lr=2e-3,
    num_train=2000,
    num_test=256,
)
FULL_MOTIF = MotifSettings(
    distances=(16, 64, 256, 1024, 4096, 16_384, 65_536, 131_072),
    d_model=128,
    window=256,
    attention_max_len=32_768,
    tokens_per_batch=2**20,
    steps=3000,
    lr=1e-3,
    num_train=2000,
    num_test=500,
    eval_batch=4,
)


# ---- training --------------------------------------------------------------------------------------


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def param_groups(model: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """HyenaDNA's weight decay: ``weight_decay`` on matrices (linear and embedding weights) outside the
    Hyena layers, 0 on every Hyena parameter, bias and norm."""
    in_hyena = {id(p) for m in model.modules() if isinstance(m, Hyena) for p in m.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and id(p) not in in_hyena else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(
    model: nn.Module,
    next_batch: Callable[[int], tuple[Tensor, Tensor]],
    loss_of: Callable[[nn.Module, Tensor, Tensor], Tensor],
    *,
    steps: int,
    lr: float,
    device: torch.device,
    status: Status | None = None,
    label: str = "training",
) -> list[float]:
    """``steps`` AdamW steps on ``loss_of(model, *next_batch(step))``; returns the loss of every step
    (``status``, a rich status line, shows ``label`` and the step every 10 steps).

    Linear warm-up over ``WARMUP_FRACTION`` of the steps, cosine decay to 0, gradient norm clipped at
    ``GRAD_CLIP``, bf16 autocast on CUDA. A non-finite loss raises ``FloatingPointError``.
    """
    opt = torch.optim.AdamW(param_groups(model), lr=lr, betas=BETAS)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    model.train()
    losses = []
    for step in range(steps):
        if status is not None and step % 10 == 0:
            status.update(f"{label}: step {step}/{steps}")
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr=lr, warmup_steps=warmup, total_steps=steps)
        x, y = next_batch(step)
        with _autocast(device):
            loss = loss_of(model, x.to(device), y.to(device))
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        losses.append(value)
    return losses


def crop_batches(
    data: SequenceDataset, schedule: Callable[[int], tuple[int, int]], gen: torch.Generator
) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> (inputs, labels)``: random crops (:func:`random_crops`) of the shape
    ``(length, batch) = schedule(step)`` gives."""

    def next_batch(step: int) -> tuple[Tensor, Tensor]:
        length, batch = schedule(step)
        return random_crops(data.inputs, data.labels, batch, length, gen)

    return next_batch


def example_batches(
    inputs: Tensor, labels: Tensor, batch: int, gen: torch.Generator
) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> (inputs[idx], labels[idx])`` for ``batch`` random examples (drawn with replacement)."""

    def next_batch(step: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        return inputs[idx], labels[idx]

    return next_batch


def _lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())


def _classification_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).float(), y)


def _curve(losses: list[float], points: int = 50) -> list[float]:
    """The training loss averaged over ``points`` equal stretches of the run (for the JSON)."""
    return [float(np.mean(c)) for c in np.array_split(np.array(losses), min(points, len(losses)))]


# ---- (a) long vs short context on dna_markov_copy -------------------------------------------------------


def random_crops(
    inputs: Tensor, labels: Tensor, batch: int, length: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch`` random rows of ``inputs, labels: (N, T)``, each cropped to ``length`` tokens at a random
    offset: ``(batch, length)`` twice."""
    n, T = inputs.shape
    rows = torch.randint(0, n, (batch,), generator=gen)
    starts = torch.randint(0, T - length + 1, (batch,), generator=gen)
    cols = starts[:, None] + torch.arange(length)  # (batch, length)
    return inputs[rows[:, None], cols], labels[rows[:, None], cols]


@torch.no_grad()
def token_losses(
    model: LanguageModel, inputs: Tensor, labels: Tensor, *, window: int | None, batch_size: int
) -> Tensor:
    """Cross-entropy of every target ``(N, T)``, float32 on the CPU.

    ``window=None``: the whole sequence in one pass. Otherwise windows of ``window`` tokens starting
    at multiples of ``window // 2``: target ``t`` is scored in the window where it has between
    ``window // 2`` and ``window - 1`` tokens before it (targets ``t < window // 2`` in the first
    window, with ``t`` before them). ``T`` must be a multiple of ``window // 2``.
    """
    device = next(model.parameters()).device
    model.eval()
    N, T = inputs.shape
    out = torch.empty(N, T)
    for r in range(0, N, batch_size):
        x, y = inputs[r : r + batch_size].to(device), labels[r : r + batch_size].to(device)
        if window is None or window >= T:
            with _autocast(device):
                logits = model(x).float()
            out[r : r + batch_size] = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").cpu()
            continue
        stride = window // 2
        if T % stride:
            raise ValueError(f"T={T} must be a multiple of window // 2 = {stride}")
        for start in range(0, T - window + 1, stride):
            with _autocast(device):
                logits = model(x[:, start : start + window]).float()
            loss = F.cross_entropy(logits.transpose(1, 2), y[:, start : start + window], reduction="none")
            keep = 0 if start == 0 else stride  # the first window keeps all its targets
            out[r : r + batch_size, start + keep : start + window] = loss[:, keep:].cpu()
    model.train()
    return out


def copy_references(task: DNAMarkovCopyConfig) -> dict:
    """The exact losses of :meth:`DNAMarkovCopyConfig.entropy` overall and split between copied and
    fresh targets (the split restates :func:`~subq.tasks.dna.markov_copy_entropy` per target)."""
    e = task.entropy()
    source = task.source()
    k = source.order
    h = np.array([source.conditional_entropy(j) for j in range(k + 1)])
    offsets = copy_layout(task.seq_len + 1, task.copy_distance, task.segment_len, task.copy_period)[1:]
    fresh = offsets < 0
    fresh_cost = h[np.minimum(np.arange(1, task.seq_len + 1), k)]
    copied_short = h[np.minimum(offsets[~fresh], k)]
    return {
        "optimal": e.optimal,
        "short_context": e.short_context,
        "optimal_perplexity": e.optimal_perplexity,
        "short_context_perplexity": e.short_context_perplexity,
        "entropy_rate": e.entropy_rate,
        "copy_fraction": e.copy_fraction,
        "optimal_copied": 0.0,
        "short_context_copied": float(copied_short.mean()),
        "fresh": float(fresh_cost[fresh].mean()),
    }


def copy_experiment(
    settings: CopySettings, *, seed: int, device: torch.device, status: Status | None = None
) -> dict:
    """Train the long- and short-context models of part (a) (and one long-context model per
    ``ablation_emb_dims``) and score them on the test sequences.

    Returns ``{"references": copy_references(...), "models": [long, short, *ablations]}``; each model
    row holds the test loss and perplexity (all targets, copied targets, fresh targets), its context,
    ``emb_dim``, the number of parameters, the warm-up stages (long-context models), a 50-point
    training curve and the seconds taken.
    """
    task = settings.task()
    train = task.build("train", seed)
    test = task.build("test", seed)
    copied = torch.from_numpy(
        copy_layout(task.seq_len + 1, task.copy_distance, task.segment_len, task.copy_period)[1:] >= 0
    )
    warmup = settings.warmup()
    runs = [("long", settings.long_len, None), ("short", settings.short_len, None)]
    runs += [(f"long, emb_dim {e}", settings.long_len, e) for e in settings.ablation_emb_dims]
    rows = []
    for name, train_len, emb_dim in runs:
        torch.manual_seed(seed)
        overrides = {"d_model": settings.d_model} if settings.d_model else {}
        if emb_dim is not None:  # the Hyena layer of HyenaDNA with only emb_dim changed
            overrides["mixer"] = {
                "name": "hyena",
                **HYENA_LAYER,
                "emb_dim": emb_dim,
                "max_seq_len": train_len + L_MAX_EXTRA,
            }
        cfg = hyena_dna_config(
            settings.size, max_seq_len=train_len, embed_dropout=settings.embed_dropout, **overrides
        )
        model = LanguageModel(cfg).to(device)
        gen = torch.Generator().manual_seed(seed)
        warm_up = train_len == settings.long_len

        shape = (train_len, settings.tokens_per_batch // train_len)
        schedule = warmup.at_step if warm_up else lambda _step, shape=shape: shape
        t0 = time.perf_counter()
        losses = fit(
            model,
            crop_batches(train, schedule, gen),
            _lm_loss,
            steps=settings.steps,
            lr=settings.lr,
            device=device,
            status=status,
            label=f"(a) {name} context",
        )
        train_s = time.perf_counter() - t0
        window = None if warm_up else train_len
        per_token = token_losses(
            model, test.inputs, test.labels, window=window, batch_size=settings.eval_batch
        )
        loss, loss_copied, loss_fresh = (
            per_token.mean().item(),
            per_token[:, copied].mean().item(),
            per_token[:, ~copied].mean().item(),
        )
        rows.append(
            {
                "name": name,
                "emb_dim": emb_dim or HYENA_LAYER["emb_dim"],
                "train_len": train_len,
                "eval_context": f"whole sequence ({settings.long_len})"
                if window is None
                else f"windows of {window}, stride {window // 2}",
                "params": count_params(model),
                "loss": loss,
                "perplexity": math.exp(loss),
                "loss_copied": loss_copied,
                "loss_fresh": loss_fresh,
                "warmup_stages": [
                    {"seq_len": s.seq_len, "batch_size": s.batch_size, "first_step": s.first_step}
                    for s in warmup.stages
                ]
                if warm_up
                else None,
                "final_train_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
                "train_curve": _curve(losses),
                "train_s": round(train_s, 1),
            }
        )
    return {"references": copy_references(task), "models": rows}


# ---- (b) motif distance: hyena vs sliding window vs attention --------------------------------------------


def motif_model_config(kind: MotifModel, settings: MotifSettings, seq_len: int) -> LMConfig:
    """The HyenaDNA block with ``kind`` as its sequence mixer (everything else as ``hyena_dna-tiny-1k``
    at ``settings.d_model`` wide and ``settings.n_layers`` deep; the Hyena layer with
    ``settings.hyena_emb_dim`` positional features)."""
    mixer = {
        "hyena": {
            "mixer": {
                "name": "hyena",
                **HYENA_LAYER,
                "emb_dim": settings.hyena_emb_dim,
                "max_seq_len": seq_len + L_MAX_EXTRA,
            }
        },
        "sliding_window": {
            "mixer": {
                "name": "sliding_window",
                "window": settings.window,
                "num_heads": settings.num_heads,
                "rotary": True,
            }
        },
        "attention": {"mixer": {"name": "attention", "num_heads": settings.num_heads, "rotary": True}},
    }[kind]
    return hyena_dna_config(
        "tiny-1k",
        d_model=settings.d_model,
        n_layers=settings.n_layers,
        max_seq_len=seq_len,
        embed_dropout=settings.embed_dropout,
        **mixer,
    )


@torch.no_grad()
def classification_accuracy(model: SequenceClassifier, ids: Tensor, labels: Tensor, batch_size: int) -> float:
    """Fraction of ``ids: (N, T)`` whose argmax class is ``labels: (N,)``, in batches of ``batch_size``."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for r in range(0, len(ids), batch_size):
        with _autocast(device):
            logits = model(ids[r : r + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == labels[r : r + batch_size]).sum().item()
    model.train()
    return correct / len(ids)


def motif_experiment(
    settings: MotifSettings, *, seed: int, device: torch.device, status: Status | None = None
) -> list[dict]:
    """Train and test every model of part (b) at every distance; one row per ``(model, distance)``.

    Attention at ``seq_len > attention_max_len`` gets a row with ``accuracy=None`` and
    ``skipped`` saying why.
    """
    rows = []
    for distance in settings.distances:
        seq_len = settings.seq_len(distance)
        task = DNAMotifDistanceConfig(
            seq_len=seq_len,
            distance=distance,
            motif_len=settings.motif_len,
            num_train_examples=settings.num_train,
            num_test_examples=settings.num_test,
        )
        train, test = task.build("train", seed), task.build("test", seed)
        y_train, y_test = class_labels(train), class_labels(test)
        batch = settings.batch_size(seq_len)
        for kind in settings.models:
            row = {"model": kind, "distance": distance, "seq_len": seq_len, "batch_size": batch}
            if kind == "attention" and seq_len > settings.attention_max_len:
                rows.append(row | {"accuracy": None, "skipped": f"seq_len > {settings.attention_max_len}"})
                continue
            torch.manual_seed(seed)
            model = SequenceClassifier(
                motif_model_config(kind, settings, seq_len), num_classes=2, pooling=settings.pooling
            ).to(device)
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            losses = fit(
                model,
                example_batches(train.inputs, y_train, batch, gen),
                _classification_loss,
                steps=settings.steps,
                lr=settings.lr,
                device=device,
                status=status,
                label=f"(b) {kind}, d={distance}",
            )
            train_s = time.perf_counter() - t0
            rows.append(
                row
                | {
                    "accuracy": classification_accuracy(model, test.inputs, y_test, settings.eval_batch),
                    "train_accuracy": classification_accuracy(
                        model,
                        train.inputs[: settings.num_test],
                        y_train[: settings.num_test],
                        settings.eval_batch,
                    ),
                    "params": count_params(model),
                    "final_train_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
                    "train_curve": _curve(losses),
                    "train_s": round(train_s, 1),
                }
            )
    return rows


# ---- report ---------------------------------------------------------------------------------------------


def _copy_label(row: dict) -> str:
    if row["name"] in ("long", "short"):
        return f"HyenaDNA-tiny, {row['name']} context"
    return f"HyenaDNA-tiny, {row['name']} (ablation)"


def _copy_table(copy: dict, settings: CopySettings) -> Table:
    ref = copy["references"]
    table = Table(
        title=f"(a) dna_markov_copy, copy distance {settings.copy_distance}, test sequences of "
        f"{settings.long_len}: per-base loss (nats) and perplexity"
    )
    for column in ("model", "trained at", "scored with", "loss", "perplexity", "loss, copied", "loss, fresh"):
        table.add_column(column, justify="left" if column in ("model", "scored with") else "right")
    for m in copy["models"]:
        table.add_row(
            _copy_label(m),
            str(m["train_len"]),
            m["eval_context"],
            f"{m['loss']:.4f}",
            f"{m['perplexity']:.3f}",
            f"{m['loss_copied']:.4f}",
            f"{m['loss_fresh']:.4f}",
        )
    table.add_row(
        "exact: perfect recall",
        "-",
        "-",
        f"{ref['optimal']:.4f}",
        f"{ref['optimal_perplexity']:.3f}",
        f"{ref['optimal_copied']:.4f}",
        f"{ref['fresh']:.4f}",
    )
    table.add_row(
        f"exact: best short context ({settings.task().order} bases)",
        "-",
        "-",
        f"{ref['short_context']:.4f}",
        f"{ref['short_context_perplexity']:.3f}",
        f"{ref['short_context_copied']:.4f}",
        f"{ref['fresh']:.4f}",
    )
    return table


def _motif_label(kind: MotifModel, settings: MotifSettings) -> str:
    if kind == "sliding_window":
        return f"sliding_window (window {settings.window})"
    if kind == "hyena" and settings.hyena_emb_dim != HYENA_LAYER["emb_dim"]:
        return f"hyena (emb_dim {settings.hyena_emb_dim})"
    return kind


def _motif_table(rows: list[dict], settings: MotifSettings) -> Table:
    table = Table(title=f"(b) dna_motif_distance test accuracy (%), {settings.pooling} pooling")
    table.add_column("model")
    for d in settings.distances:
        table.add_column(f"d={d} (L={settings.seq_len(d)})", justify="right")
    for kind in settings.models:
        cells = []
        for d in settings.distances:
            r = next(r for r in rows if r["model"] == kind and r["distance"] == d)
            cells.append("-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}")
        table.add_row(_motif_label(kind, settings), *cells)
    return table


def verdicts(copy: dict | None, motif: list[dict] | None, motif_settings: MotifSettings | None) -> list[str]:
    """Plain-language lines: how much of the short-to-optimal gap long context closes; accuracies at
    the largest distance each model ran."""
    lines = []
    if copy is not None:
        ref = copy["references"]
        long, short, *ablations = copy["models"]
        gap = ref["short_context"] - ref["optimal"]

        def closed(m: dict) -> str:
            return f"{100 * (ref['short_context'] - m['loss']) / gap:.0f}%"

        lines.append(
            f"(a) perplexity: long context {long['perplexity']:.3f}, "
            f"short context {short['perplexity']:.3f}; exact: perfect recall "
            f"{ref['optimal_perplexity']:.3f}, best short context "
            f"{ref['short_context_perplexity']:.3f}. The long model closes {closed(long)} of the loss gap "
            f"between the short-context bound and perfect recall (copied targets: {long['loss_copied']:.3f} "
            f"vs {short['loss_copied']:.3f} nats)."
        )
        for m in ablations:
            lines.append(
                f"(a) {m['name']}: perplexity {m['perplexity']:.3f}, closes {closed(m)} of the gap "
                f"(copied targets {m['loss_copied']:.3f} nats)."
            )
    if motif is not None and motif_settings is not None:
        for kind in motif_settings.models:
            ran = [r for r in motif if r["model"] == kind and r["accuracy"] is not None]
            accs = ", ".join(f"d={r['distance']}: {100 * r['accuracy']:.1f}%" for r in ran)
            lines.append(f"(b) {kind}: {accs}")
    return lines


def _plot(
    copy: dict | None, motif: list[dict] | None, motif_settings: MotifSettings | None, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (copy, motif) if p is not None]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.2 * max(1, len(panels)), 4.4), squeeze=False)
    axes = list(axes[0])
    if copy is not None:
        ax = axes.pop(0)
        ref = copy["references"]
        groups = ("all targets", "copied", "fresh")
        bars = {_copy_label(m): [m["loss"], m["loss_copied"], m["loss_fresh"]] for m in copy["models"]}
        bars["exact: perfect recall"] = [ref["optimal"], ref["optimal_copied"], ref["fresh"]]
        bars["exact: best short context"] = [ref["short_context"], ref["short_context_copied"], ref["fresh"]]
        width = 0.8 / len(bars)
        x = np.arange(len(groups))
        for i, (label, losses) in enumerate(bars.items()):
            offset = (i - (len(bars) - 1) / 2) * width
            b = ax.bar(
                x + offset, np.exp(losses), width, label=label, hatch="//" if "exact" in label else None
            )
            ax.bar_label(b, fmt="%.2f", fontsize=6)
        ax.set_xticks(x, groups)
        top = max(max(np.exp(v)) for v in bars.values())
        ax.set(
            ylabel="perplexity per base (exp of the mean loss)",
            title="(a) dna_markov_copy: long vs short context",
            ylim=(0.9, 1.5 * top),
        )
        ax.axhline(1.0, color="gray", lw=0.5)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    if motif is not None and motif_settings is not None:
        ax = axes.pop(0)
        for kind in motif_settings.models:
            ran = [r for r in motif if r["model"] == kind and r["accuracy"] is not None]
            if ran:
                distances, accuracies = [r["distance"] for r in ran], [r["accuracy"] for r in ran]
                ax.plot(distances, accuracies, marker="o", label=_motif_label(kind, motif_settings))
        ax.axhline(0.5, color="gray", ls="--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(motif_settings.distances, [str(d) for d in motif_settings.distances])
        ax.minorticks_off()
        ax.set(
            xlabel=f"motif distance d (sequence length max({motif_settings.min_len}, 2d))",
            ylabel="test accuracy",
            ylim=(0.4, 1.02),
            title="(b) dna_motif_distance",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _quick_note(copy: CopySettings, motif: MotifSettings) -> str:
    width = copy.d_model or HYENA_DNA_SIZES[copy.size]["d_model"]
    return (
        f"quick: reduced sizes. (a) {copy.size} (d={width}, {HYENA_DNA_SIZES[copy.size]['n_layers']} "
        f"layers) at {copy.long_len} tokens instead of {HYENA_DNA_SIZES[copy.size]['max_len']}, copy "
        f"distance {copy.copy_distance}, {copy.steps} steps of {copy.tokens_per_batch} tokens; (b) d_model "
        f"{motif.d_model}, distances {', '.join(map(str, motif.distances))}, {motif.steps} steps"
    )


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    copy: CopySettings | None = None,
    motif: MotifSettings | None = None,
    parts: tuple[Literal["copy", "motif"], ...] = ("copy", "motif"),
) -> dict:
    """Run parts (a) ``"copy"`` and (b) ``"motif"``, print their tables, write ``hyena_dna.json`` and
    ``hyena_dna.png`` to ``out_dir``; returns the JSON record.

    Args:
        quick: the reduced CPU settings (``QUICK_COPY``, ``QUICK_MOTIF``) instead of ``FULL_*``.
        out_dir: created if missing.
        seed: data (train and test splits), initialisation and batch order.
        console: where the tables go (a new ``Console()`` if None).
        copy, motif: settings that replace the preset of that part (tests use tiny ones).
        parts: which parts to run.
    """
    console = console if console is not None else Console()
    copy_settings = copy or (QUICK_COPY if quick else FULL_COPY)
    motif_settings = motif or (QUICK_MOTIF if quick else FULL_MOTIF)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device()
    console.print(
        f"device {device.type}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        + (_quick_note(copy_settings, motif_settings) if quick else "full settings"),
        highlight=False,
    )
    t0 = time.perf_counter()
    copy_result = motif_rows = None
    with console.status("training") as status:
        if "copy" in parts:
            copy_result = copy_experiment(copy_settings, seed=seed, device=device, status=status)
        if "motif" in parts:
            motif_rows = motif_experiment(motif_settings, seed=seed, device=device, status=status)
    if copy_result is not None:
        console.print(_copy_table(copy_result, copy_settings))
    if motif_rows is not None:
        console.print(_motif_table(motif_rows, motif_settings))
    lines = verdicts(copy_result, motif_rows, motif_settings if motif_rows is not None else None)
    for line in lines:
        console.print(line, highlight=False)

    record = {
        "name": "hyena_dna",
        "claim": CLAIM,
        "quick": quick,
        "seed": seed,
        "settings": {
            "copy": copy_settings.model_dump() if "copy" in parts else None,
            "motif": motif_settings.model_dump() if "motif" in parts else None,
            "optimizer": f"AdamW {BETAS}, weight decay {WEIGHT_DECAY} (0 on Hyena layers, biases, norms), "
            f"warm-up {WARMUP_FRACTION:.0%} then cosine to 0, grad clip {GRAD_CLIP}",
            "precision": "bf16 autocast" if device.type == "cuda" else "float32",
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "elapsed_s": round(time.perf_counter() - t0, 1),
        },
        "copy": copy_result,
        "motif": motif_rows,
        "verdicts": lines,
    }
    (out_dir / "hyena_dna.json").write_text(json.dumps(record, indent=1))
    _plot(
        copy_result, motif_rows, motif_settings if motif_rows is not None else None, out_dir / "hyena_dna.png"
    )
    return record
