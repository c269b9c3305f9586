"""The combiner, kernelized_rpe and performer entries through the runner on tiny CPU shapes.

python -m pytest tests/bench/test_subquadratic_entries.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from subq.bench import BenchShape, get_bench
from subq.bench.entries import causal_attention_flops, combiner_block_size
from subq.bench.runner import QUICK_TIMING, run_bench

CPU = torch.device("cpu")
TIMED = ("fwd_ms", "fwd_bwd_ms", "sdpa_fwd_ms", "sdpa_fwd_bwd_ms", "speedup_fwd", "speedup_fwd_bwd")


def _tiny(names, Ts=(32, 100), **kw):
    kw = {"batch": 1, "heads": 2, "head_dim": 8, "dtype": torch.float32, "device": CPU, **kw}
    return run_bench([get_bench(n) for n in names], Ts, timing=QUICK_TIMING, **kw)


def _assert_timed(r):
    assert r["gate"]["status"] == "pass", r["gate"]
    assert r["error"] is None
    for key in TIMED:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])


def test_entries_gate_and_time_against_sdpa_on_cpu():
    rows = _tiny(["combiner", "kernelized_rpe", "performer"], params={"kernelized_rpe": {"num_features": 16}})
    assert [(r["entry"], r["mode"], r["T"]) for r in rows] == [
        ("combiner", "torch", 32),
        ("combiner", "torch", 100),
        ("combiner", "triton", 32),
        ("combiner", "triton", 100),
        ("kernelized_rpe", "fft", 32),
        ("kernelized_rpe", "fft", 100),
        ("kernelized_rpe", "chunk", 32),
        ("kernelized_rpe", "chunk", 100),
        ("performer", "torch", 32),
        ("performer", "torch", 100),
        ("performer", "triton", 32),
        ("performer", "triton", 100),
    ]
    cpu_rows = [r for r in rows if r["mode"] != "triton"]
    for r in cpu_rows:
        _assert_timed(r)
        assert max(r["gate"]["errors"].values()) <= 1e-4
    assert set(cpu_rows[0]["gate"]["errors"]) == {"o", "dq", "dk", "dv"}
    assert set(cpu_rows[2]["gate"]["errors"]) == {"o", "dq", "dk", "dv", "drpe_bias"}
    assert set(cpu_rows[6]["gate"]["errors"]) == {"o", "dq", "dk", "dv"}
    assert cpu_rows[0]["params"] == {"variant": "axial", "block_size": 0}
    assert cpu_rows[2]["params"] == {"num_features": 16}
    for r in rows:  # the Triton kernels need CUDA
        if r["mode"] == "triton":
            assert r["gate"]["status"] == "skipped"


@pytest.mark.parametrize("variant", ["fixed", "logsparse", "axial", "mixture"])
def test_combiner_variants_and_block_size(variant):
    for block_size in (0, 16):
        params = {"combiner": {"variant": variant, "block_size": block_size}}
        (r,) = _tiny(["combiner"], Ts=(77,), params=params, modes=["torch"])
        _assert_timed(r)
        assert r["flops_fwd"] > 0


def test_bf16_gate_passes():
    rows = _tiny(
        ["combiner", "kernelized_rpe", "performer"], Ts=(64,), dtype=torch.bfloat16, modes=["torch", "fft"]
    )
    assert [r["entry"] for r in rows] == ["combiner", "kernelized_rpe", "performer"]
    for r in rows:
        _assert_timed(r)


def test_gate_length_fits_the_naive_references():
    for name in ("combiner", "kernelized_rpe", "performer"):
        assert get_bench(name).gate_max_T == 1024


def test_combiner_default_block_is_sqrt_T_and_flops_are_subquadratic():
    def shape(T, block_size=0):
        return BenchShape(1, T, 16, 64, torch.bfloat16, CPU, {"variant": "axial", "block_size": block_size})

    assert [combiner_block_size(shape(T)) for T in (1024, 4096, 16384, 65536, 1000)] == [32, 64, 128, 256, 32]
    assert combiner_block_size(shape(4096, 128)) == 128
    combiner = get_bench("combiner").flops
    # O(T sqrt T): 8x per 4x of T, against SDPA's 16x
    assert combiner(shape(65536)) / combiner(shape(16384)) == pytest.approx(8, rel=0.01)
    assert combiner(shape(65536)) < causal_attention_flops(shape(65536)) / 50


def test_random_feature_entries_count_their_features():
    s = BenchShape(1, 4096, 16, 64, torch.bfloat16, CPU, {"num_features": 64})
    assert get_bench("performer").flops(s) == 8 * 16 * 4096 * 64 * 64
    rpe = get_bench("kernelized_rpe").flops
    assert rpe(s) > get_bench("performer").flops(s)
    assert rpe(s.replace(params={"num_features": 128})) == pytest.approx(2 * rpe(s), rel=0.01)
