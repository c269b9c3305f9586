"""Triton kernels of Hyena's input stage, channels first: the short convolution over the ``(N + 1) d``
projected channels, the projection's bias, and the first gate, in one pass each way.

``p: [B, (N + 1) d, T]`` contiguous (a projection computed as ``W x^T``), tiles ``[BC, BT]`` with ``T``
along the unit stride. Per tile, channel ``c`` of every group: ``x_0 .. x_{N-2}`` are stored, and
``u = x_{N-1} v`` (the first long convolution's input) is the only thing stored for the last two
groups.

- ``gated_short_conv_fwd_kernel``: the convolution of the ``k`` shifted input tiles in float32.
- The backward: ``dp[t] = sum_m w[k - 1 - m] dc[t + m]``, where ``dc = dxs`` for the stored groups
  and, for the gated pair, ``dc_gate = du v`` and ``dc_v = du x_{N-1}``; per tile, partial sums of
  ``dw``, of ``dbias`` (``sum dc``) and of ``d in_bias`` (``sum dp``) in float32, summed over tiles by
  the caller (deterministic). Two forms (``BACKWARD``):

  - ``"split"`` (default): ``gated_short_conv_dc_kernel`` recomputes the pair's convolution once,
    stores its ``dc`` (in the dtype of ``p``) and the partials; ``gated_short_conv_dp_kernel`` computes
    ``dp`` from ``dc`` and ``dxs``, one group per program;
  - ``"fused"``: ``gated_short_conv_bwd_kernel`` recomputes the pair's convolution at each shift ``m``
    (``k^2`` unaligned tile loads per group, served by the cache) and stores only ``dp``: less
    traffic, but bound by its loads' instructions (2.1-2.7 ms at ``T = 2^20``, ``d = 128`` on an H200,
    against 0.46 ms for the forward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.common.launch import fast_launch
from subq.ops.gated_short_conv.naive import check_gated_short_conv

# [BC, BT] tiles and warps, the fastest of the sweeps at T = 2^20, d = 128 on an H200 (BENCHMARKS.md)
FWD_LAUNCH, BWD_LAUNCH, SPLIT_LAUNCH = (2, 1024, 4), (1, 512, 2), (1, 512, 2)
BACKWARD = "split"
"""``"split"``: two passes (the gated pair's ``dc`` through HBM, then ``dp``); ``"fused"``: one kernel
that recomputes the pair's convolution at every shift."""


@triton.jit
def _tap(p, rows, m_c, o_t, T, b_in, j, K: tl.constexpr, HAS_IN_BIAS: tl.constexpr):
    """``(p + in_bias)[rows, t - (K - 1) + j]`` in float32 for the tile's ``t``, zero outside
    ``0 <= t - (K - 1) + j < T``."""
    t_in = o_t - (K - 1) + j
    m = m_c[:, None] & ((t_in >= 0) & (t_in < T))[None, :]
    x = tl.load(p + rows[:, None].to(tl.int64) * T + t_in[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_IN_BIAS:
        x = tl.where(m, x + b_in[:, None], 0.0)
    return x


@triton.jit
def _conv(p, w, bias, in_bias, rows, m_c, o_t, T, K: tl.constexpr, HAS_BIAS: tl.constexpr,
          HAS_IN_BIAS: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr):  # fmt: skip
    """The convolution's output ``c[rows, o_t]`` in float32."""
    b_in = tl.load(in_bias + rows, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
    acc = tl.zeros([BC, BT], dtype=tl.float32)
    for j in tl.static_range(K):
        b_w = tl.load(w + rows * K + j, mask=m_c, other=0.0).to(tl.float32)
        acc += _tap(p, rows, m_c, o_t, T, b_in, j, K, HAS_IN_BIAS) * b_w[:, None]
    if HAS_BIAS:
        acc += tl.load(bias + rows, mask=m_c, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _rows(t, rows, T):
    return t + rows[:, None].to(tl.int64) * T


@triton.jit
def gated_short_conv_fwd_kernel(
    p, w, bias, in_bias, xs, u, T, D,
    N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr,
    BC: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t, o_c = i_t * BT + tl.arange(0, BT), i_c * BC + tl.arange(0, BC)
    m_c = o_c < D
    m = m_c[:, None] & (o_t < T)[None, :]
    p += i_b * (N + 1) * D * T
    for g in tl.static_range(N - 1):
        c = _conv(p, w, bias, in_bias, g * D + o_c, m_c, o_t, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
        tl.store(
            _rows(xs + i_b * (N - 1) * D * T + o_t[None, :], g * D + o_c, T),
            c.to(xs.dtype.element_ty),
            mask=m,
        )
    gate = _conv(p, w, bias, in_bias, (N - 1) * D + o_c, m_c, o_t, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
    v = _conv(p, w, bias, in_bias, N * D + o_c, m_c, o_t, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
    tl.store(_rows(u + i_b * D * T + o_t[None, :], o_c, T), (gate * v).to(u.dtype.element_ty), mask=m)


@triton.jit
def _partials(p, dc, rows, m_c, o_t, T, b_in, dw, db, tile, C,
              K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr):  # fmt: skip
    """This tile's ``dw[rows, j] = sum_t dc[t] (p + in_bias)[t - (K - 1) + j]`` and ``dbias = sum_t dc``."""
    for j in tl.static_range(K):
        x = _tap(p, rows, m_c, o_t, T, b_in, j, K, HAS_IN_BIAS)
        tl.store(dw + (tile * C + rows) * K + j, tl.sum(dc * x, 1), mask=m_c)
    if HAS_BIAS:
        tl.store(db + tile * C + rows, tl.sum(dc, 1), mask=m_c)


@triton.jit
def gated_short_conv_bwd_kernel(
    p, w, bias, in_bias, dxs, du, dp, dw, db, dbin, T, D,
    N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr,
    BC: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    tile = i_b * tl.num_programs(0) + i_t  # partials: [tiles, (N + 1) D, K] and [tiles, (N + 1) D]
    C = (N + 1) * D
    o_t, o_c = i_t * BT + tl.arange(0, BT), i_c * BC + tl.arange(0, BC)
    m_c = o_c < D
    m = m_c[:, None] & (o_t < T)[None, :]
    p += i_b * C * T
    dp += i_b * C * T
    # the stored groups: dc = dxs
    for g in tl.static_range(N - 1):
        rows = g * D + o_c
        b_in = tl.load(in_bias + rows, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
        g_dxs = dxs + i_b * (N - 1) * D * T
        acc = tl.zeros([BC, BT], dtype=tl.float32)
        for s in tl.static_range(K):  # output t + s reads input t through tap K - 1 - s
            t_s = o_t + s
            m_s = m_c[:, None] & (t_s < T)[None, :]
            dc = tl.load(_rows(g_dxs + t_s[None, :], rows, T), mask=m_s, other=0.0).to(tl.float32)
            b_w = tl.load(w + rows * K + (K - 1 - s), mask=m_c, other=0.0).to(tl.float32)
            acc += dc * b_w[:, None]
            if s == 0:
                _partials(p, dc, rows, m_c, o_t, T, b_in, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)
        tl.store(_rows(dp + o_t[None, :], rows, T), acc.to(dp.dtype.element_ty), mask=m)
        if HAS_IN_BIAS:
            tl.store(dbin + tile * C + rows, tl.sum(tl.where(m, acc, 0.0), 1), mask=m_c)
    # the gated pair: dc_gate = du v, dc_v = du gate, both recomputed at every shift
    r_g, r_v = (N - 1) * D + o_c, N * D + o_c
    bin_g = tl.load(in_bias + r_g, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
    bin_v = tl.load(in_bias + r_v, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
    acc_g = tl.zeros([BC, BT], dtype=tl.float32)
    acc_v = tl.zeros([BC, BT], dtype=tl.float32)
    for s in tl.static_range(K):
        t_s = o_t + s
        m_s = m_c[:, None] & (t_s < T)[None, :]
        b_du = tl.load(_rows(du + i_b * D * T + t_s[None, :], o_c, T), mask=m_s, other=0.0).to(tl.float32)
        gate = _conv(p, w, bias, in_bias, r_g, m_c, t_s, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
        v = _conv(p, w, bias, in_bias, r_v, m_c, t_s, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
        dc_g, dc_v = b_du * v, b_du * gate
        acc_g += dc_g * tl.load(w + r_g * K + (K - 1 - s), mask=m_c, other=0.0).to(tl.float32)[:, None]
        acc_v += dc_v * tl.load(w + r_v * K + (K - 1 - s), mask=m_c, other=0.0).to(tl.float32)[:, None]
        if s == 0:
            _partials(p, dc_g, r_g, m_c, o_t, T, bin_g, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)
            _partials(p, dc_v, r_v, m_c, o_t, T, bin_v, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)
    tl.store(_rows(dp + o_t[None, :], r_g, T), acc_g.to(dp.dtype.element_ty), mask=m)
    tl.store(_rows(dp + o_t[None, :], r_v, T), acc_v.to(dp.dtype.element_ty), mask=m)
    if HAS_IN_BIAS:
        tl.store(dbin + tile * C + r_g, tl.sum(tl.where(m, acc_g, 0.0), 1), mask=m_c)
        tl.store(dbin + tile * C + r_v, tl.sum(tl.where(m, acc_v, 0.0), 1), mask=m_c)


@triton.jit
def gated_short_conv_dc_kernel(
    p, w, bias, in_bias, dxs, du, dc, dw, db, T, D,
    N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr,
    BC: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    # the split backward's first pass: the gated pair's dc (stored), every group's dw and dbias partials
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    tile = i_b * tl.num_programs(0) + i_t
    C = (N + 1) * D
    o_t, o_c = i_t * BT + tl.arange(0, BT), i_c * BC + tl.arange(0, BC)
    m_c = o_c < D
    m = m_c[:, None] & (o_t < T)[None, :]
    p += i_b * C * T
    for g in tl.static_range(N - 1):
        rows = g * D + o_c
        b_in = tl.load(in_bias + rows, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
        b_dc = tl.load(_rows(dxs + i_b * (N - 1) * D * T + o_t[None, :], rows, T), mask=m, other=0.0)
        _partials(p, b_dc.to(tl.float32), rows, m_c, o_t, T, b_in, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)
    r_g, r_v = (N - 1) * D + o_c, N * D + o_c
    b_du = tl.load(_rows(du + i_b * D * T + o_t[None, :], o_c, T), mask=m, other=0.0).to(tl.float32)
    gate = _conv(p, w, bias, in_bias, r_g, m_c, o_t, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
    v = _conv(p, w, bias, in_bias, r_v, m_c, o_t, T, K, HAS_BIAS, HAS_IN_BIAS, BC, BT)
    dc_g, dc_v = b_du * v, b_du * gate
    dc += i_b * 2 * D * T + o_t[None, :]
    tl.store(_rows(dc, o_c, T), dc_g.to(dc.dtype.element_ty), mask=m)
    tl.store(_rows(dc, D + o_c, T), dc_v.to(dc.dtype.element_ty), mask=m)
    bin_g = tl.load(in_bias + r_g, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
    bin_v = tl.load(in_bias + r_v, mask=m_c, other=0.0).to(tl.float32) if HAS_IN_BIAS else None
    _partials(p, dc_g, r_g, m_c, o_t, T, bin_g, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)
    _partials(p, dc_v, r_v, m_c, o_t, T, bin_v, dw, db, tile, C, K, HAS_BIAS, HAS_IN_BIAS)


@triton.jit
def gated_short_conv_dp_kernel(
    w, dxs, dc, dp, dbin, T, D,
    N: tl.constexpr, K: tl.constexpr, HAS_IN_BIAS: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    # the split backward's second pass, one group per program: dp[t] = sum_s w[K - 1 - s] dc[t + s],
    # dc = dxs for the stored groups and the first pass's output for the gated pair; dbin partials
    i_t, i_gc, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    blocks = tl.cdiv(D, BC)
    i_g, i_c = i_gc // blocks, i_gc % blocks
    tile = i_b * tl.num_programs(0) + i_t
    o_t, o_c = i_t * BT + tl.arange(0, BT), i_c * BC + tl.arange(0, BC)
    m_c = o_c < D
    rows = i_g * D + o_c
    if i_g < N - 1:
        src = dxs + i_b * (N - 1) * D * T
        r_src = rows
    else:
        src = dc + i_b * 2 * D * T
        r_src = rows - (N - 1) * D
    acc = tl.zeros([BC, BT], dtype=tl.float32)
    for s in tl.static_range(K):  # output t + s reads input t through tap K - 1 - s
        t_s = o_t + s
        b_dc = tl.load(_rows(src + t_s[None, :], r_src, T), mask=m_c[:, None] & (t_s < T)[None, :], other=0.0)
        acc += (
            b_dc.to(tl.float32)
            * tl.load(w + rows * K + (K - 1 - s), mask=m_c, other=0.0).to(tl.float32)[:, None]
        )
    m = m_c[:, None] & (o_t < T)[None, :]
    tl.store(_rows(dp + i_b * (N + 1) * D * T + o_t[None, :], rows, T), acc.to(dp.dtype.element_ty), mask=m)
    if HAS_IN_BIAS:
        tl.store(dbin + tile * (N + 1) * D + rows, tl.sum(tl.where(m, acc, 0.0), 1), mask=m_c)


_FWD = fast_launch(gated_short_conv_fwd_kernel)
_BWD = fast_launch(gated_short_conv_bwd_kernel)
_DC = fast_launch(gated_short_conv_dc_kernel)
_DP = fast_launch(gated_short_conv_dp_kernel)


def _grid(T: int, D: int, B: int, launch: tuple[int, int, int]) -> tuple[int, int, int]:
    BC, BT, _ = launch
    return triton.cdiv(T, BT), triton.cdiv(D, BC), B


class TritonGatedShortConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, w: Tensor, bias: Tensor | None, in_bias: Tensor | None, order: int):
        p, w = p.contiguous(), w.contiguous()
        B, C, T = p.shape
        D = C // (order + 1)
        xs = torch.empty(B, (order - 1) * D, T, device=p.device, dtype=p.dtype)
        u = torch.empty(B, D, T, device=p.device, dtype=p.dtype)
        BC, BT, warps = FWD_LAUNCH
        _FWD[_grid(T, D, B, FWD_LAUNCH)](
            p, w, bias, in_bias, xs, u, T, D, N=order, K=w.shape[1], HAS_BIAS=bias is not None,
            HAS_IN_BIAS=in_bias is not None, BC=BC, BT=BT, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(p, w, bias, in_bias)
        ctx.order = order
        return xs, u

    @staticmethod
    def backward(ctx, dxs: Tensor | None, du: Tensor | None):
        p, w, bias, in_bias = ctx.saved_tensors
        B, C, T = p.shape
        N, K = ctx.order, w.shape[1]
        D = C // (N + 1)
        dxs = (
            torch.zeros(B, (N - 1) * D, T, device=p.device, dtype=p.dtype)
            if dxs is None
            else dxs.contiguous()
        )
        du = torch.zeros(B, D, T, device=p.device, dtype=p.dtype) if du is None else du.contiguous()
        launch = BWD_LAUNCH if BACKWARD == "fused" else SPLIT_LAUNCH
        grid = _grid(T, D, B, launch)
        tiles = grid[0] * B
        dp = torch.empty_like(p)
        dw = torch.empty(tiles, C, K, device=p.device, dtype=torch.float32)
        db = torch.empty(tiles, C, device=p.device, dtype=torch.float32) if bias is not None else None
        dbin = torch.empty(tiles, C, device=p.device, dtype=torch.float32) if in_bias is not None else None
        BC, BT, warps = launch
        flags = {"HAS_BIAS": bias is not None, "HAS_IN_BIAS": in_bias is not None}
        if BACKWARD == "fused":
            _BWD[grid](
                p, w, bias, in_bias, dxs, du, dp, dw, db, dbin, T, D, N=N, K=K, **flags, BC=BC, BT=BT,
                num_warps=warps,
            )  # fmt: skip
        else:
            dc = torch.empty(B, 2 * D, T, device=p.device, dtype=p.dtype)  # the gated pair's dc
            _DC[grid](
                p, w, bias, in_bias, dxs, du, dc, dw, db, T, D, N=N, K=K, **flags, BC=BC, BT=BT,
                num_warps=warps,
            )  # fmt: skip
            _DP[grid[0], grid[1] * (N + 1), B](
                w, dxs, dc, dp, dbin, T, D, N=N, K=K, HAS_IN_BIAS=flags["HAS_IN_BIAS"], BC=BC, BT=BT,
                num_warps=warps,
            )  # fmt: skip
        dw = dw.sum(0).to(w.dtype)
        db = db.sum(0).to(bias.dtype) if db is not None else None
        dbin = dbin.sum(0).to(in_bias.dtype) if dbin is not None else None
        return dp, dw, db, dbin, None


def triton_gated_short_conv(
    p: Tensor, weight: Tensor, bias: Tensor | None = None, in_bias: Tensor | None = None, *, order: int = 2
) -> tuple[Tensor, Tensor]:
    """:func:`~subq.ops.gated_short_conv.naive.naive_gated_short_conv` with the Triton kernels (CUDA, or
    Triton's interpreter): ``(xs: [B, (N - 1) d, T], u: [B, d, T])`` contiguous, in the dtype of ``p``;
    computes in float32; forward and backward (``p``, ``weight``, ``bias``, ``in_bias``)."""
    check_gated_short_conv(p, weight, bias, in_bias, order)
    return TritonGatedShortConv.apply(p, weight, bias, in_bias, order)
