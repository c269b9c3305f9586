"""The ``hip`` and ``hip_mask`` benchmark entries on tiny CPU shapes: the PyTorch forms pass the gate
against the naive HiP reference with the mask search actually pruning, the Triton modes are skipped
by the runner off CUDA and pass the same gate through the interpreter, and the counts are right.

python -m pytest tests/bench/test_hip_entries.py -q
"""

from __future__ import annotations

import pytest
import torch

from subq.bench import BenchShape, check_gate, get_bench
from subq.bench.hip_entries import _search_iterations, hip_flops, hip_mask_flops, kv_heads_of
from subq.bench.runner import QUICK_TIMING, run_bench

pytestmark = pytest.mark.usefixtures("one_thread")

# G = 4 key blocks per query block; at T = 200 the last query block has ~80 candidates
TINY = {
    "mask_k": 8,
    "block_size_q": 16,
    "block_stride_q": 2,
    "block_size_k": 2,
    "block_stride_k": 1,
    "sink_size": 4,
    "window": 16,
    "kv_heads": 2,
}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _shape(T=200, H=4, dtype=torch.float32, **params):
    return BenchShape(1, T, H, 8, dtype, DEVICE, {**TINY, **params})


def test_torch_modes_gate_and_time_triton_modes_skipped_on_cpu():
    specs = [get_bench("hip"), get_bench("hip_mask")]
    rows = run_bench(
        specs, (48, 200), batch=1, heads=4, head_dim=8, dtype=torch.float32, device=torch.device("cpu"),
        timing=QUICK_TIMING, params={"hip": TINY, "hip_mask": TINY},
    )  # fmt: skip
    ran = [r for r in rows if r["mode"] == "torch"]
    assert [(r["entry"], r["T"]) for r in ran] == [
        ("hip", 48),
        ("hip", 200),
        ("hip_mask", 48),
        ("hip_mask", 200),
    ]
    for r in ran:
        assert r["gate"]["status"] == "pass", r["gate"]
        assert r["fwd_ms"] > 0 and r["sdpa_fwd_ms"] > 0 and r["error"] is None
    hip_rows = [r for r in ran if r["entry"] == "hip"]
    assert all(set(r["gate"]["errors"]) == {"o", "dq", "dk", "dv"} for r in hip_rows)
    assert all(max(r["gate"]["errors"].values()) <= 1e-5 for r in hip_rows), hip_rows
    assert all(r["fwd_bwd_ms"] > 0 for r in hip_rows)
    mask_rows = [r for r in ran if r["entry"] == "hip_mask"]
    assert all(r["gate"]["errors"] == {"o": 0.0} and r["fwd_bwd_ms"] is None for r in mask_rows)
    skipped = {(r["entry"], r["mode"]) for r in rows if r["gate"]["status"] == "skipped"}
    assert skipped == {("hip", "triton"), ("hip", "triton_attn"), ("hip_mask", "triton_mask")}


def test_the_tiny_shape_prunes():
    """At T = 200 the search keeps G = 4 of many candidate blocks: the gate checks a sparse mask."""
    s = _shape()
    inputs = get_bench("hip").make_inputs(s)
    assert inputs["k"].shape == (1, 200, 2, 8) and inputs["indices"].shape == (1, 4, 13, 4)
    assert sum(n > 0 for n in _search_iterations(s)) >= 8
    assert not any(_search_iterations(_shape(mask_k=512)))  # mask_k >= T: every candidate kept


@pytest.mark.interpret
@pytest.mark.parametrize(
    ("entry", "mode", "backward"),
    [("hip", "triton", True), ("hip", "triton_attn", True), ("hip_mask", "triton_mask", False)],
    ids=["triton", "triton_attn", "triton_mask"],
)
def test_triton_modes_pass_the_gate(entry, mode, backward):
    gate = check_gate(get_bench(entry), mode, _shape(T=96), backward=backward)
    assert gate.passed, gate
    assert set(gate.errors) == ({"o", "dq", "dk", "dv"} if backward else {"o"})


def test_kv_heads():
    assert kv_heads_of(_shape(H=32, kv_heads=8)) == 8
    assert kv_heads_of(_shape(H=4, kv_heads=8)) == 4  # capped at H: the CPU and --quick defaults run
    with pytest.raises(ValueError, match="kv_heads must divide the 4 query heads"):
        kv_heads_of(_shape(H=4, kv_heads=3))


def test_flop_counts():
    s = _shape(T=20)  # w = 4 + 16 + 8 = 28 >= T: every causal pair
    assert hip_flops(s) == 4 * 4 * 8 * 20 * 21 / 2
    s = _shape(T=100)
    assert hip_flops(s) == 4 * 4 * 8 * (28 * 29 / 2 + 72 * 28)
    assert hip_mask_flops(_shape(T=20)) == 0  # at most G candidates everywhere: no search
    iters = _search_iterations(_shape(T=200))
    assert hip_mask_flops(_shape(T=200)) == 4 * sum(iters) * 2 * 4 * 8 * 2 * 2 * 8
