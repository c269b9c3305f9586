"""Benchmark entry of the SSD (Mamba-2) op.

    subq bench --entries ssd --dtype bf16 --batch 4 --heads 16 --head-dim 64 --T 2048,8192,32768
    subq bench --entries ssd --param d_state=128 --param chunk_size=64

``ssd``: ``x: [B, T, H, D]`` (``P = D`` channels per head), ``dt: [B, T, H]`` log-uniform in
``[1e-3, 0.1]`` (Mamba-2's initial range), ``A: [H]`` in ``[-16, -1]``, ``B, C: [B, T, 1, N]`` (one
group, ``N = d_state``, default 64), no ``D`` and no initial state. Modes: ``torch``
(:func:`~subq.ops.ssd.chunk_ssd`) and ``triton`` (:func:`~subq.ops.ssd.fused_chunk_ssd`, CUDA), each
gated against :func:`~subq.ops.ssd.naive_ssd` (``y`` and the gradients of all five inputs); the
baseline is one causal SDPA call at the same ``[B, H, T, D]``.

FLOPs, forward, as the chunked forms compute them (full ``Q x Q`` blocks, ``Q = chunk_size``): per
token and head ``2 Q N`` for ``C B^T``, ``2 Q P`` for the masked product with ``x``, ``2 N P`` for the
chunk state and ``2 N P`` for reading it. Bytes: read ``x, B, C, dt``, write ``y``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subq.bench.registry import BenchShape, register_bench
from subq.ops.ssd import chunk_ssd, fused_chunk_ssd, naive_ssd


def _torch(x, dt, A, B, C, *, d_state: int, chunk_size: int):
    return chunk_ssd(x, dt, A, B, C, chunk_size=chunk_size)


def _triton(x, dt, A, B, C, *, d_state: int, chunk_size: int):
    return fused_chunk_ssd(x, dt, A, B, C, chunk_size=chunk_size)


def _reference(x, dt, A, B, C, *, d_state: int, chunk_size: int):
    return naive_ssd(x, dt, A, B, C)


def ssd_flops(s: BenchShape) -> float:
    N, Q, P = s.params["d_state"], s.params["chunk_size"], s.D
    return s.B * s.T * s.H * (2 * Q * (N + P) + 4 * N * P)


def ssd_bytes(s: BenchShape) -> float:
    return s.B * s.T * ((2 * s.H * s.D + 2 * s.params["d_state"]) * s.dtype.itemsize + 4 * s.H)


@register_bench(
    "ssd",
    modes={"torch": _torch, "triton": _triton},
    reference=_reference,
    flops=ssd_flops,
    bytes=ssd_bytes,
    params={"d_state": 64, "chunk_size": 64},
)
def ssd_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``x [B, T, H, D]``, ``dt [B, T, H]`` (float32), ``A [H]`` (float32), ``B, C [B, T, 1, N]``."""
    N, kw = s.params["d_state"], dict(device=s.device)
    log_dt = torch.empty(s.B, s.T, s.H, **kw).uniform_(math.log(1e-3), math.log(0.1))
    return {
        "x": torch.randn(s.B, s.T, s.H, s.D, dtype=s.dtype, **kw),
        "dt": log_dt.exp(),
        "A": -torch.empty(s.H, **kw).uniform_(1.0, 16.0),
        "B": torch.randn(s.B, s.T, 1, N, dtype=s.dtype, **kw),
        "C": torch.randn(s.B, s.T, 1, N, dtype=s.dtype, **kw),
    }
