"""Reference HiP attention: the hierarchical block-mask search, the exact top-k oracle mask, and dense
softmax attention restricted to a block mask (float32, or float64 in tests).

The search is vectorised over batch, heads and query blocks but keeps the paper's loop over
iterations explicit; it is already O(T log T) and is also the CPU form of the search.
``README.md`` beside this file has the math and the exact semantics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.hip.checks import (
    SCORE_FLOOR,
    candidate_ranges,
    check_hip_args,
    check_hip_inputs,
    check_indices,
    query_block_bounds,
)


def _heads(x: Tensor, H: int) -> Tensor:
    """``[B, T, H_kv, D]`` -> ``[B, H, T, D]`` with each key/value head repeated for its query heads."""
    return x.repeat_interleave(H // x.shape[2], dim=2).transpose(1, 2)


def kv_rows(x: Tensor, pos: Tensor) -> Tensor:
    """Rows ``x[b, pos[b, h, ...], h // group]`` of ``x: [B, T, H_kv, D]`` for positions
    ``pos: [B, H, ...]`` (clamped into ``[0, T)``): ``[B, H, ..., D]`` in ``x``'s dtype.

    Whole rows by ``index_select`` on a ``[rows, D]`` view of the cache: the cost is the rows taken,
    not ``T`` (expanding ``x`` to every query head first would copy the whole cache ``H / H_kv``
    times), and a row at a time rather than an element at a time as ``torch.gather`` does. A strided
    cache (a Hugging Face ``[B, H_kv, T, D]`` cache seen as ``[B, T, H_kv, D]``, or a slice of a longer
    one) is read in place when no gradient is needed; otherwise it is made contiguous first.
    """
    B, T, H_kv, D = x.shape
    H = pos.shape[1]
    b = torch.arange(B, device=pos.device).view(B, *([1] * (pos.dim() - 1)))
    h = (torch.arange(H, device=pos.device) // (H // H_kv)).view(1, H, *([1] * (pos.dim() - 2)))
    pos = pos.clamp(0, T - 1)
    strides = x.stride()
    in_place = (
        not x.is_contiguous()
        and not (x.requires_grad and torch.is_grad_enabled())
        and strides[3] == 1
        and all(st % D == 0 for st in strides[:3])
    )
    if in_place:  # row r of the view starts r * D elements after x's first element
        s0, s1, s2 = (st // D for st in strides[:3])
        n_rows = (B - 1) * s0 + (T - 1) * s1 + (H_kv - 1) * s2 + 1
        flat, rows = x.as_strided((n_rows, D), (D, 1)), b * s0 + pos * s1 + h * s2
    else:
        flat, rows = x.reshape(-1, D), (b * T + pos) * H_kv + h
    return flat.index_select(0, rows.flatten()).view(*pos.shape, D)


def _scores(q: Tensor, k: Tensor) -> Tensor:
    """Unscaled dense scores ``q . k``: ``[B, H, T_q, T_k]`` in float32 (float64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    return torch.einsum("bthd,bhsd->bhts", q.to(acc), _heads(k.to(acc), q.shape[2]))


def _causal_mask(T_q: int, T_k: int, q_offset: int, device) -> Tensor:
    """``[T_q, T_k]`` bool: query row ``r`` (position ``q_offset + r``) may see key ``s <= q_offset + r``."""
    return (q_offset + torch.arange(T_q, device=device))[:, None] >= torch.arange(T_k, device=device)


def _branch_to_block(vi: Tensor, lo: Tensor, n_left: Tensor, right_start: Tensor) -> Tensor:
    """Branch index ``v`` (into the concatenated candidate ranges) -> key block index."""
    return torch.where(vi < n_left, lo + vi, right_start + vi - n_left)


def naive_hip_mask(
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
) -> tuple[Tensor, Tensor]:
    """HiP's block-level hierarchical top-k search.

    Every query block (``block_size_q`` rows) keeps ``G = mask_k // block_size_k`` branches over its
    candidate key blocks. An iteration halves every branch (left ``n // 2`` blocks, right the rest),
    scores each child by ``max q . k`` over every ``block_stride_q``-th query row of the block and every
    ``block_stride_k``-th key of the child's centre key block, and keeps the ``G`` best children (ties:
    the leftmost). It stops when every branch is one block. With at most ``G`` candidates all are kept.

    Args:
        q: `[B, T_q, H, D]`; k: `[B, T_k, H_kv, D]`.
        mask_k: key budget ``k`` of the paper (default 512); a multiple of ``block_size_k``.
        block_size_q, block_stride_q, block_size_k, block_stride_k: powers of two (defaults 64, 2, 2, 1).
        sink_size: first keys always attended (16); window: sliding window always attended (256).
        causal: causal search range; q_offset: position of the first query (default ``T_k - T_q``).

    Returns:
        ``(indices, counts)``: ``indices [B, H, n_qblocks, G]`` int32 key-block indices in ascending
        order, padded with -1; ``counts [B, H, n_qblocks]`` int32 valid entries per query block.
    """
    G = check_hip_args(
        mask_k=mask_k,
        block_size_q=block_size_q,
        block_stride_q=block_stride_q,
        block_size_k=block_size_k,
        block_stride_k=block_stride_k,
        sink_size=sink_size,
        window=window,
    )
    q_offset = check_hip_inputs(q, k, None, causal=causal, q_offset=q_offset)
    B, T_q, H, D = q.shape
    T_k, dev = k.shape[1], q.device
    acc = torch.promote_types(q.dtype, torch.float32)
    lo, n_left, right_start, n_right = candidate_ranges(
        T_q,
        T_k,
        q_offset,
        block_size_q=block_size_q,
        block_size_k=block_size_k,
        sink_size=sink_size,
        window=window,
        causal=causal,
        device=dev,
    )
    n_qb = lo.shape[0]
    N = n_left + n_right  # [n_qb] candidate blocks
    i = torch.arange(n_qb, device=dev)
    t_min, t_max = query_block_bounds(T_q, q_offset, block_size_q, dev)

    # the strided query tile of every block: [B, H, n_qb, BQS, D] and its validity [n_qb, BQS]
    rows = i[:, None] * block_size_q + torch.arange(0, block_size_q, block_stride_q, device=dev)[None]
    row_ok = rows < T_q
    q_tile = q.to(acc).transpose(1, 2)[:, :, rows.clamp(max=T_q - 1)]
    key_off = torch.arange(0, block_size_k, block_stride_k, device=dev)

    # B, H, n_qb broadcast dims for the per-block geometry
    lo_, nl_, rs_, N_ = (x[:, None] for x in (lo, n_left, right_start, N))  # [n_qb, 1]
    Ns = torch.maximum(N_, torch.tensor(G, device=dev))  # rows with N <= G are replaced at the end
    j = torch.arange(G, device=dev)[None]
    start = (j * Ns) // G  # [n_qb, G]
    size = ((j + 1) * Ns) // G - start
    start = start.expand(B, H, n_qb, G).clone()
    size = size.expand(B, H, n_qb, G).clone()

    while bool((size > 1).any()):
        half = size // 2
        # children in position order: left_j = [s, s + n//2), right_j = [s + n//2, s + n)
        c_start = torch.stack((start, start + half), dim=-1).flatten(-2)  # [B, H, n_qb, 2G]
        c_size = torch.stack((half, size - half), dim=-1).flatten(-2)
        rep = (c_start + c_size // 2).clamp(max=Ns - 1)
        rep_block = _branch_to_block(rep, lo_, nl_, rs_)  # [B, H, n_qb, 2G]
        key_pos = rep_block[..., None] * block_size_k + key_off  # [B, H, n_qb, 2G, BKS]
        key_ok = (key_pos >= sink_size) & (key_pos < T_k)
        if causal:
            key_ok &= key_pos <= (t_max - window)[:, None, None]
        else:
            band = (key_pos >= (t_max - window)[:, None, None]) & (key_pos <= (t_min + window)[:, None, None])
            key_ok &= ~band
        k_rep = kv_rows(k, key_pos).to(acc)  # [B, H, n_qb, 2G, BKS, D]
        s = torch.einsum("bhnqd,bhnckd->bhncqk", q_tile, k_rep)  # [B, H, n_qb, 2G, BQS, BKS]
        ok = row_ok[:, None, :, None] & key_ok[..., None, :]
        s = s.masked_fill(~ok, float("-inf")).amax(dim=(-2, -1))
        score = torch.where(c_size > 0, s.clamp(min=SCORE_FLOOR), float("-inf"))
        # keep the G best children: stable descending sort, so ties go to the leftmost child
        best = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :G]
        keep = torch.sort(best, dim=-1).values  # back to position order
        start = torch.gather(c_start, -1, keep)
        size = torch.gather(c_size, -1, keep)

    blocks = _branch_to_block(start, lo_, nl_, rs_)
    # query blocks with at most G candidates select them all
    all_v = j.expand(n_qb, G)
    select_all = _branch_to_block(all_v, lo_, nl_, rs_).masked_fill(all_v >= N_, -1)
    small = (N_ <= G).expand(n_qb, G)
    indices = torch.where(small, select_all, blocks).to(torch.int32)
    counts = torch.clamp(N, max=G).to(torch.int32).expand(B, H, n_qb).contiguous()
    return indices.contiguous(), counts


def hip_token_mask(
    indices: Tensor,
    counts: Tensor,
    T_q: int,
    T_k: int,
    *,
    block_size_q: int,
    block_size_k: int,
    sink_size: int,
    window: int,
    causal: bool = True,
    q_offset: int | None = None,
) -> Tensor:
    """The keys each query attends under a block mask: ``[B, H, T_q, T_k]`` bool.

    Query ``t`` (absolute position ``q_offset + row``) attends key ``s`` when ``s <= t`` (causal) and
    ``s`` is a sink (``s < sink_size``), in the window (causal ``t - s < window``, bidirectional
    ``|t - s| <= window``) or in a key block selected for the query block of ``t``.
    """
    B, H, n_qb, G = indices.shape
    check_indices(indices, counts, B, H, -(-T_q // block_size_q))
    if q_offset is None:
        q_offset = T_k - T_q
    dev = indices.device
    n_kb = -(-T_k // block_size_k)
    valid = torch.arange(G, device=dev) < counts[..., None]
    sel = torch.zeros(B, H, n_qb, n_kb + 1, dtype=torch.bool, device=dev)
    sel.scatter_(-1, torch.where(valid, indices.long(), n_kb), True)
    rows = torch.arange(T_q, device=dev)
    cols = torch.arange(T_k, device=dev)
    tok = sel[:, :, rows // block_size_q][..., cols // block_size_k]  # [B, H, T_q, T_k]
    pos = q_offset + rows[:, None]
    delta = pos - cols[None]
    win = (delta >= 0) & (delta < window) if causal else delta.abs() <= window
    allowed = tok | win | (cols < sink_size)[None]
    if causal:
        allowed &= delta >= 0
    return allowed


def naive_block_sparse_attention(
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
) -> tuple[Tensor, None]:
    """Softmax attention restricted to :func:`hip_token_mask`, from the full score matrix.

    Args:
        q: `[B, T_q, H, D]`; k: `[B, T_k, H_kv, D]`; v: `[B, T_k, H_kv, D_v]`.
        indices, counts: a block mask as returned by :func:`naive_hip_mask`.
        scale: score scale, default ``D ** -0.5``. Other arguments as :func:`naive_hip_mask`.

    Returns:
        ``(o: [B, T_q, H, D_v] in the dtype of q, None)``.
    """
    q_offset = check_hip_inputs(q, k, v, causal=causal, q_offset=q_offset)
    B, T_q, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    allowed = hip_token_mask(
        indices,
        counts,
        T_q,
        k.shape[1],
        block_size_q=block_size_q,
        block_size_k=block_size_k,
        sink_size=sink_size,
        window=window,
        causal=causal,
        q_offset=q_offset,
    )
    scores = _scores(q, k) * scale
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    o = torch.einsum("bhts,bhsd->bthd", p, _heads(v.to(acc), H))
    return o.to(q.dtype), None


def naive_hip_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask_k: int = 512,
    block_size_q: int = 64,
    block_stride_q: int = 2,
    block_size_k: int = 2,
    block_stride_k: int = 1,
    sink_size: int = 16,
    window: int = 256,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | None = None,
) -> tuple[Tensor, None]:
    """:func:`naive_hip_mask` followed by :func:`naive_block_sparse_attention` (no gradient through
    the selection)."""
    geo = dict(block_size_q=block_size_q, block_size_k=block_size_k, sink_size=sink_size, window=window)
    with torch.no_grad():
        indices, counts = naive_hip_mask(
            q,
            k,
            mask_k=mask_k,
            block_stride_q=block_stride_q,
            block_stride_k=block_stride_k,
            causal=causal,
            q_offset=q_offset,
            **geo,
        )
    return naive_block_sparse_attention(
        q, k, v, indices, counts, causal=causal, scale=scale, q_offset=q_offset, **geo
    )


def topk_oracle_mask(
    q: Tensor, k: Tensor, mask_k: int, *, causal: bool = True, q_offset: int | None = None
) -> Tensor:
    """The exact top-k mask: for every query its ``mask_k`` highest-scoring allowed keys (all of them
    when fewer are allowed). ``[B, H, T_q, T_k]`` bool; O(T_q T_k), for evaluation only."""
    q_offset = check_hip_inputs(q, k, None, causal=causal, q_offset=q_offset)
    T_q, T_k = q.shape[1], k.shape[1]
    scores = _scores(q, k)
    allowed = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device)
    if causal:
        allowed = _causal_mask(T_q, T_k, q_offset, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    top = scores.topk(min(mask_k, T_k), dim=-1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
    return mask & allowed


def attention_mass_recall(
    q: Tensor, k: Tensor, mask: Tensor, oracle: Tensor, *, causal: bool = True, q_offset: int | None = None
) -> Tensor:
    """Softmax mass (of dense attention) on ``mask`` divided by the mass on ``oracle``, per query:
    ``[B, H, T_q]``. 1 means the mask captures as much attention as the exact top-k keys."""
    q_offset = check_hip_inputs(q, k, None, causal=causal, q_offset=q_offset)
    scores = _scores(q, k) * q.shape[3] ** -0.5
    if causal:
        scores = scores.masked_fill(~_causal_mask(q.shape[1], k.shape[1], q_offset, q.device), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p * mask).sum(-1) / (p * oracle).sum(-1)
