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

import torch
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
    return _BlockdiagMultiply.apply(x, w)


def _blockdiag_out(x: Tensor, w: Tensor) -> Tensor:
    """``x: [M, nb n]``, ``w: [nb, o, n]`` (any strides) -> ``[M, nb o]`` without a transposing copy:
    ``torch.bmm`` reads the blocks of ``x`` and writes those of ``y`` as strided views ``[nb, M, .]``
    (leading dimension ``nb n``, resp. ``nb o``), which cuBLAS's strided-batched GEMM takes as they are."""
    nb, o, n = w.shape
    M = x.shape[0]
    y = x.new_empty(M, nb * o)
    torch.bmm(x.view(M, nb, n).transpose(0, 1), w.transpose(1, 2), out=y.view(M, nb, o).transpose(0, 1))
    return y


class _BlockdiagMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        batch = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        ctx.save_for_backward(x2, w)
        ctx.batch = batch
        return _blockdiag_out(x2, w).view(*batch, -1)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, w = ctx.saved_tensors
        nb, o, n = w.shape
        dy2 = dy.reshape(-1, nb * o)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _blockdiag_out(dy2, w.transpose(1, 2)).view(*ctx.batch, nb * n)
        if ctx.needs_input_grad[1]:
            M = x2.shape[0]
            # dw[b] = dy_b^T x_b: [nb, o, M] @ [nb, M, n]
            dw = torch.bmm(dy2.view(M, nb, o).permute(1, 2, 0), x2.view(M, nb, n).transpose(0, 1))
        return dx, dw


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
