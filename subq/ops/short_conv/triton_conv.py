"""Triton depthwise short convolution on ``[B, T, C]``, forward and backward.

``y[b, t, c] = bias[c] + sum_j w[c, j] x[b, t - pad + j, c]`` (zero outside ``0 <= t < T``), for
``k = w.shape[1]`` taps: ``pad = k - 1`` is the causal convolution of
:func:`~subq.ops.short_conv.short_conv`, ``pad = k // 2`` the centred one of Hydra. ``F.conv1d``
takes ``[B, C, T]``: on the ``[B, T, C]`` activations of a projection it needs a transposed copy in
and out, and its depthwise CUDA kernel is slow in bf16 (0.71 ms per Hydra layer at 4k,
``BENCHMARKS.md``). These kernels read the activations where they are (any batch and time strides;
``C`` of unit stride, else copied) and keep ``C`` contiguous in every tile.

- ``short_conv_fwd_kernel``: one program per ``[BT, BC]`` output tile, the ``k`` shifted input tiles
  summed in float32, optionally through SiLU (``activation="silu"``, as Mamba-2 and Hydra apply it).
  The input gradient is the same kernel on ``dy`` with the taps reversed and ``pad' = k - 1 - pad``;
  with SiLU, a first launch of it recomputes the pre-activation and multiplies ``dy`` by SiLU's
  derivative.
- ``short_conv_dw_kernel``: per ``[BT, BC]`` tile, partial ``dw [k, BC]`` and ``dbias [BC]`` in
  float32, summed over tiles by the caller (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.short_conv.checks import check_activation, check_short_conv


@triton.jit
def _tap(x, o_t, o_c, m_c, T, s_xt, j, PAD: tl.constexpr):
    """``x[t - PAD + j, c]`` for the tile's ``t`` and ``c`` (``x`` at the batch row), float32, zero
    outside ``0 <= t - PAD + j < T``."""
    t_in = o_t - PAD + j
    m = ((t_in >= 0) & (t_in < T))[:, None] & m_c[None, :]
    return tl.load(x + t_in[:, None].to(tl.int64) * s_xt + o_c[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _tile(C, BT: tl.constexpr, BC: tl.constexpr):
    """This program's ``[BT, BC]`` tile of ``[T, C]``: time tile index, batch row, ``t`` and ``c``
    offsets, channel mask."""
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_c = i_c * BC + tl.arange(0, BC)
    return i_t, i_b.to(tl.int64), i_t * BT + tl.arange(0, BT), o_c, o_c < C


@triton.jit
def short_conv_fwd_kernel(
    x, w, bias, y, g, T, C, s_xb, s_xt, s_yb, s_yt, s_gb, s_gt,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BT: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    # ACT: 0 the convolution, 1 its SiLU, 2 g * SiLU'(convolution) (the gradient through the SiLU)
    _, i_b, o_t, o_c, m_c = _tile(C, BT, BC)
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(K):
        b_w = tl.load(w + o_c * K + j, mask=m_c, other=0.0).to(tl.float32)
        acc += _tap(x + i_b * s_xb, o_t, o_c, m_c, T, s_xt, j, PAD) * b_w[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = acc * tl.sigmoid(acc)
    if ACT == 2:
        sig = tl.sigmoid(acc)
        acc = _tap(g + i_b * s_gb, o_t, o_c, m_c, T, s_gt, 0, 0) * sig * (1.0 + acc * (1.0 - sig))
    p_y = y + i_b * s_yb + o_t[:, None].to(tl.int64) * s_yt + o_c[None, :]
    tl.store(p_y, acc.to(y.dtype.element_ty), mask=(o_t < T)[:, None] & m_c[None, :])


@triton.jit
def short_conv_dw_kernel(
    x, dy, dw, db, T, C, s_xb, s_xt, s_yb, s_yt,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    i_t, i_b, o_t, o_c, m_c = _tile(C, BT, BC)
    tile = i_b * tl.num_programs(0) + i_t  # partials: [tiles, K, C] and [tiles, C]
    b_dy = _tap(dy + i_b * s_yb, o_t, o_c, m_c, T, s_yt, 0, 0)
    for j in tl.static_range(K):
        b_x = _tap(x + i_b * s_xb, o_t, o_c, m_c, T, s_xt, j, PAD)
        tl.store(dw + (tile * K + j) * C + o_c, tl.sum(b_dy * b_x, 0), mask=m_c)
    if HAS_BIAS:
        tl.store(db + tile * C + o_c, tl.sum(b_dy, 0), mask=m_c)


def _unit_channels(t: Tensor) -> Tensor:
    """``t: [B, T, C]`` with unit stride in ``C`` (the kernels' loads are vectorized along it): ``t``
    itself, e.g. a slice of a projection's output, or a copy."""
    return t if t.stride(2) == 1 else t.contiguous()


def _launch_fwd(
    x: Tensor, w: Tensor, bias: Tensor | None, pad: int, out_dtype: torch.dtype, act: int = 0, g=None
) -> Tensor:
    x = _unit_channels(x)
    B, T, C = x.shape
    y = torch.empty(B, T, C, device=x.device, dtype=out_dtype)
    BT, BC = _tiles(C)
    g_strides = g.stride()[:2] if g is not None else (0, 0)
    short_conv_fwd_kernel[(triton.cdiv(T, BT), triton.cdiv(C, BC), B)](
        x, w, bias, y, g, T, C, *x.stride()[:2], *y.stride()[:2], *g_strides,
        K=w.shape[1], PAD=pad, HAS_BIAS=bias is not None, ACT=act, BT=BT, BC=BC, num_warps=4,
    )  # fmt: skip
    return y


def _tiles(C: int) -> tuple[int, int]:
    """``[BT, BC]`` tiles: 64 channels (128-byte rows in bf16) by 64 steps, fewer channels when ``C`` is
    small."""
    BC = min(64, triton.next_power_of_2(C))
    return 4096 // BC if BC < 64 else 64, BC


class TritonShortConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, pad: int, silu: bool) -> Tensor:
        x = _unit_channels(x)
        ctx.save_for_backward(x, w, bias)
        ctx.pad, ctx.has_bias, ctx.silu = pad, bias is not None, silu
        return _launch_fwd(x, w, bias, pad, x.dtype, act=1 if silu else 0)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w, bias = ctx.saved_tensors
        dy = _unit_channels(dy)
        if ctx.silu:  # the gradient reaching the convolution: dy * SiLU'(pre-activation, recomputed)
            dy = _launch_fwd(x, w, bias, ctx.pad, dy.dtype, act=2, g=dy)
        B, T, C = x.shape
        K = w.shape[1]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # dx[t] = sum_j w[j] dy[t + pad - j]: the forward on dy, taps reversed, pad' = K - 1 - pad
            dx = _launch_fwd(dy, w.flip(1).contiguous(), None, K - 1 - ctx.pad, x.dtype)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            BT, BC = _tiles(C)
            tiles = B * triton.cdiv(T, BT)
            dw_part = torch.empty(tiles, K, C, device=x.device, dtype=torch.float32)
            db_part = torch.empty(tiles, C, device=x.device, dtype=torch.float32) if ctx.has_bias else None
            short_conv_dw_kernel[(triton.cdiv(T, BT), triton.cdiv(C, BC), B)](
                x, dy, dw_part, db_part, T, C, *x.stride()[:2], *dy.stride()[:2], K=K, PAD=ctx.pad,
                HAS_BIAS=ctx.has_bias, BT=BT, BC=BC, num_warps=4,
            )  # fmt: skip
            dw = dw_part.sum(0).t().contiguous().to(w.dtype)  # [C, K]
            if ctx.has_bias:
                db = db_part.sum(0).to(w.dtype)
        return dx, dw, db, None, None


def triton_short_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    padding: int | None = None,
    activation: str | None = None,
) -> Tensor:
    """Depthwise convolution of ``x: [B, T, C]`` (any strides) by ``weight: [C, k]`` with the Triton
    kernels; ``padding`` zeros before ``t = 0`` (default ``k - 1``: causal, as
    :func:`~subq.ops.short_conv.short_conv`; ``k // 2`` with odd ``k``: centred), the output as long
    as the input; ``activation="silu"`` applies SiLU in the same pass (default None). Computes in
    float32, returns the dtype of ``x``; forward and backward."""
    B, T, C, k = check_short_conv(x, weight, bias)
    pad = k - 1 if padding is None else padding
    if not isinstance(pad, int) or not 0 <= pad <= k - 1:
        raise ValueError(f"padding must be an int in [0, k - 1 = {k - 1}], got {padding!r}")
    check_activation(activation)
    return TritonShortConv.apply(x, weight, bias, pad, activation == "silu")
