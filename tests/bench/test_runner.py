"""The benchmark runner on tiny CPU shapes: gate, timings, OOM cells, JSON report.

python -m pytest tests/bench -q
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from rich.console import Console

from subq.bench import BenchShape, get_bench, qkv_inputs, qkvo_bytes, register_bench, registry
from subq.bench.runner import OOM, QUICK_TIMING, check_gate, environment, report, run_bench
from subq.ops.attention import naive_attention, sdpa_attention

CPU = torch.device("cpu")
TIMING_KEYS = (
    "fwd_ms",
    "fwd_tflops",
    "fwd_gbps",
    "fwd_bwd_ms",
    "sdpa_fwd_ms",
    "speedup_fwd",
    "speedup_fwd_bwd",
)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Entries registered inside a test vanish after it."""
    monkeypatch.setattr(registry, "BENCHES", dict(registry.BENCHES))
    return registry.BENCHES


def _tiny(specs, Ts=(32, 100), **kw):
    kw = {
        "batch": 1,
        "heads": 2,
        "head_dim": 8,
        "dtype": torch.float32,
        "device": CPU,
        "timing": QUICK_TIMING,
        **kw,
    }
    return run_bench(specs, Ts, **kw)


def _attention_flops(s):
    return 2.0 * s.B * s.H * s.D * s.T * s.T


def test_builtin_entries_gate_and_time_on_cpu():
    specs = [get_bench("attention"), get_bench("sliding_window")]
    rows = _tiny(specs, params={"sliding_window": {"window": 16}})
    assert [(r["entry"], r["mode"], r["T"]) for r in rows] == [
        ("attention", "torch", 32),
        ("attention", "torch", 100),
        ("sliding_window", "torch", 32),
        ("sliding_window", "torch", 100),
        ("sliding_window", "triton", 32),
        ("sliding_window", "triton", 100),
    ]
    for r in rows[:4]:
        assert r["gate"]["status"] == "pass", r["gate"]
        assert max(r["gate"]["errors"].values()) <= 1e-4
        assert set(r["gate"]["errors"]) == {"o", "dq", "dk", "dv"}
        for key in TIMING_KEYS:
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["peak_mb"] is None  # not measured on CPU
        assert r["error"] is None
    assert rows[2]["params"] == {"window": 16}
    for r in rows[4:]:  # FlexAttention needs CUDA
        assert r["gate"]["status"] == "skipped"
        assert all(r[key] is None for key in TIMING_KEYS)


def test_gate_runs_at_capped_length_and_is_reused(scratch_registry):
    calls = []

    @register_bench(
        "capped",
        modes={"torch": sdpa_attention},
        reference=naive_attention,
        flops=_attention_flops,
        bytes=qkvo_bytes,
        gate_max_T=48,
    )
    def capped_inputs(s):
        calls.append(s.T)
        return qkv_inputs(s)

    rows = _tiny([scratch_registry["capped"]], Ts=(32, 64, 80))
    assert [r["gate"]["T"] for r in rows] == [32, 48, 48]
    assert calls.count(48) == 1  # one gate for every T >= gate_max_T


def test_wrong_entry_fails_the_gate_and_reports_no_timings(scratch_registry):
    def bidirectional(q, k, v):  # ignores the causal mask: wrong
        return naive_attention(q, k, v, causal=False)

    @register_bench(
        "wrong",
        modes={"torch": bidirectional},
        reference=naive_attention,
        flops=_attention_flops,
        bytes=qkvo_bytes,
    )
    def wrong_inputs(s):
        return qkv_inputs(s)

    rows = _tiny([scratch_registry["wrong"]])
    for r in rows:
        assert r["gate"]["status"] == "FAIL"
        assert "rel-RMS" in r["gate"]["message"]
        assert r["gate"]["errors"]["o"] > 1e-2
        assert all(r[key] is None for key in TIMING_KEYS)


