"""Depthwise long convolution ``y = h * u + bias * u`` with filters as long as the sequence (Hyena's).

Layout ``u: [B, T, C]``, filter ``h: [C, L]`` with ``L <= T`` (``[2, C, L]``, forward and reverse
halves, when ``causal=False``), ``bias: [C]``. Forms: ``naive_long_conv`` (the tap-by-tap reference),
``fft_long_conv`` (one FFT, O(T log T)), ``chunk_long_conv`` (dyadic blocks, O(T log^2 T), bitwise
causal), ``triton_long_conv`` (Triton FFTs by matmuls, the GPU form) and ``long_conv_step`` (one decoding
step on the input history). See ``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.long_conv.chunk import chunk_long_conv
from subq.ops.long_conv.fft import fft_long_conv, fft_size
from subq.ops.long_conv.naive import check_filter, check_tensor, compute_dtype, naive_long_conv


def triton_long_conv(u: Tensor, h: Tensor, bias: Tensor | None = None, **kwargs) -> Tensor:
    """:func:`subq.ops.long_conv.triton_fft.triton_long_conv` (imports Triton on first use)."""
    from subq.ops.long_conv.triton_fft import triton_long_conv as fused

    return fused(u, h, bias, **kwargs)


LONG_CONV_MODES = ("auto", "fft", "chunk", "naive", "triton", "triton_tf32", "triton_fp16")
TRITON_PRECISIONS = {"triton": "tf32x3", "triton_tf32": "tf32", "triton_fp16": "fp16"}
"""The ``triton*`` modes and their :func:`triton_long_conv` ``precision``."""


def long_conv(
    u: Tensor, h: Tensor, bias: Tensor | None = None, *, causal: bool = True, mode: str = "auto"
) -> Tensor:
    """Depthwise long convolution, dispatched on ``mode``.

    Args:
        u: `[B, T, C]`.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``: ``h[0]`` lags ``0 .. L-1``, ``h[1]``
            lags ``-1 .. -L``), ``1 <= L <= T``, the dtype and device of ``u``.
        bias: `[C]` or None (default None): adds ``bias * u`` (Hyena's ``D``).
        causal: default True.
        mode: ``"fft"`` (:func:`fft_long_conv`), ``"chunk"`` (:func:`chunk_long_conv`, bitwise
            causal), ``"naive"`` (:func:`naive_long_conv`), ``"triton"`` (:func:`triton_long_conv`,
            CUDA, float32 and half inputs; float32-exact ``tf32x3`` matmuls), ``"triton_tf32"`` or
            ``"triton_fp16"`` (its fast precisions: operands rounded to 10 mantissa bits, relative
            RMS about 7e-4) or ``"auto"`` (default: ``"fft"``).

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    if mode not in LONG_CONV_MODES:
        raise ValueError(f"mode must be one of {', '.join(LONG_CONV_MODES)}; got {mode!r}")
    if mode == "naive":
        return naive_long_conv(u, h, bias, causal)
    if mode == "chunk":
        return chunk_long_conv(u, h, bias, causal=causal)
    if mode in TRITON_PRECISIONS:
        return triton_long_conv(u, h, bias, causal=causal, precision=TRITON_PRECISIONS[mode])
    return fft_long_conv(u, h, bias, causal=causal)


def long_conv_step(
    u_t: Tensor, history: Tensor, h: Tensor, bias: Tensor | None = None, *, max_history: int | None = None
) -> tuple[Tensor, Tensor]:
    """One decoding step of the causal long convolution.

    ``y_t = bias * u_t + sum_{j=0}^{min(S, L-1)} h[:, j] x_{t-j}`` where ``x`` is ``history`` followed by
    ``u_t``: O(B C min(S + 1, L)). Computes in float32 (float64 for float64 inputs).

    Args:
        u_t: `[B, C]`, the new input.
        history: `[B, C, S]`, the earlier inputs, oldest first (``S = 0`` at the start). Not modified.
        h: `[C, L]`, at least the taps ``0 .. min(S, L-1)`` the step reads; inputs older than
            ``L - 1`` steps do not reach the output.
        bias: `[C]` or None (default None).
        max_history: keep at most this many inputs in the returned history (default None: all).
            A caller whose filter ends at ``L`` taps needs only ``L - 1``.

    Returns:
        ``(y_t: [B, C] in the dtype of u_t, new_history: [B, C, S']``, ``history`` with ``u_t``
        appended, trimmed to its last ``max_history`` inputs).
    """
    check_tensor(u_t, "u_t", 2, "[B, C]")
    B, C = u_t.shape
    check_filter(h, bias, u_t, C, True)
    check_tensor(history, "history", 3, "[B, C, S]")
    if history.shape[:2] != (B, C):
        raise ValueError(f"history must be [B={B}, C={C}, S], got shape {tuple(history.shape)}")
    if history.device != u_t.device or history.dtype != u_t.dtype:
        raise ValueError(
            f"history must match u_t's device and dtype ({u_t.device}, {u_t.dtype}), "
            f"got ({history.device}, {history.dtype})"
        )
    if max_history is not None and (not isinstance(max_history, int) or max_history < 0):
        raise ValueError(f"max_history must be an int >= 0 or None, got {max_history!r}")
    x = torch.cat([history, u_t[:, :, None]], dim=-1)  # [B, C, S + 1], newest last
    n = min(x.shape[-1], h.shape[-1])
    acc = compute_dtype(u_t)
    y = (x[:, :, -n:].to(acc) * h[:, :n].to(acc).flip(-1)).sum(-1)  # tap j meets input t - j
    if bias is not None:
        y = y + bias.to(acc) * u_t.to(acc)
    if max_history is not None:
        x = x[:, :, x.shape[-1] - min(max_history, x.shape[-1]) :]
    return y.to(u_t.dtype), x


__all__ = [
    "LONG_CONV_MODES",
    "TRITON_PRECISIONS",
    "chunk_long_conv",
    "fft_long_conv",
    "fft_size",
    "long_conv",
    "long_conv_step",
    "naive_long_conv",
    "triton_long_conv",
]
