"""Monarch multiply as ``p`` batched matmuls with the permutations folded into the views between them:
``O(N (s_0 + ... + s_{p-1}))`` for the grid ``s``, ``2 N^1.5`` for a square order-2 matrix.

The layout between two steps is ``[blocks, batch, size]``: each ``torch.bmm`` reads its blocks with
the batch in the middle, and the permutation to the next step's blocks costs one strided copy (as in
``blockdiag_butterfly_multiply`` of ``HazyResearch/m2``). Gradients come from autograd through the
matmuls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from subq.ops.monarch.naive import check_monarch


def blockdiag_multiply(x: Tensor, w: Tensor) -> Tensor:
    """``y = blockdiag(w) x``: one block-diagonal factor without permutation.

    Args:
        x: `[..., blocks * in]`.
        w: `[blocks, out, in]`, x's dtype and device.

    Returns:
        ``y: [..., blocks * out]``, block ``b`` of ``y`` is ``w[b] @`` block ``b`` of ``x``.
    """
    if not isinstance(w, Tensor) or w.dim() != 3:
        raise ValueError(f"w must be a 3-D tensor [blocks, out, in], got {getattr(w, 'shape', type(w))}")
    nb, o, n = w.shape
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != nb * n:
        raise ValueError(
            f"x must be [..., blocks * in] = [..., {nb} * {n} = {nb * n}] for w of shape {tuple(w.shape)}, "
            f"got {tuple(getattr(x, 'shape', ()))}"
        )
    if w.dtype != x.dtype or w.device != x.device:
        raise ValueError(
            f"w must match x's dtype and device ({x.dtype}, {x.device}), got ({w.dtype}, {w.device})"
        )
    batch = x.shape[:-1]
    xb = x.reshape(-1, nb, n).transpose(0, 1)  # [nb, Bt, n]
    y = xb @ w.transpose(1, 2)  # [nb, Bt, o]
    return y.transpose(0, 1).reshape(*batch, nb * o)


def bmm_monarch(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``y = M x`` for the Monarch product of ``factors``, one ``bmm`` per factor.

    Args:
        x: `[..., N_in]`, real or complex.
        factors: ``p`` tensors ``[blocks, out, in]`` (see
            :func:`~subq.ops.monarch.naive.monarch_factor_shapes`), x's dtype and device.

    Returns:
        ``y: [..., N_out]``; equals :func:`~subq.ops.monarch.naive.naive_monarch`.
    """
    in_sizes, out_sizes = check_monarch(x, factors)
    batch = x.shape[:-1]
    Bt = math.prod(batch)
    grid = list(in_sizes)  # the current (rotated) grid
    h = x.reshape(Bt, -1, grid[-1]).transpose(0, 1)  # [blocks, Bt, in]
    for i, w in enumerate(factors):
        y = h @ w.transpose(1, 2)  # [blocks, Bt, out]
        o = w.shape[1]
        y = y.view(*grid[:-1], Bt, o)  # block axes = the grid without its last axis
        k = len(grid)
        grid = [o, *grid[:-1]]
        if i == len(factors) - 1:
            h = y.permute(k - 1, k, *range(k - 1))  # [Bt, o, *old grid[:-1]] = [Bt, *grid]
            break
        # next blocks: [o, *grid[1:-1]]; next contraction axis: grid[-1]
        h = y.permute(k, *range(k - 2), k - 1, k - 2).reshape(-1, Bt, grid[-1])
    return h.reshape(*batch, math.prod(out_sizes))
