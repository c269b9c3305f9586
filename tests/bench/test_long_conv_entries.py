"""The ``long_conv`` and ``hyena`` benchmark entries and the runner features they use (an SDPA
baseline of several layers or none, one timed call for slow calls), on tiny CPU shapes.

python -m pytest tests/bench/test_long_conv_entries.py -q
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from subq.bench import BenchShape, get_bench, qkv_inputs, qkvo_bytes, register_bench, registry
from subq.bench.long_conv_entries import LONG_CONV_MODES, torch_fft_long_conv
from subq.bench.runner import QUICK_TIMING, Timing, run_bench, sdpa_baseline, time_ms
from subq.ops.attention import naive_attention, sdpa_attention
from subq.ops.long_conv import naive_long_conv
from tests.conftest import assert_close

CPU = torch.device("cpu")


def _tiny(specs, Ts=(32, 100), dtype=torch.float32, **kw):
    kw = {"batch": 1, "heads": 2, "head_dim": 8, "dtype": dtype, "device": CPU, "timing": QUICK_TIMING, **kw}
    return run_bench(specs, Ts, **kw)


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_long_conv_entry_gates_and_times_every_mode(one_thread):
    rows = _tiny([get_bench("long_conv")])
    assert [(r["mode"], r["T"]) for r in rows] == [(m, T) for m in LONG_CONV_MODES for T in (32, 100)]
    for r in rows:
        if r["mode"].startswith("triton"):  # the Triton forms need CUDA: the runner skips them on a CPU
            assert r["gate"]["status"] == "skipped" and r["gate"]["message"] == "needs CUDA", r["gate"]
            continue
        assert r["gate"]["status"] == "pass", r["gate"]
        assert set(r["gate"]["errors"]) == {"o", "du", "dh"}
        assert max(r["gate"]["errors"].values()) <= 1e-5, r["gate"]
        assert _positive(r["fwd_ms"]) and _positive(r["fwd_bwd_ms"]) and r["error"] is None
        assert r["sdpa_fwd_ms"] is None and r["speedup_fwd"] is None  # sdpa_layers=0: no SDPA baseline
        assert r["flops_fwd"] > 0 and r["bytes_fwd"] == (2 + 1) * r["T"] * 16 * 4


def test_short_conv_entry_gates_the_torch_form_and_skips_triton_on_cpu(one_thread):
    rows = _tiny([get_bench("short_conv")])
    assert [(r["mode"], r["T"]) for r in rows] == [(m, T) for m in ("torch", "triton") for T in (32, 100)]
    for r in rows:
        if r["mode"] == "triton":
            assert r["gate"]["status"] == "skipped" and r["gate"]["message"] == "needs CUDA", r["gate"]
            continue
        assert r["gate"]["status"] == "pass" and set(r["gate"]["errors"]) == {"o", "dx", "dw", "db"}
        assert r["params"] == {"k": 3} and r["flops_fwd"] == 2 * 3 * r["T"] * 16
        assert _positive(r["fwd_ms"]) and _positive(r["fwd_bwd_ms"]) and r["sdpa_fwd_ms"] is None


def test_long_conv_inputs_are_channels_first_views():
    s = BenchShape(2, 40, 3, 4, torch.float32, CPU)
    x = get_bench("long_conv").make_inputs(s)
    u, h = x["u"], x["h"]
    assert u.shape == (2, 40, 12) and h.shape == (12, 40)
    assert u.transpose(1, 2).is_contiguous()  # [B, C, T] storage: torch_fft needs no copy


@pytest.mark.parametrize("T", [1, 7, 64], ids=lambda T: f"T{T}")
def test_torch_fft_form_is_the_anchor_expression(T):
    u_bct = torch.randn(2, 5, T, dtype=torch.float64)
    h = torch.randn(5, T, dtype=torch.float64)
    anchor = torch.fft.irfft(torch.fft.rfft(u_bct, n=2 * T) * torch.fft.rfft(h, n=2 * T), n=2 * T)[..., :T]
    u = u_bct.transpose(1, 2)
    y = torch_fft_long_conv(u.float(), h.float())
    assert y.dtype == torch.float32 and y.shape == (2, T, 5)
    assert_close(y, anchor.transpose(1, 2), 1e-5, "torch_fft vs anchor")
    assert_close(y, naive_long_conv(u, h), 1e-5, "torch_fft vs naive")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_hyena_entry_gates_and_times_against_two_sdpa_layers(one_thread, dtype):
    rows = _tiny([get_bench("hyena")], Ts=(48,), dtype=dtype)
    assert [r["mode"] for r in rows] == ["fft", "chunk", "triton", "triton_fp16", "all_triton"]
    for r in rows:
        if "triton" in r["mode"]:  # CUDA only: skipped by the runner on a CPU
            assert r["gate"]["status"] == "skipped", r["gate"]
            continue
        assert r["gate"]["status"] == "pass", r["gate"]
        assert set(r["gate"]["errors"]) == {"o", "dx"}
        bound = 1e-5 if dtype == torch.float32 else 1e-2
        assert max(r["gate"]["errors"].values()) <= bound, r["gate"]
        for key in ("fwd_ms", "fwd_bwd_ms", "sdpa_fwd_ms", "sdpa_fwd_bwd_ms", "speedup_fwd_bwd"):
            assert _positive(r[key]), (key, r[key])
        assert r["error"] is None


def test_hyena_stack_shares_weights_across_forms_and_follows_the_layer(one_thread):
    s = BenchShape(1, 24, 1, 8, torch.float32, CPU)
    spec = get_bench("hyena")
    x = spec.make_inputs(s)
    stack = x["stack"]
    assert len(stack.layers) == 2 and stack.autocast_dtype is None
    assert all(layer.max_seq_len == 24 and layer.emb_dim == 5 for layer in stack.layers)
    want = x["x"]
    for layer in stack.layers:
        layer.mode = "naive"
        want = want + layer(want)
    for name, fn in (*spec.modes.items(), ("reference", spec.reference)):
        if "triton" in name and os.environ.get("TRITON_INTERPRET") != "1":
            continue  # CPU tensors: the Triton forms run only in the interpreter (set where there is no GPU)
        # the Triton forms run in the interpreter here; fp16 operands carry ~1e-3 of rounding
        assert_close(fn(**x), want, 3e-3 if name in ("triton_fp16", "all_triton") else 1e-5, name)


def test_sdpa_baseline_of_several_layers_is_the_composition():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    once = sdpa_baseline(q, k, v)
    assert torch.equal(sdpa_baseline(q, k, v, layers=2), sdpa_baseline(once, k, v))
    assert torch.equal(sdpa_baseline(q, k, v, layers=0), q)


def test_sdpa_layers_sets_the_baseline(monkeypatch, one_thread):
    monkeypatch.setattr(registry, "BENCHES", dict(registry.BENCHES))
    for layers in (0, 1, 3):
        register_bench(
            f"attn_x{layers}",
            modes={"torch": naive_attention},  # no SDPA inside the entry: every SDPA call is the baseline's
            reference=naive_attention,
            flops=lambda s: 1.0,
            bytes=qkvo_bytes,
            sdpa_layers=layers,
        )(qkv_inputs)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    timing = Timing(cpu_warmup=0, cpu_reps=1, single_call_ms=None)
    specs = [registry.BENCHES[f"attn_x{n}"] for n in (0, 1, 3, 1)]
    rows = _tiny(specs, Ts=(16,), timing=timing)
    assert rows[0]["sdpa_fwd_ms"] is None and rows[0]["speedup_fwd_bwd"] is None
    assert all(_positive(r["sdpa_fwd_ms"]) and _positive(r["speedup_fwd_bwd"]) for r in rows[1:])
    # a baseline is measured once per (T, layers) with 5 calls of `layers` SDPA calls each: the
    # output-gradient forward, then warm-up + 1 rep of the forward and of the forward+backward
    assert len(calls) == 5 * (1 + 3)
    with pytest.raises(ValueError, match="sdpa_layers"):
        register_bench(
            "bad",
            modes={"torch": sdpa_attention},
            reference=naive_attention,
            flops=lambda s: 1.0,
            bytes=qkvo_bytes,
            sdpa_layers=-1,
        )


@pytest.mark.parametrize(
    ("single_call_ms", "expected_calls"),
    [(None, 1 + 2 + 3), (1e9, 1 + 2 + 3), (0.0, 2)],
    ids=["off", "fast-call", "slow-call"],
)
def test_slow_calls_are_timed_once(single_call_ms, expected_calls):
    calls = []
    timing = Timing(cpu_warmup=2, cpu_reps=3, single_call_ms=single_call_ms)
    ms = time_ms(lambda: calls.append(1), CPU, timing)
    assert len(calls) == expected_calls  # warm-up, then warmups and reps, or warm-up and one timed call
    assert ms >= 0
