"""Monarch matrices: the batched-matmul form against the dense matrix (forward and every gradient) on
awkward grids, the definitions it restates (Dao et al.'s ``P L P^T R``, M2's
``blockdiag_butterfly_multiply``), the DFT as a Monarch product, polynomial evaluation at structured
points, long convolutions by Monarch evaluation/interpolation (against the direct sum, causality by
the Jacobian), bad input."""

from __future__ import annotations

import math

import pytest
import torch

from subq.ops.long_conv import naive_long_conv
from subq.ops.monarch import (
    blockdiag_multiply,
    bmm_monarch,
    monarch,
    monarch_conv,
    monarch_factor_shapes,
    monarch_factor_sizes,
    monarch_fft,
    monarch_matrix,
    naive_monarch,
    naive_poly_conv,
    poly_eval_factors,
    transpose_grid,
)
from tests.conftest import assert_close

# (in_sizes, out_sizes): N = 12, 48, 1000 on several grids, order 1..4, rectangular
GRIDS = [
    ((4, 3), None),
    ((3, 4), None),
    ((8, 6), None),
    ((40, 25), None),
    ((10, 10, 10), None),
    ((2, 3, 4), None),
    ((2, 3, 2, 2), (1, 2, 3, 2)),
    ((3, 4), (5, 2)),
    ((7,), None),
    ((1, 1), None),
]
GRID_IDS = [f"{'x'.join(map(str, i))}-to-{'x'.join(map(str, o or i))}" for i, o in GRIDS]


def factors_for(in_sizes, out_sizes, dtype):
    shapes = monarch_factor_shapes(in_sizes, out_sizes)
    return [(torch.randn(s, dtype=dtype) / math.sqrt(s[2])).requires_grad_() for s in shapes]


@pytest.mark.parametrize("in_sizes,out_sizes", GRIDS, ids=GRID_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_bmm_matches_dense_forward_and_grads(in_sizes, out_sizes, dtype):
    fs = factors_for(in_sizes, out_sizes, dtype)
    x = torch.randn(2, 3, math.prod(in_sizes), dtype=dtype, requires_grad=True)
    y, y_ref = bmm_monarch(x, fs), naive_monarch(x, fs)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert y.shape == (2, 3, math.prod(out_sizes or in_sizes))
    assert_close(y, y_ref, tol, "forward")
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *fs], g)
    ref = torch.autograd.grad(y_ref, [x, *fs], g)
    for name, a, b in zip(["dx", *[f"dfactor{i}" for i in range(len(fs))]], got, ref, strict=True):
        assert_close(a, b, tol, name)


def test_complex_input():
    fs = [f.detach().to(torch.complex128) for f in factors_for((3, 4), None, torch.float64)]
    x = torch.randn(5, 12, dtype=torch.complex128)
    assert_close(torch.view_as_real(bmm_monarch(x, fs)), torch.view_as_real(naive_monarch(x, fs)), 1e-13)


def test_order2_is_P_L_Pt_R():
    """Dao et al.: N = m^2, M = P L P^T R with P the [m, m] transpose, L and R block-diagonal."""
    m = 5
    R, L = torch.randn(m, m, m, dtype=torch.float64), torch.randn(m, m, m, dtype=torch.float64)
    P = torch.eye(m * m, dtype=torch.float64)[torch.arange(m * m).reshape(m, m).T.reshape(-1)]
    dense = P @ torch.block_diag(*L) @ P.T @ torch.block_diag(*R)
    assert_close(monarch_matrix([R, L]), dense, 1e-14)
    x = torch.randn(4, m * m, dtype=torch.float64)
    assert_close(bmm_monarch(x, [R, L]), x @ dense.T, 1e-13)


def test_restates_m2_blockdiag_butterfly_multiply():
    """``HazyResearch/m2`` ``blockdiag_butterfly_multiply_reference``: w1 [k, q, p], w2 [l, s, r]."""
    k, q, p, nl, s = 3, 4, 2, 4, 5  # n = k p = 6, k q = l r = 12 (r = 3), m = l s = 20 (l = nl)
    r = k * q // nl
    w1, w2 = torch.randn(k, q, p, dtype=torch.float64), torch.randn(nl, s, r, dtype=torch.float64)
    x = torch.randn(7, k * p, dtype=torch.float64)
    out1 = torch.einsum("bkp,kqp->bkq", x.reshape(7, k, p), w1)
    out1 = out1.reshape(7, r, nl).transpose(-1, -2)  # [b, l, r]
    out2 = torch.einsum("blr,lsr->bsl", out1, w2)
    expected = out2.reshape(7, s * nl)
    assert_close(bmm_monarch(x, [w1, w2]), expected, 1e-13)
    assert_close(naive_monarch(x, [w1, w2]), expected, 1e-13)


