"""The DFT as a Monarch matrix, and long convolutions (causal and bidirectional) computed with it.

A Monarch evaluation matrix evaluates the polynomial ``f(Z) = sum_j u_j Z^j`` at ``n = n1 n2`` points
``z_{a,d} = rho_a w^d`` (``w = exp(-2 pi i / n2)``) in two block steps (``README.md``); the roots of
unity ``rho_a = exp(-2 pi i a / n)`` make it the DFT. Convolution is polynomial multiplication:
evaluate, multiply pointwise, interpolate (the inverse DFT, again a Monarch product).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.long_conv.naive import check_long_conv, compute_dtype
from subq.ops.monarch.bmm import bmm_monarch


def poly_eval_factors(rho: Tensor, n2: int) -> list[Tensor]:
    """Monarch factors of the evaluation of ``f(Z) = sum_{j < n1 n2} u_j Z^j`` at the points
    ``z_{a,d} = rho_a exp(-2 pi i d / n2)``, output ``a + n1 d``.

    The input is read in the transposed grid: ``y = bmm_monarch(transpose_grid(u, n1, n2), factors)``
    with ``transpose_grid`` the permutation ``j1 n2 + b -> b n1 + j1``. Writing ``j = j1 n2 + b`` and
    ``x_a = rho_a^{n2} = z_{a,d}^{n2}``: ``z^j = x_a^{j1} z^b``, so

        factors[0][b]: [n1, n1], (a, j1) -> x_a^{j1}              (the same block for every b)
        factors[1][a]: [n2, n2], (d, b)  -> rho_a^b exp(-2 pi i b d / n2)

    The points are distinct (and the matrix invertible) iff the ``x_a`` are distinct and nonzero.

    Args:
        rho: `[n1]` complex.
        n2: the second grid size.

    Returns:
        ``[factor0: [n2, n1, n1], factor1: [n1, n2, n2]]`` in ``rho``'s dtype.
    """
    if not rho.is_complex() or rho.dim() != 1:
        raise ValueError(f"rho must be a 1-D complex tensor [n1], got {rho.dtype} {tuple(rho.shape)}")
    if not isinstance(n2, int) or n2 < 1:
        raise ValueError(f"n2 must be a positive int, got {n2!r}")
    n1 = rho.shape[0]
    real = torch.float64 if rho.dtype == torch.complex128 else torch.float32
    x = rho**n2  # [n1]
    j1 = torch.arange(n1, dtype=real, device=rho.device)
    b = torch.arange(n2, dtype=real, device=rho.device)
    w0 = (x[:, None] ** j1).expand(n2, n1, n1)  # [n2, n1 (a), n1 (j1)]
    unit = torch.polar(torch.ones((), dtype=real, device=rho.device), -2 * math.pi * torch.outer(b, b) / n2)
    w1 = (rho[:, None] ** b)[:, None, :] * unit  # [n1 (a), n2 (d), n2 (b)]
    return [w0.contiguous(), w1]


def dft_factors(
    n1: int, n2: int, *, inverse: bool = False, dtype=torch.complex128, device=None
) -> list[Tensor]:
    """Monarch factors of the size-``n1 n2`` DFT (``torch.fft.fft``; ``inverse``: ``torch.fft.ifft``),
    for inputs in the transposed grid (see :func:`monarch_fft`)."""
    n = n1 * n2
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    one = torch.ones((), dtype=real, device=device)
    idx1 = torch.arange(n1, device=device)
    idx2 = torch.arange(n2, device=device)
    # the exponents of poly_eval_factors at rho_a = exp(-2 pi i a / n), reduced modulo n exactly
    e0 = (idx1[:, None] * idx1) % n1 * n2  # [n1 (a), n1 (j1)]: x_a^{j1}
    e1 = (idx1[:, None, None] * idx2 + n1 * (idx2[:, None] * idx2)) % n  # [n1 (a), n2 (d), n2 (b)]
    sign = 1.0 if inverse else -1.0
    w0 = torch.polar(one, sign * 2 * math.pi * e0.to(real) / n).expand(n2, n1, n1).contiguous()
    w1 = torch.polar(one, sign * 2 * math.pi * e1.to(real) / n)
    if inverse:  # ifft = conj(fft) / n
        w1 = w1 / n
    return [w0.to(dtype), w1.to(dtype)]


def transpose_grid(x: Tensor, n1: int, n2: int) -> Tensor:
    """``x: [..., n1 n2]`` read as an ``[n1, n2]`` grid and transposed: index ``j1 n2 + b -> b n1 + j1``."""
    return x.unflatten(-1, (n1, n2)).transpose(-1, -2).flatten(-2)


def monarch_fft(x: Tensor, sizes: tuple[int, int] | None = None, *, inverse: bool = False) -> Tensor:
    """``torch.fft.fft(x)`` (``inverse``: ``ifft``) along the last dim as two batched matmuls.

    Args:
        x: `[..., N]` complex (complex64 or complex128).
        sizes: ``(n1, n2)`` with ``n1 n2 = N`` (default: the most balanced factorisation).
        inverse: default False.

    Returns:
        `[..., N]` complex.
    """
    from subq.ops.monarch.naive import monarch_factor_sizes

    if not isinstance(x, Tensor) or not x.is_complex():
        raise TypeError(f"x must be a complex tensor [..., N], got {getattr(x, 'dtype', type(x))}")
    N = x.shape[-1]
    n1, n2 = sizes if sizes is not None else monarch_factor_sizes(N, 2)
    if n1 * n2 != N:
        raise ValueError(f"sizes must multiply to N={N}, got {sizes}")
    factors = dft_factors(n1, n2, inverse=inverse, dtype=x.dtype, device=x.device)
    return bmm_monarch(transpose_grid(x, n1, n2), factors)


def conv_size(n: int) -> tuple[int, int]:
    """A near-square grid ``(n1, n2)``, ``n1 >= n2``, with ``n1 n2 >= n`` and ``n1 = ceil(sqrt(n))``."""
    n1 = math.isqrt(n - 1) + 1 if n > 1 else 1
    return n1, -(-n // n1)


def monarch_conv(u: Tensor, h: Tensor, bias: Tensor | None = None, *, causal: bool = True) -> Tensor:
    """Long convolution through Monarch evaluation and interpolation; the semantics of
    :func:`~subq.ops.long_conv.naive.naive_long_conv`.

    Causal: ``u`` and ``h`` are the coefficients of polynomials of degree ``< T`` and ``< L``; both
    are evaluated at ``n >= T + L - 1`` roots of unity by a Monarch DFT, multiplied, and interpolated
    by the inverse Monarch DFT. The product has degree ``< n``, so nothing wraps around, and
    coefficient ``t`` of a product only involves ``u_0 .. u_t``: causal by construction (up to
    rounding, as any transform). Bidirectional: the two-sided kernel ``[h_fwd, 0 ... 0, h_rev
    reversed]`` of length ``n >= T + L`` (a circular convolution that does not wrap onto the outputs).
    Cost ``O(B C n^1.5)`` (complex64, complex128 for float64 inputs).

    Args:
        u: `[B, T, C]`.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``), ``1 <= L <= T``.
        bias: `[C]` or None (default None): adds ``bias * u``.
        causal: default True.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    B, T, C, L = check_long_conv(u, h, bias, causal)
    acc = compute_dtype(u)
    cplx = torch.complex128 if acc == torch.float64 else torch.complex64
    n1, n2 = conv_size(T + L - 1 if causal else T + L)
    n = n1 * n2
    if causal:
        kernel = F.pad(h.to(acc), (0, n - L))  # [C, n]
    else:
        gap = torch.zeros(C, n - 2 * L, dtype=acc, device=u.device)
        kernel = torch.cat([h[0].to(acc), gap, h[1].to(acc).flip(-1)], dim=-1)  # [C, n]
    x = F.pad(u.to(acc).transpose(1, 2), (0, n - T))  # [B, C, n]
    u_f = monarch_fft(x.to(cplx), (n1, n2))  # evaluations of u, [B, C, n]
    k_f = monarch_fft(kernel.to(cplx), (n1, n2))  # [C, n]
    y = monarch_fft(u_f * k_f, (n1, n2), inverse=True).real[..., :T].transpose(1, 2)  # [B, T, C]
    if bias is not None:
        y = y + bias.to(acc) * u.to(acc)
    return y.to(u.dtype)
