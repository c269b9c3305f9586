"""Gated RMSNorm in PyTorch: the reference (float64 for float64 inputs) and the CPU form."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from subq.ops.ssd.naive import compute_dtype


def check_gated_rmsnorm(y: Tensor, z: Tensor, weight: Tensor, group_size: int) -> int:
    """Validate ``y, z: [..., d]``, ``weight: [d]`` and ``group_size`` (dividing ``d``); returns ``d``."""
    if y.shape != z.shape:
        raise ValueError(f"y and z must have one shape, got {tuple(y.shape)} and {tuple(z.shape)}")
    d = y.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight must be [d={d}], got shape {tuple(weight.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or d % group_size:
        raise ValueError(f"group_size must be a positive int dividing d={d}, got {group_size!r}")
    return d


def naive_gated_rmsnorm(
    y: Tensor, z: Tensor, weight: Tensor, *, eps: float = 1e-5, norm_before_gate: bool, group_size: int
) -> Tensor:
    """``RMSNorm(y) * w * SiLU(z)`` (``norm_before_gate``, Hydra) or ``RMSNorm(y * SiLU(z)) * w``
    (Mamba-2), the mean of squares over groups of ``group_size`` channels; computed in float32
    (float64 for float64 inputs), returned in the dtype of ``y``."""
    check_gated_rmsnorm(y, z, weight, group_size)
    ct = compute_dtype(y)
    yf, gate = y.to(ct), F.silu(z.to(ct))
    if not norm_before_gate:
        yf = yf * gate
    g = yf.unflatten(-1, (-1, group_size))
    yf = (g * (g.pow(2).mean(-1, keepdim=True) + eps).rsqrt()).flatten(-2) * weight.to(ct)
    if norm_before_gate:
        yf = yf * gate
    return yf.to(y.dtype)
