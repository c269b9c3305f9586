"""Reproduction of "Computational Limits of Low-Rank Adaptation (LoRA) Fine-Tuning for Transformer
Models" (Hu, Su, Kuo, Song, Liu, ICLR 2025, arXiv 2406.03136) on a CPU.

    subq repro lora_limits --quick     # T in {256, 1024, 4096}, one instance: half a minute of CPU time
    subq repro lora_limits             # T up to 16384, both instances: about 20 minutes of CPU time

One attention head with LoRA on ``W_Q`` and ``W_V`` (the paper's partial adaptation, case C1), loss
``1/2 ||softmax(Q K^T / d) V - Y||_F^2``, ``d = d_k = d_v = 4``, rank 2, ``alpha = r``, ``Y = 0`` (as in
the hard instance of the paper's Theorem 4.1). For each length ``T`` and ratio
``rho = Gamma / sqrt(log T)`` the weights are rescaled so that ``max |Q| = max |K| = Gamma`` (the
paper's ``||C1 W||_inf`` and ``||C2||_inf``); with the ``1/d`` of the scores (as in Alman & Song),
every score is at most ``Gamma^2``, and ``rho = 1`` is ``Gamma^2 = log T``. Two instances:

- ``aligned``: ``x`` rows are random sign vectors, ``W*_Q = W*_K = I`` and a small LoRA update
  (``max |B A| = 0.1``), so each query meets a key along its own direction and the largest scores
  reach ``Gamma^2``: the worst case the bound allows, the shape of the paper's hardness instance.
- ``gaussian``: ``x`` and the frozen weights i.i.d. Gaussian: the bound holds but typical scores are
  far below ``Gamma^2``.

Per cell :func:`~subq.peft.fast_lora_grad.exact_lora_grad` (float64) is the reference and
:func:`~subq.peft.fast_lora_grad.fast_lora_grad` runs at even degrees ``g = 2, 4, ...`` until its
relative error ``max |G~ - G| / max |G|`` over all of ``dL/dA, dL/dB`` is below ``eps = 1/T`` (the
paper's ``1/poly(L)``) or ``g`` passes ``max_degree``. The tables give that error at the fixed degree,
the degree needed for ``eps`` and its FLOPs against the exact gradient's; a timing sweep measures wall
time against ``T`` at fixed degrees (float32, best of a few runs). ``<out_dir>/lora_limits.json`` holds
it all, ``<out_dir>/lora_limits.png`` plots error and degree against ``rho``, the FLOP ratio, and time
against ``T``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from rich.console import Console
from rich.table import Table

from subq.peft.fast_lora_grad import (
    LoRAFactors,
    exact_lora_grad,
    fast_lora_grad,
    lora_grad_flops,
    taylor_feature_dim,
)

CLAIM = (
    "LoRA gradients of an attention head have an almost-linear-time (L^{1+o(1)}) approximation when the "
    "entries of X W_Q W_K-type products are o(sqrt(log L)), and none in O(L^{2-delta}) time (under SETH) "
    "once they reach O(sqrt(log L) * kappa(L)): a phase transition at Gamma ~ sqrt(log L)."
)

Instance = Literal["aligned", "gaussian"]
ERROR_DTYPE = torch.float64


class LoRALimitsSweep(BaseModel):
    """The grid of one reproduction: sizes, the swept entry bounds, degrees and the timing sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: PositiveInt = 4
    """``d = d_k = d_v``: model width and head size."""
    rank: PositiveInt = 2
    lengths: tuple[PositiveInt, ...] = Field(min_length=1)
    ratios: tuple[float, ...] = Field(min_length=1)
    """``rho = Gamma / sqrt(log T)``."""
    instances: tuple[Instance, ...] = Field(("aligned",), min_length=1)
    degree: PositiveInt = 8
    """The fixed degree of the first table."""
    max_degree: PositiveInt = 20
    timing_lengths: tuple[PositiveInt, ...] = Field(min_length=2)
    timing_degrees: tuple[PositiveInt, ...] = Field((4, 8), min_length=1)
    timing_repeats: PositiveInt = 3
    block_size: PositiveInt = 1024
    """Rows of ``S`` the exact gradient holds at once."""
    fast_block_size: PositiveInt = 256
    """Rows of the ``[T, k1 d]`` Kronecker factors the approximation holds at once."""

    @model_validator(mode="after")
    def _check(self):
        for name in ("degree", "max_degree"):
            if getattr(self, name) % 2:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be even (odd Taylor polynomials can vanish)"
                )
        if self.degree > self.max_degree:
            raise ValueError(f"degree={self.degree} must be <= max_degree={self.max_degree}")
        if any(r <= 0 for r in self.ratios):
            raise ValueError(f"ratios must be > 0, got {self.ratios}")
        if any(t < 2 for t in self.lengths):
            raise ValueError(f"lengths must be >= 2 (log T > 0), got {self.lengths}")
        return self


