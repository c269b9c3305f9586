"""Triton fused chunked linear attention, forward and backward: the GPU training path.

One program per (block of ``D_v``, batch x head) walks the sequence chunk by chunk and keeps the state
``S = sum phi(k) v^T`` and ``z = sum phi(k)`` of the earlier chunks in registers (float32): inside a
chunk the quadratic masked form, across chunks one read of the state (``README.md`` has the math).
No state ever goes to HBM except the optional initial and final one.

BASED's Taylor map is fused: ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q~ . k~`` inside a chunk,
and the state is kept as its three pieces (constant, linear ``[f, D_v]`` and quadratic ``[f^2, D_v]``),
whose features ``vec(x x^T)`` are built in registers, never in memory.

The backward runs two sweeps in one launch (a third grid axis): forward over the chunks for ``dq``
(state of earlier chunks) and backward over them for ``dk, dv`` (``dS = sum phi(q) dnum^T`` of later
chunks). Gradients reach ``q, k, v`` and the initial state; a gradient of the final state is taken.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.linear_attn.limits import FEATURE_IDS
from subq.ops.linear_attn.triton_blocks import (
    _accumulate,
    _feature_grad,
    _initial_state,
    _load_features,
    _load_output_grad,
    _read,
    _read_grad,
    _store_state,
    backward_inputs,
    kernel_inputs,
)


@triton.jit(do_not_specialize=["T"])
def fused_chunk_linear_attn_fwd_kernel(
    q,
    k,
    v,
    o,
    den,
    h0,
    z0,
    ht,
    zt,
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
    CAUSAL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    PREC: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    DT = v.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_causal = o_i[:, None] >= o_i[None, :]
    # [B, T, H, *] rows of this (batch, head); row t of a tensor with last dim N is at t * H * N
    row0 = i_b.to(tl.int64) * T * H + i_h
    p_q, p_k = q + row0 * K, k + row0 * K
    p_v, p_o = v + row0 * V, o + row0 * V
    p_den = den + row0

    b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _initial_state(
        h0, z0, i_bh, o_k, m_k, o_v, m_v, 1.0, K, V, E, BK, BV, BKK, TAYLOR, USE_INITIAL_STATE
    )

    NT = tl.cdiv(T, BT)
    if not CAUSAL:
        # every query reads the state after the last key: accumulate it first
        for i_t in range(NT):
            o_t = i_t * BT + o_i
            m_t = o_t < T
            b_k, _ = _load_features(p_k + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR)
            b_v = tl.load(
                p_v + o_t[:, None] * H * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
            )
            b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _accumulate(
                b_k, b_v, m_t.to(tl.float32), b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, BT, BK, TAYLOR, DT, PREC
            )

    for i_t in range(NT):
        o_t = i_t * BT + o_i
        m_t = o_t < T
        m_tv = m_t[:, None] & m_v[None, :]
        b_q, _ = _load_features(p_q + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR)
        b_o = tl.zeros([BT, BV], dtype=tl.float32)
        if CAUSAL:
            b_k, _ = _load_features(p_k + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR)
            b_v = tl.load(p_v + o_t[:, None] * H * V + o_v[None, :], mask=m_tv, other=0.0)
            # inside the chunk: the masked quadratic form  [BT, BT]
            b_s = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
            if TAYLOR:
                b_s = 1.0 + b_s + 0.5 * b_s * b_s
            b_s = tl.where(m_causal, b_s, 0.0)
            b_o = tl.dot(b_s.to(DT), b_v, b_o, input_precision=PREC)
            b_d = tl.sum(b_s, 1)
            b_o, b_dx = _read(b_q, b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, b_o, BT, BK, TAYLOR, DT, PREC)
            b_d += b_dx
            b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _accumulate(
                b_k, b_v, m_t.to(tl.float32), b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, BT, BK, TAYLOR, DT, PREC
            )
        else:
            b_o, b_d = _read(b_q, b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, b_o, BT, BK, TAYLOR, DT, PREC)
        if NORMALIZE:
            b_o = b_o / (b_d + eps)[:, None]
        tl.store(p_o + o_t[:, None] * H * V + o_v[None, :], b_o.to(p_o.dtype.element_ty), mask=m_tv)
        tl.store(p_den + o_t * H, b_d, mask=m_t & (o_t * 0 + i_v == 0))

    if STORE_FINAL_STATE:
        _store_state(
            ht + i_bh.to(tl.int64) * E * V,
            zt + i_bh.to(tl.int64) * E,
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
            K,
            V,
            BK,
            BKK,
            TAYLOR,
        )


@triton.jit(do_not_specialize=["T"])
def fused_chunk_linear_attn_bwd_kernel(
    q,
    k,
    v,
    do,
    den,
    delta,
    h0,
    z0,
    dht,
    dzt,
    dq,
    dk,
    dv,
    dh0,
    dz0,
    scale_q,
    scale_k,
    eps,
    T,
    B: tl.constexpr,
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
    CAUSAL: tl.constexpr,
    NORMALIZE: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    USE_FINAL_STATE_GRAD: tl.constexpr,
    PREC: tl.constexpr,
):
    # axis 2: 0 = forward sweep for dq, 1 = backward sweep for dk, dv (and the initial state's gradient)
    i_v, i_bh, i_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    DT = v.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    # the normaliser's gradient belongs to no block of D_v: the first block carries it
    w0 = (i_v == 0).to(tl.float32)
    row0 = i_b.to(tl.int64) * T * H + i_h
    p_q, p_k = q + row0 * K, k + row0 * K
    p_v, p_do = v + row0 * V, do + row0 * V
    p_den, p_delta = den + row0, delta + row0
    # dq and dk: one float32 partial per block of D_v, summed by the caller
    p_dq = dq + (i_v.to(tl.int64) * B * T * H + row0) * K
    p_dk = dk + (i_v.to(tl.int64) * B * T * H + row0) * K
    p_dv = dv + row0 * V
    NT = tl.cdiv(T, BT)

    if i_p == 0:
        m_causal = o_i[:, None] >= o_i[None, :]
        b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _initial_state(
            h0, z0, i_bh, o_k, m_k, o_v, m_v, 1.0, K, V, E, BK, BV, BKK, TAYLOR, USE_INITIAL_STATE
        )
        if not CAUSAL:
            for i_t in range(NT):
                o_t = i_t * BT + o_i
                m_t = o_t < T
                b_k, _ = _load_features(
                    p_k + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR
                )
                b_v = tl.load(
                    p_v + o_t[:, None] * H * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
                )
                b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _accumulate(
                    b_k, b_v, m_t.to(tl.float32), b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, BT, BK, TAYLOR, DT, PREC
                )
        for i_t in range(NT):
            o_t = i_t * BT + o_i
            m_t = o_t < T
            m_tv = m_t[:, None] & m_v[None, :]
            b_q, b_qx = _load_features(
                p_q + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR
            )
            b_dn, b_dd = _load_output_grad(
                p_do, p_den, p_delta, o_t, m_t, o_v, m_v, w0, eps, H, V, BT, NORMALIZE
            )
            b_dq = tl.zeros([BT, BK], dtype=tl.float32)
            if CAUSAL:
                b_k, _ = _load_features(
                    p_k + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR
                )
                b_v = tl.load(p_v + o_t[:, None] * H * V + o_v[None, :], mask=m_tv, other=0.0)
                b_ds = tl.dot(b_dn.to(DT), tl.trans(b_v), input_precision=PREC) + b_dd[:, None]  # dA [BT, BT]
                if TAYLOR:
                    b_s = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
                    b_ds = b_ds * (1.0 + b_s)
                b_ds = tl.where(m_causal, b_ds, 0.0)
                b_dq = tl.dot(b_ds.to(DT), b_k.to(DT), b_dq, input_precision=PREC)
            b_dq = _read_grad(b_dn, b_dd, b_q, b_S1, b_S2, b_z1, b_z2, b_dq, BT, BK, TAYLOR, DT, PREC)
            if CAUSAL:
                b_S0, b_S1, b_S2, b_z0, b_z1, b_z2 = _accumulate(
                    b_k, b_v, m_t.to(tl.float32), b_S0, b_S1, b_S2, b_z0, b_z1, b_z2, BT, BK, TAYLOR, DT, PREC
                )
            if not TAYLOR:
                b_dq = b_dq * _feature_grad(b_qx, FEATURE)
            tl.store(
                p_dq + o_t[:, None] * H * K + o_k[None, :], b_dq * scale_q, mask=m_t[:, None] & m_k[None, :]
            )
    else:
        m_causal_t = o_i[:, None] <= o_i[None, :]
        b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2 = _initial_state(
            dht, dzt, i_bh, o_k, m_k, o_v, m_v, w0, K, V, E, BK, BV, BKK, TAYLOR, USE_FINAL_STATE_GRAD
        )
        if not CAUSAL:
            for i_t in range(NT):
                o_t = i_t * BT + o_i
                m_t = o_t < T
                m_tv = m_t[:, None] & m_v[None, :]
                b_q, _ = _load_features(
                    p_q + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR
                )
                b_dn, b_dd = _load_output_grad(
                    p_do, p_den, p_delta, o_t, m_t, o_v, m_v, w0, eps, H, V, BT, NORMALIZE
                )
                b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2 = _accumulate(
                    b_q, b_dn, b_dd, b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2, BT, BK, TAYLOR, DT, PREC
                )
        for i in range(NT):
            i_t = NT - 1 - i
            o_t = i_t * BT + o_i
            m_t = o_t < T
            m_tv = m_t[:, None] & m_v[None, :]
            b_k, b_kx = _load_features(
                p_k + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_k, FEATURE, TAYLOR
            )
            b_v = tl.load(p_v + o_t[:, None] * H * V + o_v[None, :], mask=m_tv, other=0.0)
            b_dv = tl.zeros([BT, BV], dtype=tl.float32)
            b_dk = tl.zeros([BT, BK], dtype=tl.float32)
            if CAUSAL:
                b_q, _ = _load_features(
                    p_q + o_t[:, None] * H * K, o_t, m_t, o_k, m_k, scale_q, FEATURE, TAYLOR
                )
                b_dn, b_dd = _load_output_grad(
                    p_do, p_den, p_delta, o_t, m_t, o_v, m_v, w0, eps, H, V, BT, NORMALIZE
                )
                # transposed scores: rows are keys s, columns queries t  [BT, BT]
                b_sT = tl.dot(b_k.to(DT), tl.trans(b_q.to(DT)), input_precision=PREC)
                if TAYLOR:
                    b_aT = 1.0 + b_sT + 0.5 * b_sT * b_sT
                else:
                    b_aT = b_sT
                b_aT = tl.where(m_causal_t, b_aT, 0.0)
                b_dv = tl.dot(b_aT.to(DT), b_dn.to(DT), b_dv, input_precision=PREC)
                b_dsT = tl.dot(b_v, tl.trans(b_dn.to(DT)), input_precision=PREC) + b_dd[None, :]
                if TAYLOR:
                    b_dsT = b_dsT * (1.0 + b_sT)
                b_dsT = tl.where(m_causal_t, b_dsT, 0.0)
                b_dk = tl.dot(b_dsT.to(DT), b_q.to(DT), b_dk, input_precision=PREC)
            b_dv, _ = _read(b_k, b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2, b_dv, BT, BK, TAYLOR, DT, PREC)
            b_dk = _read_grad(
                b_v, m_t.to(tl.float32), b_k, b_dS1, b_dS2, b_dz1, b_dz2, b_dk, BT, BK, TAYLOR, DT, PREC
            )
            if CAUSAL:
                b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2 = _accumulate(
                    b_q, b_dn, b_dd, b_dS0, b_dS1, b_dS2, b_dz0, b_dz1, b_dz2, BT, BK, TAYLOR, DT, PREC
                )
            if not TAYLOR:
                b_dk = b_dk * _feature_grad(b_kx, FEATURE)
            tl.store(
                p_dk + o_t[:, None] * H * K + o_k[None, :], b_dk * scale_k, mask=m_t[:, None] & m_k[None, :]
            )
            tl.store(p_dv + o_t[:, None] * H * V + o_v[None, :], b_dv.to(p_dv.dtype.element_ty), mask=m_tv)
        if USE_INITIAL_STATE:
            _store_state(
                dh0 + i_bh.to(tl.int64) * E * V,
                dz0 + i_bh.to(tl.int64) * E,
                b_dS0,
                b_dS1,
                b_dS2,
                b_dz0,
                b_dz1,
                b_dz2,
                o_k,
                m_k,
                o_v,
                m_v,
                i_v,
                K,
                V,
                BK,
                BKK,
                TAYLOR,
            )


def _launch_config(taylor: bool, K: int, V: int, backward: bool, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Chunk ``BT``, block of ``D_v`` ``BV``, warps and pipeline stages, from sweeps on an H200 with
    Triton 3.6 (``benchmarks/linear_attn_tune.py``): small chunks and ``D_v`` blocks keep the float32
    state in registers and give enough programs to fill the GPU. For the elementwise maps at
    ``D = 128``, ``BT=64, BV=32, num_warps=4`` gave wrong results there (with 1 or 3 stages) while
    ``BT=32`` configs, ``BT=64, BV=64`` and 8 warps were right; the default avoids it."""
    if taylor:
        return dict(BT=16, BV=16, num_warps=4, num_stages=3)
    return dict(BT=32, BV=16, num_warps=4, num_stages=1)


