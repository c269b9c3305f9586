"""The ``monarch`` and ``monarch_dense`` benchmark entries on tiny CPU shapes: the bmm form passes the
gate against the dense Monarch matrix (output, ``dx`` and every factor's gradient) at orders 2 and 3,
the dense matmul against its float32 self, both are timed; FLOP and byte counts."""

from __future__ import annotations

import pytest
import torch

from subq.bench import BenchShape, get_bench
from subq.bench.runner import QUICK_TIMING, run_bench


@pytest.mark.parametrize("order", [2, 3])
def test_monarch_entries_gate_and_time(order, one_thread):
    rows = run_bench(
        [get_bench("monarch"), get_bench("monarch_dense")], (64, 96), batch=1, heads=2, head_dim=4,
        dtype=torch.float32, device=torch.device("cpu"), timing=QUICK_TIMING,
        params={"monarch": {"order": order}},
    )  # fmt: skip
    assert [(r["entry"], r["mode"], r["T"]) for r in rows] == [
        ("monarch", "bmm", 64), ("monarch", "bmm", 96), ("monarch_dense", "dense", 64),
        ("monarch_dense", "dense", 96),
    ]  # fmt: skip
    for r in rows:
        assert r["gate"]["status"] == "pass", r["gate"]
        expected = (
            {"o", "dx", *(f"dw{i}" for i in range(order))} if r["entry"] == "monarch" else {"o", "dx", "dw"}
        )
        assert set(r["gate"]["errors"]) == expected
        assert max(r["gate"]["errors"].values()) <= 1e-5, r["gate"]
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["sdpa_fwd_ms"] > 0


def test_monarch_inputs_and_counts():
    s = BenchShape(2, 4096, 4, 8, torch.bfloat16, torch.device("cpu"), {"order": 2})
    inputs = get_bench("monarch").make_inputs(s.replace(T=64))
    assert inputs["x"].shape == (2, 4, 8, 64)
    assert [tuple(inputs[n].shape) for n in ("w0", "w1")] == [(8, 8, 8), (8, 8, 8)]
    assert get_bench("monarch").flops(s) == 2 * (2 * 4 * 8) * 4096 * (64 + 64)
    assert get_bench("monarch").bytes(s) == (2 * 2 * 4 * 8 * 4096 + 2 * 4096 * 64) * 2
    assert get_bench("monarch_dense").flops(s) == 2 * (2 * 4 * 8) * 4096**2
    assert get_bench("monarch_dense").bytes(s) == (2 * 2 * 4 * 8 * 4096 + 4096**2) * 2
    s3 = s.replace(T=4096, params={"order": 3})
    assert get_bench("monarch").flops(s3) == 2 * (2 * 4 * 8) * 4096 * 48
