"""Hyena's input stage, channels first: the causal short convolution of the projected input (with the
projection's bias folded in) and the first gate, ``(xs, u)`` from ``p: [B, (N + 1) d, T]``. See
``README.md``.

Forms: ``naive_gated_short_conv`` (the reference; PyTorch, also the CPU form) and
``triton_gated_short_conv`` (one Triton kernel each way).
"""

from __future__ import annotations

from torch import Tensor

from subq.ops.gated_short_conv.naive import check_gated_short_conv, naive_gated_short_conv

GATED_SHORT_CONV_MODES = ("torch", "triton")


def gated_short_conv(
    p: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    in_bias: Tensor | None = None,
    *,
    order: int = 2,
    mode: str = "torch",
) -> tuple[Tensor, Tensor]:
    """``(xs, u)``: :func:`~subq.ops.gated_short_conv.naive.naive_gated_short_conv`'s math.

    Args:
        p: `[B, (N + 1) d, T]` channels first (unit stride in ``T``).
        weight: `[(N + 1) d, k]`, ``2 <= k <= 8``; bias, in_bias: `[(N + 1) d]` or None. The parameters
            may be float32 for a half-precision ``p``.
        order: ``N >= 2``.
        mode: ``"torch"`` (default: the reference's tap sum, autograd through PyTorch) or ``"triton"``
            (:func:`~subq.ops.gated_short_conv.triton_conv.triton_gated_short_conv`: CUDA, or Triton's
            interpreter).

    Returns:
        ``(xs: [B, (N - 1) d, T], u: [B, d, T])`` in the dtype of ``p``.
    """
    if mode == "triton":
        from subq.ops.gated_short_conv.triton_conv import triton_gated_short_conv

        return triton_gated_short_conv(p, weight, bias, in_bias, order=order)
    if mode != "torch":
        raise ValueError(f"mode must be one of {GATED_SHORT_CONV_MODES}, got {mode!r}")
    return naive_gated_short_conv(p, weight, bias, in_bias, order=order)


__all__ = ["GATED_SHORT_CONV_MODES", "check_gated_short_conv", "gated_short_conv", "naive_gated_short_conv"]
