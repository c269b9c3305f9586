"""Benchmark entries of the Monarch op and of the dense matmul it replaces.

    subq bench --entries monarch,monarch_dense --dtype bf16 --batch 1 --heads 16 --head-dim 64 \\
        --T 512,4096,32768
    subq bench --entries monarch --param order=3

Both entries multiply a batch of vectors of length ``N = T`` by one ``N x N`` matrix, as a sequence
mixer does along time (M2's Monarch mixing of each channel): ``x: [B, H, D, T]`` (time contiguous,
``B * H * D`` vectors, the same number of numbers as attention's ``q``), one matrix shared by all of
them, ``y = x M^T``.

- ``monarch`` (mode ``bmm``): :func:`~subq.ops.monarch.bmm_monarch`, ``order`` block-diagonal
  factors (default 2, ``M = P L P^T R``) on the balanced grid of :func:`monarch_factor_sizes`
  (``T = 32768``: ``256 x 128``), each ``[blocks, s, s]`` standard normal over ``sqrt(s)``; gated
  against :func:`~subq.ops.monarch.naive_monarch` (the dense Monarch matrix; ``y`` and the gradients
  of ``x`` and of every factor) at ``T <= 2048``. FLOPs: ``2 B H D T sum(s_i)``; bytes: read ``x``
  and the factors, write ``y``.
- ``monarch_dense`` (mode ``dense``): ``x W^T`` with a dense ``W [N, N]`` (standard normal over
  ``sqrt(N)``), the comparison; gated against the same product in float32 (``y``, ``dx``, ``dW``).
  FLOPs: ``2 B H D T^2``; bytes: read ``x`` and ``W``, write ``y``. ``W`` alone is ``2 T^2`` bytes in
  bf16 (8 GiB at ``T = 65536``; its gradient as much again).

Run both entries in one ``subq bench`` call: the Monarch-over-dense speedup at each ``T`` is the
ratio of the two rows' times (the runner also times one causal SDPA call at ``[B, H, T, D]`` beside
each, as for every entry).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.bench.registry import BenchShape, register_bench
from subq.ops.monarch import bmm_monarch, monarch_factor_shapes, monarch_factor_sizes, naive_monarch


def _factor_names(order: int) -> list[str]:
    return [f"w{i}" for i in range(order)]


def _factors(inputs: dict[str, Tensor], order: int) -> list[Tensor]:
    return [inputs[name] for name in _factor_names(order)]


def _bmm(x: Tensor, *, order: int, **factors: Tensor) -> Tensor:
    return bmm_monarch(x, _factors(factors, order))


def _reference(x: Tensor, *, order: int, **factors: Tensor) -> Tensor:
    return naive_monarch(x, _factors(factors, order))


def monarch_flops(s: BenchShape) -> float:
    sizes = monarch_factor_sizes(s.T, s.params["order"])
    return 2 * s.B * s.H * s.D * s.T * sum(sizes)


def monarch_bytes(s: BenchShape) -> float:
    sizes = monarch_factor_sizes(s.T, s.params["order"])
    factor_numel = sum(math.prod(shape) for shape in monarch_factor_shapes(sizes))
    return (2 * s.B * s.H * s.D * s.T + factor_numel) * s.dtype.itemsize


@register_bench(
    "monarch",
    modes={"bmm": _bmm},
    reference=_reference,
    flops=monarch_flops,
    bytes=monarch_bytes,
    params={"order": 2},
    cuda_only=(),
)
def monarch_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``x [B, H, D, T]`` and the factors ``w0 .. w{order-1}`` (``[blocks, out, in]`` each)."""
    sizes = monarch_factor_sizes(s.T, s.params["order"])
    kw = dict(dtype=s.dtype, device=s.device)
    inputs = {"x": torch.randn(s.B, s.H, s.D, s.T, **kw)}
    for name, shape in zip(_factor_names(len(sizes)), monarch_factor_shapes(sizes), strict=True):
        inputs[name] = torch.randn(shape, **kw) / math.sqrt(shape[2])
    return inputs


def _dense(x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w)


def dense_flops(s: BenchShape) -> float:
    return 2 * s.B * s.H * s.D * s.T * s.T


def dense_bytes(s: BenchShape) -> float:
    return (2 * s.B * s.H * s.D * s.T + s.T * s.T) * s.dtype.itemsize


@register_bench(
    "monarch_dense",
    modes={"dense": _dense},
    reference=_dense,
    flops=dense_flops,
    bytes=dense_bytes,
    cuda_only=(),
)
def dense_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``x [B, H, D, T]`` and a dense ``w [T, T]``."""
    kw = dict(dtype=s.dtype, device=s.device)
    return {"x": torch.randn(s.B, s.H, s.D, s.T, **kw), "w": torch.randn(s.T, s.T, **kw) / math.sqrt(s.T)}
