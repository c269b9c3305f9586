"""Block-sparse attention given a HiP block mask: Triton kernels (forward and backward) and a gather
form in PyTorch. Same semantics as :func:`~subq.ops.hip.naive.naive_block_sparse_attention`.

Triton: one program per (query block, batch x head) runs one FlashAttention-2 online softmax over the
key list ``sinks | selected key blocks | window`` in chunks of ``BN`` keys (selected blocks are
gathered, ``BN / block_size_k`` at a time). The backward recomputes the probabilities from the saved
log-sum-exp; ``dq`` stays in registers, ``dk`` and ``dv`` are accumulated with float32 atomics (a key
block is read by every query block that selected it). Gradients flow through the attention only.

PyTorch: every query block gathers its ``sink + G * block_size_k + window + block_size_q`` keys and
runs a masked softmax over them: O(T (k + window + sink)) time and memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.checks import check_hip_inputs, check_indices
from subq.ops.hip.common import _chunk_keys, _key_mask
from subq.ops.hip.naive import kv_rows


@triton.jit
def _block_geometry(i_m, T_q, q_offset, sink, window, BM: tl.constexpr, CAUSAL: tl.constexpr):
    """Absolute positions of the first and last query of block ``i_m`` and the window's key range."""
    t_min = q_offset + i_m * BM
    t_max = q_offset + tl.minimum((i_m + 1) * BM, T_q) - 1
    if CAUSAL:
        w_lo = tl.maximum(t_min - window + 1, sink)
        w_hi = t_max
    else:
        w_lo = tl.maximum(t_min - window, sink)
        w_hi = t_max + window
    return w_lo, tl.maximum(w_hi - w_lo + 1, 0)


