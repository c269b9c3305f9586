"""Validation and the search geometry shared by every HiP form (reference, PyTorch, Triton).

The candidate key blocks of a query block are computed here once, so that every form searches the
same range (``README.md``, "Search range").
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from subq.ops.common.checks import check_qkv

HIP_ARGS = (
    "mask_k",
    "block_size_q",
    "block_stride_q",
    "block_size_k",
    "block_stride_k",
    "sink_size",
    "window",
)
"""The HiP hyperparameters, in signature order: every form, the ``hip`` layer and ``subq_hip`` take
them by these names (:func:`check_hip_args` validates them)."""

HIP_DECODE_ARGS = ("mask_k", "block_size_k", "block_stride_k", "sink_size", "window")
"""The hyperparameters a decoding step uses: all but the query blocking (the newest query is its own
block)."""

SCORE_FLOOR = -1.0e30
"""Score of a non-empty branch whose sampled keys are all masked: below every real score, above the
``-inf`` of an empty branch. A float32-safe finite value, not a softmax mask value."""


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def check_hip_args(
    *,
    mask_k: int,
    block_size_q: int,
    block_stride_q: int,
    block_size_k: int,
    block_stride_k: int,
    sink_size: int,
    window: int,
) -> int:
    """Validate the HiP hyperparameters; returns the number of branches ``G = mask_k // block_size_k``."""
    for name, val in (("block_size_q", block_size_q), ("block_size_k", block_size_k)):
        if not _is_pow2(val):
            raise ValueError(f"{name} must be a power of two, got {val!r}")
    for name, val, size in (
        ("block_stride_q", block_stride_q, block_size_q),
        ("block_stride_k", block_stride_k, block_size_k),
    ):
        if not _is_pow2(val) or val > size:
            raise ValueError(f"{name} must be a power of two <= its block size {size}, got {val!r}")
    if (
        not isinstance(mask_k, int)
        or isinstance(mask_k, bool)
        or mask_k < block_size_k
        or mask_k % block_size_k
    ):
        raise ValueError(
            f"mask_k must be a positive multiple of block_size_k={block_size_k} (at least one key block), "
            f"got {mask_k!r}"
        )
    if not isinstance(sink_size, int) or isinstance(sink_size, bool) or sink_size < 0:
        raise ValueError(f"sink_size must be a non-negative int, got {sink_size!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    return mask_k // block_size_k


def check_hip_inputs(q: Tensor, k: Tensor, v: Tensor | None, *, causal: bool, q_offset: int | None) -> int:
    """Validate ``q: [B, T_q, H, D]``, ``k, v: [B, T_k, H_kv, D]``; returns the resolved ``q_offset``."""
    check_qkv(q, k, k if v is None else v)
    T_q, T_k = q.shape[1], k.shape[1]
    if q_offset is None:
        q_offset = T_k - T_q
    if causal and (q_offset < 0 or q_offset + T_q > T_k):
        raise ValueError(
            f"causal queries must sit inside the keys: q_offset={q_offset}, T_q={T_q}, T_k={T_k} "
            f"(need 0 <= q_offset and q_offset + T_q <= T_k)"
        )
    return q_offset


def check_indices(indices: Tensor, counts: Tensor, B: int, H: int, n_qblocks: int) -> None:
    if indices.dim() != 4 or tuple(indices.shape[:3]) != (B, H, n_qblocks):
        raise ValueError(
            f"indices must be [B, H, n_qblocks, G] = [{B}, {H}, {n_qblocks}, G], got {tuple(indices.shape)}"
        )
    if tuple(counts.shape) != (B, H, n_qblocks):
        raise ValueError(
            f"counts must be [B, H, n_qblocks] = [{B}, {H}, {n_qblocks}], got {tuple(counts.shape)}"
        )


def check_triton_device(q: Tensor) -> None:
    """``mode='triton'`` needs CUDA tensors, except under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise RuntimeError(f"mode='triton' needs CUDA tensors, got device {q.device}")


def query_block_bounds(T_q: int, q_offset: int, block_size_q: int, device=None) -> tuple[Tensor, Tensor]:
    """First and last absolute position of every query block: ``(t_min, t_max)``, each ``[n_qblocks]``."""
    i = torch.arange(-(-T_q // block_size_q), device=device)
    t_min = q_offset + i * block_size_q
    t_max = q_offset + torch.clamp((i + 1) * block_size_q, max=T_q) - 1
    return t_min, t_max


def candidate_ranges(
    T_q: int,
    T_k: int,
    q_offset: int,
    *,
    block_size_q: int,
    block_size_k: int,
    sink_size: int,
    window: int,
    causal: bool,
    device=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidate key blocks of every query block: ``(lo, n_left, right_start, n_right)``, each
    ``[n_qblocks]``.

    The candidates are the key blocks ``[lo, lo + n_left)`` followed by ``[right_start, right_start +
    n_right)``; branch index ``v`` of the search maps to block ``lo + v`` for ``v < n_left`` and
    ``right_start + v - n_left`` otherwise. Excluded: the sink blocks and the keys that every query of
    the block attends through its window (causal: the window of the last query and what follows it;
    bidirectional: the intersection of the windows, which may be empty).
    """
    t_min, t_max = query_block_bounds(T_q, q_offset, block_size_q, device)
    n_kb = -(-T_k // block_size_k)
    lo = torch.full_like(t_min, sink_size // block_size_k)
    if causal:
        left_end_key = torch.clamp(t_max - window + 1, max=T_k)
        right_start = torch.full_like(t_min, n_kb)
    else:
        band_lo, band_hi = t_max - window, t_min + window
        empty_band = band_lo > band_hi
        left_end_key = torch.where(empty_band, T_k, torch.clamp(band_lo, max=T_k))
        right_start = torch.where(empty_band, n_kb, torch.clamp((band_hi + 1) // block_size_k, max=n_kb))
    left_end = torch.where(left_end_key > sink_size, -(-left_end_key // block_size_k), lo)
    left_end = torch.maximum(left_end, lo)
    right_start = torch.maximum(right_start, left_end)
    return lo, left_end - lo, right_start, n_kb - right_start
