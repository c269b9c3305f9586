"""Reproduction of SubGM for robust low-rank matrix recovery (Ma & Fattahi, JMLR 2023, arXiv 2202.08788).

    subq repro subgm --quick        # 4 initial scales, one seed: about half a minute on one CPU core
    subq repro subgm                # 6 initial scales, three seeds: about two minutes

A rank-2 PSD ``X*`` (``d = 30``) is measured ``m`` times, ``m = 400`` (below the ``d (d + 1) / 2 = 465``
unknowns of a full symmetric matrix, so a full-rank ``U U^T`` can fit anything, outliers included)
and ``m = 1200``, with no outliers or with 20% of the measurements hit by ``N(0, 100^2)`` outliers
(clean measurements have unit scale). Each problem is solved by the sub-gradient method of
:mod:`subq.lowrank.recovery` with the same step schedule for every initial scale ``alpha`` and
search rank ``r'`` in ``{r, 2r, d}``. The tables give the relative error ``||U U^T - X*||_F /
||X*||_F`` after the last step and the first iteration below 0.1; ``<out_dir>/subgm.json`` holds
both and the error curves, ``<out_dir>/subgm.png`` plots the curves (one panel per ``m``, outlier
fraction and ``r'``).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from rich.console import Console
from rich.table import Table

from subq.lowrank.recovery import RecoveryConfig, make_problem, subgradient_method

CLAIM = (
    "With small initialization the sub-gradient method on the l1 loss recovers a low-rank PSD X* exactly, "
    "even over-parameterized up to r' = d and with a constant fraction of arbitrarily large dense outliers; "
    "small initialization nullifies over-parameterization, which otherwise overfits or slows convergence."
)

HIT = 0.1
"""The error level whose first-hit iteration the second table reports: for small ``alpha``, the end of
the initial plateau."""


class SubGMSweep(BaseModel):
    """The grid of one reproduction: a problem size, the swept values and SubGM's step schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: PositiveInt
    r: PositiveInt
    ms: tuple[PositiveInt, ...] = Field(min_length=1)
    r_primes: tuple[PositiveInt, ...] = Field(min_length=1)
    alphas: tuple[PositiveFloat, ...] = Field(min_length=1)
    outlier_fractions: tuple[float, ...] = Field(min_length=1)
    outlier_scale: float = Field(100.0, ge=0.0)
    eta0: PositiveFloat = 0.2
    rho: float = Field(0.995, gt=0.0, le=1.0)
    iters: PositiveInt = 2000
    seeds: PositiveInt = 1
    curve_stride: PositiveInt = 10

    @model_validator(mode="after")
    def _check_cells(self):
        for values in itertools.product(self.ms, self.outlier_fractions, self.r_primes, self.alphas):
            self.cell(*values)
        return self

    def cell(self, m: int, outlier_fraction: float, r_prime: int, alpha: float) -> RecoveryConfig:
        """The validated :class:`RecoveryConfig` of one cell (raises naming the bad field)."""
        return RecoveryConfig(
            d=self.d,
            r=self.r,
            r_prime=r_prime,
            m=m,
            outlier_fraction=outlier_fraction,
            outlier_scale=self.outlier_scale,
            alpha=alpha,
            eta0=self.eta0,
            rho=self.rho,
            iters=self.iters,
        )


QUICK = SubGMSweep(
    d=30,
    r=2,
    ms=(400, 1200),
    r_primes=(2, 4, 30),
    alphas=(1.0, 1e-2, 1e-4, 1e-7),
    outlier_fractions=(0.0, 0.2),
)
FULL = SubGMSweep(
    d=30,
    r=2,
    ms=(400, 1200),
    r_primes=(2, 4, 30),
    alphas=(1.0, 1e-1, 1e-2, 1e-3, 1e-5, 1e-7),
    outlier_fractions=(0.0, 0.2),
    seeds=3,
)


def _first_hit(errors: list[float], level: float) -> int | None:
    return next((t for t, e in enumerate(errors) if e < level), None)


def _key(cell: dict) -> tuple:
    return cell["m"], cell["outlier_fraction"], cell["r_prime"], cell["alpha"]


