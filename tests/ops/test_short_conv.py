"""Causal depthwise short convolution: parallel and step forms vs the naive reference."""

from __future__ import annotations

import pytest
import torch

from subq.ops.short_conv import naive_short_conv, short_conv, short_conv_state, short_conv_step
from tests.conftest import assert_close

CASES = [
    # B, T, C, k, bias
    (1, 1, 4, 3, True),
    (2, 3, 8, 3, False),
    (2, 3, 5, 4, True),
    (3, 63, 16, 3, True),
    (2, 63, 7, 8, False),
    (1, 100, 32, 2, True),
    (2, 17, 12, 5, True),
]


def _ids(case):
    B, T, C, k, bias = case
    return f"B{B}-T{T}-C{C}-k{k}-{'bias' if bias else 'nobias'}"


def _inputs(B, T, C, k, bias, dtype=torch.float64):
    x = torch.randn(B, T, C, dtype=dtype, requires_grad=True)
    w = torch.randn(C, k, dtype=dtype, requires_grad=True)
    b = torch.randn(C, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def test_naive_is_the_written_formula():
    x, w, b = _inputs(2, 6, 3, 3, True)
    y = naive_short_conv(x, w, b)
    t, c = 4, 1
    expected = b[c] + w[c, 0] * x[:, t - 2, c] + w[c, 1] * x[:, t - 1, c] + w[c, 2] * x[:, t, c]
    assert_close(y[:, t, c], expected, 1e-15, "y[:, 4, 1]")
    # the first token sees only itself (zeros before t = 0)
    assert_close(y[:, 0], b + w[:, 2] * x[:, 0], 1e-15, "y[:, 0]")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_and_gradients_match_naive(case, one_thread):
    x, w, b = _inputs(*case)
    y, y_ref = short_conv(x, w, b), naive_short_conv(x, w, b)
    assert_close(y, y_ref, 1e-12, "y")
    params = [x, w] if b is None else [x, w, b]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, dy)
    grads_ref = torch.autograd.grad(y_ref, params, dy)
    for name, g, g_ref in zip(["dx", "dweight", "dbias"], grads, grads_ref, strict=False):
        assert_close(g, g_ref, 1e-12, name)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_step_by_step_equals_parallel(case, one_thread):
    B, T, C, k, bias = case
    x, w, b = _inputs(*case)
    with torch.no_grad():
        y = short_conv(x, w, b)
        state = torch.zeros(B, C, k, dtype=x.dtype)
        ys = []
        for t in range(T):
            before = state.clone()
            y_t, new_state = short_conv_step(x[:, t], state, w, b)
            assert torch.equal(state, before), "short_conv_step must not modify its input state"
            ys.append(y_t)
            state = new_state
        assert_close(torch.stack(ys, 1), y, 1e-12, "step-by-step")
        assert torch.equal(state, short_conv_state(x, k)), "final step state != short_conv_state"


@pytest.mark.parametrize("split", [1, 2, 10], ids=lambda s: f"prefill{s}")
def test_state_after_prefill_continues_the_sequence(split):
    B, T, C, k = 2, 20, 6, 4
    x, w, b = _inputs(B, T, C, k, True)
    with torch.no_grad():
        y = short_conv(x, w, b)
        state = short_conv_state(x[:, :split], k)
        assert state.shape == (B, C, k)
        for t in range(split, T):
            y_t, state = short_conv_step(x[:, t], state, w, b)
            assert_close(y_t, y[:, t], 1e-12, f"step t={t}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_close_to_reference(dtype):
    x, w, b = _inputs(2, 63, 16, 3, True, dtype=torch.float64)
    y_ref = naive_short_conv(x, w, b)
    y = short_conv(x.to(dtype), w.to(dtype), b.to(dtype))
    assert y.dtype == dtype
    assert_close(y, y_ref, 1e-5 if dtype == torch.float32 else 2e-2, str(dtype))


def test_bad_inputs_raise_naming_sizes():
    x, w, b = _inputs(2, 5, 4, 3, True)
    with pytest.raises(ValueError, match=r"x must be 3-D \[B, T, C\], got shape \(5, 4\)"):
        short_conv(x[0], w, b)
    with pytest.raises(ValueError, match=r"weight must be \[C=4, k\], got shape \(3, 3\)"):
        short_conv(x, w[:3], b)
    with pytest.raises(ValueError, match=r"kernel size .* in \[2, 8\], got 1"):
        short_conv(x, w[:, :1], b)
    with pytest.raises(ValueError, match=r"kernel size .* in \[2, 8\], got 9"):
        short_conv(x, torch.randn(4, 9, dtype=x.dtype), b)
    with pytest.raises(ValueError, match=r"bias must be \[C=4\], got shape \(3,\)"):
        short_conv(x, w, b[:3])
    with pytest.raises(ValueError, match=r"weight must match the input's device and dtype"):
        short_conv(x, w.float(), b)
    with pytest.raises(TypeError, match="x must be floating point, got dtype torch.int64"):
        short_conv(torch.zeros(2, 5, 4, dtype=torch.int64), w, b)
    with pytest.raises(ValueError, match=r"x must have B, T, C >= 1, got shape \(2, 0, 4\)"):
        short_conv(x[:, :0], w, b)
    with pytest.raises(ValueError, match=r"conv_state must be \[B=2, C=4, k=3\], got shape \(2, 4, 2\)"):
        short_conv_step(x[:, 0], torch.zeros(2, 4, 2, dtype=x.dtype), w, b)
    with pytest.raises(ValueError, match=r"x_t must be 2-D \[B, C\], got shape \(2, 5, 4\)"):
        short_conv_step(x, torch.zeros(2, 4, 3, dtype=x.dtype), w, b)
    with pytest.raises(ValueError, match=r"kernel_size must be an int in \[2, 8\], got 1"):
        short_conv_state(x, 1)
