"""Reference Monarch multiply: build the dense matrix from its factors and multiply; the input checks
shared by every form; the causal convolution as polynomial evaluation and interpolation at arbitrary
points (dense Vandermonde matrices)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_monarch",
    "grid_sizes",
    "monarch_factor_shapes",
    "monarch_factor_sizes",
    "monarch_matrix",
    "naive_monarch",
    "naive_poly_conv",
    "rotation_permutation",
]


def monarch_factor_shapes(in_sizes: Sequence[int], out_sizes: Sequence[int] | None = None) -> list[tuple]:
    """Shapes ``[blocks, out, in]`` of the ``p = len(in_sizes)`` factors of a Monarch matrix that maps
    the grid ``in_sizes`` (``N_in = prod(in_sizes)``, row-major) to the grid ``out_sizes`` (default:
    ``in_sizes``, a square matrix).

    Factor ``i`` (applied ``i``-th) acts on grid axis ``a = p - 1 - i``: ``in_sizes[a] -> out_sizes[a]``,
    with one block for every index of the other axes, ``prod(out_sizes[a+1:]) * prod(in_sizes[:a])``.
    """
    in_sizes = tuple(in_sizes)
    out_sizes = in_sizes if out_sizes is None else tuple(out_sizes)
    if not in_sizes or len(in_sizes) != len(out_sizes):
        raise ValueError(
            f"in_sizes and out_sizes must be non-empty and of one length, got {in_sizes}, {out_sizes}"
        )
    for s in (*in_sizes, *out_sizes):
        if not isinstance(s, int) or s < 1:
            raise ValueError(
                f"grid sizes must be positive ints, got in_sizes={in_sizes}, out_sizes={out_sizes}"
            )
    p = len(in_sizes)
    shapes = []
    for i in range(p):
        a = p - 1 - i
        blocks = math.prod(out_sizes[a + 1 :]) * math.prod(in_sizes[:a])
        shapes.append((blocks, out_sizes[a], in_sizes[a]))
    return shapes


def grid_sizes(factors: Sequence[Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(in_sizes, out_sizes)`` of the grids that ``factors`` (``[blocks, out, in]`` each) map between.

    Raises ``ValueError`` naming the factor whose block count does not fit the grid.
    """
    if isinstance(factors, Tensor) or not isinstance(factors, Sequence) or len(factors) == 0:
        raise TypeError("factors must be a non-empty sequence of [blocks, out, in] tensors")
    for i, w in enumerate(factors):
        if not isinstance(w, Tensor):
            raise TypeError(f"factors[{i}] must be a torch.Tensor [blocks, out, in], got {type(w).__name__}")
        if w.dim() != 3:
            raise ValueError(f"factors[{i}] must be 3-D [blocks, out, in], got shape {tuple(w.shape)}")
    in_sizes = tuple(int(w.shape[2]) for w in reversed(factors))
    out_sizes = tuple(int(w.shape[1]) for w in reversed(factors))
    expected = monarch_factor_shapes(in_sizes, out_sizes)
    for i, (w, shape) in enumerate(zip(factors, expected, strict=True)):
        if tuple(w.shape) != shape:
            raise ValueError(
                f"factors[{i}] must be {list(shape)} for the grid in_sizes={in_sizes} -> "
                f"out_sizes={out_sizes}, "
                f"got {list(w.shape)} (shapes of all factors: {[list(f.shape) for f in factors]})"
            )
    return in_sizes, out_sizes


