"""Reference causal depthwise short convolution: an explicit sum over the ``k`` taps."""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.short_conv.checks import check_short_conv


def naive_short_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y[:, t, c] = bias[c] + sum_j weight[c, j] * x[:, t - (k - 1) + j, c]`` (zero before ``t = 0``).

    Computes in float32 (float64 for float64 inputs) and returns the dtype of ``x``.

    Args:
        x: `[B, T, C]`.
        weight: `[C, k]`; tap ``k - 1`` multiplies the current token.
        bias: `[C]` or None (default None).

    Returns:
        ``y: [B, T, C]``.
    """
    B, T, C, k = check_short_conv(x, weight, bias)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, wf = x.to(acc), weight.to(acc)
    y = torch.zeros(B, T, C, dtype=acc, device=x.device)
    for j in range(k):
        lag = k - 1 - j  # tap j reads the token `lag` steps back
        if lag >= T:
            continue
        y[:, lag:] += wf[:, j] * xf[:, : T - lag]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)
