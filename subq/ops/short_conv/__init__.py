"""Causal depthwise short convolution (kernel size 2..8), the token mixer inside BaseConv and Hyena.

Layout ``[B, T, C]``, weight ``[C, k]``, optional bias ``[C]``. ``short_conv`` is the parallel form
(``F.conv1d`` with ``groups=C``), ``short_conv_step`` the decoding form on a ``[B, C, k]`` state of the
last ``k`` inputs, ``naive_short_conv`` the reference. See ``README.md`` for the math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.short_conv.checks import (
    MAX_KERNEL_SIZE,
    MIN_KERNEL_SIZE,
    check_activation,
    check_short_conv,
    check_short_conv_step,
)
from subq.ops.short_conv.naive import naive_short_conv


def short_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    mode: str = "torch",
    activation: str | None = None,
) -> Tensor:
    """Causal depthwise convolution: ``y[:, t] = bias + sum_j weight[:, j] * x[:, t - (k - 1) + j]``.

    Args:
        x: `[B, T, C]`.
        weight: `[C, k]`, ``2 <= k <= 8``; tap ``k - 1`` multiplies the current token.
        bias: `[C]` or None (default None).
        mode: ``"torch"`` (default: ``F.conv1d`` on the transposed input) or ``"triton"`` (the kernels of
            :mod:`subq.ops.short_conv.triton_conv`, on ``[B, T, C]`` in place; CUDA, or Triton's
            interpreter).
        activation: None (default) or ``"silu"``: SiLU of the output (in the Triton kernel's pass).

    Returns:
        ``y: [B, T, C]`` in the dtype of ``x``.
    """
    if mode == "triton":
        from subq.ops.short_conv.triton_conv import triton_short_conv

        return triton_short_conv(x, weight, bias, activation=activation)
    if mode != "torch":
        raise ValueError(f"mode must be 'torch' or 'triton', got {mode!r}")
    B, T, C, k = check_short_conv(x, weight, bias)
    check_activation(activation)
    xt = F.pad(x.transpose(1, 2), (k - 1, 0))  # [B, C, k - 1 + T], zeros before t = 0
    y = F.conv1d(xt, weight[:, None, :], bias, groups=C).transpose(1, 2)  # [B, T, C]
    return F.silu(y) if activation == "silu" else y


SHORT_CONV_MODES = ("auto", "torch", "triton")


def check_short_conv_mode(mode) -> None:
    if mode not in SHORT_CONV_MODES:
        raise ValueError(f"short_conv_mode must be 'auto', 'torch' or 'triton', got {mode!r}")


def resolve_short_conv_mode(mode: str, x: Tensor) -> str:
    """``"auto"``: the Triton kernels for CUDA tensors when Triton imports (10x faster than ``F.conv1d``
    on a projection's output on the H200, ``README.md``), else ``"torch"``; other modes as given."""
    if mode != "auto":
        return mode
    if not x.is_cuda:
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


def short_conv_state(x: Tensor, kernel_size: int) -> Tensor:
    """The decoding state after the inputs ``x: [B, T, C]``: the last ``kernel_size`` of them as
    ``[B, C, kernel_size]``, oldest first, zero-padded on the left when ``T < kernel_size``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a 3-D tensor [B, T, C], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(kernel_size, int) or not MIN_KERNEL_SIZE <= kernel_size <= MAX_KERNEL_SIZE:
        raise ValueError(
            f"kernel_size must be an int in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {kernel_size!r}"
        )
    tail = x[:, -kernel_size:].transpose(1, 2)  # [B, C, min(T, k)]
    return F.pad(tail, (kernel_size - tail.shape[-1], 0)).contiguous()


def short_conv_step(
    x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One decoding step of :func:`short_conv`.

    Args:
        x_t: `[B, C]`, the new input.
        conv_state: `[B, C, k]`, the last ``k`` inputs before ``x_t`` (oldest first; zeros at the
            start). Not modified.
        weight: `[C, k]`; bias: `[C]` or None (default None).

    Returns:
        ``(y_t: [B, C], new_state: [B, C, k])``: ``new_state`` drops the oldest input and appends ``x_t``.
    """
    check_short_conv_step(x_t, conv_state, weight, bias)
    new_state = torch.cat([conv_state[:, :, 1:], x_t[:, :, None]], dim=-1)  # [B, C, k]
    y_t = torch.einsum("bck,ck->bc", new_state, weight)
    if bias is not None:
        y_t = y_t + bias
    return y_t, new_state


__all__ = [
    "MAX_KERNEL_SIZE",
    "MIN_KERNEL_SIZE",
    "naive_short_conv",
    "short_conv",
    "short_conv_state",
    "short_conv_step",
]
