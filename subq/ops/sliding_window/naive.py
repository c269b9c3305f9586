"""Reference sliding-window attention: full scores with a band mask (O(T^2), float32)."""

from __future__ import annotations

from torch import Tensor

from subq.ops.attention.naive import naive_attention
from subq.ops.common.checks import check_window


def naive_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = True,
    scale: float | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Exact softmax attention restricted to a band.

    Causal: query ``t`` attends keys ``t - window < s <= t`` (the last ``window`` tokens, itself
    included). Bidirectional: ``|t - s| <= window``.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H_kv, D]`; v: `[B, T, H_kv, D_v]`.
        window: band width (positive int).
        output_final_state: also return the last ``window`` keys and values (the decode cache).

    Returns:
        ``(o: [B, T, H, D_v], final_state)``.
    """
    check_window(window)
    o, _ = naive_attention(q, k, v, causal=causal, scale=scale, window=window)
    return o, ((k[:, -window:], v[:, -window:]) if output_final_state else None)
