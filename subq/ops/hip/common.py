"""Triton pieces shared by the HiP attention kernels (prefill forward, backward, decode)."""

from __future__ import annotations

from subq.ops.common.triton_compat import tl, triton


@triton.jit
def _chunk_keys(c, n_sink_chunks, n_sel_chunks, p_idx, count, w_lo, BLOCK_K: tl.constexpr, BN: tl.constexpr):
    """Key positions of chunk ``c`` of the key list ``sinks | selected blocks | window``.

    Returns ``(pos [BN], exists [BN], kind [BN])`` with ``kind`` 0 (sink), 1 (selected), 2 (window).
    """
    o_n = tl.arange(0, BN)
    # kind as a vector: the interpreter mishandles vector-bool & scalar-bool
    c_n = c + o_n * 0
    kind = (c_n >= n_sink_chunks).to(tl.int32) + (c_n >= n_sink_chunks + n_sel_chunks).to(tl.int32)
    j = (c - n_sink_chunks) * BN + o_n
    m_sel = (j >= 0) & (j < count * BLOCK_K) & (kind == 1)
    blk = tl.load(p_idx + j // BLOCK_K, mask=m_sel, other=0)
    pos_sel = blk * BLOCK_K + j % BLOCK_K
    pos_win = w_lo + (c - n_sink_chunks - n_sel_chunks) * BN + o_n
    pos = tl.where(kind == 0, c * BN + o_n, tl.where(kind == 1, pos_sel, pos_win))
    exists = (kind != 1) | m_sel
    return pos, exists, kind


@triton.jit
def _key_mask(t, pos, exists, kind, T_k, sink, window, CAUSAL: tl.constexpr):
    """``[BM, BN]``: query at absolute position ``t [BM]`` attends key ``pos [BN]`` of a chunk of
    ``kind``. Each key is counted by exactly one kind: sinks, then the window, then selected blocks."""
    s = pos[None, :]
    d = t[:, None] - s
    if CAUSAL:
        in_win = (d >= 0) & (d < window)
    else:
        in_win = (d <= window) & (d >= -window)
    is_sink = s < sink
    m = (exists & (pos >= 0) & (pos < T_k))[None, :]
    kind = kind[None, :]
    m = m & tl.where(kind == 0, is_sink, (~is_sink) & tl.where(kind == 1, ~in_win, in_win))
    if CAUSAL:
        m = m & (d >= 0)
    return m
