"""Chunked sliding-window attention in pure PyTorch: O(T * (C + window)) time and memory.

Queries are cut into chunks of ``C``; each chunk attends, through one batched SDPA call, to the
``C + window - 1`` (causal) or ``C + 2 * window`` (bidirectional) keys that can fall in its band,
with one band mask shared by all chunks. This is the CPU path and what ``torch.compile`` sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.common.checks import check_qkv, check_window


def _band_mask(n_chunks: int, C: int, span: int, before: int, T: int, *, causal: bool, window: int, device):
    """``[n_chunks, C, span]`` mask: query ``j`` of chunk ``i`` (position ``iC + j``) vs key ``m`` of
    its span (position ``iC - before + m``)."""
    j = torch.arange(C, device=device)[:, None]
    m = torch.arange(span, device=device)[None, :]
    delta = j + before - m  # query position - key position
    band = (delta >= 0) & (delta < window) if causal else delta.abs() <= window
    start = torch.arange(n_chunks, device=device)[:, None, None] * C
    key_pos = start - before + m[None]
    query_pos = start + j[None]
    mask = band[None] & (key_pos >= 0) & (key_pos < T)
    # padded queries (position >= T) attend everything: keeps their (discarded) rows finite
    return mask | (query_pos >= T)


def chunk_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = True,
    scale: float | None = None,
    chunk_size: int | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Sliding-window attention by query chunks; same semantics as the naive form.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H_kv, D]`; v: `[B, T, H_kv, D_v]`.
        window: band width; chunk_size: queries per chunk (default ``clamp(window, 16, 512)``).
    """
    B, T, H, H_kv, D = check_qkv(q, k, v)
    check_window(window)
    if k.shape[1] != T:
        raise ValueError(f"q and k lengths differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H_kv != H:
        k = k.repeat_interleave(H // H_kv, dim=2)
        v = v.repeat_interleave(H // H_kv, dim=2)
    C = min(chunk_size or max(16, min(window, 512)), T)
    n = -(-T // C)
    before, after = (window - 1, 0) if causal else (window, window)
    span = C + before + after
    pad_end = n * C - T
    qp = F.pad(q, (0, 0, 0, 0, 0, pad_end))
    # keys padded so that chunk i's span starts at padded index i * C
    kp = F.pad(k, (0, 0, 0, 0, before, pad_end + after))
    vp = F.pad(v, (0, 0, 0, 0, before, pad_end + after))
    ks = kp.unfold(1, span, C)  # [B, n, H, D, span]
    vs = vp.unfold(1, span, C)
    qh = qp.reshape(B, n, C, H, D).permute(0, 1, 3, 2, 4)  # [B, n, H, C, D]
    kh = ks.permute(0, 1, 2, 4, 3)  # [B, n, H, span, D]
    vh = vs.permute(0, 1, 2, 4, 3)
    mask = _band_mask(n, C, span, before, T, causal=causal, window=window, device=q.device)
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[None, :, None], scale=scale)
    o = o.permute(0, 1, 3, 2, 4).reshape(B, n * C, H, -1)[:, :T]
    return o, ((k[:, -window:], v[:, -window:]) if output_final_state else None)