def _sweep(sweep: SubGMSweep, seed: int) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for k in range(sweep.seeds):
        for m in sweep.ms:
            for p in sweep.outlier_fractions:
                configs = [(rp, a, sweep.cell(m, p, rp, a)) for rp in sweep.r_primes for a in sweep.alphas]
                problem = make_problem(configs[0][2], seed + k)  # (m, p) set the problem, r' and alpha SubGM
                for rp, a, cfg in configs:
                    res = subgradient_method(
                        problem,
                        r_prime=rp,
                        alpha=a,
                        eta0=cfg.eta0,
                        rho=cfg.rho,
                        iters=cfg.iters,
                        seed=seed + k,
                    )
                    cell = cells.setdefault(
                        (m, p, rp, a), {"m": m, "outlier_fraction": p, "r_prime": rp, "alpha": a, "runs": []}
                    )
                    cell["runs"].append(
                        {
                            "seed": seed + k,
                            "final_error": res.final_error,
                            "iters_to_hit": _first_hit(res.errors, HIT),
                            "outliers": int(problem.outliers.sum()),
                        }
                    )
                    if k == 0:
                        cell["curve"] = res.errors[:: sweep.curve_stride]
    for cell in cells.values():
        finals = [run["final_error"] for run in cell["runs"]]
        hits = [run["iters_to_hit"] for run in cell["runs"]]
        cell["final_error"] = statistics.median(finals)
        cell["max_final_error"] = max(finals)
        cell["iters_to_hit"] = None if None in hits else statistics.median(hits)
    return list(cells.values())


def _tables(cells: list[dict], sweep: SubGMSweep) -> tuple[Table, Table]:
    by_key = {_key(c): c for c in cells}
    agg = f"median of {sweep.seeds} seeds" if sweep.seeds > 1 else "one seed"
    alpha_cols = [f"{a:g}" for a in sweep.alphas]
    errors = Table(
        "m",
        "outliers",
        "r'",
        *alpha_cols,
        title=f"final ||UU^T-X*||_F/||X*||_F after {sweep.iters} steps, by alpha ({agg})",
    )
    hits = Table(
        "m", "outliers", "r'", *alpha_cols, title=f"first iteration with error < {HIT:g}, by alpha ({agg})"
    )
    for m in sweep.ms:
        for p in sweep.outlier_fractions:
            for rp in sweep.r_primes:
                row = [by_key[(m, p, rp, a)] for a in sweep.alphas]
                head = (str(m), f"{p:.0%}", str(rp))
                errors.add_row(*head, *(f"{c['final_error']:.1e}" for c in row))
                hit = ("never" if c["iters_to_hit"] is None else f"{c['iters_to_hit']:g}" for c in row)
                hits.add_row(*head, *hit)
    return errors, hits


def _plot(cells: list[dict], sweep: SubGMSweep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [(m, p) for m in sweep.ms for p in sweep.outlier_fractions]
    rows, cols = len(settings), len(sweep.r_primes)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.0 * rows), sharex=True, sharey=True, squeeze=False
    )
    colors = plt.cm.viridis([i / max(len(sweep.alphas) - 1, 1) for i in range(len(sweep.alphas))])
    by_key = {_key(c): c for c in cells}
    for i, (m, p) in enumerate(settings):
        for j, rp in enumerate(sweep.r_primes):
            ax = axes[i][j]
            for a, color in zip(sweep.alphas, colors, strict=True):
                curve = by_key[(m, p, rp, a)]["curve"]
                steps = [t * sweep.curve_stride for t in range(len(curve))]
                ax.plot(steps, curve, color=color, label=f"alpha={a:g}")
            ax.set_yscale("log")
            rank = " (= r)" if rp == sweep.r else " (= d)" if rp == sweep.d else ""
            ax.set_title(f"m={m}, {p:.0%} outliers, r'={rp}{rank}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if i == rows - 1:
                ax.set_xlabel("iteration")
            if j == 0:
                ax.set_ylabel("||UU^T-X*||_F / ||X*||_F")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    schedule = f"step {sweep.eta0:g}*{sweep.rho:g}^t"
    fig.suptitle(f"SubGM on the l1 loss: d={sweep.d}, r={sweep.r}, {schedule}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    sweep: SubGMSweep | None = None,
) -> dict:
    """Run the sweep (``QUICK`` or ``FULL``, or ``sweep`` when given), print the tables, write
    ``subgm.json`` and ``subgm.png`` into ``out_dir`` and return the JSON record."""
    console = console if console is not None else Console()
    sweep = sweep if sweep is not None else QUICK if quick else FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # d x d matrices this small gain nothing from more threads
    try:
        start = time.perf_counter()
        cells = _sweep(sweep, seed)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    for table in _tables(cells, sweep):
        console.print(table)
    console.print(f"claim: {CLAIM}")
    record = {
        "name": "subgm",
        "claim": CLAIM,
        "quick": quick,
        "seed": seed,
        "settings": sweep.model_dump(),
        "hit_level": HIT,
        "wall_s": round(wall, 2),
        "torch": torch.__version__,
        "cells": cells,
    }
    (out_dir / "subgm.json").write_text(json.dumps(record, indent=1) + "\n")
    _plot(cells, sweep, out_dir / "subgm.png")
    console.print(f"wrote {out_dir / 'subgm.json'} and {out_dir / 'subgm.png'} ({wall:.1f} s)")
    return record
