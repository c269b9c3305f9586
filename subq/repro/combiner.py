"""Reproduction of Combiner (Ren et al., NeurIPS 2021) and of the stability claim of kernelized attention
with RPE (Luo et al., NeurIPS 2021) on scikit-learn's ``load_digits``, with no download.

    subq repro combiner --quick    # one CPU thread: about 5 CPU-minutes (20 min on a busy 2-core box)
    subq repro combiner            # sized for one GPU (wider, deeper, longer, more seeds)

Two experiments, every model a ``LanguageModel`` of the same size trained for the same steps:

1. **Density modelling** (Combiner's same-architecture ablation, Table 2 of the paper, at toy size):
   each digit (8x8, 17 gray levels -> tokens 0..16) is 2x2-upsampled to 16x16 and read in raster order
   as a 256-token sequence after a start token; test bits per dimension for full attention, plain
   axial attention, Combiner-Axial (rows of 16 = the image width) and kernelized attention with RPE.
   The paper's claim: Combiner-Axial < Axial, close to full attention.
2. **Training stability** (section 3.3 of the RPE paper): positive-random-feature attention with and
   without query/key normalisation (``rpe_normalize``), with and without the RPE bias, over several
   seeds at a high learning rate on the 8x8 digits (64 tokens), features redrawn before every step
   (Performer's practice: the estimator's variance then reaches the loss) and no gradient clipping;
   loss curves, the largest loss spikes and a divergence count (a non-finite loss, or a final loss
   above a uniform guess over the gray levels).

*Plain axial attention* is softmax attention under a mask (:func:`axial_mask`): position ``(u, l)``
(row ``u``, column ``l``) sees its own row up to column ``l`` and its own column in the rows above,
both in one softmax. It is :class:`AxialAttention`, the ``attention`` mixer with that mask, swapped
into a model built with ``attention`` (same parameters, same initial weights). At any depth it never
hears from earlier rows right of its own column; Combiner-Axial reaches them through its full-row
summaries, which is the gap the paper's ablation measures. ``axial_strided`` (the last ``row_len``
positions plus the column, as the Sparse Transformer) reaches every earlier position in two layers.
"""

from __future__ import annotations

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

from subq.layers import MixerConfig
from subq.layers.attention import Attention
from subq.models import LanguageModel, LMConfig, count_params
from subq.train.trainer import lr_at

CLAIM = (
    "Combiner-Axial models images with fewer bits/dim than plain axial attention, close to full "
    "attention (Combiner); kernelized attention with RPE and normalised queries/keys trains stably "
    "where vanilla positive-random-feature attention diverges (Luo et al.)."
)

GRAY_LEVELS = 17  # load_digits pixels are integers 0..16
BOS = GRAY_LEVELS  # the start token
VOCAB_SIZE = GRAY_LEVELS + 1

MODELS = {
    "attention": "full softmax attention",
    "axial": "axial attention (own row prefix + own column above, one softmax)",
    "axial_strided": "strided attention (last row_len positions + own column above, one softmax)",
    "combiner_axial": "Combiner-Axial (rows of the image width)",
    "combiner_fixed": "Combiner-Fixed (segments of the image width)",
    "combiner_mixture": "Combiner-Mixture (rows of the image width)",
    "kernelized_rpe": "normalised PRF + RPE (kernelized_rpe, rpe_normalize=True)",
    "kernelized_rpe_unnormalized": "PRF + RPE, q/k not normalised (kernelized_rpe, rpe_normalize=False)",
    "performer": "vanilla PRF (performer, rpe_normalize=False)",
    "performer_normalized": "normalised PRF, no RPE (performer, rpe_normalize=True)",
}
"""Model names of the experiments -> what they are."""