@triton.jit
def _attend_chunk(
    b_q, p_k, p_v, pos, m_n, m_s, b_m, b_l, b_o, scale, H_KV: tl.constexpr, D: tl.constexpr,
    DV: tl.constexpr, o_d, o_dv, m_d, m_dv, DT: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the keys ``pos [BN]`` (``m_n``: the rows to load) under the mask
    ``m_s [BM, BN]``: the running ``(max, sum, output)`` updated."""
    b_k = tl.load(
        p_k + pos.to(tl.int64)[:, None] * H_KV * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0
    )
    b_v = tl.load(
        p_v + pos.to(tl.int64)[:, None] * H_KV * DV + o_dv[None, :],
        mask=m_n[:, None] & m_dv[None, :],
        other=0.0,
    )
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale  # [BM, BN]
    b_s = tl.where(m_s, b_s, float("-inf"))
    b_mn = tl.maximum(b_m, tl.max(b_s, 1))
    b_p = tl.exp(b_s - b_mn[:, None])
    alpha = tl.exp(b_m - b_mn)
    b_l = b_l * alpha + tl.sum(b_p, 1)
    b_o = b_o * alpha[:, None] + tl.dot(b_p.to(DT), b_v, input_precision=PREC)
    return b_mn, b_l, b_o


@triton.jit(do_not_specialize=["T_q", "T_k", "q_offset", "sink", "window"])
def hip_attn_fwd_kernel(
    q,
    k,
    v,
    o,
    lse,
    indices,
    counts,
    scale,
    T_q,
    T_k,
    q_offset,
    sink,
    window,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    G: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    NQB = tl.cdiv(T_q, BM)
    DT = v.dtype.element_ty
    o_m = i_m * BM + tl.arange(0, BM)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_m, m_d, m_dv = o_m < T_q, o_d < D, o_dv < DV
    t = q_offset + o_m
    # [B, T, H, D] rows: token r of (batch b, head h) at ((b * T + r) * H + h) * D
    p_q = q + (i_b.to(tl.int64) * T_q * H + i_h) * D
    p_k = k + (i_b.to(tl.int64) * T_k * H_KV + i_hk) * D
    p_v = v + (i_b.to(tl.int64) * T_k * H_KV + i_hk) * DV
    # 64-bit row offsets: at T = 1M, 32 heads and D = 128 a row offset passes 2^31
    o_m64 = o_m.to(tl.int64)
    b_q = tl.load(p_q + o_m64[:, None] * H * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)

    blk = i_bh.to(tl.int64) * NQB + i_m
    count = tl.load(counts + blk)
    p_idx = indices + blk * G
    w_lo, w_len = _block_geometry(i_m, T_q, q_offset, sink, window, BM, CAUSAL)

    b_m = tl.full([BM], -1.0e30, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_o = tl.zeros([BM, BDV], dtype=tl.float32)
    # one loop per kind of chunk, each with its own (cheaper) mask; each key is counted once: sinks,
    # then the window, then selected blocks (``_key_mask``). Padding query rows (o_m >= T_q) need no
    # mask: their zero queries give finite scores, and their outputs are not stored.
    o_n = tl.arange(0, BN)
    n_sink = tl.cdiv(tl.minimum(sink, T_k), BN)
    for c in range(n_sink):
        pos = c * BN + o_n
        m_s = (pos < tl.minimum(sink, T_k))[None, :]
        if CAUSAL:
            m_s = m_s & (t[:, None] >= pos[None, :])
        b_m, b_l, b_o = _attend_chunk(
            b_q, p_k, p_v, pos, pos < tl.minimum(sink, T_k), m_s, b_m, b_l, b_o, scale,
            H_KV, D, DV, o_d, o_dv, m_d, m_dv, DT, PREC,
        )  # fmt: skip
    # selected blocks: a key that is a sink or in a query's window was taken by the other loops
    for c in range(tl.cdiv(count * BLOCK_K, BN)):
        j = c * BN + o_n
        m_sel = j < count * BLOCK_K
        pos = tl.load(p_idx + j // BLOCK_K, mask=m_sel, other=0) * BLOCK_K + j % BLOCK_K
        m_n = m_sel & (pos >= sink) & (pos < T_k)
        d = t[:, None] - pos[None, :]
        if CAUSAL:
            m_s = m_n[None, :] & (d >= window)  # allowed (d >= 0) and not in the window
        else:
            m_s = m_n[None, :] & ((d > window) | (d < -window))
        b_m, b_l, b_o = _attend_chunk(
            b_q, p_k, p_v, pos, m_n, m_s, b_m, b_l, b_o, scale, H_KV, D, DV, o_d, o_dv, m_d, m_dv, DT, PREC
        )
    for c in range(tl.cdiv(w_len, BN)):
        pos = w_lo + c * BN + o_n
        m_n = (pos < T_k) & (pos >= sink)
        d = t[:, None] - pos[None, :]
        if CAUSAL:
            m_s = m_n[None, :] & (d >= 0) & (d < window)
        else:
            m_s = m_n[None, :] & (d <= window) & (d >= -window)
        b_m, b_l, b_o = _attend_chunk(
            b_q, p_k, p_v, pos, m_n, m_s, b_m, b_l, b_o, scale, H_KV, D, DV, o_d, o_dv, m_d, m_dv, DT, PREC
        )
    b_l = tl.where(b_l > 0, b_l, 1.0)
    b_o = b_o / b_l[:, None]
    p_o = o + (i_b.to(tl.int64) * T_q * H + i_h) * DV
    tl.store(
        p_o + o_m64[:, None] * H * DV + o_dv[None, :],
        b_o.to(o.dtype.element_ty),
        mask=m_m[:, None] & m_dv[None, :],
    )
    tl.store(lse + i_bh.to(tl.int64) * T_q + o_m, b_m + tl.log(b_l), mask=m_m)


@triton.jit(do_not_specialize=["T_q", "T_k", "q_offset", "sink", "window"])
def hip_attn_bwd_kernel(
    q,
    k,
    v,
    do,
    lse,
    delta,
    indices,
    counts,
    dq,
    dk,
    dv,
    scale,
    T_q,
    T_k,
    q_offset,
    sink,
    window,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    G: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    NQB = tl.cdiv(T_q, BM)
    DT = v.dtype.element_ty
    o_m = i_m * BM + tl.arange(0, BM)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_m, m_d, m_dv = o_m < T_q, o_d < D, o_dv < DV
    t = q_offset + o_m
    row_q = (i_b.to(tl.int64) * T_q * H + i_h) + o_m * H  # [BM] row index into [B, T_q, H]
    row_k = i_b.to(tl.int64) * T_k * H_KV + i_hk
    b_q = tl.load(q + row_q[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
    b_do = tl.load(do + row_q[:, None] * DV + o_dv[None, :], mask=m_m[:, None] & m_dv[None, :], other=0.0)
    b_lse = tl.load(lse + i_bh.to(tl.int64) * T_q + o_m, mask=m_m, other=0.0)
    b_delta = tl.load(delta + i_bh.to(tl.int64) * T_q + o_m, mask=m_m, other=0.0)

    blk = i_bh.to(tl.int64) * NQB + i_m
    count = tl.load(counts + blk)
    p_idx = indices + blk * G
    w_lo, w_len = _block_geometry(i_m, T_q, q_offset, sink, window, BM, CAUSAL)
    n_sink = tl.cdiv(tl.minimum(sink, T_k), BN)
    n_sel = tl.cdiv(count * BLOCK_K, BN)
    n_chunks = n_sink + n_sel + tl.cdiv(w_len, BN)

    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    for c in range(n_chunks):
        pos, exists, kind = _chunk_keys(c, n_sink, n_sel, p_idx, count, w_lo, BLOCK_K, BN)
        m_n = exists & (pos >= 0) & (pos < T_k)
        row = row_k + pos.to(tl.int64) * H_KV  # [BN]
        m_nd, m_ndv = m_n[:, None] & m_d[None, :], m_n[:, None] & m_dv[None, :]
        b_k = tl.load(k + row[:, None] * D + o_d[None, :], mask=m_nd, other=0.0)
        b_v = tl.load(v + row[:, None] * DV + o_dv[None, :], mask=m_ndv, other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale
        m_s = _key_mask(t, pos, exists, kind, T_k, sink, window, CAUSAL) & m_m[:, None]
        b_p = tl.where(m_s, tl.exp(b_s - b_lse[:, None]), 0.0)  # [BM, BN]
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_ds = b_p * (b_dp - b_delta[:, None]) * scale
        b_dq = tl.dot(b_ds.to(DT), b_k, b_dq, input_precision=PREC)
        b_dk = tl.dot(tl.trans(b_ds.to(DT)), b_q, input_precision=PREC)  # [BN, BD]
        b_dv = tl.dot(tl.trans(b_p.to(DT)), b_do, input_precision=PREC)  # [BN, BDV]
        tl.atomic_add(dk + row[:, None] * D + o_d[None, :], b_dk, mask=m_nd)
        tl.atomic_add(dv + row[:, None] * DV + o_dv[None, :], b_dv, mask=m_ndv)
    tl.store(
        dq + row_q[:, None] * D + o_d[None, :], b_dq.to(dq.dtype.element_ty), mask=m_m[:, None] & m_d[None, :]
    )


def _launch_dims(q: Tensor, k: Tensor, v: Tensor, block_size_q: int) -> dict:
    D, DV = q.shape[-1], v.shape[-1]
    if block_size_q < 16:
        raise ValueError(f"the Triton block-sparse kernel needs block_size_q >= 16, got {block_size_q}")
    if D > 256 or DV > 256:
        raise ValueError(f"the Triton block-sparse kernel supports head dims <= 256, got D={D}, D_v={DV}")
    return dict(
        H=q.shape[2],
        H_KV=k.shape[2],
        D=D,
        DV=DV,
        BM=block_size_q,
        BD=max(16, triton.next_power_of_2(D)),
        BDV=max(16, triton.next_power_of_2(DV)),
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _block_n(block_size_k: int, BD: int, backward: bool = False) -> int:
    """Keys per chunk: 32 in the forward (an H200 sweep at D = 128 found 32 keys on 4 warps 2.4x
    faster than 64 on 8, ``BENCHMARKS.md``); in the backward, which holds ``dq`` and the ``dk, dv``
    tiles besides, 64 for head dims up to 64 and 32 above."""
    if backward:
        return max(16, block_size_k, 64 if BD <= 64 else 32)
    return max(32, block_size_k)


FWD_MAX_REGISTERS: int | None = 128
"""Register cap (``maxnreg``) of the forward kernel on CUDA for head dims up to 128 (4 warps): 128
registers fit four programs per SM instead of three (153 uncapped), with no spills in the selected
and window loops; 1.16x faster on the H200 (``BENCHMARKS.md``). ``None`` leaves it to the compiler."""


FWD_NUM_STAGES: int = 2
"""Software-pipelining stages of the forward kernel for 16-bit inputs with head dims up to 128: 2,
1.03-1.04x faster than 1 at 32k and 128k on the H200 in an interleaved A/B (``BENCHMARKS.md``); 3 and
more are slower. Other inputs take one stage (their larger tiles would double in shared memory)."""


class BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, counts, scale, q_offset, geo):
        block_size_q, block_size_k, sink, window, causal = geo
        B, T_q, H, _ = q.shape
        T_k = k.shape[1]
        dims = _launch_dims(q, k, v, block_size_q)
        BN = _block_n(block_size_k, dims["BD"])
        o = torch.empty(B, T_q, H, v.shape[-1], device=q.device, dtype=q.dtype)
        lse = torch.empty(B, H, T_q, device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(T_q, block_size_q), B * H)
        cap = FWD_MAX_REGISTERS if q.is_cuda and dims["BD"] <= 128 else None
        hip_attn_fwd_kernel[grid](
            q, k, v, o, lse, indices, counts, scale, T_q, T_k, q_offset, sink, window,
            G=indices.shape[-1], BN=BN, BLOCK_K=block_size_k, CAUSAL=causal, **dims,
            num_warps=8 if dims["BD"] > 128 else 4,
            num_stages=FWD_NUM_STAGES if q.element_size() == 2 and dims["BD"] <= 128 else 1,
            **({"maxnreg": cap} if cap else {}),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse, indices, counts)
        ctx.args = (scale, q_offset, geo)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, indices, counts = ctx.saved_tensors
        scale, q_offset, (block_size_q, block_size_k, sink, window, causal) = ctx.args
        B, T_q, H, _ = q.shape
        T_k = k.shape[1]
        dims = _launch_dims(q, k, v, block_size_q)
        BN = _block_n(block_size_k, dims["BD"], backward=True)
        do = do.contiguous().to(q.dtype)
        delta = (o.float() * do.float()).sum(-1).transpose(1, 2).contiguous()  # [B, H, T_q]
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        grid = (triton.cdiv(T_q, block_size_q), B * H)
        hip_attn_bwd_kernel[grid](
            q, k, v, do, lse, delta, indices, counts, dq, dk, dv, scale, T_q, T_k, q_offset, sink, window,
            G=indices.shape[-1], BN=BN, BLOCK_K=block_size_k, CAUSAL=causal, **dims,
        )  # fmt: skip
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def _block_sparse_attention_triton(q, k, v, indices, counts, *, scale, q_offset, geo) -> Tensor:
    k, v = k.to(q.dtype), v.to(q.dtype)
    q, k, v = (x.contiguous() for x in (q, k, v))
    return BlockSparseAttention.apply(
        q,
        k,
        v,
        indices.to(torch.int32).contiguous(),
        counts.to(torch.int32).contiguous(),
        scale,
        q_offset,
        geo,
    )


def _block_sparse_attention_torch(q, k, v, indices, counts, *, scale, q_offset, geo) -> Tensor:
    block_size_q, block_size_k, sink, window, causal = geo
    B, T_q, H, D = q.shape
    T_k, G, dev = k.shape[1], indices.shape[-1], q.device
    n_qb = -(-T_q // block_size_q)
    acc = torch.promote_types(q.dtype, torch.float32)
    # key list of every query block: sinks | selected blocks | window span   -> [B, H, n_qb, L]
    sink_pos = torch.arange(min(sink, T_k), device=dev)
    sel_slot = torch.arange(G * block_size_k, device=dev)
    sel_pos = indices.long()[..., sel_slot // block_size_k] * block_size_k + sel_slot % block_size_k
    sel_ok = (sel_slot // block_size_k) < counts[..., None]
    t_min = q_offset + torch.arange(n_qb, device=dev) * block_size_q
    before, after = (window - 1, 0) if causal else (window, window)
    win_pos = (t_min - before)[:, None] + torch.arange(block_size_q + before + after, device=dev)
    parts = (sink_pos.expand(B, H, n_qb, -1), sel_pos, win_pos.expand(B, H, n_qb, -1))
    pos = torch.cat(parts, dim=-1)
    kind = torch.cat([torch.full((p.shape[-1],), i, device=dev) for i, p in enumerate(parts)])
    exists = torch.cat(
        (torch.ones_like(parts[0], dtype=torch.bool), sel_ok, torch.ones_like(parts[2], dtype=torch.bool)), -1
    )
    exists &= (pos >= 0) & (pos < T_k)

    rows = torch.arange(n_qb * block_size_q, device=dev).view(n_qb, block_size_q)
    t = (q_offset + rows)[None, None, :, :, None]  # [1, 1, n_qb, BQ, 1]
    s_pos = pos[..., None, :]  # [B, H, n_qb, 1, L]
    d = t - s_pos
    in_win = (d >= 0) & (d < window) if causal else d.abs() <= window
    is_sink = s_pos < sink
    m = exists[..., None, :] & torch.where(
        kind == 0, is_sink, ~is_sink & torch.where(kind == 1, ~in_win, in_win)
    )
    if causal:
        m &= d >= 0
    m |= (rows >= T_q)[None, None, :, :, None]  # padded rows attend everything: finite, discarded

    kg = kv_rows(k, pos).to(acc)  # [B, H, n_qb, L, D]: a decode step reads its keys, not the cache
    vg = kv_rows(v, pos).to(acc)
    qb = torch.nn.functional.pad(q.to(acc), (0, 0, 0, 0, 0, n_qb * block_size_q - T_q))
    qb = qb.view(B, n_qb, block_size_q, H, D).permute(0, 3, 1, 2, 4)  # [B, H, n_qb, BQ, D]
    s = torch.einsum("bhnqd,bhnld->bhnql", qb, kg) * scale
    p = torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1)
    o = torch.einsum("bhnql,bhnld->bhnqd", p, vg)  # [B, H, n_qb, BQ, D_v]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n_qb * block_size_q, H, -1)[:, :T_q]
    return o.to(q.dtype)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    counts: Tensor,
    *,
    block_size_q: int = 64,
    block_size_k: int = 2,
    sink_size: int = 16,
    window: int = 256,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | None = None,
    mode: str = "auto",
) -> tuple[Tensor, None]:
    """Softmax attention over ``sinks | selected key blocks | window`` for every query block.

    Args:
        q: `[B, T_q, H, D]`; k: `[B, T_k, H_kv, D]`; v: `[B, T_k, H_kv, D_v]`.
        indices, counts: `[B, H, n_qblocks, G]` and `[B, H, n_qblocks]`, a block mask from the search.
        mode: ``auto`` (Triton on CUDA, gather form elsewhere), ``triton``, ``torch`` or ``naive``.
        Other arguments as :func:`~subq.ops.hip.naive.naive_block_sparse_attention`.

    Returns:
        ``(o: [B, T_q, H, D_v], None)``; gradients reach ``q, k, v`` (not the mask).
    """
    q_offset = check_hip_inputs(q, k, v, causal=causal, q_offset=q_offset)
    B, T_q, H, D = q.shape
    check_indices(indices, counts, B, H, -(-T_q // block_size_q))
    scale = D**-0.5 if scale is None else float(scale)
    geo = (block_size_q, block_size_k, sink_size, window, causal)
    if mode == "auto":
        mode = "triton" if q.is_cuda else "torch"
    if mode == "triton":
        _launch_dims(q, k, v, block_size_q)  # the kernel's size limits first: they hold on any device
        if not q.is_cuda and not _interpreting():
            raise RuntimeError(f"mode='triton' needs CUDA tensors, got device {q.device}")
        return _block_sparse_attention_triton(
            q, k, v, indices, counts, scale=scale, q_offset=q_offset, geo=geo
        ), None
    if mode == "torch":
        return _block_sparse_attention_torch(
            q, k, v, indices, counts, scale=scale, q_offset=q_offset, geo=geo
        ), None
    if mode == "naive":
        from subq.ops.hip.naive import naive_block_sparse_attention

        return naive_block_sparse_attention(
            q, k, v, indices, counts, block_size_q=block_size_q, block_size_k=block_size_k,
            sink_size=sink_size, window=window, causal=causal, scale=scale, q_offset=q_offset,
        )  # fmt: skip
    raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"
