"""GELU gate: the reference against ``F.gelu(g) * v`` in float64, the Triton kernels against the
reference (forward and gradient; in Triton's interpreter on a CPU) on awkward shapes, strided rows,
half precision, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.gelu_gate import gelu_gate, naive_gelu_gate
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_reference_is_the_erf_gelu_glu():
    h = torch.randn(3, 7, 10, dtype=torch.float64)
    assert_close(naive_gelu_gate(h), F.gelu(h[..., :5]) * h[..., 5:], 1e-15)
    assert naive_gelu_gate(h.float()).dtype == torch.float32


@pytest.mark.parametrize(
    "shape", [(1, 2), (3, 10), (5, 2, 2050), (2, 7, 6)], ids=["one", "rows", "cols-past-a-block", "small"]
)
def test_triton_matches_reference(shape, one_thread):
    """Forward and gradient against the float64 reference; rows beyond one program (4), columns
    beyond one block (1024), odd widths. The kernels compute in float32, where ``1 + erf(g / sqrt 2)``
    loses digits for negative ``g`` (as PyTorch's own GELU): 1e-5 relative, about 100 float32 ulps."""
    pytest.importorskip("triton")
    h = (3 * torch.randn(*shape, device=DEVICE)).requires_grad_()
    y = gelu_gate(h, mode="triton")
    ref = h.detach().double().requires_grad_()
    y_ref = naive_gelu_gate(ref)
    assert y.dtype == h.dtype and y.shape == (*shape[:-1], shape[-1] // 2)
    assert_close(y, y_ref, 1e-5, "y")
    g = torch.randn_like(y)
    (dh,) = torch.autograd.grad(y, h, g)
    (dh_ref,) = torch.autograd.grad(y_ref, ref, g.double())
    assert_close(dh, dh_ref, 1e-5, "dh")


def test_triton_strided_rows_and_half(one_thread):
    """A slice of a wider tensor (row stride larger than the width), and float16 (the interpreter does
    not compute in bf16) stored in its dtype."""
    pytest.importorskip("triton")
    wide = torch.randn(6, 40, device=DEVICE)
    h = wide[:, 4:36]
    assert_close(gelu_gate(h, mode="triton"), naive_gelu_gate(h.double()), 1e-6, "strided")
    h16 = torch.randn(9, 64, device=DEVICE).half()
    y = gelu_gate(h16, mode="triton")
    assert y.dtype == torch.float16
    assert_close(y, naive_gelu_gate(h16.double()), 2e-3, "fp16")


def test_auto_and_bad_input():
    h = torch.randn(2, 8)
    expected = "triton" if DEVICE == "cuda" else "torch"
    assert torch.equal(gelu_gate(h.to(DEVICE)), gelu_gate(h.to(DEVICE), mode=expected))
    with pytest.raises(ValueError, match="must be even"):
        gelu_gate(torch.randn(2, 7))
    with pytest.raises(ValueError, match="mode must be one of"):
        gelu_gate(h, mode="cuda")
    with pytest.raises(TypeError, match="float tensor"):
        gelu_gate(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="float64"):
        gelu_gate(h.double(), mode="triton")
