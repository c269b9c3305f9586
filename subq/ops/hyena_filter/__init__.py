"""Hyena's implicit long filter (Sin MLP of positional features times a decay window), channels-first:
``naive`` (PyTorch, the reference) and a fused Triton pair; :func:`hyena_filter` picks the form."""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.hyena_filter.naive import check_hyena_filter, naive_hyena_filter

HYENA_FILTER_MODES = ("auto", "torch", "triton")
# the Triton form's widest MLP: its kernels hold [BL, F] activations and [F, F] weights on chip, and at
# F = 128 the backward's shared memory exceeds the H200's (M2-BERT's 128 takes the PyTorch form)
MAX_WIDTH = 64


def hyena_filter(
    z: Tensor,
    t: Tensor,
    freq: Tensor,
    weights: tuple[Tensor, ...],
    deltas: Tensor,
    *,
    groups: int = 1,
    dtype: torch.dtype | None = None,
    mode: str = "auto",
) -> Tensor:
    """The taps ``[groups, C / groups, L]`` of Hyena's implicit filter (math and layout:
    :mod:`subq.ops.hyena_filter.naive`).

    Args:
        z, t, freq, weights, deltas, groups: see :func:`~subq.ops.hyena_filter.naive.naive_hyena_filter`.
        dtype: of the taps (default: the parameters'); the Triton form writes them in it directly.
        mode: ``"torch"`` (the reference), ``"triton"`` (one kernel each way; CUDA, or Triton's
            interpreter; an MLP of width ``F <= 128``) or ``"auto"`` (default: Triton for float32 CUDA
            parameters and ``F <= 128``, PyTorch otherwise).
    """
    if mode not in HYENA_FILTER_MODES:
        raise ValueError(f"mode must be one of {', '.join(HYENA_FILTER_MODES)}; got {mode!r}")
    check_hyena_filter(z, t, freq, weights, deltas, groups)
    if mode == "auto":
        fits = freq.shape[0] <= MAX_WIDTH
        mode = "triton" if freq.is_cuda and freq.dtype == torch.float32 and fits else "torch"
    if mode == "torch":
        return naive_hyena_filter(z, t, freq, weights, deltas, groups=groups, dtype=dtype)
    if freq.shape[0] > MAX_WIDTH:
        raise ValueError(
            f"hyena_filter: the Triton form takes an MLP of width <= {MAX_WIDTH}, "
            f"got {freq.shape[0]}; use mode='torch'"
        )
    from subq.ops.hyena_filter.triton_filter import triton_hyena_filter

    return triton_hyena_filter(z, t, freq, weights, deltas, groups=groups, dtype=dtype)


__all__ = ["HYENA_FILTER_MODES", "MAX_WIDTH", "check_hyena_filter", "hyena_filter", "naive_hyena_filter"]
