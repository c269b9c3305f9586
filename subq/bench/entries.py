"""Built-in benchmark entries: causal softmax attention, sliding-window attention, linear attention,
Combiner, kernelized attention with RPE and Performer.

    subq bench --entries attention,sliding_window --T 1024,4096 --param window=256
    subq bench --entries based,linear_attention --T 2048,8192 --heads 16 --head-dim 64
    subq bench --entries combiner,kernelized_rpe,performer --T 1024,4096,16384,65536 --heads 16 --head-dim 64

``attention`` times ``sdpa_attention`` (SDPA behind the ``[B, T, H, D]`` layout) and so should run
at ~1x the SDPA baseline: it is the sanity check of the runner. ``sliding_window`` times the
chunked PyTorch form (``torch``) and the FlexAttention form (``triton``, CUDA only). ``based`` and
``linear_attention`` time the chunked PyTorch form (``torch``), our Triton kernels (``triton``: what
the dispatcher uses for causal inputs, the chunk-parallel kernels; ``triton_fused``: the fused chunked
kernels, used for bidirectional inputs) and,
when ``fla-core`` is installed, flash-linear-attention's kernels on the same inputs (``fla_parallel`` /
``fla_fused_chunk``: ``fla.ops.based``; ``fla_chunk``: ``fla.ops.linear_attn.chunk_linear_attn``),
each gated against the same naive reference.

``combiner`` times the blocked PyTorch form of Combiner attention (``torch``,
``subq/ops/combiner/blocked.py``) and the Triton kernels (``triton``, ``subq/ops/combiner/fused.py``,
CUDA only, variant ``axial`` only; its backward recomputes through the blocked pieces), variant
``axial`` by default (``--param variant=fixed|logsparse|axial|mixture``) with max-pooled row keys
(the op's default; the ``combiner`` layer's learned ``proj`` keys add two small matmuls per token).
``block_size=0`` means ``ceil(sqrt(T))`` (32, 64, 128, 256 at
T = 1k, 4k, 16k, 64k), which balances the ``s`` direct logits against the ``T / s`` span logits and
makes the op O(T sqrt(T) D); a fixed ``--param block_size=128`` is O(T (128 + T / 128) D) instead.
``kernelized_rpe`` times the FFT form of kernelized attention with a relative-position bias
(``fft``: one zero-padded FFT, the paper's Algorithm 1; ``chunk``: dyadic FFT blocks, bitwise causal,
what the ``kernelized_rpe`` layer uses by default), ``num_features`` (m) positive random features per
head (default 64, the layers' default), the query/key normalisation of the paper's stable variant, and
a random ``rpe_bias: [H, 2T - 1]`` that is differentiated like ``q, k, v``. ``performer`` is the same
feature map without the bias (vanilla PRF, as the ``performer`` layer's default), i.e. linear attention
on the features: ``torch`` (chunked PyTorch) and ``triton`` (the fused chunked kernel, CUDA only).
The random features are fixed per (H, m, D, device), as the layers keep them, and not differentiated.

FLOP counts are forward, causal, counting 4 FLOPs per (query, key) pair and head-dim element
(``2D`` for ``q . k``, ``2D`` for ``p . v``), over the pairs inside the mask:

- attention: ``T^2 / 2`` pairs, so ``4 * B * H * D * T^2 / 2`` (the FlashAttention convention);
- sliding window ``w' = min(window, T)``: ``T * w' - w'^2 / 2`` pairs (the band minus its
  triangle at the start), so ``4 * B * H * D * (T * w' - w'^2 / 2)``; equal to the attention
  count when ``window >= T``.
- linear attention with feature dim ``F`` and value dim ``Dv``: the recurrent form's work,
  ``2 F Dv`` for the state update and ``2 F Dv`` for the read-out per token and head, so
  ``4 * B * H * T * F * Dv`` (``F = 1 + f + f^2`` for BASED's Taylor map of ``f`` dims).
- combiner, block ``s``, ``n = ceil(T / s)`` blocks: 4 FLOPs per head-dim element and per
  (query, logit) pair of the joint softmax (``q . k`` or ``q . k_bar``, then the weighted value or
  span value), causal queries using half of each group on average, plus the pairs of the span
  summaries (a query attending its span): axial ``T (s + n) / 2 + T s`` pairs (every position's query
  summarises its row); fixed ``T (s + n) / 2 + T`` (one pooled query per segment); mixture
  ``T (3n + 2s) / 2 + T (n + s)``; logsparse with ``L = bit_length(T - 1)`` levels
  ``T (3 + L) / 2 + T L``. Max-pooling and masking are not counted.
- kernelized RPE, ``m`` features, FFT size ``N = 2T``: the feature maps ``2 T m D`` each for ``q`` and
  ``k``; ``A = phi(k) [v, 1]^T`` and the read-out ``phi(q)^T D``, ``T m (D + 1)`` and
  ``2 T m (D + 1)``; per channel of ``A`` (``m (D + 1)`` of them) a real FFT and its inverse,
  ``2.5 N log2 N`` each, and the complex product, ``3 N``. Counted for both modes (``chunk`` does a
  different but same-order amount of work). Bytes: ``q, k, v, o`` as attention (``rpe_bias`` is
  ``2T`` numbers per head).
- performer, ``m`` features: the feature maps ``4 T m D``, then linear attention on them as above,
  ``4 T m D``: ``8 * B * H * T * m * D``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from subq.bench.registry import BenchShape, qkv_inputs, qkvo_bytes, register_bench
from subq.ops.attention import naive_attention, sdpa_attention
from subq.ops.combiner import blocked_combiner_attention, combiner_attention, naive_combiner_attention
from subq.ops.kernel_rpe import (
    draw_random_features,
    fft_kernelized_rpe_attention,
    naive_kernelized_rpe_attention,
    prf_feature_map,
)
from subq.ops.linear_attn import (
    chunk_linear_attention,
    fused_chunk_linear_attention,
    linear_attention,
    naive_linear_attention,
)
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


def triton_fused_based(q: Tensor, k: Tensor, v: Tensor, *, feature_dim: int):
    return fused_chunk_linear_attention(q, k, v, feature_map="taylor")


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
        "triton_fused": triton_fused_based,
        **FLA_BASED_MODES,
    },
    reference=naive_based,
    flops=based_flops,
    bytes=based_bytes,
    params={"feature_dim": 16},
    cuda_only=("triton", "triton_fused", *FLA_BASED_MODES),
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


def triton_fused_relu_linear(q: Tensor, k: Tensor, v: Tensor):
    return fused_chunk_linear_attention(q, k, v, feature_map="relu")


@register_bench(
    "linear_attention",
    modes={
        "torch": chunk_relu_linear,
        "triton": triton_relu_linear,
        "triton_fused": triton_fused_relu_linear,
        **FLA_LINEAR_MODES,
    },
    reference=naive_relu_linear,
    flops=relu_linear_flops,
    bytes=qkvo_bytes,
    cuda_only=("triton", "triton_fused", *FLA_LINEAR_MODES),
)
def relu_linear_inputs(s: BenchShape) -> dict[str, Tensor]:
    """LiT's ReLU linear attention: ``q, k, v: [B, T, H, D]``; causal and normalised. ``q`` and ``k``
    are nonnegative (``|randn|``, fixed points of the ReLU), so that a kernel without a feature map
    computes the same function."""
    x = qkv_inputs(s)
    with torch.no_grad():
        x["q"].abs_(), x["k"].abs_()
    return x


def combiner_block_size(s: BenchShape) -> int:
    """The ``block_size`` parameter, ``0`` standing for ``ceil(sqrt(T))``."""
    b = s.params["block_size"]
    return b if b > 0 else math.isqrt(s.T - 1) + 1


def combiner_flops(s: BenchShape) -> float:
    T, b = s.T, combiner_block_size(s)
    n = -(-T // b)
    levels = (T - 1).bit_length()
    pairs = {
        "axial": T * (b + n) / 2 + T * b,
        "fixed": T * (b + n) / 2 + T,
        "mixture": T * (3 * n + 2 * b) / 2 + T * (n + b),
        "logsparse": T * (3 + levels) / 2 + T * levels,
    }
    if s.params["variant"] not in pairs:
        raise ValueError(f"variant must be one of {', '.join(pairs)}; got {s.params['variant']!r}")
    return 4 * s.B * s.H * s.D * pairs[s.params["variant"]]


def _combiner(fn, q: Tensor, k: Tensor, v: Tensor, *, variant: str, block_size: int):
    return fn(q, k, v, variant=variant, block_size=block_size if block_size > 0 else None)


@register_bench(
    "combiner",
    modes={
        "torch": functools.partial(_combiner, blocked_combiner_attention),
        "triton": functools.partial(_combiner, functools.partial(combiner_attention, mode="triton")),
    },
    reference=functools.partial(_combiner, naive_combiner_attention),
    flops=combiner_flops,
    bytes=qkvo_bytes,
    params={"variant": "axial", "block_size": 0},
    gate_max_T=1024,
)
def combiner_inputs(s: BenchShape) -> dict[str, Tensor]:
    """Combiner attention: ``q, k, v: [B, T, H, D]``; causal, max-pooled span keys;
    ``block_size=0``: ``ceil(sqrt(T))``."""
    return qkv_inputs(s)


@functools.lru_cache(maxsize=16)
def random_features(num_heads: int, num_features: int, head_dim: int, device: torch.device) -> Tensor:
    """The fixed projection ``[H, m, D]`` (float32) of the random-feature entries, drawn once per shape
    and device from seed 0, as a layer keeps its features."""
    return draw_random_features(num_heads, num_features, head_dim, seed=0, device=device)


def kernelized_rpe_flops(s: BenchShape) -> float:
    m, N = s.params["num_features"], 2 * s.T
    channels = m * (s.D + 1)
    features = 4 * s.T * m * s.D
    stack_and_read = 3 * s.T * channels
    fft = channels * (5 * N * math.log2(N) + 3 * N)
    return s.B * s.H * (features + stack_and_read + fft)


def _kernelized_rpe(
    form: str | None, q: Tensor, k: Tensor, v: Tensor, rpe_bias: Tensor, *, num_features: int
):
    P = random_features(q.shape[2], num_features, q.shape[3], q.device)
    if form is None:
        return naive_kernelized_rpe_attention(q, k, v, rpe_bias, projection=P)
    return fft_kernelized_rpe_attention(q, k, v, rpe_bias, projection=P, toeplitz_form=form)


@register_bench(
    "kernelized_rpe",
    modes={
        "fft": functools.partial(_kernelized_rpe, "fft"),
        "chunk": functools.partial(_kernelized_rpe, "chunk"),
    },
    reference=functools.partial(_kernelized_rpe, None),
    flops=kernelized_rpe_flops,
    bytes=qkvo_bytes,
    params={"num_features": 64},
    gate_max_T=1024,
)
def kernelized_rpe_inputs(s: BenchShape) -> dict[str, Tensor]:
    """Kernelized attention with RPE: ``q, k, v: [B, T, H, D]``, ``rpe_bias: [H, 2T - 1]`` (``0.5 *
    randn``); causal, normalised PRF features."""
    x = qkv_inputs(s)
    x["rpe_bias"] = 0.5 * torch.randn(s.H, 2 * s.T - 1, dtype=s.dtype, device=s.device)
    return x


def performer_flops(s: BenchShape) -> float:
    return 8 * s.B * s.H * s.T * s.params["num_features"] * s.D


def _performer(mode: str, q: Tensor, k: Tensor, v: Tensor, *, num_features: int):
    """The ``performer`` layer's attention: vanilla PRF features computed in float32 (stored in bf16
    when ``v`` is bf16, as the layer does), linear attention on them, the output in the dtype of ``q``."""
    P = random_features(q.shape[2], num_features, q.shape[3], q.device)
    phi_q = prf_feature_map(q.float(), P, normalize_qk=False, is_query=True)
    phi_k = prf_feature_map(k.float(), P, normalize_qk=False)
    if v.dtype == torch.bfloat16:
        phi_q, phi_k = phi_q.to(v.dtype), phi_k.to(v.dtype)
    if mode == "naive":
        o, _ = naive_linear_attention(phi_q, phi_k, v)
    else:
        o, _ = linear_attention(phi_q, phi_k, v, mode=mode)
    return o.to(q.dtype)


@register_bench(
    "performer",
    modes={
        "torch": functools.partial(_performer, "torch"),
        "triton": functools.partial(_performer, "triton"),
    },
    reference=functools.partial(_performer, "naive"),
    flops=performer_flops,
    bytes=qkvo_bytes,
    params={"num_features": 64},
    gate_max_T=1024,
)
def performer_inputs(s: BenchShape) -> dict[str, Tensor]:
    """Performer (PRF linear attention, no positions): ``q, k, v: [B, T, H, D]``; causal."""
    return qkv_inputs(s)