class ReproConfig(BaseModel):
    """Sizes and budgets. ``density_*`` is experiment 1, ``stability_*`` experiment 2; the model width,
    depth, heads and random features are shared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: PositiveInt = 64
    n_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    num_features: PositiveInt = 32
    grad_clip: float = Field(1.0, gt=0)
    eval_batch_size: PositiveInt = 150
    density_upsample: PositiveInt = 2
    density_models: tuple[str, ...] = (
        "attention",
        "axial",
        "axial_strided",
        "combiner_axial",
        "kernelized_rpe",
    )
    density_seeds: PositiveInt = 1
    density_steps: PositiveInt = 400
    density_batch_size: PositiveInt = 16
    density_lr: float = Field(2e-3, gt=0)
    density_warmup: int = Field(40, ge=0)
    stability_upsample: PositiveInt = 1
    stability_models: tuple[str, ...] = (
        "performer",
        "performer_normalized",
        "kernelized_rpe_unnormalized",
        "kernelized_rpe",
    )
    stability_seeds: PositiveInt = 4
    stability_steps: PositiveInt = 150
    stability_batch_size: PositiveInt = 32
    stability_lr: float = Field(3e-2, gt=0)
    stability_warmup: int = Field(10, ge=0)
    stability_grad_clip: float | None = Field(None, gt=0)
    stability_redraw: bool = True

    def model_post_init(self, __context) -> None:
        unknown = set(self.density_models + self.stability_models) - set(MODELS)
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; valid: {', '.join(MODELS)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")


QUICK = ReproConfig()
FULL = ReproConfig(
    d_model=256,
    n_layers=4,
    num_heads=8,
    num_features=64,
    density_models=(
        "attention",
        "axial",
        "axial_strided",
        "combiner_axial",
        "combiner_fixed",
        "combiner_mixture",
        "kernelized_rpe",
        "performer",
    ),
    density_seeds=3,
    density_steps=4000,
    density_batch_size=32,
    density_lr=1e-3,
    density_warmup=200,
    stability_seeds=8,
    stability_steps=1000,
    stability_batch_size=64,
    stability_lr=1e-2,
    stability_warmup=50,
)


# ---- data ------------------------------------------------------------------------------------------
def load_digit_sequences(upsample: int = 1) -> tuple[Tensor, Tensor]:
    """``load_digits`` as raster-order token sequences: the fixed stratified 75/25 split
    (``random_state=0``) -> ``train [1347, T]``, ``test [450, T]``, tokens 0..16, ``T = (8 upsample)^2``
    (each pixel repeated ``upsample x upsample`` times)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    images = torch.tensor(x, dtype=torch.long).view(-1, 8, 8)
    images = images.repeat_interleave(upsample, dim=1).repeat_interleave(upsample, dim=2)
    seqs = images.flatten(1)  # [N, T], row-major
    return seqs[idx_tr], seqs[idx_te]


def lm_inputs(seqs: Tensor) -> Tensor:
    """``[B, T]`` pixels -> model inputs ``[B, T]``: the start token, then the pixels shifted by one."""
    return torch.cat([torch.full_like(seqs[:, :1], BOS), seqs[:, :-1]], dim=1)


# ---- plain axial attention ---------------------------------------------------------------------------
def axial_mask(seq_len: int, row_len: int, *, strided: bool = False, device=None) -> Tensor:
    """Boolean ``[T, T]``, True where query ``i`` may attend key ``j``: ``j <= i`` and ``j`` in the row of
    ``i`` (``j // row_len == i // row_len``) or in its column (``j % row_len == i % row_len``).

    With ``strided=True`` the row part is instead the last ``row_len`` positions (``i - j < row_len``,
    reaching into the previous row): the Sparse Transformer's strided pattern, which reaches every
    earlier position in two layers. The plain row prefix never does: position ``(u, l)`` only ever
    hears from rows ``<= u`` and columns ``<= l``, at any depth.
    """
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    row = (i - j < row_len) if strided else (i // row_len == j // row_len)
    same_col = i % row_len == j % row_len
    return (j <= i) & (row | same_col)


class AxialAttention(Attention):
    """The ``attention`` mixer under :func:`axial_mask` (causal only, no decoding): each position sees its
    own row prefix and its own column above it in one softmax. Same parameters as ``attention``.

    Args:
        d_model, num_heads, layer_idx, mode, device, dtype: as :class:`~subq.layers.attention.Attention`.
        row_len: the image width (row length of the raster order).
        strided: the row part is the last ``row_len`` positions instead of the row prefix (see
            :func:`axial_mask`).
    """

    supports_decode = False
    supports_bidirectional = False

    def __init__(self, d_model: int, *, row_len: int, strided: bool = False, num_heads: int = 1, **kwargs):
        super().__init__(d_model, num_heads=num_heads, **kwargs)
        if not isinstance(row_len, int) or row_len < 1:
            raise ValueError(f"row_len must be an int >= 1, got {row_len!r}")
        self.row_len, self.strided = row_len, strided

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mode: str) -> Tensor:
        mask = axial_mask(q.shape[1], self.row_len, strided=self.strided, device=q.device)  # [T, T]
        if mode == "naive":  # the score matrix in float32 (float64 in tests), masked, softmax
            acc = torch.promote_types(q.dtype, torch.float32)
            scores = torch.einsum("bthd,bshd->bhts", q.to(acc), k.to(acc)) * self.head_dim**-0.5
            p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            return torch.einsum("bhts,bshd->bthd", p, v.to(acc)).to(q.dtype)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )  # [B, H, T, D]
        return o.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, row_len={self.row_len}, strided={self.strided}"


