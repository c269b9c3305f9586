"""The ``ssd`` benchmark entry on tiny CPU shapes: the chunked form passes the gate against the naive
reference (output and every input's gradient) and is timed; the Triton form is CUDA-only."""

from __future__ import annotations

import torch

from subq.bench import BenchShape, get_bench
from subq.bench.runner import QUICK_TIMING, run_bench


def test_ssd_entry_gates_and_times(one_thread):
    spec = get_bench("ssd")
    rows = run_bench(
        [spec], (32, 100), batch=1, heads=2, head_dim=8, dtype=torch.float32, device=torch.device("cpu"),
        timing=QUICK_TIMING, params={"ssd": {"d_state": 16, "chunk_size": 16}},
    )  # fmt: skip
    torch_rows = [r for r in rows if r["mode"] == "torch"]
    assert [r["T"] for r in torch_rows] == [32, 100]
    for r in torch_rows:
        assert r["gate"]["status"] == "pass", r["gate"]
        assert set(r["gate"]["errors"]) == {"o", "dx", "ddt", "dA", "dB", "dC"}
        assert max(r["gate"]["errors"].values()) <= 1e-5, r["gate"]
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
    assert all(r["gate"]["status"] == "skipped" for r in rows if r["mode"] == "triton")


def test_ssd_flop_count():
    s = BenchShape(2, 128, 4, 64, torch.bfloat16, torch.device("cpu"), {"d_state": 64, "chunk_size": 64})
    assert get_bench("ssd").flops(s) == 2 * 128 * 4 * (2 * 64 * 128 + 4 * 64 * 64)