def _constexprs(feature: int, K: int, V: int, dtype: torch.dtype, cfg: dict) -> dict:
    taylor = feature == FEATURE_IDS["taylor"]
    BK = max(16, triton.next_power_of_2(K))
    return dict(
        K=K,
        V=V,
        E=1 + K + K * K if taylor else K,
        BT=cfg["BT"],
        BK=BK,
        BV=cfg["BV"],
        BKK=BK * BK if taylor else 1,
        FEATURE=feature,
        TAYLOR=taylor,
        PREC="ieee" if dtype == torch.float32 else "tf32",
    )


class FusedChunkLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, h0, z0, feature, causal, normalize, scale, eps, output_final_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        taylor = feature == FEATURE_IDS["taylor"]
        # Taylor: q~ = scale q / f^{1/4}, k~ = k / f^{1/4}, so that A = 1 + s + s^2 / 2 with s = q~ . k~
        scale_k = K**-0.25 if taylor else 1.0
        scale_q = scale * scale_k
        cfg = _launch_config(taylor, K, V, backward=False, dtype=q.dtype)
        cx = _constexprs(feature, K, V, q.dtype, cfg)
        o = torch.empty_like(v)
        den = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
        ht = zt = None
        if output_final_state:
            ht = q.new_empty(B, H, cx["E"], V, dtype=torch.float32)
            zt = q.new_empty(B, H, cx["E"], dtype=torch.float32)
        grid = (triton.cdiv(V, cfg["BV"]), B * H)
        fused_chunk_linear_attn_fwd_kernel[grid](
            q,
            k,
            v,
            o,
            den,
            h0,
            z0,
            ht,
            zt,
            scale_q,
            scale_k,
            eps,
            T,
            H=H,
            **cx,
            CAUSAL=causal,
            NORMALIZE=normalize,
            USE_INITIAL_STATE=h0 is not None,
            STORE_FINAL_STATE=output_final_state,
            num_warps=cfg["num_warps"],
            num_stages=cfg.get("num_stages", 3),
        )
        ctx.save_for_backward(q, k, v, o, den, h0, z0)
        ctx.args = (feature, causal, normalize, scale_q, scale_k, eps)
        return o, ht, zt

    @staticmethod
    def backward(ctx, do, dht, dzt):
        q, k, v, o, den, h0, z0 = ctx.saved_tensors
        feature, causal, normalize, scale_q, scale_k, eps = ctx.args
        B, T, H, K = q.shape
        V = v.shape[-1]
        cfg = _launch_config(feature == FEATURE_IDS["taylor"], K, V, backward=True, dtype=q.dtype)
        cx = _constexprs(feature, K, V, q.dtype, cfg)
        NV = triton.cdiv(V, cfg["BV"])
        do, delta, use_dht, dht, dzt = backward_inputs(do, o, den, eps, normalize, dht, dzt, cx["E"])
        dq = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
        dk = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
        dv = torch.empty_like(v)
        dh0 = dz0 = None
        if h0 is not None:
            dh0, dz0 = torch.empty_like(h0), torch.empty_like(z0)
        fused_chunk_linear_attn_bwd_kernel[(NV, B * H, 2)](
            q,
            k,
            v,
            do,
            den,
            delta,
            h0,
            z0,
            dht,
            dzt,
            dq,
            dk,
            dv,
            dh0,
            dz0,
            scale_q,
            scale_k,
            eps,
            T,
            B=B,
            H=H,
            **cx,
            CAUSAL=causal,
            NORMALIZE=normalize,
            USE_INITIAL_STATE=h0 is not None,
            USE_FINAL_STATE_GRAD=use_dht,
            num_warps=cfg["num_warps"],
            num_stages=cfg.get("num_stages", 3),
        )
        dq = dq.sum(0).to(q.dtype)
        dk = dk.sum(0).to(k.dtype)
        return dq, dk, dv, dh0, dz0, None, None, None, None, None, None


def fused_chunk_linear_attention(
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
    """Linear attention by the fused Triton kernels; same semantics as
    :func:`~subq.ops.linear_attn.naive.naive_linear_attention`.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H, D]`; v: `[B, T, H, D_v]` (float32, float16 or bfloat16; ``k`` and
            ``v`` are cast to the dtype of ``q``).
        feature_map: ``taylor`` (``D <= 16``), ``relu``, ``elu_plus_one`` or ``identity`` (``D <= 128``);
            ``D_v <= 128``. Other sizes raise ``ValueError``.
        initial_state: ``(S: [B, H, E, D_v], z: [B, H, E])``, float32.
        Others as :func:`~subq.ops.linear_attn.naive.naive_linear_attention`.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, (S_T, z_T) float32 or None)``.
    """
    q, k, v, h0, z0, feature, scale, eps = kernel_inputs(q, k, v, feature_map, scale, eps, initial_state)
    o, ht, zt = FusedChunkLinearAttention.apply(
        q, k, v, h0, z0, feature, causal, normalize, scale, eps, output_final_state
    )
    return o, ((ht, zt) if output_final_state else None)