@pytest.mark.parametrize("layout", ["contiguous", "token-strided", "transposed"])
def test_blockdiag_multiply(layout):
    """Against the dense block-diagonal matrix, forward and both gradients, for inputs whose rows are
    strided (a slice of a wider tensor) or whose last axis is not unit-stride."""
    w = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    x = {
        "contiguous": torch.randn(2, 6, 20, dtype=torch.float64),
        "token-strided": torch.randn(2, 6, 31, dtype=torch.float64)[..., 3:23],
        "transposed": torch.randn(2, 20, 6, dtype=torch.float64).transpose(1, 2),
    }[layout].requires_grad_()
    y = blockdiag_multiply(x, w)
    y_ref = x @ torch.block_diag(*w).T
    assert_close(y, y_ref, 1e-14)
    g = torch.randn_like(y)
    for name, a, b in zip(
        ("dx", "dw"), torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g), strict=True
    ):
        assert_close(a, b, 1e-14, name)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4 \* 5 = 20\].*\(2, 6, 21\)"):
        blockdiag_multiply(torch.randn(2, 6, 21, dtype=torch.float64), w)


@pytest.mark.parametrize("n", [1, 12, 13, 48, 1000, 4096, 65536])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_factor_sizes_are_balanced_factorisations(n, order):
    sizes = monarch_factor_sizes(n, order)
    assert len(sizes) == order and math.prod(sizes) == n
    assert list(sizes) == sorted(sizes, reverse=True)
    # no factorisation has a smaller largest factor
    best = min(max(d, n // d) for d in range(1, n + 1) if n % d == 0) if order == 2 else None
    if best is not None:
        assert sizes[0] == best


def test_factor_sizes_examples():
    assert monarch_factor_sizes(12) == (4, 3)
    assert monarch_factor_sizes(1000) == (40, 25)
    assert monarch_factor_sizes(1000, 3) == (10, 10, 10)
    assert monarch_factor_sizes(13) == (13, 1)  # prime: a dense grid (callers pad instead)
    assert monarch_factor_sizes(65536) == (256, 256)


def test_bad_input_names_sizes():
    fs = [f.detach() for f in factors_for((3, 4), None, torch.float32)]
    with pytest.raises(ValueError, match=r"N_in = prod\(in_sizes\) = 3\*4 = 12, got 13"):
        monarch(torch.randn(2, 13), fs)
    with pytest.raises(ValueError, match=r"factors\[0\] must be \[2, 4, 4\].*got \[3, 4, 4\]"):
        monarch(torch.randn(2, 12), [fs[0], torch.randn(4, 3, 2)])
    with pytest.raises(ValueError, match="factors\\[0\\] must match x's dtype"):
        monarch(torch.randn(2, 12, dtype=torch.float64), fs)
    with pytest.raises(TypeError, match="floating point or complex"):
        monarch(torch.zeros(2, 12, dtype=torch.int64), fs)
    with pytest.raises(TypeError, match="non-empty sequence"):
        monarch(torch.randn(2, 12), [])
    with pytest.raises(ValueError, match="mode must be one of"):
        monarch(torch.randn(2, 12), fs, mode="triton")
    with pytest.raises(ValueError, match="positive int"):
        monarch_factor_sizes(0)


# ---- the DFT and polynomial evaluation -------------------------------------------------------------
@pytest.mark.parametrize(
    "N,sizes", [(1, None), (12, (4, 3)), (12, (3, 4)), (48, None), (7, None), (1000, None)]
)
@pytest.mark.parametrize("inverse", [False, True], ids=["fft", "ifft"])
def test_monarch_with_dft_factors_is_fft(N, sizes, inverse):
    x = torch.randn(3, 2, N, dtype=torch.complex128)
    ref = torch.fft.ifft(x) if inverse else torch.fft.fft(x)
    got = monarch_fft(x, sizes, inverse=inverse)
    assert_close(torch.view_as_real(got), torch.view_as_real(ref), 1e-13, "complex128")
    got32 = monarch_fft(x.to(torch.complex64), sizes, inverse=inverse)
    assert_close(torch.view_as_real(got32), torch.view_as_real(ref), 1e-5, "complex64")


def test_monarch_fft_bad_sizes():
    with pytest.raises(ValueError, match="multiply to N=12"):
        monarch_fft(torch.randn(12, dtype=torch.complex64), (5, 2))
    with pytest.raises(TypeError, match="complex"):
        monarch_fft(torch.randn(12))


def test_poly_eval_factors_evaluate_at_their_points():
    n1, n2 = 4, 3
    rho = torch.polar(
        0.8 + 0.4 * torch.rand(n1, dtype=torch.float64), 6.28 * torch.rand(n1, dtype=torch.float64)
    )
    w = torch.polar(torch.ones((), dtype=torch.float64), torch.tensor(-2 * math.pi / n2, dtype=torch.float64))
    d = torch.arange(n2)
    z = (rho[:, None] * w ** d[None, :]).T.reshape(-1)  # output a + n1 d -> z_{a,d}
    V = z[:, None] ** torch.arange(n1 * n2, dtype=torch.float64)  # [n, n] Vandermonde
    u = torch.randn(5, n1 * n2, dtype=torch.complex128)
    got = bmm_monarch(transpose_grid(u, n1, n2), poly_eval_factors(rho, n2))
    assert_close(torch.view_as_real(got), torch.view_as_real(u @ V.T), 1e-12)


# ---- long convolutions by evaluation and interpolation ---------------------------------------------
SHAPES = [(1, 1), (7, 3), (12, 12), (63, 63), (100, 40), (1000, 333)]


@pytest.mark.parametrize("T,L", SHAPES, ids=[f"T{T}-L{L}" for T, L in SHAPES])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_monarch_conv_equals_direct_sum(T, L, causal, dtype):
    C = 3
    u = torch.randn(2, T, C, dtype=dtype, requires_grad=True)
    h = ((torch.randn(C, L) if causal else torch.randn(2, C, L)) / L**0.5).to(dtype).requires_grad_()
    bias = torch.randn(C, dtype=dtype, requires_grad=True)
    y, y_ref = monarch_conv(u, h, bias, causal=causal), naive_long_conv(u, h, bias, causal)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert_close(y, y_ref, tol, "forward")
    g = torch.randn_like(y)
    for name, a, b in zip(
        ["du", "dh", "dbias"],
        torch.autograd.grad(y, [u, h, bias], g),
        torch.autograd.grad(y_ref, [u, h, bias], g),
        strict=True,
    ):
        assert_close(a, b, tol, name)


def _jacobian(fn, u):
    """``d y[t] / d u[s]`` summed over channels: ``[T, T]``."""
    J = torch.autograd.functional.jacobian(fn, u)  # [T, C, T, C]
    return J.abs().sum((1, 3))


def test_monarch_conv_is_causal_by_jacobian():
    T, C = 24, 2
    u = torch.randn(T, C, dtype=torch.float64)
    h = torch.randn(C, T, dtype=torch.float64)
    J = _jacobian(lambda v: monarch_conv(v[None], h, causal=True)[0], u)
    upper = torch.triu(J, diagonal=1)
    assert upper.max() < 1e-13 * J.max(), f"output t depends on inputs after t: {upper.max():.3e}"
    assert (torch.diagonal(J, -3) > 1e-3).all()  # and it does see the past
    Jb = _jacobian(lambda v: monarch_conv(v[None], torch.stack([h, h]), causal=False)[0], u)
    assert torch.triu(Jb, diagonal=1).max() > 1e-3  # the bidirectional one sees the future


def test_poly_conv_at_arbitrary_points_is_the_causal_convolution():
    """The M2 construction: any distinct evaluation points give the same causal map."""
    T, L, C = 6, 4, 3
    n = T + L - 1
    u = torch.randn(2, T, C, dtype=torch.float64)
    h = torch.randn(C, L, dtype=torch.float64)
    angles = (
        2 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.3 * torch.rand(n, dtype=torch.float64)) / n
    )
    points = torch.polar(0.9 + 0.2 * torch.rand(n, dtype=torch.float64), angles)
    assert_close(naive_poly_conv(u, h, points), naive_long_conv(u, h, None, True), 1e-10)
    J = _jacobian(lambda v: naive_poly_conv(v[None], h, points)[0], u[0])
    assert torch.triu(J, diagonal=1).max() < 1e-10 * J.max()
    with pytest.raises(ValueError, match="at least T \\+ L - 1 = 9"):
        naive_poly_conv(u, h, points[:8])
