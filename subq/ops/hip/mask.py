"""HiP's hierarchical block-mask search: a Triton kernel and the dispatcher.

One program per (query block, batch x head) keeps its ``G`` branches as ``(start, size)`` vectors in
registers. Each iteration builds the ``2G`` children (left ``n // 2`` blocks, right the rest), scores
them with one ``[rows, 2G]`` tensor-core product per sampled key offset, and keeps the ``G`` best:
scores become order-preserving integers packed with the child's position (ties go to the leftmost),
one sort gives the ``G``-th largest key, a second sort compacts the survivors in position order.
Semantics: :func:`~subq.ops.hip.naive.naive_hip_mask`, which the CPU path runs.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.checks import SCORE_FLOOR, check_hip_args, check_hip_inputs


@triton.jit
def _to_block(vi, lo, n_left, right_start):
    return tl.where(vi < n_left, lo + vi, right_start + vi - n_left)


@triton.jit(do_not_specialize=["T_q", "T_k", "q_offset", "sink", "window"])
def hip_mask_kernel(
    q,
    k,
    indices,
    counts,
    T_q,
    T_k,
    q_offset,
    sink,
    window,
    floor,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    D: tl.constexpr,
    G: tl.constexpr,
    BG: tl.constexpr,
    BD: tl.constexpr,
    BQ: tl.constexpr,
    SQ: tl.constexpr,
    BQS: tl.constexpr,
    BK: tl.constexpr,
    SK: tl.constexpr,
    CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
):
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    NQB = tl.cdiv(T_q, BQ)
    n_kb = tl.cdiv(T_k, BK)
    # candidate key blocks: [lo, lo + n_left) then [right_start, n_kb)  (checks.candidate_ranges)
    t_min = q_offset + i_m * BQ
    t_max = q_offset + tl.minimum((i_m + 1) * BQ, T_q) - 1
    lo = sink // BK
    if CAUSAL:
        left_end_key = tl.minimum(t_max - window + 1, T_k)
        right_start = n_kb
    else:
        band_lo = t_max - window
        band_hi = t_min + window
        if band_lo > band_hi:
            left_end_key = T_k
            right_start = n_kb
        else:
            left_end_key = tl.minimum(band_lo, T_k)
            right_start = tl.minimum((band_hi + 1) // BK, n_kb)
    left_end = lo
    if left_end_key > sink:
        left_end = tl.maximum(tl.cdiv(left_end_key, BK), lo)
    right_start = tl.maximum(right_start, left_end)
    n_left = left_end - lo
    N = n_left + n_kb - right_start

    o_g = tl.arange(0, BG)
    p_out = indices + (i_bh.to(tl.int64) * NQB + i_m) * G
    if N <= G:
        tl.store(p_out + o_g, tl.where(o_g < N, _to_block(o_g, lo, n_left, right_start), -1), mask=o_g < G)
        tl.store(counts + i_bh.to(tl.int64) * NQB + i_m, N)
    else:
        o_d = tl.arange(0, BD)
        o_r = tl.arange(0, BQS)
        rows = i_m * BQ + o_r * SQ
        m_r = (o_r < BQ // SQ) & (rows < T_q)
        p_q = q + ((i_b.to(tl.int64) * T_q + rows) * H + i_h) * D
        b_q = tl.load(p_q[:, None] + o_d[None, :], mask=m_r[:, None] & (o_d < D)[None, :], other=0.0)
        p_k = k + (i_b.to(tl.int64) * T_k * H_KV + i_hk) * D
        o_c = tl.arange(0, 2 * BG)

        start = (o_g * N) // G
        size = tl.where(o_g < G, ((o_g + 1) * N) // G - start, 0)
        while tl.max(size, 0) > 1:
            half = size // 2
            c_start = tl.interleave(start, start + half)  # [2BG] children in position order
            c_size = tl.interleave(half, size - half)
            rep = _to_block(tl.minimum(c_start + c_size // 2, N - 1), lo, n_left, right_start)
            score = tl.full([2 * BG], float("-inf"), dtype=tl.float32)
            for j in tl.static_range(0, BK, SK):
                pos = rep * BK + j  # [2BG] one sampled key per child
                b_k = tl.load(
                    p_k + pos[:, None] * H_KV * D + o_d[None, :],
                    mask=(pos < T_k)[:, None] & (o_d < D)[None, :],
                    other=0.0,
                )
                key_ok = (pos >= sink) & (pos < T_k)
                if CAUSAL:
                    key_ok = key_ok & (pos <= t_max - window)
                else:
                    key_ok = key_ok & ((pos < t_max - window) | (pos > t_min + window))
                b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)  # [BQS, 2BG]
                b_s = tl.where(m_r[:, None] & key_ok[None, :], b_s, float("-inf"))
                score = tl.maximum(score, tl.max(b_s, 0))
            # + 0.0 turns -0.0 into 0.0 so that equal scores get equal integer keys
            score = tl.where(c_size > 0, tl.maximum(score, floor) + 0.0, float("-inf"))
            bits = score.to(tl.int32, bitcast=True)
            ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            packed = (ordered.to(tl.int64) << 32) | (2 * BG - 1 - o_c).to(tl.int64)
            ranked = tl.sort(packed, descending=True)
            threshold = tl.max(tl.where(o_c == G - 1, ranked, -9223372036854775807), 0)
            keep = packed >= threshold
            # survivors first, in position order; the first BG entries hold all G of them
            order = tl.sort(tl.where(keep, o_c, 2 * BG + o_c))
            first, _ = tl.split(tl.permute(tl.reshape(order, [2, BG]), [1, 0]))
            slot = tl.where(first < 2 * BG, first, first - 2 * BG)
            start = tl.gather(c_start, slot, 0)
            size = tl.where(o_g < G, tl.gather(c_size, slot, 0), 0)
        tl.store(p_out + o_g, _to_block(start, lo, n_left, right_start), mask=o_g < G)
        tl.store(counts + i_bh.to(tl.int64) * NQB + i_m, G)


def _hip_mask_triton(
    q, k, *, G, block_size_q, block_stride_q, block_size_k, block_stride_k, sink, window, causal, q_offset
):
    B, T_q, H, D = q.shape
    k = k.to(q.dtype).contiguous()
    q = q.contiguous()
    n_qb = triton.cdiv(T_q, block_size_q)
    indices = torch.empty(B, H, n_qb, G, device=q.device, dtype=torch.int32)
    counts = torch.empty(B, H, n_qb, device=q.device, dtype=torch.int32)
    hip_mask_kernel[(n_qb, B * H)](
        q, k, indices, counts, T_q, k.shape[1], q_offset, sink, window, SCORE_FLOOR,
        H=H, H_KV=k.shape[2], D=D, G=G, BG=max(16, triton.next_power_of_2(G)),
        BD=max(16, triton.next_power_of_2(D)), BQ=block_size_q, SQ=block_stride_q,
        BQS=max(16, block_size_q // block_stride_q), BK=block_size_k, SK=block_stride_k,
        CAUSAL=causal, PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return indices, counts


def hierarchical_mask(
    q: Tensor,
    k: Tensor,
    *,
    mask_k: int = 512,
    block_size_q: int = 64,
    block_stride_q: int = 2,
    block_size_k: int = 2,
    block_stride_k: int = 1,
    sink_size: int = 16,
    window: int = 256,
    causal: bool = True,
    q_offset: int | None = None,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """HiP's block mask: ``(indices [B, H, n_qblocks, G] int32, counts [B, H, n_qblocks] int32)``.

    Arguments and semantics as :func:`~subq.ops.hip.naive.naive_hip_mask`; ``mode``: ``auto``
    (Triton on CUDA, else the vectorised reference), ``triton``, ``torch`` or ``naive``.
    """
    kw = dict(
        mask_k=mask_k,
        block_size_q=block_size_q,
        block_stride_q=block_stride_q,
        block_size_k=block_size_k,
        block_stride_k=block_stride_k,
        sink_size=sink_size,
        window=window,
        causal=causal,
        q_offset=q_offset,
    )
    if mode == "auto":
        mode = "triton" if q.is_cuda else "torch"
    if mode in ("torch", "naive"):
        from subq.ops.hip.naive import naive_hip_mask

        with torch.no_grad():
            return naive_hip_mask(q, k, **kw)
    if mode != "triton":
        raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")
    if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError(f"mode='triton' needs CUDA tensors, got device {q.device}")
    G = check_hip_args(**{n: kw[n] for n in kw if n not in ("causal", "q_offset")})
    if q.shape[-1] > 256:
        raise ValueError(f"the Triton mask kernel supports head dims <= 256, got D={q.shape[-1]}")
    q_offset = check_hip_inputs(q, k, None, causal=causal, q_offset=q_offset)
    with torch.no_grad():
        return _hip_mask_triton(
            q.detach(), k.detach(), G=G, block_size_q=block_size_q, block_stride_q=block_stride_q,
            block_size_k=block_size_k, block_stride_k=block_stride_k, sink=sink_size, window=window,
            causal=causal, q_offset=q_offset,
        )  # fmt: skip
