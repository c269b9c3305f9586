"""HiP's mask search for one decoding query, spread over the GPU: two launches per iteration.

:func:`~subq.ops.hip.mask.hierarchical_mask` runs a whole search in one program per (query block,
head): with one query per sequence that is ``B x H`` programs (32 for one sequence of a 32-head
model), each walking its ``2G`` children in sequence, so a decode-time search leaves most of the GPU
idle. Here every iteration is

- ``hip_decode_score_kernel``, grid ``(2G / CH, B x H)``: each program scores ``CH`` children of one
  head (the query against the ``block_size_k / block_stride_k`` sampled keys of each child's
  representative block; a right child of a branch of at most 2 blocks reuses its parent's score) and
  writes them as order-preserving integers;
- ``hip_decode_select_kernel``, grid ``(B x H,)``: the ``G`` best children of each head by radix
  select (ties to the leftmost, as in the one-program kernel), written in position order into the
  other of two branch buffers.

The number of iterations is known on the host: branch sizes start at ``ceil(N / G)`` or below and
halve each iteration, and once every branch is one block another iteration changes nothing. The
masks equal :func:`~subq.ops.hip.naive.naive_hip_mask`'s (``block_size_q = 1``, causal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.checks import SCORE_FLOOR
from subq.ops.hip.mask import _children, _keep_best, _order_key


@triton.jit(do_not_specialize=["T_k", "t", "sink", "window", "first", "lo", "N"])
def hip_decode_score_kernel(
    q,
    k,
    start,
    size,
    score,
    child,
    T_k,
    t,
    sink,
    window,
    first,
    floor,
    stride_kb,
    stride_kt,
    lo,
    N,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    D: tl.constexpr,
    G: tl.constexpr,
    BG: tl.constexpr,
    BD: tl.constexpr,
    BK: tl.constexpr,
    SK: tl.constexpr,
    KS: tl.constexpr,
    CH: tl.constexpr,
):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    o_d = tl.arange(0, BD)
    b_q = tl.load(q + i_bh.to(tl.int64) * D + o_d, mask=o_d < D, other=0.0).to(tl.float32)
    c = i_c * CH + tl.arange(0, CH)  # children in position order: 2j left, 2j + 1 right of branch j
    row = i_bh.to(tl.int64) * BG
    par, p_n, c_start, c_size = _children(c, start + row, size + row, G)
    right = c % 2
    known = (right == 1) & (p_n >= 1) & (p_n <= 2) & (c * 0 + first == 0)
    rep = lo + tl.minimum(c_start + c_size // 2, N - 1)  # causal decode: candidates [lo, lo + N)
    o_ks = tl.arange(0, KS) * SK
    pos = tl.reshape(rep[:, None] * BK + o_ks[None, :], [CH * KS])
    need = tl.reshape(((c_size > 0) & ~known)[:, None] & (o_ks >= 0)[None, :], [CH * KS])
    p_k = k + i_b.to(tl.int64) * stride_kb + i_hk * D
    b_k = tl.load(
        p_k + pos[:, None].to(tl.int64) * stride_kt + o_d[None, :],
        mask=(need & (pos < T_k))[:, None] & (o_d < D)[None, :],
        other=0.0,
    )
    b_s = tl.sum(b_q[None, :] * b_k.to(tl.float32), 1)  # [CH * KS]
    key_ok = (pos >= sink) & (pos < T_k) & (pos <= t - window)
    b_s = tl.where(key_ok, b_s, float("-inf"))
    s = tl.max(tl.reshape(b_s, [CH, KS]), 1)  # [CH]
    c_ord = _order_key(tl.where(c_size > 0, tl.maximum(s, floor), float("-inf")))
    c_ord = tl.where(known, tl.load(score + row + par, mask=known, other=0), c_ord)
    tl.store(child + i_bh.to(tl.int64) * 2 * BG + c, c_ord)


@triton.jit
def hip_decode_select_kernel(
    start,
    size,
    score,
    child,
    start_out,
    size_out,
    score_out,
    G: tl.constexpr,
    BG: tl.constexpr,
    RB: tl.constexpr,
):
    i_bh = tl.program_id(0)
    o_c = tl.arange(0, 2 * BG)
    u = tl.load(child + i_bh.to(tl.int64) * 2 * BG + o_c).to(tl.int64) + 2**31
    keep, slot = _keep_best(u, G, RB)  # the G best, ties to the leftmost, in position order
    row = i_bh.to(tl.int64) * BG
    _, _, c_start, c_size = _children(o_c, start + row, size + row, G)
    tl.store(start_out + row + slot, c_start, mask=keep)
    tl.store(size_out + row + slot, c_size, mask=keep)
    tl.store(score_out + row + slot, (u - 2**31).to(tl.int32), mask=keep)


def decode_candidates(T_k: int, t: int, *, block_size_k: int, sink_size: int, window: int) -> tuple[int, int]:
    """``(lo, N)``: the candidate key blocks ``[lo, lo + N)`` of a causal query at position ``t``, as
    :func:`~subq.ops.hip.checks.candidate_ranges` counts them (``N`` is -1 when the sink blocks run
    past the cache, as there)."""
    lo = sink_size // block_size_k
    n_kb = -(-T_k // block_size_k)
    left_end_key = min(t - window + 1, T_k)
    left_end = max(-(-left_end_key // block_size_k) if left_end_key > sink_size else lo, lo)
    return lo, (left_end - lo) + (n_kb - max(n_kb, left_end))


def split_iterations(N: int, G: int) -> int:
    """Iterations until every branch is one block: sizes start at ``ceil(N / G)`` at most and halve."""
    return max(1, (-(-N // G) - 1).bit_length())


def decode_mask_split(
    q: Tensor,
    k: Tensor,
    *,
    G: int,
    block_size_k: int,
    block_stride_k: int,
    sink: int,
    window: int,
    q_offset: int,
    children_per_program: int = 32,
    num_warps: int = 4,
) -> tuple[Tensor, Tensor]:
    """The block mask of one causal query per sequence: ``(indices [B, H, 1, G], counts [B, H, 1])``.

    ``q: [B, 1, H, D]`` at position ``q_offset``; ``k: [B, T_k, H_kv, D]`` (rows of unit stride; a view
    into a longer cache is read in place).
    """
    B, _, H, D = q.shape
    T_k = k.shape[1]
    lo, N = decode_candidates(T_k, q_offset, block_size_k=block_size_k, sink_size=sink, window=window)
    dev = q.device
    if N <= G:  # every candidate block is kept
        g = torch.arange(G, device=dev, dtype=torch.int32)
        idx = torch.where(g < N, lo + g, -1).expand(B, H, 1, G).contiguous()
        return idx, torch.full((B, H, 1), N, device=dev, dtype=torch.int32)
    if k.stride(-1) != 1 or k.stride(2) != D:
        k = k.contiguous()
    BG = max(16, triton.next_power_of_2(G))
    KS = block_size_k // block_stride_k
    CH = min(2 * BG, children_per_program)
    g = torch.arange(BG, device=dev, dtype=torch.int32)
    g_start = (g * N) // G
    start = torch.where(g < G, g_start, 0).expand(B * H, BG).contiguous()
    size = torch.where(g < G, ((g + 1) * N) // G - g_start, 0).expand(B * H, BG).contiguous()
    score = torch.zeros(B * H, BG, device=dev, dtype=torch.int32)
    bufs = [(start, size, score), (torch.empty_like(start), size.clone(), torch.empty_like(score))]
    child = torch.empty(B * H, 2 * BG, device=dev, dtype=torch.int32)
    qc = q.contiguous()
    for it in range(split_iterations(N, G)):
        (s_in, n_in, sc_in), (s_out, n_out, sc_out) = bufs[it % 2], bufs[1 - it % 2]
        hip_decode_score_kernel[(2 * BG // CH, B * H)](
            qc, k, s_in, n_in, sc_in, child, T_k, q_offset, sink, window, int(it == 0), SCORE_FLOOR,
            k.stride(0), k.stride(1), lo, N, H=H, H_KV=k.shape[2], D=D, G=G, BG=BG,
            BD=max(16, triton.next_power_of_2(D)), BK=block_size_k, SK=block_stride_k, KS=KS, CH=CH,
            num_warps=num_warps,
        )  # fmt: skip
        hip_decode_select_kernel[(B * H,)](s_in, n_in, sc_in, child, s_out, n_out, sc_out, G=G, BG=BG, RB=2)
    s_final = bufs[split_iterations(N, G) % 2][0]
    idx = (s_final[:, :G] + lo).view(B, H, 1, G)
    return idx, torch.full((B, H, 1), G, device=dev, dtype=torch.int32)
