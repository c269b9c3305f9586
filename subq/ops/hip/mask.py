"""HiP's hierarchical block-mask search: a Triton kernel and the dispatcher.

One program per (query block, batch x head). Its ``G`` branches live in its own rows of ``indices``
(starts) and of a ``work`` buffer (sizes, scores), in position order. Each iteration first writes
all ``2G`` children's representatives to a scratch part of that row (``-1`` for a child that reads
no key: an empty one, or a right child of a branch of at most 2 blocks, which has its parent's
representative and reuses its score), then scores them ``CH`` at a time, one ``[CH * keys, rows]``
tensor-core product per chunk, into the same row. It keeps the ``G`` best without sorting: scores
become order-preserving integers, a radix select finds the ``G``-th largest (stopping once the
survivors are fixed), ties go to the leftmost, and a prefix sum writes the survivors back in
position order. ``README.md`` ("Cost model") has the work per program.
Semantics: :func:`~subq.ops.hip.naive.naive_hip_mask`, which the CPU path runs."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.checks import SCORE_FLOOR, check_hip_args, check_hip_inputs


@triton.jit
def _to_block(vi, lo, n_left, right_start):
    return tl.where(vi < n_left, lo + vi, right_start + vi - n_left)


@triton.jit
def _kth_largest(u, K, RB: tl.constexpr):
    """A threshold ``thr`` with ``#(u > thr) < K <= #(u >= thr)`` for ``u`` (``[n]`` uint32, or int64 in
    ``[0, 2^32)``): radix select, ``RB`` bits per step, each step one ``[n, 2^RB]`` compare-and-count
    (no sort). It is the ``K``-th largest entry, or, once exactly ``K`` entries reach the bucket the
    ``K``-th lies in, that bucket's lower end (the select stops there: the ``K``-th largest is then
    strictly above the next entry, so ``u >= thr`` is the same set)."""
    o_d = tl.arange(0, 2**RB).to(u.dtype)
    thr = tl.max(u, 0) * 0
    step = 0
    n_ge = K + 1
    while (step < 32 // RB) & (n_ge != K):
        shift = (32 - RB * (step + 1)).to(u.dtype)
        cand = thr + (o_d << shift)  # [2^RB] thr with every next digit
        cnt = tl.sum((u[:, None] >= cand[None, :]).to(tl.int32), 0)
        digit = tl.sum((cnt >= K).to(tl.int32), 0) - 1  # digit 0 always qualifies
        thr = thr + (digit.to(u.dtype) << shift)
        n_ge = tl.sum(tl.where(o_d == digit.to(u.dtype), cnt, 0), 0)
        step += 1
    return thr


@triton.jit
def _children(c, p_start, p_size, G: tl.constexpr):
    """Children ``c`` in position order (``2j`` the left, ``2j + 1`` the right half of branch ``j``):
    ``(parent, parent size, start, size)``; children of padding branches (``j >= G``) are empty."""
    par = c // 2
    m_par = par < G
    p_s = tl.load(p_start + par, mask=m_par, other=0)
    p_n = tl.load(p_size + par, mask=m_par, other=0)
    right = c % 2
    return par, p_n, p_s + right * (p_n // 2), tl.where(right == 1, p_n - p_n // 2, p_n // 2)


@triton.jit
def _order_key(score):
    """Scores as int32 keys of the same order (-0.0 and 0.0 equal)."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _unsigned_key(ordered):
    """:func:`_order_key`'s int32 keys as uint32 keys of the same order."""
    return (ordered ^ -0x80000000).to(tl.uint32, bitcast=True)


@triton.jit
def _keep_best(u, G: tl.constexpr, RB: tl.constexpr):
    """The ``G`` largest of the keys ``u`` (``[n]`` uint32, or int64 in ``[0, 2^32)``), ties to the leftmost:
    ``(keep [n], slot [n])``, ``slot`` the rank of a kept key in position order."""
    thr = _kth_largest(u, G, RB)
    gt = (u > thr).to(tl.int32)
    eq = (u == thr).to(tl.int32)
    if u.shape[0] < 2**15:  # one scan for both running counts: greater in the low half, equal in the high
        both = tl.cumsum(gt + (eq << 16), 0)
        c_gt, c_eq = both & 0xFFFF, both >> 16
    else:
        c_gt, c_eq = tl.cumsum(gt, 0), tl.cumsum(eq, 0)
    n_eq = G - tl.sum(gt, 0)  # how many of the equal keys are kept: the leftmost
    keep = (gt == 1) | ((eq == 1) & (c_eq <= n_eq))
    return keep, c_gt + tl.minimum(c_eq, n_eq) - 1


@triton.jit
def _sampled_keys(p_k, r_j, o_j, o_d, T_k, H_KV: tl.constexpr, D: tl.constexpr, BK: tl.constexpr,
                  SK: tl.constexpr, KS: tl.constexpr):  # fmt: skip
    """The sampled keys of a chunk's representatives ``r_j`` (``-1``: none, read as zeros):
    ``([CH * KS, BD] keys, [CH * KS] positions)``."""
    pos = r_j * BK + (o_j % KS) * SK
    b_k = tl.load(
        p_k + pos.to(tl.int64)[:, None] * H_KV * D + o_d[None, :],
        mask=((r_j >= 0) & (pos < T_k))[:, None] & (o_d < D)[None, :],
        other=0.0,
    )
    return b_k, pos


