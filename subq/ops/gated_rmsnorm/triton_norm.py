"""Triton gated RMSNorm, forward and backward.

The PyTorch form makes about ten float32 passes over ``[tokens, d]`` (casts, SiLU, square, mean,
scale, weight, gate, cast back). In Hydra's encoder at 4k, elementwise multiplies, adds and copies
are the largest part of the time (``BENCHMARKS.md``, the Hydra profile). Here one program normalises
one token row, ``[G, group_size]`` in registers:

- forward: read ``y`` and ``z``, write the output and ``rstd [rows, G]``;
- backward: ``ROWS`` token rows per program, writing ``dy``, ``dz`` and one float32 partial of
  ``dweight`` per program (summed by the caller).

With ``n = y rstd`` (``norm_before_gate``) or ``n = y SiLU(z) rstd`` and ``dn`` the gradient reaching
``n``: ``d(pre-norm) = rstd (dn - n mean(dn n))`` per group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.gated_rmsnorm.naive import check_gated_rmsnorm


@triton.jit
def _row(p, row, s_row, idx, m):
    return tl.load(p + row * s_row + idx, mask=m, other=0.0).to(tl.float32)


@triton.jit
def gated_rmsnorm_fwd_kernel(
    y, z, w, out, rstd, s_y, s_z, s_o, eps,
    G: tl.constexpr, GS: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr, BEFORE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    o_g, o_s = tl.arange(0, BG), tl.arange(0, BS)
    m = (o_g < G)[:, None] & (o_s < GS)[None, :]
    idx = o_g[:, None] * GS + o_s[None, :]
    b_y, b_z = _row(y, row, s_y, idx, m), _row(z, row, s_z, idx, m)
    gate = b_z * tl.sigmoid(b_z)
    a = b_y if BEFORE else b_y * gate
    r = 1.0 / tl.sqrt(tl.sum(a * a, 1) / GS + eps)  # [BG]
    o = a * r[:, None] * tl.load(w + idx, mask=m, other=0.0).to(tl.float32)
    if BEFORE:
        o = o * gate
    tl.store(out + row * s_o + idx, o.to(out.dtype.element_ty), mask=m)
    tl.store(rstd + row * G + o_g, r, mask=o_g < G)


@triton.jit
def gated_rmsnorm_bwd_kernel(
    y, z, w, rstd, do, dy, dz, dw, n_rows, s_y, s_z, s_do, s_dy, s_dz,
    G: tl.constexpr, GS: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr, BEFORE: tl.constexpr,
    ROWS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    o_g, o_s = tl.arange(0, BG), tl.arange(0, BS)
    m_gs = (o_g < G)[:, None] & (o_s < GS)[None, :]
    idx = o_g[:, None] * GS + o_s[None, :]
    b_w = tl.load(w + idx, mask=m_gs, other=0.0).to(tl.float32)
    acc = tl.zeros([BG, BS], dtype=tl.float32)
    for i in range(ROWS):
        # rows past the end redo the last row: the same stores, no share of dweight
        row = pid.to(tl.int64) * ROWS + i
        valid = (row < n_rows).to(tl.float32)
        row = tl.minimum(row, n_rows - 1)
        m = m_gs
        b_y, b_z, b_do = _row(y, row, s_y, idx, m), _row(z, row, s_z, idx, m), _row(do, row, s_do, idx, m)
        r = tl.load(rstd + row * G + o_g, mask=o_g < G, other=0.0)
        sig = tl.sigmoid(b_z)
        gate = b_z * sig
        dgate = sig * (1.0 + b_z * (1.0 - sig))  # d SiLU / dz
        if BEFORE:
            n = b_y * r[:, None]
            dn = b_do * b_w * gate
            acc += valid * (b_do * n * gate)
            b_dz = b_do * n * b_w * dgate
            b_dy = r[:, None] * (dn - n * (tl.sum(dn * n, 1) / GS)[:, None])
        else:
            n = b_y * gate * r[:, None]
            dn = b_do * b_w
            acc += valid * (b_do * n)
            da = r[:, None] * (dn - n * (tl.sum(dn * n, 1) / GS)[:, None])
            b_dy = da * gate
            b_dz = da * b_y * dgate
        tl.store(dy + row * s_dy + idx, b_dy.to(dy.dtype.element_ty), mask=m)
        tl.store(dz + row * s_dz + idx, b_dz.to(dz.dtype.element_ty), mask=m)
    tl.store(dw + pid.to(tl.int64) * G * GS + idx, acc, mask=m_gs)


def _rows(t: Tensor) -> Tensor:
    """``t: [..., d]`` as ``[rows, d]`` with a unit last stride (a view when the strides allow)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(1) == 1 else t.contiguous()


def _blocks(d: int, group_size: int) -> dict:
    G = d // group_size
    return dict(G=G, GS=group_size, BG=triton.next_power_of_2(G), BS=triton.next_power_of_2(group_size))


class TritonGatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor, w: Tensor, eps: float, before: bool, group_size: int) -> Tensor:
        shape, d = y.shape, y.shape[-1]
        y2, z2 = _rows(y), _rows(z)
        out = torch.empty(y2.shape, device=y.device, dtype=y.dtype)
        blocks = _blocks(d, group_size)
        rstd = torch.empty(y2.shape[0], blocks["G"], device=y.device, dtype=torch.float32)
        gated_rmsnorm_fwd_kernel[(y2.shape[0],)](
            y2, z2, w, out, rstd, y2.stride(0), z2.stride(0), out.stride(0), eps, BEFORE=before, **blocks,
            num_warps=4 if d <= 2048 else 8,
        )  # fmt: skip
        ctx.save_for_backward(y2, z2, w, rstd)
        ctx.before, ctx.blocks, ctx.shape = before, blocks, shape
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout: Tensor):
        y2, z2, w, rstd = ctx.saved_tensors
        do = _rows(dout)
        rows, d = y2.shape
        dy = torch.empty(y2.shape, device=y2.device, dtype=y2.dtype)
        dz = torch.empty(z2.shape, device=z2.device, dtype=z2.dtype)
        per = 16  # token rows per program: one float32 partial of dweight per program
        programs = triton.cdiv(rows, per)
        dw = torch.empty(programs, d, device=w.device, dtype=torch.float32)
        gated_rmsnorm_bwd_kernel[(programs,)](
            y2, z2, w, rstd, do, dy, dz, dw, rows, y2.stride(0), z2.stride(0), do.stride(0), dy.stride(0),
            dz.stride(0), BEFORE=ctx.before, ROWS=per, **ctx.blocks, num_warps=4 if d <= 2048 else 8,
        )  # fmt: skip
        return dy.view(ctx.shape), dz.view(ctx.shape), dw.sum(0).to(w.dtype), None, None, None


def triton_gated_rmsnorm(
    y: Tensor, z: Tensor, weight: Tensor, *, eps: float = 1e-5, norm_before_gate: bool, group_size: int
) -> Tensor:
    """:func:`~subq.ops.gated_rmsnorm.naive.naive_gated_rmsnorm` by the Triton kernels (float32 inside);
    the output in the dtype of ``y``."""
    check_gated_rmsnorm(y, z, weight, group_size)
    return TritonGatedRMSNorm.apply(y, z, weight, float(eps), bool(norm_before_gate), group_size)
