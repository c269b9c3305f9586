"""Benchmark entries of HiP attention (issue 3): the whole prefill, the mask search alone, the sparse
attention alone.

    subq bench --entries hip,hip_mask --T 32768,131072 --param kv_heads=8
    subq bench --entries hip,hip_mask --T 524288,1048576 --param kv_heads=32 --no-backward
    subq bench --entries hip,hip_mask --device cpu --quick

``hip``: causal prefill, ``q: [B, T, H, D]``, ``k, v: [B, T, H_kv, D]`` (GQA, ``H_kv = min(kv_heads,
H)``, default ``kv_heads=8``; it must divide ``H``). Modes, all gated against
:func:`~subq.ops.hip.naive_hip_attention` with the same hyperparameters (output and ``dq, dk, dv``):

- ``triton``: :func:`~subq.ops.hip.hip_attention`, the mask search then the block-sparse kernel;
- ``triton_attn``: the block-sparse kernel alone
  (:func:`~subq.ops.hip.block_sparse_attention`) over a mask searched when the inputs are made
  (outside the timed region; by the Triton search on CUDA), so ``triton`` = ``hip_mask/triton_mask``
  + ``triton_attn`` in one run;
- ``torch``: the same chain in PyTorch (vectorised search, gather attention), what runs on CPU.

``hip_mask``: the search alone, :func:`~subq.ops.hip.hierarchical_mask` (``triton_mask``: the Triton
kernel; ``torch``: the vectorised reference), gated against
:func:`~subq.ops.hip.naive_hip_mask`. It has no backward (its own entry because the runner's
``backward`` is per entry) and returns the selected block indices as float32 (exact below
``2^24``) so that the runner can draw a like-shaped random output gradient; its gate compares the
indices, equal when the searches agree.

Parameters (the paper's code defaults): ``mask_k=512, block_size_q=64, block_stride_q=2,
block_size_k=2, block_stride_k=1, sink_size=16, window=256, kv_heads=8``.

The SDPA baseline is the runner's: causal, ``H`` heads for ``q``, ``k`` and ``v`` (MHA). SDPA with
GQA (``enable_gqa=True``, 8 KV heads) costs the same as MHA on an H200 (``ANCHORS.md``: 14.77 vs
14.78 ms at 32k), so the ratio is also the ratio against GQA SDPA.

FLOPs (forward, 4 per attended (query, key) pair and head-dim element, as for attention): query
``t`` attends at most ``w = sink_size + window + mask_k`` keys, so the pairs are ``sum_t min(t + 1,
w)``. Bytes: ``q`` read and ``o`` written once, and per query block and head the keys and values its
program loads (sinks, ``G = mask_k / block_size_k`` selected blocks, the window span). The search:
per query block, ``n_it = ceil(log2(ceil(N / G)))`` iterations (``N`` candidate key blocks, 0 when
``N <= G``), each scoring ``2G`` children on a ``(block_size_q / block_stride_q) x (block_size_k /
block_stride_k)`` tile: ``2 D`` FLOPs per tile element; bytes: the query tile once and the sampled
keys of every iteration, plus the indices written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from subq.bench.registry import BenchShape, register_bench
from subq.ops.hip import (
    block_sparse_attention,
    hierarchical_mask,
    hip_attention,
    naive_hip_attention,
    naive_hip_mask,
)
from subq.ops.hip.checks import candidate_ranges

HIP_PARAMS: dict[str, Any] = {
    "mask_k": 512,
    "block_size_q": 64,
    "block_stride_q": 2,
    "block_size_k": 2,
    "block_stride_k": 1,
    "sink_size": 16,
    "window": 256,
    "kv_heads": 8,
}
_GEOMETRY = ("block_size_q", "block_size_k", "sink_size", "window")


def kv_heads_of(s: BenchShape) -> int:
    """The KV head count of a shape: ``min(kv_heads, H)``, which must divide ``H``."""
    kv = min(int(s.params["kv_heads"]), s.H)
    if kv < 1 or s.H % kv:
        raise ValueError(f"kv_heads must divide the {s.H} query heads, got kv_heads={s.params['kv_heads']}")
    return kv


def _hp(params: dict[str, Any], names=tuple(HIP_PARAMS)) -> dict[str, Any]:
    """The HiP keyword arguments among the entry parameters (``kv_heads`` is a shape parameter)."""
    return {n: params[n] for n in names if n != "kv_heads"}


def _torch(q, k, v, indices, counts, **params):
    return hip_attention(q, k, v, mode="torch", **_hp(params))


def _triton(q, k, v, indices, counts, **params):
    return hip_attention(q, k, v, mode="triton", **_hp(params))


def _triton_attn(q, k, v, indices, counts, **params):
    return block_sparse_attention(q, k, v, indices, counts, mode="triton", **_hp(params, _GEOMETRY))


def _reference(q, k, v, indices, counts, **params):
    return naive_hip_attention(q, k, v, **_hp(params))


def _mask_as_float(mask: tuple[Tensor, Tensor]) -> Tensor:
    return mask[0].float()


def _torch_mask(q, k, **params):
    return _mask_as_float(hierarchical_mask(q, k, mode="torch", **_hp(params)))


def _triton_mask(q, k, **params):
    return _mask_as_float(hierarchical_mask(q, k, mode="triton", **_hp(params)))


def _reference_mask(q, k, **params):
    return _mask_as_float(naive_hip_mask(q, k, **_hp(params)))


def _search_iterations(s: BenchShape) -> list[int]:
    """``n_it`` of every query block of a causal self-attention shape."""
    p = s.params
    _, n_left, _, n_right = candidate_ranges(s.T, s.T, 0, causal=True, **{n: p[n] for n in _GEOMETRY})
    G = p["mask_k"] // p["block_size_k"]
    return [math.ceil(math.log2(-(-n // G))) if n > G else 0 for n in (n_left + n_right).tolist()]


def hip_flops(s: BenchShape) -> float:
    w = s.params["sink_size"] + s.params["window"] + s.params["mask_k"]
    pairs = s.T * (s.T + 1) / 2 if s.T <= w else w * (w + 1) / 2 + (s.T - w) * w
    return 4 * s.B * s.H * s.D * pairs


def hip_bytes(s: BenchShape) -> float:
    p = s.params
    n_qb = -(-s.T // p["block_size_q"])
    keys = min(p["sink_size"], s.T) + p["mask_k"] + p["window"] + p["block_size_q"] - 1
    return (2 * s.B * s.T * s.H * s.D + 2 * s.B * s.H * n_qb * keys * s.D) * s.dtype.itemsize


def _tile(s: BenchShape) -> tuple[int, int, int]:
    p = s.params
    G = p["mask_k"] // p["block_size_k"]
    return G, p["block_size_q"] // p["block_stride_q"], p["block_size_k"] // p["block_stride_k"]


def hip_mask_flops(s: BenchShape) -> float:
    G, rows, keys = _tile(s)
    return s.B * s.H * sum(_search_iterations(s)) * 2 * G * rows * keys * 2 * s.D


def hip_mask_bytes(s: BenchShape) -> float:
    G, rows, keys = _tile(s)
    n_it = _search_iterations(s)
    loaded = len(n_it) * rows * s.D + sum(n_it) * 2 * G * keys * s.D
    return s.B * s.H * (loaded * s.dtype.itemsize + len(n_it) * G * 4)


def _qk(s: BenchShape) -> tuple[Tensor, Tensor]:
    kv = kv_heads_of(s)
    q = torch.randn(s.B, s.T, s.H, s.D, dtype=s.dtype, device=s.device)
    k = torch.randn(s.B, s.T, kv, s.D, dtype=s.dtype, device=s.device)
    return q, k


@register_bench(
    "hip",
    modes={"torch": _torch, "triton": _triton, "triton_attn": _triton_attn},
    reference=_reference,
    flops=hip_flops,
    bytes=hip_bytes,
    params=HIP_PARAMS,
    cuda_only=("triton", "triton_attn"),
)
def hip_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``q: [B, T, H, D]``, ``k, v: [B, T, H_kv, D]`` and the mask of ``(q, k)``: ``indices: [B, H,
    n_qblocks, G]``, ``counts: [B, H, n_qblocks]`` (read by ``triton_attn`` only)."""
    q, k = _qk(s)
    v = torch.randn_like(k)
    indices, counts = hierarchical_mask(q, k, mode="auto", **_hp(dict(s.params)))
    return {"q": q, "k": k, "v": v, "indices": indices, "counts": counts}


@register_bench(
    "hip_mask",
    modes={"torch": _torch_mask, "triton_mask": _triton_mask},
    reference=_reference_mask,
    flops=hip_mask_flops,
    bytes=hip_mask_bytes,
    params=HIP_PARAMS,
    backward=False,
    cuda_only=("triton_mask",),
)
def hip_mask_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``q: [B, T, H, D]``, ``k: [B, T, H_kv, D]``."""
    q, k = _qk(s)
    return {"q": q, "k": k}
