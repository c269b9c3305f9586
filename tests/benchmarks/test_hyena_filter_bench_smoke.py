"""Smoke test of ``benchmarks/hyena_filter_bench.py``: at a tiny length (Triton's interpreter on a
CPU) both forms run forward and backward, and the Triton taps agree with the PyTorch ones."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("triton")

from tests.benchmarks.scripts import load_script  # noqa: E402


def test_smoke_runs_both_forms(tmp_path, one_thread):
    bench = load_script("hyena_filter_bench")
    out = tmp_path / "filter.json"
    rows = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    (row,) = rows
    assert row["L"] == 100
    assert row["triton_fp32_rel_rms"] < 1e-5
    assert row["triton_half_rel_rms"] < 2e-3  # float16 taps: their own rounding