@triton.jit(do_not_specialize=["T_q", "T_k", "q_offset", "sink", "window"])
def hip_mask_kernel(
    q,
    k,
    indices,
    work,
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
    KS: tl.constexpr,
    CH: tl.constexpr,
    RB: tl.constexpr,
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
    blk = i_bh.to(tl.int64) * NQB + i_m
    # the branch list lives in the program's rows of `indices` (starts) and `work` (sizes, scores)
    p_start = indices + blk * G
    p_size = work + blk * 6 * BG
    p_score = p_size + BG
    p_rep = p_size + 2 * BG  # this iteration's children: representative block (-1: not scored) ...
    p_ord = p_size + 4 * BG  # ... and order key
    if N <= G:
        tl.store(p_start + o_g, tl.where(o_g < N, _to_block(o_g, lo, n_left, right_start), -1), mask=o_g < G)
        tl.store(counts + blk, N)
    else:
        o_d = tl.arange(0, BD)
        # the sampled query rows; padding rows (past the block or past T_q) repeat a real row, which
        # leaves every max over rows as it is, so no score needs a row mask
        o_r = tl.minimum(tl.arange(0, BQS), tl.minimum(BQ // SQ - 1, (T_q - 1 - i_m * BQ) // SQ))
        rows = i_m * BQ + o_r * SQ
        p_q = q + ((i_b.to(tl.int64) * T_q + rows) * H + i_h) * D
        b_q = tl.load(p_q[:, None] + o_d[None, :], mask=(o_d < D)[None, :], other=0.0)
        p_k = k + (i_b.to(tl.int64) * T_k * H_KV + i_hk) * D
        o_c = tl.arange(0, 2 * BG)  # children in position order: 2j left, 2j + 1 right of branch j
        o_ch = tl.arange(0, CH)

        start = (o_g * N) // G
        tl.store(p_start + o_g, start, mask=o_g < G)
        tl.store(p_size + o_g, tl.where(o_g < G, ((o_g + 1) * N) // G - start, 0))
        tl.debug_barrier()
        neg_inf = _order_key(tl.full([2 * BG], float("-inf"), tl.float32))
        o_j = tl.arange(0, CH * KS)  # key rows of a product: child j // KS, sampled key j % KS
        first = 1
        n_big = 1  # branches of more than one block (N > G: at least one)
        while n_big > 0:
            # every child's representative at once: -1 where no key is read (an empty child keeps
            # -inf; a right child of a branch of <= 2 blocks has its parent's representative and score)
            par, p_n, c_start, c_size = _children(o_c, p_start, p_size, G)
            known = ((o_c % 2) == 1) & (p_n >= 1) & (p_n <= 2) & (o_c * 0 + first == 0)
            rep = _to_block(tl.minimum(c_start + c_size // 2, N - 1), lo, n_left, right_start)
            tl.store(p_rep + o_c, tl.where((c_size > 0) & ~known, rep, -1))
            tl.store(p_ord + o_c, tl.where(known, tl.load(p_score + par, mask=known, other=0), neg_inf))
            tl.debug_barrier()
            # score the children CH at a time: a [CH * KS, BD] tile of sampled keys per product. The
            # next chunk's representatives are loaded before this chunk's keys: the key loads then
            # depend only on the loop-carried r_j, which lets two pipelining stages fetch them ahead
            r_j = tl.load(p_rep + o_j // KS)  # [CH * KS]
            for ci in range(2 * BG // CH):
                b_k, pos = _sampled_keys(p_k, r_j, o_j, o_d, T_k, H_KV, D, BK, SK, KS)
                r_j = tl.load(p_rep + ((ci + 1) * CH + o_j // KS) % (2 * BG))
                key_ok = (pos >= sink) & (pos < T_k)
                if CAUSAL:
                    key_ok = key_ok & (pos <= t_max - window)
                else:
                    key_ok = key_ok & ((pos < t_max - window) | (pos > t_min + window))
                # keys as the product's rows (CH * KS >= 64 of them: a wgmma tile on Hopper)
                b_s = tl.dot(b_k, tl.trans(b_q), input_precision=PREC)  # [CH * KS, BQS]
                b_s = tl.where(key_ok, tl.max(b_s, 1), float("-inf"))
                score = tl.max(tl.reshape(b_s, [CH, KS]), 1)  # [CH]
                c = ci * CH + o_ch
                r_c = tl.load(p_rep + c)
                tl.store(p_ord + c, _order_key(tl.maximum(score, floor)), mask=r_c >= 0)
            tl.debug_barrier()
            # keep the G best children, ties to the leftmost: the G-th largest key, then the first
            # (G - #greater) of the keys equal to it
            ordered = tl.load(p_ord + o_c)
            keep, slot = _keep_best(_unsigned_key(ordered), G, RB)  # survivors stay in position order
            tl.debug_barrier()  # every parent is read before the survivors overwrite them
            tl.store(p_start + slot, c_start, mask=keep)
            tl.store(p_size + slot, c_size, mask=keep)
            tl.store(p_score + slot, ordered, mask=keep)
            tl.debug_barrier()
            n_big = tl.sum((keep & (c_size > 1)).to(tl.int32), 0)
            first = 0
        start = tl.load(p_start + o_g, mask=o_g < G, other=0)
        tl.debug_barrier()
        tl.store(p_start + o_g, _to_block(start, lo, n_left, right_start), mask=o_g < G)
        tl.store(counts + blk, G)


def _hip_mask_triton(
    q, k, *, G, block_size_q, block_stride_q, block_size_k, block_stride_k, sink, window, causal, q_offset,
    children_per_product=None, num_warps=4, num_stages=None, radix_bits=2, max_registers=96,
):  # fmt: skip
    """The launch; ``children_per_product`` (``CH``), ``num_warps``, ``num_stages``, ``radix_bits``
    (bits per step of the radix select) and ``max_registers`` (``maxnreg`` on CUDA, head dims up to
    128; ``None``: the compiler's choice) override the defaults (tuning). Defaults from H200 sweeps
    (``BENCHMARKS.md``): 4 warps, two pipelining stages for 16-bit inputs with head dims up to 128
    (with the representatives loaded a chunk ahead: 1.19x faster than one stage at 128k; one stage
    otherwise, where two would double larger key tiles in shared memory), a cap of 96 registers (5
    programs per SM instead of 4)."""
    B, T_q, H, D = q.shape
    k = k.to(q.dtype).contiguous()
    q = q.contiguous()
    n_qb = triton.cdiv(T_q, block_size_q)
    BG = max(16, triton.next_power_of_2(G))
    KS = block_size_k // block_stride_k  # sampled keys per key block
    CH = min(2 * BG, children_per_product or max(1, 64 // KS))  # children per product: [CH * KS, D] keys
    cap = max_registers if q.is_cuda and D <= 128 else None
    if num_stages is None:
        num_stages = 2 if q.element_size() == 2 and D <= 128 else 1
    indices = torch.empty(B, H, n_qb, G, device=q.device, dtype=torch.int32)
    counts = torch.empty(B, H, n_qb, device=q.device, dtype=torch.int32)
    # per program: branch sizes and scores (G each), children's representatives and scores (2G each)
    work = torch.empty(B * H * n_qb, 6 * BG, device=q.device, dtype=torch.int32)
    hip_mask_kernel[(n_qb, B * H)](
        q, k, indices, work, counts, T_q, k.shape[1], q_offset, sink, window, SCORE_FLOOR,
        H=H, H_KV=k.shape[2], D=D, G=G, BG=BG, BD=max(16, triton.next_power_of_2(D)), BQ=block_size_q,
        SQ=block_stride_q, BQS=max(16, block_size_q // block_stride_q), BK=block_size_k, SK=block_stride_k,
        KS=KS, CH=CH, RB=radix_bits, CAUSAL=causal, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages, **({"maxnreg": cap} if cap else {}),
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
    (Triton on CUDA, else the vectorised reference), ``triton``, ``torch``, ``naive``, or
    ``triton_split`` for the decode-time search (one causal query per sequence, ``block_size_q=1``)
    spread over the GPU in one launch per iteration (:mod:`subq.ops.hip.decode_mask`).
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
    if mode not in ("triton", "triton_split"):
        raise ValueError(f"mode must be one of auto, triton, triton_split, torch, naive; got {mode!r}")
    if mode == "triton_split" and (q.shape[1] != 1 or block_size_q != 1 or not causal):
        raise ValueError(
            "mode='triton_split' is the decode search: one causal query per sequence with block_size_q=1, "
            f"got q {tuple(q.shape)}, block_size_q={block_size_q}, causal={causal}"
        )
    if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError(f"mode='triton' needs CUDA tensors, got device {q.device}")
    G = check_hip_args(**{n: kw[n] for n in kw if n not in ("causal", "q_offset")})
    if q.shape[-1] > 256:
        raise ValueError(f"the Triton mask kernel supports head dims <= 256, got D={q.shape[-1]}")
    q_offset = check_hip_inputs(q, k, None, causal=causal, q_offset=q_offset)
    if mode == "triton_split":
        from subq.ops.hip.decode_mask import decode_mask_split

        with torch.no_grad():
            return decode_mask_split(
                q.detach(), k.detach().to(q.dtype), G=G, block_size_k=block_size_k,
                block_stride_k=block_stride_k, sink=sink_size, window=window, q_offset=q_offset,
            )  # fmt: skip
    with torch.no_grad():
        return _hip_mask_triton(
            q.detach(), k.detach(), G=G, block_size_q=block_size_q, block_stride_q=block_stride_q,
            block_size_k=block_size_k, block_stride_k=block_stride_k, sink=sink_size, window=window,
            causal=causal, q_offset=q_offset,
        )  # fmt: skip
