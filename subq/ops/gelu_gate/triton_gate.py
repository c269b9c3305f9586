"""Triton GELU gate, forward and backward: one read of ``h`` and one write of the output (forward),
one read of ``h`` and ``dy`` and one write of ``dh`` (backward), float32 inside.

With ``Phi`` the standard normal CDF and ``phi`` its density, ``GELU(g) = g Phi(g)`` and
``GELU'(g) = Phi(g) + g phi(g)``: ``dg = dy v GELU'(g)``, ``dv = dy GELU(g)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.gelu_gate.naive import check_gelu_gate

BLOCK_M, BLOCK_N = 4, 1024
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _tile(h, M, n, s_h, BM: tl.constexpr, BN: tl.constexpr):
    """The program's ``[BM, BN]`` tile: rows, columns, mask, and the gate ``g`` and value ``v`` (float32)."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    m = (rows < M)[:, None] & (cols < n)[None, :]
    p = h + rows[:, None] * s_h + cols[None, :]
    g = tl.load(p, mask=m, other=0.0).to(tl.float32)
    v = tl.load(p + n, mask=m, other=0.0).to(tl.float32)
    return rows, cols, m, g, v


@triton.jit
def gelu_gate_fwd_kernel(h, out, M, n, s_h, s_o, BM: tl.constexpr, BN: tl.constexpr):
    rows, cols, m, g, v = _tile(h, M, n, s_h, BM, BN)
    y = 0.5 * g * (1.0 + tl.erf(g * _SQRT1_2)) * v
    tl.store(out + rows[:, None] * s_o + cols[None, :], y.to(out.dtype.element_ty), mask=m)


@triton.jit
def gelu_gate_bwd_kernel(h, dy, dh, M, n, s_h, s_dy, s_dh, BM: tl.constexpr, BN: tl.constexpr):
    rows, cols, m, g, v = _tile(h, M, n, s_h, BM, BN)
    d = tl.load(dy + rows[:, None] * s_dy + cols[None, :], mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(g * _SQRT1_2))
    pdf = tl.exp(-0.5 * g * g) * _INV_SQRT_2PI
    q = dh + rows[:, None] * s_dh + cols[None, :]
    tl.store(q, (d * v * (cdf + g * pdf)).to(dh.dtype.element_ty), mask=m)
    tl.store(q + n, (d * g * cdf).to(dh.dtype.element_ty), mask=m)


def _rows(t: Tensor) -> Tensor:
    """``t`` as ``[M, width]`` with a unit last stride (a view when the leading axes merge)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _grid(M: int, n: int) -> tuple[int, int]:
    return triton.cdiv(M, BLOCK_M), triton.cdiv(n, BLOCK_N)


class TritonGeluGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        n = h.shape[-1] // 2
        h2 = _rows(h)
        M = h2.shape[0]
        out = h2.new_empty(M, n)
        gelu_gate_fwd_kernel[_grid(M, n)](h2, out, M, n, h2.stride(0), out.stride(0), BM=BLOCK_M, BN=BLOCK_N)
        ctx.save_for_backward(h2)
        ctx.shape = h.shape
        return out.view(*h.shape[:-1], n)

    @staticmethod
    def backward(ctx, dy: Tensor):
        (h2,) = ctx.saved_tensors
        M, n = h2.shape[0], h2.shape[1] // 2
        dy2 = _rows(dy)
        dh = torch.empty_like(h2)
        gelu_gate_bwd_kernel[_grid(M, n)](
            h2, dy2, dh, M, n, h2.stride(0), dy2.stride(0), dh.stride(0), BM=BLOCK_M, BN=BLOCK_N
        )
        return dh.view(ctx.shape)


def triton_gelu_gate(h: Tensor) -> Tensor:
    """``GELU(h[..., :n]) * h[..., n:]`` by the Triton kernels (CUDA, or Triton's interpreter); same
    semantics as :func:`~subq.ops.gelu_gate.naive.naive_gelu_gate`, float32 inside."""
    check_gelu_gate(h)
    if h.dtype == torch.float64:
        raise TypeError("triton_gelu_gate computes in float32; got float64 (use mode='torch')")
    return TritonGeluGate.apply(h)
