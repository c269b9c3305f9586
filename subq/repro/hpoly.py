"""Reproduction of Wang, Nichani & Lee, "Learning hierarchical polynomials with three-layer neural
networks" (arXiv 2311.13774, ICLR 2024) at CPU scale: test error against ``n / d^k``.

    subq repro hpoly --quick        # d in {8, 16, 24}, n/d^2 in {1, 2, .., 32}, 3 repeats: ~2 CPU-minutes
    subq repro hpoly                # adds d = 32: ~4 CPU-minutes

Target ``h(x) = g(p(x))`` with ``x ~ N(0, I_d)``, ``p(x) = (x^T A x - tr A)/(sqrt(2)||A||_F)`` (k = 2,
random symmetric ``A``) and ``g(z) ∝ z^3`` (q = 3, the link of the paper's experiment), normalised
to ``E h = 0``, ``E h^2 = 1`` (:mod:`subq.tasks.hierarchical_poly`). The link must have a linear
part (``E g'(p) != 0``): that part is what makes the degree-k projection of ``h`` proportional to
``p``; with ``g = He_3`` (PAPERS.md's suggestion) it vanishes for Gaussian-like ``p``. For each
``d`` and ``n`` (a multiple of ``d^k``) three learners see the same ``n`` noiseless samples:

- the three-layer network trained layer-wise (:class:`~subq.models.three_layer.ThreeLayerNet`):
  ``(1 - stage2_fraction) n`` samples fit the bottleneck ``eta``, the rest fit the link;
- its stage-1 output ``eta`` alone (a ridge fit over degree-<=k random features, on the same
  ``(1 - stage2_fraction) n`` samples): what a degree-k method reaches;
- ReLU random-features ridge regression on all ``n`` samples (the kernel baseline).

Reported, as the median (and min-max) over ``seeds`` repeats, each with its own teacher, data and
random weights: normalised test MSE (MSE / variance of the test labels; predicting 0 scores ~1)
and the correlation of ``eta`` with ``p`` on the test inputs (the paper's feature-recovery
diagnostic). The claim predicts that the three-layer curves collapse when plotted against
``n / d^k`` and fall towards 0, while the kernel, which at ``n << d^{kq}`` can only fit the
low-degree part of ``h``, stalls at that part's error.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from rich.console import Console
from rich.table import Table

from subq.models.three_layer import RandomFeaturesRidge, ThreeLayerNet
from subq.tasks.hierarchical_poly import FeatureKind, HierarchicalPolyConfig, LinkKind

CLAIM = (
    "A three-layer network trained layer-wise learns h = g(p(x)) (p of degree k, g of degree q, "
    "x ~ N(0, I_d)) from O~(d^k) samples, where kernel methods need Theta~(d^{kq}) samples."
)


class HPolySweep(BaseModel):
    """Grid of the reproduction: every ``d`` in ``dims`` times every ``n / d^k`` in ``ratios``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dims: tuple[PositiveInt, ...]
    ratios: tuple[float, ...]
    k: PositiveInt = 2
    q: PositiveInt = 3
    feature: FeatureKind = "quadratic_form"
    link: LinkKind = "monomial"
    n_test: PositiveInt = 10_000
    seeds: PositiveInt = 3
    stage2_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    width2: PositiveInt = 256
    rf_width: PositiveInt = 2048


QUICK = HPolySweep(dims=(8, 16, 24), ratios=(1, 2, 4, 8, 16, 32))
FULL = HPolySweep(dims=(8, 16, 24, 32), ratios=(1, 2, 4, 8, 16, 32))
METRICS = ("nmse_three_layer", "nmse_stage1", "nmse_random_features", "corr_eta_p")


def _nmse(pred: torch.Tensor, y: torch.Tensor) -> float:
    return ((pred - y) ** 2).mean().item() / y.var().item()


