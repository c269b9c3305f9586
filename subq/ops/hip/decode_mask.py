"""HiP's mask search for one decoding query, spread over the GPU: one launch per iteration.

:func:`~subq.ops.hip.mask.hierarchical_mask` runs a whole search in one program per (query block,
head): with one query per sequence that is ``B x H`` programs (32 for one sequence of a 32-head
model), each walking its ``2G`` children in sequence, so a decode-time search leaves most of the GPU
idle. Here every iteration is one launch of ``hip_decode_search_kernel``, grid ``(2G / CH, B x H)``:

- each program scores ``CH`` children of one head (the query against the ``block_size_k /
  block_stride_k`` sampled keys of each child's representative block; a right child of a branch of
  at most 2 blocks reuses its parent's score) and writes them as order-preserving integers;
- then takes its head's ticket (an atomic counter); the last of the head's ``2G / CH`` programs to
  arrive keeps the ``G`` best children by radix select (ties to the leftmost, as in the one-program
  kernel), writes them in position order into the other of two branch buffers, and resets the ticket.
  The first iteration computes the initial branches from their formula, and the last writes the
  block ids, so no other kernel runs.

The number of iterations is known on the host: branch sizes start at ``ceil(N / G)`` or below and
halve each iteration, and once every branch is one block another iteration changes nothing. The
masks equal :func:`~subq.ops.hip.naive.naive_hip_mask`'s (``block_size_q = 1``, causal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.checks import SCORE_FLOOR
from subq.ops.hip.decode import _tickets
from subq.ops.hip.mask import _keep_best, _order_key


@triton.jit
def _branches(j, start, size, first, N, G: tl.constexpr):
    """``(start, size)`` of branches ``j`` (padding ``j >= G``: empty); the first iteration's split
    ``[j N / G, (j + 1) N / G)`` from the formula, later ones from the buffers."""
    m = j < G
    init = (j * 0 + first) == 1  # vector & vector (see common.py)
    f_s = (j * N) // G
    s = tl.where(init, f_s, tl.load(start + j, mask=m & ~init, other=0))
    n = tl.where(init, ((j + 1) * N) // G - f_s, tl.load(size + j, mask=m & ~init, other=0))
    return tl.where(m, s, 0), tl.where(m, n, 0)


@triton.jit
def _child_of(c, start, size, first, N, G: tl.constexpr):
    """As :func:`~subq.ops.hip.mask._children`: ``(parent, parent size, start, size)`` of children ``c``."""
    par = c // 2
    p_s, p_n = _branches(par, start, size, first, N, G)
    right = c % 2
    return par, p_n, p_s + right * (p_n // 2), tl.where(right == 1, p_n - p_n // 2, p_n // 2)


@triton.jit(do_not_specialize=["T_k", "t", "sink", "window", "first", "last", "lo", "N"])
def hip_decode_search_kernel(
    q,
    k,
    start,
    size,
    score,
    child,
    start_out,
    size_out,
    score_out,
    ticket,
    indices,
    T_k,
    t,
    sink,
    window,
    first,
    last,
    floor,
    stride_kb,
    stride_kt,
    stride_kh,
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
    RB: tl.constexpr,
):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    row = i_bh.to(tl.int64) * BG
    p_start, p_size, p_score = start + row, size + row, score + row
    o_d = tl.arange(0, BD)
    b_q = tl.load(q + i_bh.to(tl.int64) * D + o_d, mask=o_d < D, other=0.0).to(tl.float32)
    c = i_c * CH + tl.arange(0, CH)  # children in position order: 2j left, 2j + 1 right of branch j
    par, p_n, c_start, c_size = _child_of(c, p_start, p_size, first, N, G)
    right = c % 2
    known = (right == 1) & (p_n >= 1) & (p_n <= 2) & (c * 0 + first == 0)
    rep = lo + tl.minimum(c_start + c_size // 2, N - 1)  # causal decode: candidates [lo, lo + N)
    o_ks = tl.arange(0, KS) * SK
    pos = tl.reshape(rep[:, None] * BK + o_ks[None, :], [CH * KS])
    need = tl.reshape(((c_size > 0) & ~known)[:, None] & (o_ks >= 0)[None, :], [CH * KS])
    p_k = k + i_b.to(tl.int64) * stride_kb + i_hk.to(tl.int64) * stride_kh
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
    c_ord = tl.where(known, tl.load(p_score + par, mask=known, other=0), c_ord)
    p_child = child + i_bh.to(tl.int64) * 2 * BG
    tl.store(p_child + c, c_ord)
    # every warp's stores precede the ticket (one thread takes it, acq_rel at GPU scope), so the
    # last program of the head sees all scores
    tl.debug_barrier()
    if tl.atomic_add(ticket + i_bh, 1) == 2 * BG // CH - 1:
        o_c = tl.arange(0, 2 * BG)
        u = tl.load(p_child + o_c, cache_modifier=".cg").to(tl.int64) + 2**31
        keep, slot = _keep_best(u, G, RB)  # the G best, ties to the leftmost, in position order
        _, _, a_start, a_size = _child_of(o_c, p_start, p_size, first, N, G)
        if last == 1:
            tl.store(indices + i_bh.to(tl.int64) * G + slot, lo + a_start, mask=keep)
        else:
            tl.store(start_out + row + slot, a_start, mask=keep)
            tl.store(size_out + row + slot, a_size, mask=keep)
            tl.store(score_out + row + slot, (u - 2**31).to(tl.int32), mask=keep)
        tl.atomic_xchg(ticket + i_bh, 0)


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

    ``q: [B, 1, H, D]`` at position ``q_offset``; ``k: [B, T_k, H_kv, D]`` (rows of unit stride; any
    other strides, such as a view into a longer cache or Hugging Face's ``[B, H_kv, T, D]`` cache
    transposed, are read in place).
    """
    B, _, H, D = q.shape
    T_k = k.shape[1]
    lo, N = decode_candidates(T_k, q_offset, block_size_k=block_size_k, sink_size=sink, window=window)
    dev = q.device
    if N <= G:  # every candidate block is kept
        g = torch.arange(G, device=dev, dtype=torch.int32)
        idx = torch.where(g < N, lo + g, -1).expand(B, H, 1, G).contiguous()
        return idx, torch.full((B, H, 1), N, device=dev, dtype=torch.int32)
    if k.stride(-1) != 1:
        k = k.contiguous()
    BG = max(16, triton.next_power_of_2(G))
    KS = block_size_k // block_stride_k
    CH = min(2 * BG, children_per_program)
    bufs = [tuple(torch.empty(B * H, BG, device=dev, dtype=torch.int32) for _ in range(3)) for _ in range(2)]
    child = torch.empty(B * H, 2 * BG, device=dev, dtype=torch.int32)
    indices = torch.empty(B, H, 1, G, device=dev, dtype=torch.int32)
    qc, ticket = q.contiguous(), _tickets(B * H, dev)
    n_it = split_iterations(N, G)
    for it in range(n_it):
        (s_in, n_in, sc_in), (s_out, n_out, sc_out) = bufs[it % 2], bufs[1 - it % 2]
        hip_decode_search_kernel[(2 * BG // CH, B * H)](
            qc, k, s_in, n_in, sc_in, child, s_out, n_out, sc_out, ticket, indices, T_k, q_offset, sink,
            window, int(it == 0), int(it == n_it - 1), SCORE_FLOOR, k.stride(0), k.stride(1), k.stride(2),
            lo, N,
            H=H, H_KV=k.shape[2], D=D, G=G, BG=BG, BD=max(16, triton.next_power_of_2(D)), BK=block_size_k,
            SK=block_stride_k, KS=KS, CH=CH, RB=2, num_warps=num_warps,
        )  # fmt: skip
    return indices, torch.full((B, H, 1), G, device=dev, dtype=torch.int32)
