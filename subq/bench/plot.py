"""Time versus sequence length on log-log axes, one line per entry/mode plus the SDPA baseline.

    subq bench --entries sliding_window --T 4096,16384,65536 --plot bench.png

Draws on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state, no display needed).
Points that were not measured (failed gate, ``"OOM"``, skipped) are left out of their line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

_PANELS = (("fwd_ms", "sdpa_fwd_ms", "forward"), ("fwd_bwd_ms", "sdpa_fwd_bwd_ms", "forward + backward"))


def _length_label(T: int) -> str:
    return f"{T // 1024}k" if T >= 1024 and T % 1024 == 0 else str(T)


def _points(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = sorted({(r["T"], r[key]) for r in rows if isinstance(r[key], float)})
    return [t for t, _ in pairs], [ms for _, ms in pairs]


def plot_times(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> None:
    """Write a PNG of median time (ms) against ``T``: forward, and forward+backward when measured."""
    panels = [p for p in _PANELS if any(isinstance(r[p[0]], float) for r in rows)] or list(_PANELS[:1])
    fig = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["entry"], r["mode"]), []).append(r)
    for ax, (key, sdpa_key, label) in zip(axes, panels, strict=True):
        for (entry, mode), group in series.items():
            xs, ys = _points(group, key)
            if xs:
                ax.plot(xs, ys, marker="o", label=f"{entry} ({mode})")
        xs, ys = _points(rows, sdpa_key)
        if xs:
            ax.plot(xs, ys, marker="s", linestyle="--", color="black", label="SDPA (default dispatch)")
        ax.set_xscale("log", base=2)
        lengths = sorted({r["T"] for r in rows})
        ax.set_xticks(lengths, [_length_label(T) for T in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("median time (ms)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=150)
