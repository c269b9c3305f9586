"""Built-in benchmark entries: causal softmax attention and sliding-window attention.

    subq bench --entries attention,sliding_window --T 1024,4096 --param window=256

``attention`` times ``sdpa_attention`` (SDPA behind the ``[B, T, H, D]`` layout) and so should run
at ~1x the SDPA baseline: it is the sanity check of the runner. ``sliding_window`` times the
chunked PyTorch form (``torch``) and the FlexAttention form (``triton``, CUDA only).

FLOP counts are forward, causal, counting 4 FLOPs per (query, key) pair and head-dim element
(``2D`` for ``q . k``, ``2D`` for ``p . v``), over the pairs inside the mask:

- attention: ``T^2 / 2`` pairs, so ``4 * B * H * D * T^2 / 2`` (the FlashAttention convention);
- sliding window ``w' = min(window, T)``: ``T * w' - w'^2 / 2`` pairs (the band minus its
  triangle at the start), so ``4 * B * H * D * (T * w' - w'^2 / 2)``; equal to the attention
  count when ``window >= T``.
"""

from __future__ import annotations

from torch import Tensor

from subq.bench.registry import BenchShape, qkv_inputs, qkvo_bytes, register_bench
from subq.ops.attention import naive_attention, sdpa_attention
from subq.ops.sliding_window import (
    chunk_sliding_window_attention,
    flex_sliding_window_attention,
    naive_sliding_window_attention,
)


def causal_attention_flops(s: BenchShape) -> float:
    return 4 * s.B * s.H * s.D * s.T * s.T / 2


def sliding_window_flops(s: BenchShape) -> float:
    w = min(s.params["window"], s.T)
    return 4 * s.B * s.H * s.D * (s.T * w - w * w / 2)


@register_bench(
    "attention",
    modes={"torch": sdpa_attention},
    reference=naive_attention,
    flops=causal_attention_flops,
    bytes=qkvo_bytes,
)
def attention_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``q, k, v: [B, T, H, D]``; causal (the ops' default)."""
    return qkv_inputs(s)


@register_bench(
    "sliding_window",
    modes={"torch": chunk_sliding_window_attention, "triton": flex_sliding_window_attention},
    reference=naive_sliding_window_attention,
    flops=sliding_window_flops,
    bytes=qkvo_bytes,
    params={"window": 256},
)
def sliding_window_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``q, k, v: [B, T, H, D]``; causal, each query sees the last ``window`` keys."""
    return qkv_inputs(s)
