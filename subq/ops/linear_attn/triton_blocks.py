"""Triton building blocks of the chunked linear-attention kernels (``fused_chunk.py``,
``chunk_parallel.py``): the elementwise feature maps and their derivatives, chunk loads, and the
state kept as pieces.

A state ``(S [E, D_v], z [E])`` is held in three pieces: the constant row ``S0 [D_v]`` / ``z0`` (Taylor
only), the linear rows ``S1 [BK, D_v]`` / ``z1`` (all of ``S`` for the elementwise maps) and the
quadratic rows ``S2 [BK * BK, D_v]`` / ``z2`` (Taylor only, row ``a * BK + b`` for ``x_a x_b``). Inside
the kernels the quadratic rows are ``sqrt(2)`` times those of ``phi``'s convention, so that a chunk
reads ``S0 + x~ S1 + (x~ x~^T) S2 / 2`` without the ``1 / sqrt(2)`` of the feature map.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.common.checks import check_int32_rows
from subq.ops.linear_attn.feature_maps import feature_dim
from subq.ops.linear_attn.limits import FEATURE_IDS, check_fused_chunk_sizes
from subq.ops.linear_attn.naive import check_initial_state, check_linear_attention_inputs


def kernel_inputs(q: Tensor, k: Tensor, v: Tensor, feature_map: str, scale, eps, initial_state) -> tuple:
    """Validate the op's arguments against the kernels' limits; return ``(q, k, v, h0, z0, feature id,
    scale, eps)`` ready for launch (contiguous, ``k, v`` in the dtype of ``q``, the state in float32)."""
    B, T, H, D, Dv = check_linear_attention_inputs(q, k, v, scale, eps)
    check_fused_chunk_sizes(feature_map, D, Dv)
    check_int32_rows("linear_attention", q=q, k=k, v=v)
    check_initial_state(initial_state, B, H, feature_dim(feature_map, D), Dv)
    q = q.contiguous()
    k, v = k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
    h0 = z0 = None
    if initial_state is not None:
        h0, z0 = (x.float().contiguous() for x in initial_state)
    return q, k, v, h0, z0, FEATURE_IDS[feature_map], 1.0 if scale is None else float(scale), float(eps)


def backward_inputs(do: Tensor, o: Tensor, den: Tensor, eps: float, normalize: bool, dht, dzt, E: int):
    """``(do, delta, use_final_grad, dht, dzt)`` for a backward launch: ``delta = (do . o) / (den + eps)``
    (the normaliser's gradient, up to sign); a final-state gradient given for only one of ``S, z``
    gets zeros for the other."""
    do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1) / (den + eps) if normalize else den
    use = dht is not None or dzt is not None
    if use:
        B, _, H, V = o.shape
        dht = torch.zeros(B, H, E, V, device=o.device) if dht is None else dht.contiguous().float()
        dzt = torch.zeros(B, H, E, device=o.device) if dzt is None else dzt.contiguous().float()
    return do, delta, use, dht, dzt


@triton.jit
def _feature(x, FEATURE: tl.constexpr):
    if FEATURE == 1:
        y = tl.maximum(x, 0.0)
    elif FEATURE == 2:
        y = tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        y = x
    return y


@triton.jit
def _feature_grad(x, FEATURE: tl.constexpr):
    if FEATURE == 1:
        g = (x > 0).to(tl.float32)
    elif FEATURE == 2:
        g = tl.where(x > 0, 1.0, tl.exp(x))
    else:
        g = x * 0.0 + 1.0
    return g


@triton.jit
def _load_features(p, o_t, m_t, o_k, m_k, scale, FEATURE: tl.constexpr, TAYLOR: tl.constexpr):
    """``(phi(scale x), scale x)`` of a ``[BT, BK]`` chunk; padded rows and columns are zero features."""
    m = m_t[:, None] & m_k[None, :]
    b_x = tl.load(p + o_k[None, :], mask=m, other=0.0).to(tl.float32) * scale
    if TAYLOR:
        b_f = b_x
    else:
        b_f = tl.where(m, _feature(b_x, FEATURE), 0.0)
    return b_f, b_x


@triton.jit
def _quadratic(b_x, BT: tl.constexpr, BK: tl.constexpr):
    """``[BT, BK] -> [BT, BK * BK]``: ``vec(x x^T)`` per row."""
    return tl.reshape(b_x[:, :, None] * b_x[:, None, :], (BT, BK * BK))


@triton.jit
def _accumulate(
    b_x,
    b_y,
    b_w,
    b_S0,
    b_S1,
    b_S2,
    b_z0,
    b_z1,
    b_z2,
    BT: tl.constexpr,
    BK: tl.constexpr,
    TAYLOR: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``S += phi(x)^T y`` and ``z += phi(x)^T w`` (the state update, and ``dS`` in the backward)."""
    b_xd = b_x.to(DT)
    b_yd = b_y.to(DT)
    b_S1 = tl.dot(tl.trans(b_xd), b_yd, b_S1, input_precision=PREC)
    b_z1 += tl.sum(b_x * b_w[:, None], 0)
    if TAYLOR:
        b_x2 = _quadratic(b_x, BT, BK)
        b_S2 = tl.dot(tl.trans(b_x2.to(DT)), b_yd, b_S2, input_precision=PREC)
        b_z2 += tl.sum(b_x2 * b_w[:, None], 0)
        b_S0 += tl.sum(b_y.to(tl.float32), 0)
        b_z0 += tl.sum(b_w, 0)
    return b_S0, b_S1, b_S2, b_z0, b_z1, b_z2


@triton.jit
def _read(
    b_x,
    b_S0,
    b_S1,
    b_S2,
    b_z0,
    b_z1,
    b_z2,
    acc,
    BT: tl.constexpr,
    BK: tl.constexpr,
    TAYLOR: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``(acc + phi(x) S, phi(x) . z)``: a chunk reading a state (and ``dv`` reading ``dS``)."""
    acc = tl.dot(b_x.to(DT), b_S1.to(DT), acc, input_precision=PREC)
    b_d = tl.sum(b_x * b_z1[None, :], 1)
    if TAYLOR:
        b_x2 = _quadratic(b_x, BT, BK)
        acc += b_S0[None, :] + 0.5 * tl.dot(b_x2.to(DT), b_S2.to(DT), input_precision=PREC)
        b_d += b_z0 + 0.5 * tl.sum(b_x2 * b_z2[None, :], 1)
    return acc, b_d


@triton.jit
def _read_grad(
    b_y,
    b_w,
    b_x,
    b_S1,
    b_S2,
    b_z1,
    b_z2,
    acc,
    BT: tl.constexpr,
    BK: tl.constexpr,
    TAYLOR: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """``acc + d/dx [y . (phi(x) S) + w phi(x) . z]`` through the Taylor map (the features for the
    elementwise maps): ``dq`` from the state, ``dk`` from ``dS``."""
    b_yd = b_y.to(DT)
    acc = tl.dot(b_yd, tl.trans(b_S1.to(DT)), acc, input_precision=PREC) + b_w[:, None] * b_z1[None, :]
    if TAYLOR:
        b_g = tl.dot(b_yd, tl.trans(b_S2.to(DT)), input_precision=PREC) + b_w[:, None] * b_z2[None, :]
        b_g = tl.reshape(0.5 * b_g, (BT, BK, BK))
        acc += tl.sum(b_g * b_x[:, None, :], 2) + tl.sum(b_g * b_x[:, :, None], 1)
    return acc


@triton.jit
def _load_state(
    p_h,
    p_z,
    o_k,
    m_k,
    o_v,
    m_v,
    w,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BKK: tl.constexpr,
    TAYLOR: tl.constexpr,
):
    """A state ``(S [E, D_v], z [E])`` in ``phi``'s convention -> the kernel's pieces; ``w`` scales ``z``."""
    ROW1: tl.constexpr = 1 if TAYLOR else 0
    b_S1 = tl.load(
        p_h + (ROW1 + o_k)[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0
    )
    b_z1 = tl.load(p_z + ROW1 + o_k, mask=m_k, other=0.0) * w
    if TAYLOR:
        o_kk = tl.arange(0, BKK)
        m_kk = ((o_kk // BK) < K) & ((o_kk % BK) < K)
        r_kk = 1 + K + (o_kk // BK) * K + o_kk % BK
        b_S0 = tl.load(p_h + o_v, mask=m_v, other=0.0)
        b_S2 = tl.load(p_h + r_kk[:, None] * V + o_v[None, :], mask=m_kk[:, None] & m_v[None, :], other=0.0)
        b_S2 = (b_S2 * 1.4142135623730951).to(b_S2.dtype)  # bf16 states stay bf16 (registers)
        b_z0 = tl.load(p_z + tl.arange(0, 1)) * w
        b_z2 = tl.load(p_z + r_kk, mask=m_kk, other=0.0) * (1.4142135623730951 * w)
    else:
        b_S0 = tl.zeros([BV], dtype=tl.float32)
        b_S2 = tl.zeros([BKK, BV], dtype=tl.float32)
        b_z0 = tl.zeros([1], dtype=tl.float32)
        b_z2 = tl.zeros([BKK], dtype=tl.float32)
    return b_S0, b_S1, b_S2, b_z0, b_z1, b_z2


@triton.jit
def _initial_state(
    h, z, i_bh, o_k, m_k, o_v, m_v, w,
    K: tl.constexpr, V: tl.constexpr, E: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    BKK: tl.constexpr, TAYLOR: tl.constexpr, USE: tl.constexpr,
):  # fmt: skip
    """Head ``i_bh``'s state from ``(h [B H, E, D_v], z [B H, E])`` (:func:`_load_state`) when ``USE``,
    else a zero state (``h`` and ``z`` may then be None)."""
    if USE:
        p_h = h + i_bh.to(tl.int64) * E * V
        p_z = z + i_bh.to(tl.int64) * E
        b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _load_state(
            p_h, p_z, o_k, m_k, o_v, m_v, w, K, V, BK, BV, BKK, TAYLOR
        )
    else:
        b_S0 = tl.zeros([BV], dtype=tl.float32)
        b_S1 = tl.zeros([BK, BV], dtype=tl.float32)
        b_S2 = tl.zeros([BKK, BV], dtype=tl.float32)
        b_z0 = tl.zeros([1], dtype=tl.float32)
        b_z1 = tl.zeros([BK], dtype=tl.float32)
        b_z2 = tl.zeros([BKK], dtype=tl.float32)
    return b_S0, b_S1, b_S2, b_z0, b_z1, b_z2


@triton.jit
def _store_state(
    p_h,
    p_z,
    b_S0,
    b_S1,
    b_S2,
    b_z0,
    b_z1,
    b_z2,
    o_k,
    m_k,
    o_v,
    m_v,
    i_v,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BKK: tl.constexpr,
    TAYLOR: tl.constexpr,
):
    """The kernel's pieces -> ``(S, z)`` in ``phi``'s convention; ``z`` from the first ``D_v`` block only."""
    ROW1: tl.constexpr = 1 if TAYLOR else 0
    tl.store(p_h + (ROW1 + o_k)[:, None] * V + o_v[None, :], b_S1, mask=m_k[:, None] & m_v[None, :])
    tl.store(p_z + ROW1 + o_k, b_z1, mask=m_k & (o_k * 0 + i_v == 0))
    if TAYLOR:
        o_kk = tl.arange(0, BKK)
        m_kk = ((o_kk // BK) < K) & ((o_kk % BK) < K)
        r_kk = 1 + K + (o_kk // BK) * K + o_kk % BK
        tl.store(p_h + o_v, b_S0, mask=m_v)
        tl.store(
            p_h + r_kk[:, None] * V + o_v[None, :],
            b_S2 * 0.7071067811865476,
            mask=m_kk[:, None] & m_v[None, :],
        )
        tl.store(p_z + r_kk, b_z2 * 0.7071067811865476, mask=m_kk & (o_kk * 0 + i_v == 0))
        tl.store(p_z + tl.arange(0, 1), b_z0, mask=tl.arange(0, 1) + i_v == 0)


@triton.jit
def _load_output_grad(
    p_do, p_den, p_delta, o_t, m_t, o_v, m_v, w0, eps, H, V, BT: tl.constexpr, NORMALIZE: tl.constexpr
):
    """``(dnum [BT, BV], dden [BT])`` of a chunk: with ``o = num / den``, ``dnum = do / den`` and
    ``dden = -delta = -(do . o) / den``, scaled by ``w0`` (1 in the block of ``D_v`` that carries the
    normaliser, else 0). Unnormalised: ``dnum = do``, ``dden = 0``."""
    b_dn = tl.load(p_do + o_t[:, None] * H * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_dn = b_dn.to(tl.float32)
    if NORMALIZE:
        b_dn = b_dn / (tl.load(p_den + o_t * H, mask=m_t, other=1.0) + eps)[:, None]
        b_dd = -tl.load(p_delta + o_t * H, mask=m_t, other=0.0) * w0
    else:
        b_dd = tl.zeros([BT], dtype=tl.float32)
    return b_dn, b_dd
