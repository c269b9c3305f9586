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
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.gated_rmsnorm.naive import check_gated_rmsnorm, check_summed


@triton.jit
def _row(p, row, s_row, idx, m):
    return tl.load(p + row * s_row + idx, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _normalise(a, b_z, w, out, rstd, row, s_o, idx, m, o_g, eps, G: tl.constexpr, GS: tl.constexpr,
               BEFORE: tl.constexpr):  # fmt: skip
    """Store the gated RMSNorm of the row ``a [BG, BS]`` (float32) with gate input ``b_z``, and its
    ``rstd [G]``."""
    gate = b_z * tl.sigmoid(b_z)
    if not BEFORE:
        a = a * gate
    r = 1.0 / tl.sqrt(tl.sum(a * a, 1) / GS + eps)  # [BG]
    o = a * r[:, None] * tl.load(w + idx, mask=m, other=0.0).to(tl.float32)
    if BEFORE:
        o = o * gate
    tl.store(out + row * s_o + idx, o.to(out.dtype.element_ty), mask=m)
    tl.store(rstd + row * G + o_g, r, mask=o_g < G)


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
    _normalise(b_y, b_z, w, out, rstd, row, s_o, idx, m, o_g, eps, G, GS, BEFORE)


@triton.jit
def summed_gated_rmsnorm_fwd_kernel(
    yf, yb, x, delta, z, w, out, rstd, ysum, T, s_x, s_z, s_o, eps,
    P: tl.constexpr, G: tl.constexpr, GS: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr,
    BEFORE: tl.constexpr, SHIFT: tl.constexpr, DIAG: tl.constexpr, STORE_SUM: tl.constexpr,
):  # fmt: skip
    # row (b, t): y = yf[t - SHIFT] + yb[t + SHIFT] (+ x delta), rows outside [0, T) zero; yf and yb
    # contiguous [rows, d]; delta [rows, d / P] contiguous (one value per head of P channels)
    row = tl.program_id(0).to(tl.int64)
    t = row % T
    o_g, o_s = tl.arange(0, BG), tl.arange(0, BS)
    m = (o_g < G)[:, None] & (o_s < GS)[None, :]
    idx = o_g[:, None] * GS + o_s[None, :]
    D: tl.constexpr = G * GS
    if SHIFT:
        b_t = tl.zeros([BG, BS], dtype=tl.int64) + t  # the token, as a mask operand
        a = _row(yf, row - 1, D, idx, m & (b_t > 0)) + _row(yb, row + 1, D, idx, m & (b_t < T - 1))
    else:
        a = _row(yf, row, D, idx, m) + _row(yb, row, D, idx, m)
    if DIAG:
        b_d = tl.load(delta + row * (D // P) + idx // P, mask=m, other=0.0).to(tl.float32)
        a += _row(x, row, s_x, idx, m) * b_d
    if STORE_SUM:  # for the backward
        tl.store(ysum + row * D + idx, a.to(ysum.dtype.element_ty), mask=m)
    _normalise(a, _row(z, row, s_z, idx, m), w, out, rstd, row, s_o, idx, m, o_g, eps, G, GS, BEFORE)


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
        dy, dz, dw = _backward(y2, z2, w, rstd, dout, ctx.before, ctx.blocks)
        return dy.view(ctx.shape), dz.view(ctx.shape), dw, None, None, None


def _backward(y2: Tensor, z2: Tensor, w: Tensor, rstd: Tensor, dout: Tensor, before: bool, blocks: dict):
    """``(dy, dz [rows, d], dweight)`` from the normalised rows ``y2``, gate inputs ``z2`` and ``rstd``."""
    do = _rows(dout)
    rows, d = y2.shape
    dy = torch.empty(y2.shape, device=y2.device, dtype=y2.dtype)
    dz = torch.empty(z2.shape, device=z2.device, dtype=z2.dtype)
    per = 16  # token rows per program: one float32 partial of dweight per program
    programs = triton.cdiv(rows, per)
    dw = torch.empty(programs, d, device=w.device, dtype=torch.float32)
    gated_rmsnorm_bwd_kernel[(programs,)](
        y2, z2, w, rstd, do, dy, dz, dw, rows, y2.stride(0), z2.stride(0), do.stride(0), dy.stride(0),
        dz.stride(0), BEFORE=before, ROWS=per, **blocks, num_warps=4 if d <= 2048 else 8,
    )  # fmt: skip
    return dy, dz, dw.sum(0).to(w.dtype)


class TritonSummedGatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_f, y_b, x, delta, z, w, eps, before, group_size, shifted, store):
        b, T, H, P = y_f.shape
        d = H * P
        yf, yb, z2 = y_f.reshape(-1, d).contiguous(), y_b.reshape(-1, d).contiguous(), _rows(z)
        x2 = _rows(x.flatten(-2)) if x is not None else None
        dl = delta.reshape(-1, H).contiguous() if delta is not None else None
        rows = yf.shape[0]
        out = torch.empty(rows, d, device=y_f.device, dtype=y_f.dtype)
        blocks = _blocks(d, group_size)
        rstd = torch.empty(rows, blocks["G"], device=y_f.device, dtype=torch.float32)
        ysum = torch.empty(rows, d, device=y_f.device, dtype=torch.float32) if store else None
        summed_gated_rmsnorm_fwd_kernel[(rows,)](
            yf, yb, x2, dl, z2, w, out, rstd, ysum, T, 0 if x2 is None else x2.stride(0), z2.stride(0),
            out.stride(0), eps, P=P, BEFORE=before, SHIFT=shifted, DIAG=x is not None, STORE_SUM=store,
            **blocks, num_warps=4 if d <= 2048 else 8,
        )  # fmt: skip
        if store:
            ctx.save_for_backward(ysum, z2, w, rstd, x, delta)
        ctx.before, ctx.blocks, ctx.shifted = before, blocks, shifted
        ctx.shapes, ctx.dtypes = (y_f.shape, z.shape), (y_f.dtype, y_b.dtype)
        return out.view(z.shape)

    @staticmethod
    def backward(ctx, dout: Tensor):
        ysum, z2, w, rstd, x, delta = ctx.saved_tensors
        dsum, dz, dw = _backward(ysum, z2, w, rstd, dout, ctx.before, ctx.blocks)
        dsum = dsum.view(ctx.shapes[0])  # float32 [b, T, H, P]
        if ctx.shifted:  # y[t] took y_f[t - 1] and y_b[t + 1]
            dyf = F.pad(dsum[:, 1:], (0, 0, 0, 0, 0, 1))
            dyb = F.pad(dsum[:, :-1], (0, 0, 0, 0, 1, 0))
        else:
            dyf = dyb = dsum
        dx = ddelta = None
        if x is not None:
            dx = (dsum * delta[..., None]).to(x.dtype)
            ddelta = (dsum * x).sum(-1).to(delta.dtype)
        dyf, dyb = dyf.to(ctx.dtypes[0]), dyb.to(ctx.dtypes[1])
        return dyf, dyb, dx, ddelta, dz.view(ctx.shapes[1]), dw, None, None, None, None, None


def triton_gated_rmsnorm(
    y: Tensor, z: Tensor, weight: Tensor, *, eps: float = 1e-5, norm_before_gate: bool, group_size: int
) -> Tensor:
    """:func:`~subq.ops.gated_rmsnorm.naive.naive_gated_rmsnorm` by the Triton kernels (float32 inside);
    the output in the dtype of ``y``."""
    check_gated_rmsnorm(y, z, weight, group_size)
    return TritonGatedRMSNorm.apply(y, z, weight, float(eps), bool(norm_before_gate), group_size)


def triton_summed_gated_rmsnorm(
    y_f: Tensor,
    y_b: Tensor,
    z: Tensor,
    weight: Tensor,
    *,
    x: Tensor | None = None,
    delta: Tensor | None = None,
    shifted: bool,
    eps: float = 1e-5,
    norm_before_gate: bool,
    group_size: int,
) -> Tensor:
    """:func:`~subq.ops.gated_rmsnorm.naive.naive_summed_gated_rmsnorm` in one forward kernel: the
    sum is formed in float32 in registers (written only when a gradient is needed)."""
    check_summed(y_f, y_b, z, weight, x, delta, group_size)
    inputs = (y_f, y_b, x, delta, z, weight)
    # the autograd function sees needs_input_grad without the grad mode: decide here
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return TritonSummedGatedRMSNorm.apply(
        *inputs, float(eps), bool(norm_before_gate), group_size, bool(shifted), store
    )
