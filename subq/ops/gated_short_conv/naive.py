"""Reference for Hyena's input stage: the short convolution of the projected input and the first gate,
channels-first, as an explicit sum over the taps."""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.short_conv.checks import MAX_KERNEL_SIZE, MIN_KERNEL_SIZE


def _check_param(t: Tensor | None, name: str, shape: tuple[int, ...], layout: str, like: Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {layout} = {list(shape)}, got shape {tuple(t.shape)}")
    if not t.is_floating_point() or t.device != like.device:
        raise ValueError(
            f"{name} must be floating point on the input's device ({like.device}), "
            f"got {t.dtype} on {t.device}"
        )


def check_gated_short_conv(
    p: Tensor, weight: Tensor, bias: Tensor | None, in_bias: Tensor | None, order: int
) -> tuple[int, int, int, int]:
    """Validate ``p: [B, (N + 1) d, T]``, ``weight: [(N + 1) d, k]``, ``bias`` and ``in_bias``:
    ``[(N + 1) d]``; returns ``(B, d, T, k)``. The parameters may be in another floating dtype than
    ``p`` (float32 parameters of a half-precision model)."""
    if not isinstance(order, int) or order < 2:
        raise ValueError(f"order must be an int >= 2, got {order!r}")
    if not isinstance(p, Tensor):
        raise TypeError(f"p must be a torch.Tensor [B, (N + 1) d, T], got {type(p).__name__}")
    if p.dim() != 3 or not p.is_floating_point():
        raise ValueError(f"p must be a floating-point [B, (N + 1) d, T], got {p.dtype} {tuple(p.shape)}")
    B, C, T = p.shape
    if B == 0 or T == 0 or C == 0 or C % (order + 1):
        raise ValueError(
            f"p must be [B, (N + 1) d, T] with B, d, T >= 1 and N = order = {order}, "
            f"got shape {tuple(p.shape)}"
        )
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a 2-D tensor [(N + 1) d = {C}, k], got {getattr(weight, 'shape', weight)}"
        )
    k = weight.shape[1]
    if not MIN_KERNEL_SIZE <= k <= MAX_KERNEL_SIZE:
        raise ValueError(
            f"kernel size k = weight.shape[1] must be in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {k}"
        )
    _check_param(weight, "weight", (C, k), "[(N + 1) d, k]", p)
    _check_param(bias, "bias", (C,), "[(N + 1) d]", p)
    _check_param(in_bias, "in_bias", (C,), "[(N + 1) d]", p)
    return B, C // (order + 1), T, k


def naive_gated_short_conv(
    p: Tensor, weight: Tensor, bias: Tensor | None = None, in_bias: Tensor | None = None, *, order: int = 2
) -> tuple[Tensor, Tensor]:
    """``c = causal_conv(p + in_bias, weight) + bias`` over all ``(N + 1) d`` channels (the input is
    zero before ``t = 0``: the projection's bias is not padded in), split into ``N + 1`` groups of ``d``;
    returns ``(xs, u)`` with ``xs = c[:, :(N - 1) d]`` (the gates ``x_0 .. x_{N-2}``) and
    ``u = c[:, (N - 1) d : N d] * c[:, N d:]`` (``x_{N-1} v``, the first long convolution's input).

    ``c[:, ch, t] = bias[ch] + sum_j weight[ch, j] (p + in_bias)[:, ch, t - (k - 1) + j]``. Computes in
    float32 (float64 for float64 inputs) and returns the dtype of ``p``.

    Args:
        p: `[B, (N + 1) d, T]`, the input projection without its bias, channels first.
        weight: `[(N + 1) d, k]`; tap ``k - 1`` multiplies the current token.
        bias: `[(N + 1) d]` or None: the convolution's bias.
        in_bias: `[(N + 1) d]` or None: the projection's bias.
        order: ``N >= 2``.

    Returns:
        ``(xs: [B, (N - 1) d, T], u: [B, d, T])``.
    """
    B, d, T, k = check_gated_short_conv(p, weight, bias, in_bias, order)
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    x = p.to(acc)
    if in_bias is not None:
        x = x + in_bias.to(acc)[:, None]
    w = weight.to(acc)
    c = torch.zeros_like(x)
    for j in range(k):
        lag = k - 1 - j  # tap j reads the input `lag` steps back
        if lag < T:
            c[..., lag:] += w[:, j, None] * x[..., : T - lag]
    if bias is not None:
        c = c + bias.to(acc)[:, None]
    N = order
    xs, gate, v = c[:, : (N - 1) * d], c[:, (N - 1) * d : N * d], c[:, N * d :]
    return xs.to(p.dtype), (gate * v).to(p.dtype)
