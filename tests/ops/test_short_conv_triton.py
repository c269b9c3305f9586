"""The Triton depthwise short convolution against the naive reference: forward and the three
gradients on awkward shapes, causal and centred padding, strided (projection-slice) inputs, half
precision, bad input. On CPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.short_conv import naive_short_conv, short_conv
from subq.ops.short_conv.triton_conv import triton_short_conv
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [
    # B, T, C, k, bias
    (1, 1, 4, 3, True),
    (2, 3, 8, 3, False),
    (2, 65, 5, 4, True),
    (1, 130, 70, 4, True),  # two channel blocks, the second partial; three time tiles
    (2, 63, 7, 8, False),
    (1, 100, 32, 2, True),
]
IDS = [f"B{B}-T{T}-C{C}-k{k}-{'bias' if b else 'nobias'}" for B, T, C, k, b in CASES]


def reference(x, w, b, pad):
    """``F.conv1d`` in float64 with ``pad`` zeros before and ``k - 1 - pad`` after."""
    k = w.shape[1]
    xt = F.pad(x.double().transpose(1, 2), (pad, k - 1 - pad))
    bias = None if b is None else b.double()
    return F.conv1d(xt, w.double()[:, None, :], bias, groups=x.shape[2]).transpose(1, 2)


def check(x, w, b, y, y_ref, tol):
    g = torch.randn_like(y_ref)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad((y.double() * g).sum(), leaves)
    refs = torch.autograd.grad((y_ref * g).sum(), leaves)
    assert_close(y, y_ref, tol, "y")
    for name, a, r in zip(("dx", "dw", "db"), grads, refs, strict=False):
        assert_close(a, r, tol, name)


def leaves(B, T, C, k, bias, dtype=torch.float32):
    x = torch.randn(B, T, C, device=DEVICE, dtype=dtype, requires_grad=True)
    w = torch.randn(C, k, device=DEVICE, dtype=dtype, requires_grad=True)
    b = torch.randn(C, device=DEVICE, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_causal_matches_naive(case, one_thread):
    x, w, b = leaves(*case)
    y = short_conv(x, w, b, mode="triton")
    ref = naive_short_conv(x.double(), w.double(), None if b is None else b.double())
    check(x, w, b, y, ref, 1e-6)


@pytest.mark.parametrize("k", [3, 7])
def test_centred_padding(k, one_thread):
    """Hydra's convolution: ``k // 2`` zeros on each side, as ``F.conv1d(padding=k // 2)``."""
    x, w, b = leaves(2, 50, 12, k, True)
    y = triton_short_conv(x, w, b, padding=k // 2)
    check(x, w, b, y, reference(x, w, b, k // 2), 1e-6)


def test_strided_projection_slices(one_thread):
    """A slice of a wider projection output (row stride 3 C, offset C) and a transposed view."""
    C, k = 16, 4
    p = torch.randn(2, 40, 3 * C, device=DEVICE, requires_grad=True)
    w = torch.randn(C, k, device=DEVICE, requires_grad=True)
    x = p[..., C : 2 * C]
    check(x, w, None, triton_short_conv(x, w), reference(x, w, None, k - 1), 1e-6)
    xt = torch.randn(2, C, 40, device=DEVICE).transpose(1, 2).requires_grad_()
    check(xt, w, None, triton_short_conv(xt, w), reference(xt, w, None, k - 1), 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype, one_thread):
    x, w, b = leaves(2, 70, 24, 4, True, dtype)
    y = triton_short_conv(x, w, b)
    assert y.dtype == dtype
    assert_close(y, reference(x, w, b, 3), 8e-3, "y")


def test_bad_input():
    x, w, _ = leaves(1, 8, 4, 3, False)
    with pytest.raises(ValueError, match=r"padding must be an int in \[0, k - 1 = 2\], got 3"):
        triton_short_conv(x, w, padding=3)
    with pytest.raises(ValueError, match="mode must be 'torch' or 'triton', got 'cuda'"):
        short_conv(x, w, mode="cuda")
    with pytest.raises(ValueError, match=r"weight must be \[C=4, k\]"):
        triton_short_conv(x, w[:2])


@pytest.mark.parametrize("pad_kind", ["causal", "centred"])
@pytest.mark.parametrize("case", CASES[1:5], ids=IDS[1:5])
def test_silu_in_the_kernel(case, pad_kind, one_thread):
    """``activation="silu"``: SiLU in the forward pass, its derivative on the recomputed
    pre-activation in the backward; forward and the three gradients against float64."""
    x, w, b = leaves(*case)
    k = w.shape[1]
    pad = k - 1 if pad_kind == "causal" else k // 2
    y = triton_short_conv(x, w, b, padding=pad, activation="silu")
    check(x, w, b, y, F.silu(reference(x, w, b, pad)), 1e-6)


def test_silu_in_both_modes(one_thread):
    x, w, b = leaves(2, 40, 12, 4, True)
    ref = F.silu(reference(x, w, b, 3))
    for mode in ("torch", "triton"):
        assert_close(short_conv(x, w, b, mode=mode, activation="silu"), ref, 1e-6, mode)
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        short_conv(x, w, b, activation="gelu")