# ---- models --------------------------------------------------------------------------------------------
def mixer_config(
    name: str, cfg: ReproConfig, seq_len: int, row_len: int, seed: int, device: str
) -> MixerConfig:
    """The mixer of model ``name`` (``axial`` is built as ``attention`` and swapped, see :func:`build_model`).
    Random-feature mixers draw their features from ``seed``; on a CPU ``kernelized_rpe`` runs its
    explicit-Toeplitz form (the same function; the FFT form is far slower at these lengths there)."""
    H = cfg.num_heads
    if name in ("attention", "axial", "axial_strided"):
        return MixerConfig(name="attention", num_heads=H)
    if name.startswith("combiner_"):
        return MixerConfig(name="combiner", num_heads=H, variant=name.split("_", 1)[1], block_size=row_len)
    normalize = name in ("kernelized_rpe", "performer_normalized")
    features = dict(num_heads=H, num_features=cfg.num_features, rpe_normalize=normalize, feature_seed=seed)
    if name.startswith("kernelized_rpe"):
        mode = "naive" if device == "cpu" else "auto"
        return MixerConfig(name="kernelized_rpe", max_seq_len=seq_len, mode=mode, **features)
    return MixerConfig(name="performer", **features)


def build_model(
    name: str, cfg: ReproConfig, seq_len: int, row_len: int, seed: int, device: str = "cpu"
) -> LanguageModel:
    """A causal LM over ``VOCAB_SIZE`` tokens with learned positions and GLU blocks, initialised from
    ``seed`` (the same weights for ``attention`` and ``axial``)."""
    torch.manual_seed(seed)
    lm = LMConfig(
        vocab_size=VOCAB_SIZE,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        mixer=mixer_config(name, cfg, seq_len, row_len, seed, device),
        pos_emb="learned",
        max_seq_len=seq_len,
    )
    model = LanguageModel(lm)
    if name.startswith("axial"):
        for i, block in enumerate(model.backbone.blocks):
            axial = AxialAttention(
                cfg.d_model,
                row_len=row_len,
                strided=name == "axial_strided",
                num_heads=cfg.num_heads,
                layer_idx=i,
            )
            axial.load_state_dict(block.mixer.state_dict())
            block.mixer = axial
    return model.to(device)


