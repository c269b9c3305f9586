"""Built-in benchmark entries: causal softmax attention, sliding-window attention, linear attention.

    subq bench --entries attention,sliding_window --T 1024,4096 --param window=256
    subq bench --entries based,linear_attention --T 2048,8192 --heads 16 --head-dim 64

``attention`` times ``sdpa_attention`` (SDPA behind the ``[B, T, H, D]`` layout) and so should run
at ~1x the SDPA baseline: it is the sanity check of the runner. ``sliding_window`` times the
chunked PyTorch form (``torch``) and the FlexAttention form (``triton``, CUDA only). ``based`` and
``linear_attention`` time the chunked PyTorch form (``torch``), our Triton kernels (``triton``: the
fused chunked kernel the dispatcher uses; ``triton_parallel``: the chunk-parallel kernels) and,
when ``fla-core`` is installed, flash-linear-attention's kernels on the same inputs (``fla_parallel`` /
``fla_fused_chunk``: ``fla.ops.based``; ``fla_chunk``: ``fla.ops.linear_attn.chunk_linear_attn``),
each gated against the same naive reference.

FLOP counts are forward, causal, counting 4 FLOPs per (query, key) pair and head-dim element
(``2D`` for ``q . k``, ``2D`` for ``p . v``), over the pairs inside the mask:

- attention: ``T^2 / 2`` pairs, so ``4 * B * H * D * T^2 / 2`` (the FlashAttention convention);
- sliding window ``w' = min(window, T)``: ``T * w' - w'^2 / 2`` pairs (the band minus its
  triangle at the start), so ``4 * B * H * D * (T * w' - w'^2 / 2)``; equal to the attention
  count when ``window >= T``.
- linear attention with feature dim ``F`` and value dim ``Dv``: the recurrent form's work,
  ``2 F Dv`` for the state update and ``2 F Dv`` for the read-out per token and head, so
  ``4 * B * H * T * F * Dv`` (``F = 1 + f + f^2`` for BASED's Taylor map of ``f`` dims).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.bench.registry import BenchShape, qkv_inputs, qkvo_bytes, register_bench
from subq.ops.attention import naive_attention, sdpa_attention
from subq.ops.linear_attn import chunk_linear_attention, linear_attention, naive_linear_attention
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


def based_flops(s: BenchShape) -> float:
    f = s.params["feature_dim"]
    return 4 * s.B * s.H * s.T * (1 + f + f * f) * s.D


def relu_linear_flops(s: BenchShape) -> float:
    return 4 * s.B * s.H * s.T * s.D * s.D


def based_bytes(s: BenchShape) -> float:
    """Read ``q, k: [B, T, H, f]`` and ``v: [B, T, H, D]``, write ``o: [B, T, H, D]``."""
    return (2 * s.params["feature_dim"] + 2 * s.D) * s.B * s.T * s.H * s.dtype.itemsize


def chunk_based(q: Tensor, k: Tensor, v: Tensor, *, feature_dim: int):
    return chunk_linear_attention(q, k, v, feature_map="taylor")


def naive_based(q: Tensor, k: Tensor, v: Tensor, *, feature_dim: int):
    return naive_linear_attention(q, k, v, feature_map="taylor")


def triton_based(q: Tensor, k: Tensor, v: Tensor, *, feature_dim: int):
    return linear_attention(q, k, v, feature_map="taylor", mode="triton")


def triton_parallel_based(q: Tensor, k: Tensor, v: Tensor, *, feature_dim: int):
    from subq.ops.linear_attn.chunk_parallel import chunk_parallel_linear_attention

    return chunk_parallel_linear_attention(q, k, v, feature_map="taylor")


def _fla_modes() -> tuple[dict, dict]:
    """flash-linear-attention's kernels when ``fla-core`` is installed (CUDA), else nothing.

    fla's BASED map is ``[1, x, vec(x x^T) / sqrt(2)]`` on ``q * scale`` with ``scale = f^{-1/2}`` by
    default: the same kernel as our Taylor map (``ops/linear_attn/README.md``). Its ``chunk_linear_attn``
    has no feature map; given the nonnegative inputs of ``linear_attention_inputs`` it computes the
    ReLU attention, and its default scale cancels under normalisation.
    """
    try:
        from fla.ops.based import fused_chunk_based, parallel_based
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        return {}, {}
    based = {
        "fla_parallel": lambda q, k, v, *, feature_dim: parallel_based(q, k, v, use_norm=True),
        "fla_fused_chunk": lambda q, k, v, *, feature_dim: fused_chunk_based(q, k, v, use_norm=True),
    }
    linear = {"fla_chunk": lambda q, k, v: chunk_linear_attn(q, k, v, normalize=True)[0]}
    return based, linear


FLA_BASED_MODES, FLA_LINEAR_MODES = _fla_modes()


@register_bench(
    "based",
    modes={
        "torch": chunk_based,
        "triton": triton_based,
        "triton_parallel": triton_parallel_based,
        **FLA_BASED_MODES,
    },
    reference=naive_based,
    flops=based_flops,
    bytes=based_bytes,
    params={"feature_dim": 16},
)
def based_inputs(s: BenchShape) -> dict[str, Tensor]:
    """BASED's linear attention: ``q, k: [B, T, H, feature_dim]`` through the Taylor map,
    ``v: [B, T, H, D]``; causal and normalised."""
    f = s.params["feature_dim"]
    return {
        "q": torch.randn(s.B, s.T, s.H, f, dtype=s.dtype, device=s.device),
        "k": torch.randn(s.B, s.T, s.H, f, dtype=s.dtype, device=s.device),
        "v": torch.randn(s.B, s.T, s.H, s.D, dtype=s.dtype, device=s.device),
    }


def chunk_relu_linear(q: Tensor, k: Tensor, v: Tensor):
    return chunk_linear_attention(q, k, v, feature_map="relu")


def naive_relu_linear(q: Tensor, k: Tensor, v: Tensor):
    return naive_linear_attention(q, k, v, feature_map="relu")


def triton_relu_linear(q: Tensor, k: Tensor, v: Tensor):
    return linear_attention(q, k, v, feature_map="relu", mode="triton")


def triton_parallel_relu_linear(q: Tensor, k: Tensor, v: Tensor):
    from subq.ops.linear_attn.chunk_parallel import chunk_parallel_linear_attention

    return chunk_parallel_linear_attention(q, k, v, feature_map="relu")


@register_bench(
    "linear_attention",
    modes={
        "torch": chunk_relu_linear,
        "triton": triton_relu_linear,
        "triton_parallel": triton_parallel_relu_linear,
        **FLA_LINEAR_MODES,
    },
    reference=naive_relu_linear,
    flops=relu_linear_flops,
    bytes=qkvo_bytes,
)
def relu_linear_inputs(s: BenchShape) -> dict[str, Tensor]:
    """LiT's ReLU linear attention: ``q, k, v: [B, T, H, D]``; causal and normalised. ``q`` and ``k``
    are nonnegative (``|randn|``, fixed points of the ReLU), so that a kernel without a feature map
    computes the same function."""
    x = qkv_inputs(s)
    with torch.no_grad():
        x["q"].abs_(), x["k"].abs_()
    return x
