"""Triton chunk-parallel linear attention (causal), forward and backward.

Where ``fused_chunk.py`` gives each (block of ``D_v``, batch x head) one program that walks all the
chunks, here the work is split in two kinds of kernels:

1. a state kernel per (block of ``D_v``, block of state rows, batch x head) that walks the chunks and
   writes the state *before* every chunk to HBM (``[B, H, NT, E, D_v]`` in the input dtype, ``z`` in
   float32). Its per-chunk work is one small product, and the row blocks (for the Taylor map: the
   linear rows and one block per quadratic row ``x_a x``) multiply the number of programs;
2. a chunk kernel per (chunk, batch x head), fully parallel, that reads its chunk's state and computes
   the output (forward) or ``dq, dk, dv`` (backward, from the states and from the states of ``dS``
   written by the reverse state kernel).

This is the structure of FLA's ``chunk`` kernels. The math and the state pieces are those of
``fused_chunk.py`` (``triton_blocks.py``); the bidirectional form stays in ``fused_chunk.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.linear_attn.limits import FEATURE_IDS
from subq.ops.linear_attn.triton_blocks import (
    _feature,
    _feature_grad,
    _load_features,
    _load_output_grad,
    _load_state,
    _read,
    _read_grad,
    backward_inputs,
    kernel_inputs,
)


@triton.jit
def _state_rows(i_e, o_r, K: tl.constexpr, BR: tl.constexpr, TAYLOR: tl.constexpr):
    """State rows of row block ``i_e`` and their mask. Elementwise maps: rows ``i_e * BR + o_r``.
    Taylor (``BR`` covers ``f``): block 0 is the linear rows ``1 + b``, block ``1 + a`` the quadratic
    rows ``1 + f + a f + b`` of ``x~_a x~_b``."""
    if TAYLOR:
        a = tl.maximum(i_e - 1, 0)
        r = tl.where(i_e == 0, 1 + o_r, 1 + K + a * K + o_r)
        m = o_r < K
    else:
        r = i_e * BR + o_r
        m = r < K
    return r, m


@triton.jit
def _feature_rows(p, o_t, m_t, o_r, r, m_r, i_e, scale, HK, FEATURE: tl.constexpr, TAYLOR: tl.constexpr):
    """The ``[BT, BR]`` features of a chunk for the state rows ``r`` (see :func:`_state_rows`)."""
    m = m_t[:, None] & m_r[None, :]
    if TAYLOR:
        b_x = tl.load(p + o_t[:, None] * HK + o_r[None, :], mask=m, other=0.0).to(tl.float32) * scale
        b_xa = tl.load(p + o_t * HK + tl.maximum(i_e - 1, 0), mask=m_t, other=0.0).to(tl.float32) * scale
        b_f = tl.where(i_e == 0, b_x, b_xa[:, None] * b_x)
    else:
        b_x = tl.load(p + o_t[:, None] * HK + r[None, :], mask=m, other=0.0).to(tl.float32) * scale
        b_f = tl.where(m, _feature(b_x, FEATURE), 0.0)
    return b_f


@triton.jit
def _read_taylor_state(
    p_x, p_h, p_z, b_x, o_t, m_t, o_k, m_k, o_v, m_v, scale, acc, HK,
    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, GA: tl.constexpr, DT: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """``(acc + phi(x) S, phi(x) . z)`` for the Taylor map from a state in HBM (``phi``'s convention),
    the quadratic rows ``GA`` values of ``a`` at a time: a ``[BT, GA BK] x [GA BK, BV]`` product per
    step from ``x~_a x~`` built in registers (``x~_a`` re-read from memory), so that neither the
    ``[BT, BK^2]`` features nor the ``[BK^2, BV]`` rows are held at once (:func:`_read` holds both and
    spills at BASED's sizes). ``b_x`` is the scaled ``[BT, BK]`` chunk at ``p_x``."""
    m_kv = m_k[:, None] & m_v[None, :]
    b_S1 = tl.load(p_h + (1 + o_k)[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    acc = tl.dot(b_x.to(DT), b_S1, acc, input_precision=PREC)
    acc += tl.load(p_h + o_v, mask=m_v, other=0.0).to(tl.float32)[None, :]
    b_d = tl.sum(b_x * tl.load(p_z + 1 + o_k, mask=m_k, other=0.0)[None, :], 1)
    b_d += tl.sum(tl.load(p_z + tl.arange(0, 1)), 0)
    o_g = tl.arange(0, GA * BK)
    o_ga = tl.arange(0, GA)
    for i_a in range(0, BK // GA):
        o_a = i_a * GA + o_ga
        b_xa = tl.load(
            p_x + o_t[:, None] * HK + o_a[None, :], mask=m_t[:, None] & (o_a < K)[None, :], other=0.0
        )
        b_xa = b_xa.to(tl.float32) * scale
        # phi's quadratic rows carry 1 / sqrt(2) and the read 1 / 2: sqrt(2) / 2 in all
        b_x2 = tl.reshape((0.7071067811865476 * b_xa)[:, :, None] * b_x[:, None, :], (BT, GA * BK))
        a, b = i_a * GA + o_g // BK, o_g % BK
        m_g = (a < K) & (b < K)
        r = 1 + K + a * K + b
        b_S2 = tl.load(p_h + r[:, None] * V + o_v[None, :], mask=m_g[:, None] & m_v[None, :], other=0.0)
        acc = tl.dot(b_x2.to(DT), b_S2, acc, input_precision=PREC)
        b_d += tl.sum(b_x2 * tl.load(p_z + r, mask=m_g, other=0.0)[None, :], 1)
    return acc, b_d


@triton.jit(do_not_specialize=["T"])
def chunk_linear_attn_state_kernel(
    x,
    y,
    den,
    delta,
    hs,
    zs,
    h_in,
    z_in,
    h_out,
    z_out,
    scale,
    eps,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    E: tl.constexpr,
    BT: tl.constexpr,
    BR: tl.constexpr,
    BV: tl.constexpr,
    FEATURE: tl.constexpr,
    TAYLOR: tl.constexpr,
    REVERSE: tl.constexpr,
    NORMALIZE: tl.constexpr,
    USE_IN: tl.constexpr,
    USE_OUT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Forward (``REVERSE=False``, ``x = k``, ``y = v``): ``S += phi(k)^T v``, ``z += phi(k)`` over the
    chunks in order, storing the state before each chunk. Reverse (``x = q``, ``y = do``): ``dS +=
    phi(q)^T dnum``, ``dz += phi(q) dden`` from the last chunk down, storing ``dS`` of the later chunks.
    ``h_in`` / ``h_out``: the initial / final state (forward), the final-state gradient / initial-state
    gradient (reverse). Stored states are in ``phi``'s convention (``triton_blocks.py``)."""
    # grid: (blocks of D_v, blocks of state rows, batch x head)
    i_v, i_e, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    DT = hs.dtype.element_ty
    NT = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_1 = tl.arange(0, 1)
    r, m_r = _state_rows(i_e, o_r, K, BR, TAYLOR)
    m_rv = m_r[:, None] & m_v[None, :]
    # the normaliser's terms belong to no block of D_v: the first block carries them
    w0 = (i_v == 0).to(tl.float32)
    m_z = m_r & (o_r * 0 + i_v == 0)
    if TAYLOR:
        # the internal convention scales the quadratic rows by sqrt(2); block 0 also owns row 0
        f_r = tl.where(i_e > 0, 1.4142135623730951, 1.0)
    else:
        f_r = 1.0
    row0 = i_b.to(tl.int64) * T * H + i_h
    p_x, p_y = x + row0 * K, y + row0 * V
    p_den, p_delta = den + row0, delta + row0
    p_hs = hs + i_bh.to(tl.int64) * NT * E * V
    p_zs = zs + i_bh.to(tl.int64) * NT * E

    b_h = tl.zeros([BR, BV], dtype=tl.float32)
    b_z = tl.zeros([BR], dtype=tl.float32)
    b_h0 = tl.zeros([BV], dtype=tl.float32)
    b_z0 = tl.zeros([1], dtype=tl.float32)
    if USE_IN:
        p_hi = h_in + i_bh.to(tl.int64) * E * V
        p_zi = z_in + i_bh.to(tl.int64) * E
        w_z = w0 if REVERSE else 1.0
        b_h = tl.load(p_hi + r[:, None] * V + o_v[None, :], mask=m_rv, other=0.0) * f_r
        b_z = tl.load(p_zi + r, mask=m_r, other=0.0) * f_r * w_z
        if TAYLOR:
            b_h0 = tl.load(p_hi + o_v, mask=m_v & (o_v * 0 + i_e == 0), other=0.0)
            b_z0 = tl.load(p_zi + o_1, mask=o_1 + i_e == 0, other=0.0) * w_z

    for i in range(NT):
        if REVERSE:
            i_t = NT - 1 - i
        else:
            i_t = i
        o_t = i_t * BT + o_i
        m_t = o_t < T
        # the state before chunk i_t (forward), or of the chunks after it (reverse)
        p_c = p_hs + i_t.to(tl.int64) * E * V
        p_cz = p_zs + i_t.to(tl.int64) * E
        tl.store(p_c + r[:, None] * V + o_v[None, :], (b_h / f_r).to(DT), mask=m_rv)
        tl.store(p_cz + r, b_z / f_r, mask=m_z)
        if TAYLOR:
            tl.store(p_c + o_v, b_h0.to(DT), mask=m_v & (o_v * 0 + i_e == 0))
            tl.store(p_cz + o_1, b_z0, mask=o_1 + i_v + i_e == 0)
        b_f = _feature_rows(p_x, o_t, m_t, o_r, r, m_r, i_e, scale, H * K, FEATURE, TAYLOR)
        if REVERSE:
            b_y, b_w = _load_output_grad(
                p_y, p_den, p_delta, o_t, m_t, o_v, m_v, w0, eps, H, V, BT, NORMALIZE
            )
        else:
            b_y = tl.load(
                p_y + o_t[:, None] * H * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
            )
            b_y = b_y.to(tl.float32)
            b_w = m_t.to(tl.float32)
        b_h = tl.dot(tl.trans(b_f.to(DT)), b_y.to(DT), b_h, input_precision=PREC)
        b_z += tl.sum(b_f * b_w[:, None], 0)
        if TAYLOR:
            b_h0 += tl.sum(b_y, 0)
            b_z0 += tl.sum(b_w, 0)

    if USE_OUT:
        p_ho = h_out + i_bh.to(tl.int64) * E * V
        p_zo = z_out + i_bh.to(tl.int64) * E
        tl.store(p_ho + r[:, None] * V + o_v[None, :], b_h / f_r, mask=m_rv)
        tl.store(p_zo + r, b_z / f_r, mask=m_z)
        if TAYLOR:
            tl.store(p_ho + o_v, b_h0, mask=m_v & (o_v * 0 + i_e == 0))
            tl.store(p_zo + o_1, b_z0, mask=o_1 + i_v + i_e == 0)


@triton.jit(do_not_specialize=["T"])
def chunk_linear_attn_fwd_kernel(
    q,
    k,
    v,
    o,
    den,
    hs,
    zs,
    scale_q,
    scale_k,
    eps,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    E: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BKK: tl.constexpr,
    GA: tl.constexpr,
    FEATURE: tl.constexpr,
    TAYLOR: tl.constexpr,
    NORMALIZE: tl.constexpr,
    PREC: tl.constexpr,
):
    """One chunk's output: the masked quadratic form inside the chunk plus a read of the state of the
    earlier chunks (written by the state kernel)."""
    # grid: (blocks of D_v, chunks, batch x head)
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    DT = v.dtype.element_ty
    NT = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row0 = i_b.to(tl.int64) * T * H + i_h
    b_q, _ = _load_features(q + row0 * K + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR)
    b_k, _ = _load_features(k + row0 * K + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR)
    b_v = tl.load(v + row0 * V + o_t[:, None] * H * V + o_v[None, :], mask=m_tv, other=0.0)
    # [BT, BT]
    b_s = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
    if TAYLOR:
        b_s = 1.0 + b_s + 0.5 * b_s * b_s
    b_s = tl.where(o_i[:, None] >= o_i[None, :], b_s, 0.0)
    b_o = tl.dot(b_s.to(DT), b_v, input_precision=PREC)
    b_d = tl.sum(b_s, 1)
    c = i_bh.to(tl.int64) * NT + i_t
    if TAYLOR:
        b_o, b_dx = _read_taylor_state(
            q + row0 * K, hs + c * E * V, zs + c * E, b_q, o_t, m_t, o_k, m_k, o_v, m_v, scale_q, b_o, H * K,
            K, V, BT, BK, GA, DT, PREC,
        )  # fmt: skip
    else:
        b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _load_state(
            hs + c * E * V, zs + c * E, o_k, m_k, o_v, m_v, 1.0, K, V, BK, BV, BKK, TAYLOR
        )
        b_o, b_dx = _read(b_q, b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, b_o, BT, BK, TAYLOR, DT, PREC)
    b_d += b_dx
    if NORMALIZE:
        b_o = b_o / (b_d + eps)[:, None]
    tl.store(o + row0 * V + o_t[:, None] * H * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)
    tl.store(den + row0 + o_t * H, b_d, mask=m_t & (o_t * 0 + i_v == 0))


@triton.jit(do_not_specialize=["T"])
def chunk_linear_attn_bwd_kernel(
    q,
    k,
    v,
    do,
    den,
    delta,
    hs,
    zs,
    dhs,
    dzs,
    dq,
    dk,
    dv,
    scale_q,
    scale_k,
    eps,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    E: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BKK: tl.constexpr,
    FEATURE: tl.constexpr,
    TAYLOR: tl.constexpr,
    NORMALIZE: tl.constexpr,
    PREC: tl.constexpr,
):
    """One chunk's ``dq, dk, dv`` (all of ``D_v`` in one program): inside the chunk from the masked form,
    across chunks from the state before it (``dq``) and ``dS`` of the chunks after it (``dk, dv``)."""
    # grid: (chunks, batch x head)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    DT = v.dtype.element_ty
    NT = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    m_causal = o_i[:, None] >= o_i[None, :]
    row0 = i_b.to(tl.int64) * T * H + i_h
    p_qk = row0 * K + o_t[:, None] * H * K
    p_vv = row0 * V + o_t[:, None] * H * V + o_v[None, :]
    b_q, b_qx = _load_features(q + p_qk, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR)
    b_k, b_kx = _load_features(k + p_qk, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR)
    b_v = tl.load(v + p_vv, mask=m_tv, other=0.0)
    b_dn, b_dd = _load_output_grad(
        do + row0 * V, den + row0, delta + row0, o_t, m_t, o_v, m_v, 1.0, eps, H, V, BT, NORMALIZE
    )
    # inside the chunk  [BT (queries), BT (keys)]
    b_s = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
    b_ds = tl.dot(b_dn.to(DT), tl.trans(b_v), input_precision=PREC) + b_dd[:, None]
    if TAYLOR:
        b_a = 1.0 + b_s + 0.5 * b_s * b_s
        b_ds = b_ds * (1.0 + b_s)
    else:
        b_a = b_s
    b_a = tl.where(m_causal, b_a, 0.0).to(DT)
    b_ds = tl.where(m_causal, b_ds, 0.0).to(DT)
    b_dq = tl.dot(b_ds, b_k.to(DT), input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_ds), b_q.to(DT), input_precision=PREC)
    b_dv = tl.dot(tl.trans(b_a), b_dn.to(DT), input_precision=PREC)
    # across chunks
    c = i_bh.to(tl.int64) * NT + i_t
    _, b_S1, b_S2, _, b_z1, b_z2 = _load_state(
        hs + c * E * V, zs + c * E, o_k, m_k, o_v, m_v, 1.0, K, V, BK, BV, BKK, TAYLOR
    )
    b_dq = _read_grad(b_dn, b_dd, b_q, b_S1, b_S2, b_z1, b_z2, b_dq, BT, BK, TAYLOR, DT, PREC)
    b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2 = _load_state(
        dhs + c * E * V, dzs + c * E, o_k, m_k, o_v, m_v, 1.0, K, V, BK, BV, BKK, TAYLOR
    )
    b_dv, _ = _read(
        b_k, b_dS0.to(tl.float32), b_dS1, b_dS2, b_dz0, b_dz1, b_dz2, b_dv, BT, BK, TAYLOR, DT, PREC
    )
    b_dk = _read_grad(
        b_v, m_t.to(tl.float32), b_k, b_dS1, b_dS2, b_dz1, b_dz2, b_dk, BT, BK, TAYLOR, DT, PREC
    )
    if not TAYLOR:
        b_dq = b_dq * _feature_grad(b_qx, FEATURE)
        b_dk = b_dk * _feature_grad(b_kx, FEATURE)
    tl.store(dq + p_qk + o_k[None, :], (b_dq * scale_q).to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_qk + o_k[None, :], (b_dk * scale_k).to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dv + p_vv, b_dv.to(dv.dtype.element_ty), mask=m_tv)


def _launch_config(taylor: bool, K: int, V: int) -> dict:
    """Chunk ``BT``, state-row block ``BR``, ``D_v`` blocks of the state (``BVS``) and chunk (``BVO``)
    kernels and ``GA``, the values of ``a`` per step of the chunk kernel's read of the Taylor state
    (``GA <= 4``: no register spills at ``f = 16`` on sm_90, see README.md), from
    ``benchmarks/linear_attn_tune.py --form parallel`` on the H200 (Triton 3.6): the
    fastest config that passed the correctness gate at BASED's and LiT's benchmark shapes. Smaller row
    blocks (``BR=32`` with ``BVS=BVO=32``) gave wrong results there for ``D=128``: sweep before changing.

    BASED's forward state kernel (``[16, 64]`` row blocks walked over every chunk in sequence) runs
    one warp without software pipelining (``num_stages=1``) and the chunk kernel reads the quadratic
    state two values of ``a`` at a time: the BASED forward at T = 32k went from 6.78 to 3.45 ms in
    the sweeps on the H200 (``BENCHMARKS.md``)."""
    BK = max(16, triton.next_power_of_2(K))
    cfg = dict(
        BT=64,
        BR=BK if taylor else min(BK, 64),
        BVS=64,
        BVO=max(16, min(64, triton.next_power_of_2(V))),
        GA=min(4, BK),
        num_warps=4,
        num_warps_bwd=8,
    )
    if taylor:
        cfg.update(GA=min(2, BK), num_warps_state=1, num_stages_state=1)
    return cfg


def _tuning(cfg: dict, kernel: str) -> dict:
    """``num_warps`` (and ``num_stages`` when set) of the ``state`` or ``out`` kernel of the forward or
    the reverse state kernel (``state_bwd``): a ``num_warps_<kernel>`` / ``num_stages_<kernel>`` entry
    overrides ``num_warps`` and Triton's default stages."""
    launch = {"num_warps": cfg.get(f"num_warps_{kernel}", cfg["num_warps"])}
    if cfg.get(f"num_stages_{kernel}") is not None:
        launch["num_stages"] = cfg[f"num_stages_{kernel}"]
    return launch


class ChunkParallelLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, h0, z0, feature, normalize, scale, eps, output_final_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        taylor = feature == FEATURE_IDS["taylor"]
        scale_k = K**-0.25 if taylor else 1.0
        scale_q = scale * scale_k
        cfg = _launch_config(taylor, K, V)
        BT, BR, BK = cfg["BT"], cfg["BR"], max(16, triton.next_power_of_2(K))
        E = 1 + K + K * K if taylor else K
        NT = triton.cdiv(T, BT)
        NE = 1 + K if taylor else triton.cdiv(K, BR)
        prec = "ieee" if q.dtype == torch.float32 else "tf32"
        common = dict(
            H=H, K=K, V=V, E=E, BT=BT, FEATURE=feature, TAYLOR=taylor, NORMALIZE=normalize, PREC=prec
        )
        hs = q.new_empty(B, H, NT, E, V)
        zs = q.new_empty(B, H, NT, E, dtype=torch.float32)
        ht = zt = None
        if output_final_state:
            ht = q.new_empty(B, H, E, V, dtype=torch.float32)
            zt = q.new_empty(B, H, E, dtype=torch.float32)
        chunk_linear_attn_state_kernel[(triton.cdiv(V, cfg["BVS"]), NE, B * H)](
            k,
            v,
            v,
            v,
            hs,
            zs,
            h0,
            z0,
            ht,
            zt,
            scale_k,
            eps,
            T,
            **common,
            BR=BR,
            BV=cfg["BVS"],
            REVERSE=False,
            USE_IN=h0 is not None,
            USE_OUT=output_final_state,
            **_tuning(cfg, "state"),
        )
        o = torch.empty_like(v)
        den = q.new_empty(B, T, H, dtype=torch.float32)
        BV = cfg["BVO"]
        chunk_linear_attn_fwd_kernel[(triton.cdiv(V, BV), NT, B * H)](
            q,
            k,
            v,
            o,
            den,
            hs,
            zs,
            scale_q,
            scale_k,
            eps,
            T,
            **common,
            BK=BK,
            BV=BV,
            BKK=BK * BK if taylor else 1,
            GA=cfg["GA"],
            **_tuning(cfg, "out"),
        )
        ctx.save_for_backward(q, k, v, o, den, hs, zs, h0, z0)
        ctx.args = (feature, normalize, scale_q, scale_k, eps)
        return o, ht, zt

    @staticmethod
    def backward(ctx, do, dht, dzt):
        q, k, v, o, den, hs, zs, h0, z0 = ctx.saved_tensors
        feature, normalize, scale_q, scale_k, eps = ctx.args
        B, T, H, K = q.shape
        V = v.shape[-1]
        taylor = feature == FEATURE_IDS["taylor"]
        cfg = _launch_config(taylor, K, V)
        BT, BR, BK = cfg["BT"], cfg["BR"], max(16, triton.next_power_of_2(K))
        E, NT = hs.shape[3], hs.shape[2]
        NE = 1 + K if taylor else triton.cdiv(K, BR)
        prec = "ieee" if q.dtype == torch.float32 else "tf32"
        common = dict(
            H=H, K=K, V=V, E=E, BT=BT, FEATURE=feature, TAYLOR=taylor, NORMALIZE=normalize, PREC=prec
        )
        do, delta, use_dht, dht, dzt = backward_inputs(do, o, den, eps, normalize, dht, dzt, E)
        dh0 = dz0 = None
        if h0 is not None:
            dh0, dz0 = torch.empty_like(h0), torch.empty_like(z0)
        dhs, dzs = torch.empty_like(hs), torch.empty_like(zs)
        chunk_linear_attn_state_kernel[(triton.cdiv(V, cfg["BVS"]), NE, B * H)](
            q,
            do,
            den,
            delta,
            dhs,
            dzs,
            dht,
            dzt,
            dh0,
            dz0,
            scale_q,
            eps,
            T,
            **common,
            BR=BR,
            BV=cfg["BVS"],
            REVERSE=True,
            USE_IN=use_dht,
            USE_OUT=h0 is not None,
            **_tuning(cfg, "state_bwd"),
        )
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        chunk_linear_attn_bwd_kernel[(NT, B * H)](
            q,
            k,
            v,
            do,
            den,
            delta,
            hs,
            zs,
            dhs,
            dzs,
            dq,
            dk,
            dv,
            scale_q,
            scale_k,
            eps,
            T,
            **common,
            BK=BK,
            BV=max(16, triton.next_power_of_2(V)),
            BKK=BK * BK if taylor else 1,
            num_warps=cfg["num_warps_bwd"],
        )
        return dq, dk, dv, dh0, dz0, None, None, None, None, None


def chunk_parallel_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "identity",
    causal: bool = True,
    normalize: bool = True,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Causal linear attention by the chunk-parallel Triton kernels; same semantics, arguments, limits
    and returns as :func:`~subq.ops.linear_attn.fused_chunk.fused_chunk_linear_attention`
    (``causal=False`` is not supported here: use ``fused_chunk``)."""
    if not causal:
        raise ValueError("chunk_parallel_linear_attention is causal only; use fused_chunk_linear_attention")
    q, k, v, h0, z0, feature, scale, eps = kernel_inputs(q, k, v, feature_map, scale, eps, initial_state)
    o, ht, zt = ChunkParallelLinearAttention.apply(
        q, k, v, h0, z0, feature, normalize, scale, eps, output_final_state
    )
    return o, ((ht, zt) if output_final_state else None)