def run_cell(sweep: HPolySweep, d: int, ratio: float, seed: int) -> dict:
    """Train and test the three learners at one ``(d, n = ratio * d^k)``; returns the table row."""
    n = max(4, round(ratio * d**sweep.k))
    n2 = max(2, round(sweep.stage2_fraction * n))
    task = HierarchicalPolyConfig(
        d=d,
        k=sweep.k,
        q=sweep.q,
        n_train=n,
        n_test=sweep.n_test,
        feature=sweep.feature,
        link=sweep.link,
        teacher_seed=seed,
    )
    x, y = task.build("train", seed)
    x_test, y_test = task.build("test", seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    net = ThreeLayerNet(d, degree=sweep.k, width2=sweep.width2, generator=gen)
    lambdas = net.fit_layerwise(x[: n - n2], y[: n - n2], x[n - n2 :], y[n - n2 :])
    eta = net.feature(x_test)
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    rf = RandomFeaturesRidge(d, width=sweep.rf_width, generator=gen)
    rf_lambda = rf.fit(x, y)["lambda"]
    t_rf = time.perf_counter() - t0
    return {
        "d": d,
        "n": n,
        "n_over_dk": n / d**sweep.k,
        "n_stage1": n - n2,
        "n_stage2": n2,
        "nmse_three_layer": _nmse(net(x_test), y_test),
        "nmse_stage1": _nmse(eta, y_test),
        "nmse_random_features": _nmse(rf(x_test), y_test),
        "corr_eta_p": torch.corrcoef(torch.stack([eta, task.feature_fn(x_test)]))[0, 1].item(),
        "lambda1": lambdas["lambda1"],
        "lambda2": lambdas["lambda2"],
        "lambda_rf": rf_lambda,
        "time_three_layer_s": t_net,
        "time_random_features_s": t_rf,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per ``(d, n)``: the median, min and max of each metric over the repeats."""
    cells: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["d"], r["n"]), []).append(r)
    out = []
    for (d, n), rs in cells.items():
        entry = {"d": d, "n": n, "n_over_dk": rs[0]["n_over_dk"], "repeats": len(rs)}
        for m in METRICS:
            vals = sorted(r[m] for r in rs)
            entry[m] = statistics.median(vals)
            entry[m + "_min"], entry[m + "_max"] = vals[0], vals[-1]
        out.append(entry)
    return out


def _table(summary: list[dict], sweep: HPolySweep) -> Table:
    title = f"g(p(x)), k={sweep.k}, q={sweep.q}: normalised test MSE, median of {sweep.seeds} repeats"
    table = Table(title=title)
    for name in ("d", "n", f"n/d^{sweep.k}", "3-layer", "stage 1 only", "RF kernel", "corr(eta, p)"):
        table.add_column(name, justify="right")
    for r in summary:
        table.add_row(
            str(r["d"]),
            f"{r['n']:,}",
            f"{r['n_over_dk']:g}",
            *(f"{r[m]:.3f}" for m in METRICS),
        )
    return table


def _plot(summary: list[dict], sweep: HPolySweep, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_err, ax_corr = fig.subplots(1, 2)
    for i, d in enumerate(sweep.dims):
        rs = [r for r in summary if r["d"] == d]
        xs = [r["n_over_dk"] for r in rs]
        for ax, metric, style, alpha, label in (
            (ax_err, "nmse_three_layer", "o-", 1.0, f"3-layer, d={d}"),
            (ax_err, "nmse_random_features", "s--", 0.6, f"RF kernel, d={d}"),
            (ax_corr, "corr_eta_p", "o-", 1.0, f"d={d}"),
        ):
            ax.plot(xs, [r[metric] for r in rs], style, color=f"C{i}", alpha=alpha, label=label)
            ax.fill_between(
                xs,
                [r[metric + "_min"] for r in rs],
                [r[metric + "_max"] for r in rs],
                color=f"C{i}",
                alpha=0.12,
                lw=0,
            )
    for ax in (ax_err, ax_corr):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"n / d^{sweep.k}")
        ax.grid(alpha=0.3)
    ax_err.set_yscale("log")
    ax_err.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax_err.set_ylabel("normalised test MSE (median, min-max band)")
    ax_err.set_title(
        f"g(p(x)), k={sweep.k}, q={sweep.q}: 3-layer (solid) vs random features (dashed)", fontsize=9
    )
    ax_err.legend(fontsize=7, ncol=2)
    ax_corr.set_ylabel("corr(eta, p) on test inputs")
    ax_corr.set_title("feature recovered by stage 1", fontsize=9)
    ax_corr.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    sweep: HPolySweep | None = None,
) -> dict:
    """Run the sweep (``QUICK``, ``FULL``, or ``sweep`` when given), print the table, write
    ``out_dir/hpoly.json`` and ``out_dir/hpoly.png``; returns the JSON record.

    Repeat ``i`` of a cell uses seed ``seed + i`` for the teacher, the data and the random weights.
    """
    console = console if console is not None else Console()
    sweep = sweep or (QUICK if quick else FULL)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for d in sweep.dims:
        for ratio in sweep.ratios:
            for repeat in range(sweep.seeds):
                r = run_cell(sweep, d, ratio, seed + repeat)
                rows.append(r | {"seed": seed + repeat})
                console.print(
                    f"d={d:3d} n={r['n']:6d} seed={seed + repeat}  3-layer {r['nmse_three_layer']:.3f}  "
                    f"RF {r['nmse_random_features']:.3f}  corr {r['corr_eta_p']:.3f}",
                    highlight=False,
                )
    summary = summarise(rows)
    console.print(_table(summary, sweep))
    record = {
        "name": "hpoly",
        "claim": CLAIM,
        "quick": quick,
        "seed": seed,
        "settings": sweep.model_dump(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - t0,
        "summary": summary,
        "rows": rows,
    }
    (out_dir / "hpoly.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(summary, sweep, out_dir / "hpoly.png")
    return record
