"""The time-versus-T plot.

python -m pytest tests/bench/test_plot.py -q
"""

from __future__ import annotations

from subq.bench.plot import plot_times

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(entry, T, fwd, fwd_bwd, sdpa):
    return {
        "entry": entry,
        "mode": "torch",
        "T": T,
        "fwd_ms": fwd,
        "fwd_bwd_ms": fwd_bwd,
        "sdpa_fwd_ms": sdpa,
        "sdpa_fwd_bwd_ms": None if sdpa is None else 3 * sdpa,
    }


def test_plot_writes_png_and_skips_unmeasured_points(tmp_path):
    rows = [
        _row("attention", 1024, 0.1, 0.4, 0.1),
        _row("attention", 4096, 1.0, 4.0, 1.1),
        _row("sliding_window", 1024, 0.05, None, 0.1),
        _row("sliding_window", 4096, "OOM", "OOM", 1.1),
        _row("broken", 4096, None, None, None),
    ]
    path = tmp_path / "bench.png"
    plot_times(rows, path, title="test")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_forward_only(tmp_path):
    rows = [_row("attention", 128, 0.1, None, 0.1), _row("attention", 256, 0.2, None, 0.2)]
    path = tmp_path / "fwd.png"
    plot_times(rows, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