# ---- training --------------------------------------------------------------------------------------------
@torch.no_grad()
def bits_per_dim(model: LanguageModel, seqs: Tensor, batch_size: int) -> float:
    """Mean negative log2-likelihood per pixel of ``seqs: [N, T]`` under ``model``."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for batch in seqs.split(batch_size):
        batch = batch.to(device)
        logits = model(lm_inputs(batch)).float()
        total += F.cross_entropy(logits.flatten(0, 1), batch.flatten(), reduction="sum").item()
    model.train()
    return total / (seqs.numel() * math.log(2))


def train_model(
    model: LanguageModel,
    train: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    grad_clip: float | None,
    seed: int,
    redraw_features: bool = False,
) -> dict:
    """AdamW (weight decay 0), linear warm-up then cosine decay to 0, gradient clipping (None: none);
    batches drawn from epoch permutations of ``seed``. Stops at the first non-finite loss.
    ``redraw_features``: random-feature mixers draw new features before every step (Performer's
    practice; the last draw stays for evaluation).

    Returns ``{"losses": per-step training loss in bits/dim, "diverged_at": step or None, "seconds"}``.
    """
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train), generator=gen), 0
    losses, diverged_at = [], None
    mixers = [m for m in model.modules() if hasattr(m, "redraw_features")]
    t0 = time.perf_counter()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        batch = train[order[pos : pos + batch_size]].to(device)
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr=lr, warmup_steps=warmup, total_steps=steps)
        if redraw_features:
            for i, mixer in enumerate(mixers):
                mixer.redraw_features(seed + 1000 * (step + 1) + i)
        logits = model(lm_inputs(batch))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.flatten())
        if not torch.isfinite(loss):
            diverged_at = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item() / math.log(2))
    return {"losses": losses, "diverged_at": diverged_at, "seconds": time.perf_counter() - t0}


def _grid(upsample: int) -> tuple[int, int]:
    """``(seq_len, row_len)`` of the ``8 upsample`` square images."""
    side = 8 * upsample
    return side * side, side


def run_density(cfg: ReproConfig, seed: int, device: str, status=None) -> list[dict]:
    """Experiment 1: one row per model, the test bits/dim of each seed and their mean."""
    train, test = load_digit_sequences(cfg.density_upsample)
    seq_len, row_len = _grid(cfg.density_upsample)
    rows = []
    for name in cfg.density_models:
        runs = []
        for s in range(seed, seed + cfg.density_seeds):
            if status is not None:
                status.update(f"density: {name}, seed {s} ({cfg.density_steps} steps, T={seq_len})")
            model = build_model(name, cfg, seq_len, row_len, s, device)
            result = train_model(
                model,
                train,
                steps=cfg.density_steps,
                batch_size=cfg.density_batch_size,
                lr=cfg.density_lr,
                warmup=cfg.density_warmup,
                grad_clip=cfg.grad_clip,
                seed=s,
            )
            finite = result["diverged_at"] is None
            bpd = bits_per_dim(model, test, cfg.eval_batch_size) if finite else math.nan
            runs.append({"seed": s, "test_bpd": bpd, **result})
        bpds = np.array([r["test_bpd"] for r in runs])
        rows.append(
            {
                "model": name,
                "description": MODELS[name],
                "mixer": mixer_config(name, cfg, seq_len, row_len, seed, device).model_dump(),
                "params": count_params(model),
                "test_bpd": float(bpds.mean()),
                "test_bpd_std": float(bpds.std(ddof=1)) if len(bpds) > 1 else 0.0,
                "bits_per_image": float(bpds.mean() * seq_len),
                "seconds": float(np.mean([r["seconds"] for r in runs])),
                "runs": runs,
            }
        )
    return rows


def diverged(run: dict, threshold: float) -> bool:
    """A non-finite loss, or a mean training loss over the last tenth of the steps above ``threshold``
    (bits/dim)."""
    if run["diverged_at"] is not None:
        return True
    tail = run["losses"][-max(1, len(run["losses"]) // 10) :]
    return float(np.mean(tail)) > threshold


def largest_spike(losses: list[float], skip: int = 0) -> float:
    """The largest rise of the training loss above its best value so far, over the steps after the
    first ``skip`` (0 for a curve that only falls)."""
    best, spike = math.inf, 0.0
    for t, loss in enumerate(losses):
        if t >= skip and best < math.inf:
            spike = max(spike, loss - best)
        best = min(best, loss)
    return spike


def run_stability(cfg: ReproConfig, seed: int, device: str, status=None) -> dict:
    """Experiment 2: every stability model over ``stability_seeds`` seeds at ``stability_lr``."""
    train, test = load_digit_sequences(cfg.stability_upsample)
    seq_len, row_len = _grid(cfg.stability_upsample)
    threshold = math.log2(GRAY_LEVELS)  # a uniform guess over the gray levels
    rows = []
    for name in cfg.stability_models:
        runs = []
        for s in range(seed, seed + cfg.stability_seeds):
            if status is not None:
                status.update(
                    f"stability: {name}, seed {s} ({cfg.stability_steps} steps, lr {cfg.stability_lr:g})"
                )
            model = build_model(name, cfg, seq_len, row_len, s, device)
            result = train_model(
                model,
                train,
                steps=cfg.stability_steps,
                batch_size=cfg.stability_batch_size,
                lr=cfg.stability_lr,
                warmup=cfg.stability_warmup,
                grad_clip=cfg.stability_grad_clip,
                seed=s,
                redraw_features=cfg.stability_redraw,
            )
            finite = result["diverged_at"] is None
            bpd = bits_per_dim(model, test, cfg.eval_batch_size) if finite else math.nan
            runs.append({"seed": s, "test_bpd": bpd, **result})
            runs[-1]["diverged"] = diverged(runs[-1], threshold) or not math.isfinite(bpd)
            runs[-1]["spike"] = largest_spike(result["losses"], cfg.stability_warmup)
        finite_bpd = [r["test_bpd"] for r in runs if math.isfinite(r["test_bpd"])]
        finals = [float(np.mean(r["losses"][-10:])) for r in runs if r["losses"]]
        spikes = [r["spike"] for r in runs]
        rows.append(
            {
                "model": name,
                "description": MODELS[name],
                "diverged": sum(r["diverged"] for r in runs),
                "non_finite": sum(r["diverged_at"] is not None for r in runs),
                "spike_mean": float(np.mean(spikes)),
                "spike_max": float(np.max(spikes)),
                "final_loss": float(np.mean(finals)) if finals else math.nan,
                "final_loss_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                "test_bpd": float(np.mean(finite_bpd)) if finite_bpd else math.nan,
                "test_bpd_std": float(np.std(finite_bpd, ddof=1)) if len(finite_bpd) > 1 else 0.0,
                "runs": runs,
            }
        )
    return {"threshold_bpd": threshold, "seq_len": seq_len, "rows": rows}


# ---- report ------------------------------------------------------------------------------------------------
def _verdicts(density: list[dict], stability: dict) -> list[str]:
    by = {r["model"]: r["test_bpd"] for r in density}
    lines = []
    if "combiner_axial" in by and "axial" in by:
        gap = by["combiner_axial"] - by["axial"]
        lines.append(
            f"Combiner-Axial - Axial = {gap:+.4f} bits/dim ({'agrees with' if gap < 0 else 'contrary to'} "
            "the paper's Combiner-Axial < Axial; CIFAR-10 there: 3.050 vs 3.666)"
        )
    if "combiner_axial" in by and "attention" in by:
        lines.append(
            f"Combiner-Axial - full attention = {by['combiner_axial'] - by['attention']:+.4f} bits/dim"
        )
    rows = {r["model"]: r for r in stability["rows"]}
    n = {m: len(r["runs"]) for m, r in rows.items()}
    counts = ", ".join(f"{m} {rows[m]['diverged']}/{n[m]}" for m in rows)
    lines.append(f"diverged runs at lr {stability['lr']:g}: {counts}")
    spikes = ", ".join(f"{m} {rows[m]['spike_mean']:.3f}" for m in rows)
    lines.append(f"largest loss spike (bits/dim, mean over seeds): {spikes}")
    return lines


def _plot(density: list[dict], stability: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    ax = axes[0]
    for row in density:
        losses = np.array(row["runs"][0]["losses"])
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) >= 10 else losses
        ax.plot(smooth, label=f"{row['model']} (test {row['test_bpd']:.3f})")
    ax.set(title="density: training loss (10-step mean)", xlabel="step", ylabel="bits/dim")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    names = [r["model"] for r in density]
    bars = ax.bar(
        names, [r["test_bpd"] for r in density], yerr=[r["test_bpd_std"] for r in density], capsize=3
    )
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    low = min(r["test_bpd"] for r in density)
    ax.set_ylim(max(0.0, 0.9 * low), 1.05 * max(r["test_bpd"] for r in density))
    ax.set(title="density: test bits/dim (load_digits)", ylabel="bits/dim")
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    for i, row in enumerate(stability["rows"]):
        color = plt.get_cmap("tab10")(i)
        for j, run in enumerate(row["runs"]):
            label = f"{row['model']} ({row['diverged']}/{len(row['runs'])} diverged)" if j == 0 else None
            ax.plot(run["losses"], color=color, lw=0.8, alpha=0.8, label=label)
            if run["diverged_at"] is not None:
                ax.plot(len(run["losses"]), run["losses"][-1] if run["losses"] else 0, "x", color=color)
    ax.axhline(stability["threshold_bpd"], color="grey", ls="--", lw=0.8)
    ax.set(
        title=f"stability: lr {stability['lr']:g}, {len(stability['rows'][0]['runs'])} seeds each",
        xlabel="step",
        ylabel="training loss (bits/dim, log scale)",
        yscale="log",
    )
    ax.yaxis.set_major_locator(FixedLocator([2, 2.5, 3, 4, 5, 6, 8]))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_tables(console: Console, density: list[dict], stability: dict, cfg: ReproConfig) -> None:
    seq_len, _ = _grid(cfg.density_upsample)
    steps, batch = cfg.density_steps, cfg.density_batch_size
    table = Table(title=f"load_digits density, {seq_len} tokens, {steps} steps x batch {batch}")
    for col in ("model", "params", "test bits/dim", "bits/image", "train s/run"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in density:
        std = f" ± {r['test_bpd_std']:.4f}" if len(r["runs"]) > 1 else ""
        table.add_row(
            r["model"],
            f"{r['params']:,}",
            f"{r['test_bpd']:.4f}{std}",
            f"{r['bits_per_image']:.1f}",
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    table = Table(
        title=f"stability, {stability['seq_len']} tokens, lr {stability['lr']:g}, {cfg.stability_steps} steps"
    )
    for col in (
        "model",
        "diverged",
        "non-finite",
        "largest spike (mean / max)",
        "final train loss",
        "test bits/dim",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in stability["rows"]:
        n = len(r["runs"])
        table.add_row(
            r["model"],
            f"{r['diverged']}/{n}",
            f"{r['non_finite']}/{n}",
            f"{r['spike_mean']:.3f} / {r['spike_max']:.3f}",
            f"{r['final_loss']:.3f} ± {r['final_loss_std']:.3f}",
            f"{r['test_bpd']:.4f} ± {r['test_bpd_std']:.4f}",
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
    """Run both experiments; print the tables; write ``combiner.json`` and ``combiner.png``.

    Args:
        quick: :data:`QUICK` (one CPU thread, about 5 CPU-minutes) instead of :data:`FULL` (one GPU;
            not run yet).
        out_dir: folder for the outputs (created if missing).
        seed: first seed; runs use ``seed, seed + 1, ...`` (model init, batches and random features).
        console: where the tables go (a new ``Console()`` if None).
        config: overrides the preset (tests use a tiny one).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).

    Returns the JSON record: settings, the density rows (params, test bits/dim per seed, loss curves,
    seconds), the stability rows (divergence counts, curves) and verdict lines.
    """
    console = console or Console()
    cfg = config or (QUICK if quick else FULL)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with console.status("training") as status:
        density = run_density(cfg, seed, device, status)
        stability = run_stability(cfg, seed, device, status) | {"lr": cfg.stability_lr}
    _print_tables(console, density, stability, cfg)
    verdicts = _verdicts(density, stability)
    for line in verdicts:
        console.print(line)
    record = {
        "claim": CLAIM,
        "settings": {
            "quick": quick,
            "seed": seed,
            "device": device,
            "config": cfg.model_dump(),
            "data": "sklearn load_digits, stratified 75/25 split (random_state 0): 1347 train / 450 test "
            "images; pixels 0..16 as tokens in raster order after a start token",
            "optimizer": "AdamW (weight decay 0), linear warm-up + cosine to 0, gradient clipping",
            "torch": torch.__version__,
            "elapsed_s": round(time.perf_counter() - t0, 1),
        },
        "density": density,
        "stability": stability,
        "verdicts": verdicts,
    }
    (out_dir / "combiner.json").write_text(json.dumps(record, indent=1))
    _plot(density, stability, out_dir / "combiner.png")
    return record
