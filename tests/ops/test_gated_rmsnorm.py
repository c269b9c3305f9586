"""Gated RMSNorm: the Triton kernels against the float64 reference, forward and the three gradients,
both gate orders, groups, strided (projection-slice) inputs, half precision, bad input. On CPU the
kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.gated_rmsnorm import gated_rmsnorm, naive_gated_rmsnorm, summed_gated_rmsnorm
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


@pytest.mark.parametrize("shifted", [True, False], ids=["shifted", "unshifted"])
@pytest.mark.parametrize("diag", [True, False], ids=["diag", "no-diag"])
@pytest.mark.parametrize("shape", [(2, 9, 3, 8), (1, 1, 2, 4), (3, 5, 1, 40)], ids=str)
def test_summed_norm_matches_the_formula(shape, diag, shifted, one_thread):
    """Hydra's output norm, ``RMSNorm(S y_f + S' y_b + x delta) SiLU(z)``: the Triton kernel (sum in
    registers) and the PyTorch form against the float64 formula, forward and every gradient, with
    ``x`` and ``z`` slices of wider projections."""
    b, T, H, P = shape
    d = H * P
    y_f = torch.randn(b, T, H, P, device=DEVICE, requires_grad=True)
    y_b = torch.randn(b, T, H, P, device=DEVICE, requires_grad=True)
    proj = torch.randn(b, T, 3 * d, device=DEVICE, requires_grad=True)
    delta = torch.randn(b, T, H, device=DEVICE, requires_grad=True)
    w = (1 + 0.3 * torch.randn(d, device=DEVICE)).requires_grad_()
    x = proj[..., d : 2 * d].unflatten(-1, (H, P)) if diag else None
    z = proj[..., 2 * d :]
    dl = delta if diag else None
    kw = dict(x=x, delta=dl, shifted=shifted, norm_before_gate=True)

    def formula():
        yf, yb = y_f.double(), y_b.double()
        if shifted:
            y = torch.zeros_like(yf)
            y[:, 1:] += yf[:, :-1]
            y[:, :-1] += yb[:, 1:]
        else:
            y = yf + yb
        if diag:
            y = y + x.double() * delta.double()[..., None]
        return written(y.flatten(-2), z, w, 1e-5, True, d)

    ref = formula()
    leaves = [y_f, y_b, proj, w] + ([delta] if diag else [])
    g = torch.randn_like(ref)
    want = torch.autograd.grad((ref * g).sum(), leaves)
    for mode in ("triton", "torch"):
        out = summed_gated_rmsnorm(y_f, y_b, z, w, mode=mode, **kw)
        assert out.shape == (b, T, d)
        assert_close(out, ref, 1e-6, f"{mode} out")
        got = torch.autograd.grad((out.double() * g).sum(), leaves)
        for name, a, r in zip(("dy_f", "dy_b", "dproj", "dw", "ddelta"), got, want, strict=False):
            assert_close(a, r, 1e-5, f"{mode} {name}")


def test_summed_norm_without_grad(one_thread):
    """Without a gradient the kernel writes no sum (the inference variant): same output."""
    y = torch.randn(1, 6, 2, 4, device=DEVICE)
    z = torch.randn(1, 6, 8, device=DEVICE)
    with torch.no_grad():
        out = summed_gated_rmsnorm(y, y, z, torch.ones(8, device=DEVICE), shifted=True, norm_before_gate=True,
                                   mode="triton")  # fmt: skip
    ref = summed_gated_rmsnorm(y, y, z, torch.ones(8, device=DEVICE), shifted=True, norm_before_gate=True)
    assert_close(out, ref, 1e-6, "out")


def test_summed_norm_bad_inputs():
    y = torch.randn(1, 6, 2, 4)
    kw = dict(shifted=True, norm_before_gate=True)
    with pytest.raises(ValueError, match="x and delta come together"):
        summed_gated_rmsnorm(y, y, torch.randn(1, 6, 8), torch.ones(8), x=y, **kw)
    with pytest.raises(ValueError, match="z must be"):
        summed_gated_rmsnorm(y, y, torch.randn(1, 6, 9), torch.ones(9), **kw)