QUICK = LoRALimitsSweep(
    lengths=(256, 1024, 4096),
    ratios=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
    max_degree=16,
    timing_lengths=(256, 512, 1024, 2048, 4096),
)
FULL = LoRALimitsSweep(
    lengths=(256, 1024, 4096, 16384),
    ratios=(0.25, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5, 2.0),
    instances=("aligned", "gaussian"),
    max_degree=24,
    timing_lengths=(256, 512, 1024, 2048, 4096, 8192, 16384),
    timing_degrees=(4, 8, 12),
)

ADAPTED = ("q", "v")


def make_instance(
    kind: Instance, T: int, d: int, rank: int, gamma: float, seed: int, dtype: torch.dtype = ERROR_DTYPE
) -> tuple[tuple, float]:
    """``((x, y, w_q, w_k, w_v, adapters), alpha)`` with ``max |x W_Q| = max |x W_K| = gamma``.

    ``x``: `[1, T, d]`; LoRA on ``q`` and ``v`` with ``alpha = rank`` (so the update is ``B A``);
    ``y = 0``. See the module docstring for the two kinds.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    if kind == "aligned":
        x = (torch.randint(0, 2, (1, T, d), generator=gen) * 2 - 1).to(dtype)
        w_q, w_k = torch.eye(d, dtype=dtype), torch.eye(d, dtype=dtype)
    else:
        x = normal(1, T, d)
        w_q, w_k = normal(d, d) / math.sqrt(d), normal(d, d) / math.sqrt(d)
    w_v = normal(d, d) / math.sqrt(d)
    adapters = {}
    for name, w in (("q", w_q), ("v", w_v)):
        b, a = normal(d, rank), normal(rank, d)
        a = a * (0.1 * w.abs().max() / (b @ a).abs().max())  # max |B A| = 0.1 max |W*|
        adapters[name] = LoRAFactors(b, a)
    s_q = gamma / (x @ (w_q + adapters["q"].b @ adapters["q"].a)).abs().max()
    s_k = gamma / (x @ w_k).abs().max()
    adapters["q"] = LoRAFactors(adapters["q"].b, s_q * adapters["q"].a)
    y = torch.zeros(1, T, d, dtype=dtype)
    return (x, y, s_q * w_q, s_k * w_k, w_v, adapters), float(rank)


def relative_error(approx: dict, exact: dict) -> tuple[float, float]:
    """``max |G~ - G| / max |G|`` and ``||G~ - G||_F / ||G||_F`` over every ``dL/dA``, ``dL/dB``."""
    a = torch.cat([t.flatten() for name in exact for t in approx[name]])
    e = torch.cat([t.flatten() for name in exact for t in exact[name]])
    diff = a - e
    return (diff.abs().max() / e.abs().max()).item(), (diff.norm() / e.norm()).item()


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cell(sweep: LoRALimitsSweep, kind: Instance, T: int, ratio: float, seed: int) -> dict:
    gamma = ratio * math.sqrt(math.log(T))
    args, alpha = make_instance(kind, T, sweep.d, sweep.rank, gamma, seed)
    kw = {"alpha": alpha, "scale": 1.0 / sweep.d}
    x, _, w_q, w_k, _, adapters = args
    q = x @ (w_q + adapters["q"].b @ adapters["q"].a)
    max_score = (q @ (x @ w_k).mT).abs().max().item() / sweep.d
    exact, time_exact = _timed(lambda: exact_lora_grad(*args, block_size=sweep.block_size, **kw))
    eps = 1.0 / T
    errors, fro_errors, times = {}, {}, {}
    needed = None
    for g in range(2, sweep.max_degree + 1, 2):
        approx, times[g] = _timed(
            lambda g=g: fast_lora_grad(*args, degree=g, block_size=sweep.fast_block_size, **kw)
        )
        errors[g], fro_errors[g] = relative_error(approx, exact)
        if needed is None and errors[g] <= eps:
            needed = g
        if needed is not None and g >= sweep.degree:
            break
    flops = {
        g: lora_grad_flops(T, sweep.d, sweep.d, sweep.d, sweep.rank, ADAPTED, degree=g)
        for g in (*errors, sweep.max_degree)
    }
    flops_exact = lora_grad_flops(T, sweep.d, sweep.d, sweep.d, sweep.rank, ADAPTED)
    return {
        "instance": kind,
        "T": T,
        "ratio": ratio,
        "gamma": gamma,
        "log_T": math.log(T),
        "max_score": max_score,
        "eps": eps,
        "error": errors[sweep.degree],
        "error_fro": fro_errors[sweep.degree],
        "errors": {str(g): e for g, e in errors.items()},
        "degree_needed": needed,
        "k1_needed": None if needed is None else taylor_feature_dim(sweep.d, needed),
        "flops_exact": flops_exact,
        "flops_needed": None if needed is None else flops[needed],
        "flops_max_degree": flops[sweep.max_degree],
        "time_exact_s": time_exact,
        "time_needed_s": None if needed is None else times[needed],
    }


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(_timed(fn)[1] for _ in range(repeats))


def _timing(sweep: LoRALimitsSweep, seed: int) -> tuple[list[dict], dict]:
    rows = []
    for T in sweep.timing_lengths:
        args, alpha = make_instance("aligned", T, sweep.d, sweep.rank, 1.0, seed, torch.float32)
        kw = {"alpha": alpha, "scale": 1.0 / sweep.d}
        row = {
            "T": T,
            "exact_s": _best_time(
                lambda a=args, k=kw: exact_lora_grad(*a, block_size=sweep.block_size, **k),
                sweep.timing_repeats,
            ),
            "exact_flops": lora_grad_flops(T, sweep.d, sweep.d, sweep.d, sweep.rank, ADAPTED),
            "fast_s": {},
            "fast_flops": {},
        }
        for g in sweep.timing_degrees:
            row["fast_s"][str(g)] = _best_time(
                lambda g=g, a=args, k=kw: fast_lora_grad(*a, degree=g, block_size=sweep.fast_block_size, **k),
                sweep.timing_repeats,
            )
            row["fast_flops"][str(g)] = lora_grad_flops(
                T, sweep.d, sweep.d, sweep.d, sweep.rank, ADAPTED, degree=g
            )
        rows.append(row)
    slopes = {"exact": _slope([r["T"] for r in rows], [r["exact_s"] for r in rows])}
    for g in sweep.timing_degrees:
        slopes[f"fast_g{g}"] = _slope([r["T"] for r in rows], [r["fast_s"][str(g)] for r in rows])
    return rows, slopes


def _slope(lengths: list[int], seconds: list[float], last: int = 3) -> float:
    """Least-squares slope of ``log seconds`` against ``log T`` over the ``last`` largest lengths
    (the small ones are dominated by fixed overheads)."""
    xs = [math.log(t) for t in lengths[-last:]]
    ys = [math.log(s) for s in seconds[-last:]]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)


def _tables(cells: list[dict], timing: list[dict], slopes: dict, sweep: LoRALimitsSweep) -> list[Table]:
    tables = []
    ratio_cols = [f"{r:g}" for r in sweep.ratios]
    for kind in sweep.instances:
        by_key = {(c["T"], c["ratio"]): c for c in cells if c["instance"] == kind}
        errors = Table(
            "T",
            *ratio_cols,
            title=f"{kind}: max|G~-G|/max|G| at degree {sweep.degree} "
            f"(k1={taylor_feature_dim(sweep.d, sweep.degree)}), by rho = Gamma/sqrt(log T)",
        )
        needed = Table(
            "T",
            "eps=1/T",
            *ratio_cols,
            title=f"{kind}: even degree g reaching eps (FLOPs approx/exact at g), by rho; "
            f"'>{sweep.max_degree}' = not reached",
        )
        for T in sweep.lengths:
            row = [by_key[(T, r)] for r in sweep.ratios]
            errors.add_row(str(T), *(f"{c['error']:.1e}" for c in row))
            needed.add_row(
                str(T),
                f"{1 / T:.1e}",
                *(
                    f">{sweep.max_degree}"
                    if c["degree_needed"] is None
                    else f"{c['degree_needed']} ({c['flops_needed'] / c['flops_exact']:.2g})"
                    for c in row
                ),
            )
        tables += [errors, needed]
    degrees = [str(g) for g in sweep.timing_degrees]
    times = Table(
        "T",
        "exact s",
        *(f"g={g} s" for g in degrees),
        "exact GFLOP",
        *(f"g={g} GFLOP" for g in degrees),
        title=f"wall time (float32, best of {sweep.timing_repeats}) and matmul FLOPs, d={sweep.d}",
    )
    for row in timing:
        times.add_row(
            str(row["T"]),
            f"{row['exact_s']:.4f}",
            *(f"{row['fast_s'][g]:.4f}" for g in degrees),
            f"{row['exact_flops'] / 1e9:.3g}",
            *(f"{row['fast_flops'][g] / 1e9:.3g}" for g in degrees),
        )
    times.add_row(
        "slope",
        f"{slopes['exact']:.2f}",
        *(f"{slopes['fast_g' + g]:.2f}" for g in degrees),
        "2",
        *("1" for _ in degrees),
    )
    tables.append(times)
    return tables


def _plot(cells: list[dict], timing: list[dict], sweep: LoRALimitsSweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_err, ax_deg), (ax_flops, ax_time) = axes
    colors = plt.cm.viridis([i / max(len(sweep.lengths) - 1, 1) for i in range(len(sweep.lengths))])
    styles = {"aligned": "-", "gaussian": "--"}
    for kind in sweep.instances:
        for T, color in zip(sweep.lengths, colors, strict=True):
            row = sorted(
                (c for c in cells if c["instance"] == kind and c["T"] == T), key=lambda c: c["ratio"]
            )
            rhos = [c["ratio"] for c in row]
            label = f"{kind}, T={T}"
            ax_err.plot(
                rhos,
                [max(c["error"], 1e-16) for c in row],
                styles[kind],
                color=color,
                marker="o",
                label=label,
            )
            found = [
                (c["ratio"], c["degree_needed"] / c["log_T"]) for c in row if c["degree_needed"] is not None
            ]
            if found:
                ax_deg.plot(*zip(*found, strict=True), styles[kind], color=color, marker="o", label=label)
            missing = [
                (c["ratio"], (sweep.max_degree + 2) / c["log_T"]) for c in row if c["degree_needed"] is None
            ]
            if missing:
                ax_deg.plot(*zip(*missing, strict=True), "^", color=color, mfc="none")
            ratio = [(c["ratio"], c["flops_needed"] / c["flops_exact"]) for c in row if c["degree_needed"]]
            if ratio:
                ax_flops.plot(*zip(*ratio, strict=True), styles[kind], color=color, marker="o", label=label)
    ax_err.set(
        yscale="log",
        xlabel="rho = Gamma / sqrt(log T)",
        ylabel=f"max|G~-G| / max|G| at degree {sweep.degree}",
    )
    ax_err.set_title("approximation error at fixed degree", fontsize=10)
    ax_deg.set(xlabel="rho = Gamma / sqrt(log T)", ylabel="(even degree g with error <= 1/T) / log T")
    ax_deg.set_title(f"degree needed, over log T (triangles: g > {sweep.max_degree})", fontsize=10)
    ax_flops.set(yscale="log", xlabel="rho = Gamma / sqrt(log T)", ylabel="FLOPs approx(g needed) / exact")
    ax_flops.axhline(1.0, color="gray", lw=0.8)
    ax_flops.set_title("cost of reaching eps = 1/T against the exact gradient", fontsize=10)
    for ax in (ax_err, ax_deg, ax_flops):
        ax.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax.grid(True, alpha=0.3)
    ax_err.legend(fontsize=7)
    lengths = [r["T"] for r in timing]
    ax_time.plot(lengths, [r["exact_s"] for r in timing], "k-o", label="exact")
    for g, color in zip(sweep.timing_degrees, plt.cm.plasma([0.2, 0.5, 0.8, 0.9]), strict=False):
        k1 = taylor_feature_dim(sweep.d, g)
        ax_time.plot(
            lengths, [r["fast_s"][str(g)] for r in timing], "-o", color=color, label=f"approx g={g} (k1={k1})"
        )
    ax_time.set(xscale="log", yscale="log", xlabel="T", ylabel="seconds (float32)")
    ax_time.set_xticks(lengths, [str(t) for t in lengths], minor=False)
    ax_time.xaxis.set_minor_formatter(NullFormatter())
    ax_time.set_title("wall time of dL/dA, dL/dB", fontsize=10)
    ax_time.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.suptitle(
        f"LoRA gradient (W_Q, W_V adapted), d={sweep.d}, rank {sweep.rank}: "
        "Taylor/low-rank approximation vs exact",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    sweep: LoRALimitsSweep | None = None,
) -> dict:
    """Run the sweep (``QUICK`` or ``FULL``, or ``sweep`` when given), print the tables, write
    ``lora_limits.json`` and ``lora_limits.png`` into ``out_dir`` and return the JSON record."""
    console = console if console is not None else Console()
    sweep = sweep if sweep is not None else QUICK if quick else FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        cells = [
            _cell(sweep, kind, T, ratio, seed)
            for kind in sweep.instances
            for T in sweep.lengths
            for ratio in sweep.ratios
        ]
        timing, slopes = _timing(sweep, seed)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    for table in _tables(cells, timing, slopes, sweep):
        console.print(table)
    console.print(f"claim: {CLAIM}")
    record = {
        "name": "lora_limits",
        "claim": CLAIM,
        "quick": quick,
        "seed": seed,
        "settings": sweep.model_dump(),
        "adapted": list(ADAPTED),
        "wall_s": round(wall, 2),
        "torch": torch.__version__,
        "cells": cells,
        "timing": timing,
        "slopes": slopes,
    }
    (out_dir / "lora_limits.json").write_text(json.dumps(record, indent=1) + "\n")
    _plot(cells, timing, sweep, out_dir / "lora_limits.png")
    console.print(f"wrote {out_dir / 'lora_limits.json'} and {out_dir / 'lora_limits.png'} ({wall:.1f} s)")
    return record