def test_gate_tol_loosens_the_gate_of_one_mode_only(scratch_registry):
    def rounded(q, k, v):  # a reduced-precision option: relative RMS 3e-4 off
        return naive_attention(q, k, v)[0] * (1 + 3e-4)

    @register_bench(
        "loose",
        modes={"torch": rounded, "strict": rounded},
        reference=naive_attention,
        flops=_attention_flops,
        bytes=qkvo_bytes,
        gate_tol={"torch": 1e-3},
    )
    def loose_inputs(s):
        return qkv_inputs(s)

    shape = BenchShape(1, 16, 2, 8, torch.float32, CPU)
    spec = scratch_registry["loose"]
    gate = check_gate(spec, "torch", shape, backward=False)
    assert gate.passed and gate.tol == 1e-3
    strict = check_gate(spec, "strict", shape, backward=False)
    assert not strict.passed and strict.tol == 1e-4  # the float32 default


def test_gate_catches_a_wrong_gradient(scratch_registry):
    class ScaledGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def wrong_backward(q, k, v):
        return sdpa_attention(ScaledGrad.apply(q), k, v)

    @register_bench(
        "wrong_grad",
        modes={"torch": wrong_backward},
        reference=naive_attention,
        flops=_attention_flops,
        bytes=qkvo_bytes,
    )
    def inputs(s):
        return qkv_inputs(s)

    shape = BenchShape(1, 40, 2, 8, torch.float32, CPU)
    gate = check_gate(scratch_registry["wrong_grad"], "torch", shape, backward=True)
    assert gate.status == "FAIL" and gate.message.startswith("dq"), gate
    assert gate.errors["o"] <= 1e-4
    assert check_gate(scratch_registry["wrong_grad"], "torch", shape, backward=False).passed


def test_raising_fast_form_is_a_gate_error(scratch_registry):
    def broken(q, k, v):
        raise RuntimeError("kernel exploded")

    @register_bench(
        "broken", modes={"torch": broken}, reference=naive_attention, flops=_attention_flops, bytes=qkvo_bytes
    )
    def inputs(s):
        return qkv_inputs(s)

    (row,) = _tiny([scratch_registry["broken"]], Ts=(16,))
    assert row["gate"]["status"] == "error"
    assert "kernel exploded" in row["gate"]["message"]
    assert row["fwd_ms"] is None


def test_out_of_memory_is_reported_per_cell(scratch_registry):
    def oom_above_64(q, k, v):
        if q.shape[1] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
        return sdpa_attention(q, k, v)

    @register_bench(
        "hungry",
        modes={"torch": oom_above_64},
        reference=naive_attention,
        flops=_attention_flops,
        bytes=qkvo_bytes,
        gate_max_T=64,
    )
    def inputs(s):
        return qkv_inputs(s)

    small, large = _tiny([scratch_registry["hungry"]], Ts=(32, 128))
    assert small["gate"]["status"] == large["gate"]["status"] == "pass"
    assert isinstance(small["fwd_ms"], float)
    assert large["fwd_ms"] == large["fwd_bwd_ms"] == large["peak_mb"] == OOM
    assert large["speedup_fwd"] is None and large["fwd_tflops"] is None
    assert isinstance(large["sdpa_fwd_ms"], float)  # the baseline still ran


def test_no_backward_skips_gradients_and_fwd_bwd():
    rows = _tiny([get_bench("attention")], Ts=(32,), backward=False)
    (r,) = rows
    assert set(r["gate"]["errors"]) == {"o"}
    assert isinstance(r["fwd_ms"], float)
    assert r["fwd_bwd_ms"] is None and r["sdpa_fwd_bwd_ms"] is None and r["speedup_fwd_bwd"] is None


def test_report_prints_table_then_json_last_line():
    rows = _tiny([get_bench("attention")], Ts=(32,))
    buf = io.StringIO()
    env = environment(["subq", "bench", "--quick"], CPU)
    report(rows, env, {"T": [32]}, Console(file=buf, width=200))
    lines = buf.getvalue().rstrip("\n").splitlines()
    assert any("attention" in line and "pass" in line for line in lines[:-1])
    record = json.loads(lines[-1])
    assert record["env"]["torch"] == torch.__version__
    assert record["env"]["argv"] == ["subq", "bench", "--quick"]
    assert record["rows"][0]["fwd_ms"] == rows[0]["fwd_ms"]


def test_unsupported_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        _tiny([get_bench("attention")], dtype=torch.float64)