def check_monarch(x: Tensor, factors: Sequence[Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate ``x: [..., N_in]`` against ``factors``; returns the grids ``(in_sizes, out_sizes)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor [..., N], got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension [..., N], got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x must be floating point or complex, got dtype {x.dtype}")
    in_sizes, out_sizes = grid_sizes(factors)
    if x.shape[-1] != math.prod(in_sizes):
        raise ValueError(
            f"x last dim must be N_in = prod(in_sizes) = {'*'.join(map(str, in_sizes))} = "
            f"{math.prod(in_sizes)}, "
            f"got {x.shape[-1]} (shape {tuple(x.shape)}); see monarch_factor_sizes for a factorisation of N"
        )
    for i, w in enumerate(factors):
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(
                f"factors[{i}] must match x's dtype and device ({x.dtype}, {x.device}), "
                f"got ({w.dtype}, {w.device})"
            )
    return in_sizes, out_sizes


def monarch_factor_sizes(n: int, order: int = 2) -> tuple[int, ...]:
    """The most balanced factorisation ``n = s_0 * ... * s_{order-1}`` (largest factor as small as
    possible, sizes descending): the grid of an order-``order`` Monarch matrix of size ``n``.

    Every ``n >= 1`` has one; an ``n`` with no factor near ``n^(1/order)`` (a prime, say) gets an
    unbalanced grid such as ``(n, 1)``, whose Monarch matrix is dense (cost ``n^2``). Callers that need
    the ``O(n^1.5)`` cost pad to a nearby ``n`` instead (see ``README.md``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int, got {order!r}")
    if order == 1:
        return (n,)
    best: tuple[int, ...] | None = None
    for d in range(1, n + 1):
        if n % d:
            continue
        rest = monarch_factor_sizes(n // d, order - 1)
        cand = tuple(sorted((d, *rest), reverse=True))
        if best is None or (cand[0], cand) < (best[0], best):
            best = cand
        if d * d > n and d > 1:
            break
    return best


def rotation_permutation(sizes: Sequence[int]) -> Tensor:
    """``perm`` with ``y = x[perm]`` moving the last axis of the row-major grid ``sizes`` to the front."""
    n = math.prod(sizes)
    return torch.arange(n).reshape(tuple(sizes)).movedim(-1, 0).reshape(-1)


def monarch_matrix(factors: Sequence[Tensor]) -> Tensor:
    """The dense ``[N_out, N_in]`` matrix ``M = (Q_p B_p) ... (Q_1 B_1)`` of a Monarch product.

    ``B_i = block_diag(factors[i-1])`` and ``Q_i`` the permutation that moves the grid's last axis to
    the front after step ``i``; for order 2 this is ``M = P L P^T R`` (Dao et al.).
    """
    in_sizes, out_sizes = grid_sizes(factors)
    w0 = factors[0]
    n_in = math.prod(in_sizes)
    M = torch.eye(n_in, dtype=w0.dtype, device=w0.device)
    p = len(factors)
    grid = list(in_sizes)  # current (rotated) grid
    for i, w in enumerate(factors):
        B = torch.block_diag(*w.unbind(0))  # [blocks * out, blocks * in]
        grid[-1] = out_sizes[p - 1 - i]
        perm = rotation_permutation(grid).to(w.device)
        M = B[perm] @ M
        grid = [grid[-1], *grid[:-1]]
    return M


def naive_monarch(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``y = M x`` with the dense Monarch matrix (``O(N_out N_in)``): the reference.

    Args:
        x: `[..., N_in]`, real or complex.
        factors: ``p`` tensors ``[blocks, out, in]`` (see :func:`monarch_factor_shapes`), x's dtype.

    Returns:
        ``y: [..., N_out]``.
    """
    check_monarch(x, factors)
    return x @ monarch_matrix(factors).transpose(0, 1)


def naive_poly_conv(u: Tensor, h: Tensor, points: Tensor) -> Tensor:
    """Causal convolution by polynomial evaluation and interpolation at arbitrary points (the M2
    construction with the monomial basis, dense): ``y = V^{-1} ((V h) * (V u))[:T]`` with
    ``V[k, j] = points[k]^j`` of size ``n = len(points) >= T + L - 1``, ``u`` and ``h`` zero-padded to
    ``n``. Computed in complex128.

    Args:
        u: `[B, T, C]`.
        h: `[C, L]`, ``L <= T``.
        points: `[n]` distinct complex evaluation points, ``n >= T + L - 1``.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``: ``y[t] = sum_j h[j] u[t - j]`` for any distinct points.
    """
    B, T, C = u.shape
    L = h.shape[-1]
    n = points.shape[0]
    if n < T + L - 1:
        raise ValueError(f"points must number at least T + L - 1 = {T + L - 1}, got {n}")
    z = points.to(torch.complex128)
    V = z[:, None] ** torch.arange(n, dtype=torch.float64, device=z.device)  # [n, n]
    uf = torch.nn.functional.pad(u.transpose(1, 2).to(torch.complex128), (0, n - T))  # [B, C, n]
    hf = torch.nn.functional.pad(h.to(torch.complex128), (0, n - L))  # [C, n]
    prod = (uf @ V.T) * (hf @ V.T)  # evaluations, [B, C, n]
    coeffs = torch.linalg.solve(V, prod.reshape(-1, n).T).T.reshape(B, C, n)  # interpolation
    return coeffs[..., :T].real.transpose(1, 2).to(u.dtype)
