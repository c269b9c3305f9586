"""Gated RMSNorm: the Triton kernels against the float64 reference, forward and the three gradients,
both gate orders, groups, strided (projection-slice) inputs, half precision, bad input. On CPU the
kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.gated_rmsnorm import gated_rmsnorm, naive_gated_rmsnorm
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [  # leading shape, d, group_size
    ((3,), 8, 8),
    ((2, 5), 24, 8),  # three groups
    ((1, 33), 40, 40),  # d not a power of two
    ((2, 17), 96, 32),
    ((40,), 16, 4),  # rows beyond one backward program (16 rows each)
]


def written(y, z, w, eps, before, gs):
    """The formula, in float64."""
    y, z, w = y.double(), z.double(), w.double()
    a = y if before else y * F.silu(z)
    g = a.unflatten(-1, (-1, gs))
    n = (g / (g.pow(2).mean(-1, keepdim=True) + eps).sqrt()).flatten(-2) * w
    return n * F.silu(z) if before else n


@pytest.mark.parametrize("before", [True, False], ids=["norm-then-gate", "gate-then-norm"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-d{c[1]}-g{c[2]}")
def test_triton_matches_the_formula(case, before, one_thread):
    lead, d, gs = case
    y = torch.randn(*lead, d, device=DEVICE, requires_grad=True)
    z = torch.randn(*lead, d, device=DEVICE, requires_grad=True)
    w = (1 + 0.3 * torch.randn(d, device=DEVICE)).requires_grad_()
    out = gated_rmsnorm(y, z, w, norm_before_gate=before, group_size=gs, mode="triton")
    ref = written(y, z, w, 1e-5, before, gs)
    assert_close(out, ref, 1e-6, "out")
    assert_close(naive_gated_rmsnorm(y, z, w, norm_before_gate=before, group_size=gs), ref, 1e-6, "naive")
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out.double() * g).sum(), [y, z, w])
    want = torch.autograd.grad((ref * g).sum(), [y, z, w])
    for name, a, b in zip(("dy", "dz", "dw"), got, want, strict=True):
        assert_close(a, b, 1e-5, name)


def test_projection_slices_in_place(one_thread):
    """``z`` as a slice of a wider projection (row stride 3 d) gives the contiguous result."""
    d = 16
    p = torch.randn(2, 9, 3 * d, device=DEVICE, requires_grad=True)
    y = torch.randn(2, 9, d, device=DEVICE, requires_grad=True)
    w = torch.rand(d, device=DEVICE, requires_grad=True)

    def run(copy):
        z = p[..., d : 2 * d]
        z = z.contiguous() if copy else z
        out = gated_rmsnorm(y, z, w, norm_before_gate=True, mode="triton")
        return (out, *torch.autograd.grad(out.sum() + (out * out).sum(), [p, y, w]))

    for name, a, b in zip(("out", "dp", "dy", "dw"), run(False), run(True), strict=True):
        assert_close(a, b, 1e-6, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype, one_thread):
    y, z = (torch.randn(4, 7, 32, device=DEVICE, dtype=dtype) for _ in range(2))
    w = torch.rand(32, device=DEVICE, dtype=dtype)
    out = gated_rmsnorm(y, z, w, norm_before_gate=False, group_size=16, mode="triton")
    assert out.dtype == dtype
    assert_close(out, written(y, z, w, 1e-5, False, 16), 8e-3, "out")


def test_bad_input():
    y = torch.randn(2, 8)
    with pytest.raises(ValueError, match="group_size must be a positive int dividing d=8, got 3"):
        gated_rmsnorm(y, y, torch.ones(8), norm_before_gate=True, group_size=3)
    with pytest.raises(ValueError, match=r"y and z must have one shape"):
        gated_rmsnorm(y, y[:, :4], torch.ones(8), norm_before_gate=True)
    with pytest.raises(ValueError, match=r"weight must be \[d=8\]"):
        gated_rmsnorm(y, y, torch.ones(4), norm_before_gate=True, mode="triton")
    with pytest.raises(ValueError, match="mode must be 'torch' or 'triton', got 'cuda'"):
        gated_rmsnorm(y, y, torch.ones(8), norm_before_gate=True, mode="cuda")
