"""Reference softmax attention: explicit scores, explicit mask, float32 (or float64) softmax.

Ground truth for every attention-like fast form in subq (SDPA, sliding window, block-sparse).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.checks import check_qkv, check_window


def attention_mask(
    T: int, S: int, *, causal: bool, window: int | None = None, q_offset: int | None = None, device=None
) -> Tensor:
    """Boolean ``[T, S]`` mask, True where query ``i`` may attend key ``j``.

    Query ``i`` sits at absolute position ``q_offset + i`` (default ``S - T``: the queries are the
    last ``T`` of the ``S`` keys, as in decoding); key ``j`` at position ``j``.
    Causal: ``j <= pos(i)``; with a window also ``pos(i) - j < window`` (the last ``window`` tokens,
    itself included). Bidirectional with a window: ``|pos(i) - j| <= window``.
    """
    if q_offset is None:
        q_offset = S - T
    pos_q = torch.arange(T, device=device)[:, None] + q_offset
    pos_k = torch.arange(S, device=device)[None, :]
    delta = pos_q - pos_k
    mask = torch.ones(T, S, dtype=torch.bool, device=device)
    if causal:
        mask &= delta >= 0
        if window is not None:
            mask &= delta < window
    elif window is not None:
        mask &= delta.abs() <= window
    return mask


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    q_offset: int | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Softmax attention computed from the full score matrix.

    Args:
        q: `[B, T, H, D]` queries.
        k: `[B, S, H_kv, D]` keys; ``H`` must be a multiple of ``H_kv`` (GQA).
        v: `[B, S, H_kv, D_v]` values.
        causal: mask keys after the query position.
        scale: score scale, default ``D ** -0.5``.
        window: if set, restrict to a sliding window (see :func:`attention_mask`).
        q_offset: absolute position of the first query (default ``S - T``).
        output_final_state: also return ``(k, v)``, the KV cache after the last token.

    Returns:
        ``(o, final_state)`` with ``o: [B, T, H, D_v]`` in the dtype of ``q``.
    """
    B, T, H, H_kv, D = check_qkv(q, k, v)
    if window is not None:
        check_window(window)
    scale = D**-0.5 if scale is None else scale
    group = H // H_kv
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 in tests
    kf = k.to(acc).repeat_interleave(group, dim=2)
    vf = v.to(acc).repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.to(acc), kf) * scale  # [B, H, T, S]
    mask = attention_mask(T, k.shape[1], causal=causal, window=window, q_offset=q_offset, device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhts,bshd->bthd", p, vf).to(q.dtype)
    return o, ((k, v) if output_final_state else None)
