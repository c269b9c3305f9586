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


def check_summed(
    y_f: Tensor,
    y_b: Tensor,
    z: Tensor,
    weight: Tensor,
    x: Tensor | None,
    delta: Tensor | None,
    group_size: int,
) -> None:
    """Validate the inputs of :func:`naive_summed_gated_rmsnorm`."""
    if y_f.dim() != 4 or y_b.shape != y_f.shape:
        raise ValueError(
            f"y_f and y_b must be [B, T, H, P] of one shape, got {tuple(y_f.shape)} and {tuple(y_b.shape)}"
        )
    b, T, H, P = y_f.shape
    if z.shape != (b, T, H * P):
        raise ValueError(f"z must be [B, T, H P] = {(b, T, H * P)}, got {tuple(z.shape)}")
    if (x is None) != (delta is None):
        raise ValueError("x and delta come together (the diagonal term x * delta) or not at all")
    if x is not None and (x.shape != y_f.shape or delta.shape != (b, T, H)):
        raise ValueError(
            f"x must be [B, T, H, P] = {tuple(y_f.shape)} and delta [B, T, H] = {(b, T, H)}, "
            f"got {tuple(x.shape)} and {tuple(delta.shape)}"
        )
    check_gated_rmsnorm(z, z, weight, group_size)


def naive_summed_gated_rmsnorm(
    y_f: Tensor,
    y_b: Tensor,
    z: Tensor,
    weight: Tensor,
    *,
    x: Tensor | None = None,
    delta: Tensor | None = None,
    shifted: bool,
    eps: float = 1e-5,
    norm_before_gate: bool,
    group_size: int,
) -> Tensor:
    """Hydra's output: :func:`naive_gated_rmsnorm` of ``y = S y_f + S' y_b (+ x delta)`` with gate ``z``.

    ``y_f, y_b, x: [B, T, H, P]`` (the two scans' outputs in token order and the scans' input),
    ``delta: [B, T, H]`` (one diagonal value per head), ``z: [B, T, H P]``. With ``shifted``, ``S``
    moves ``y_f`` one token later and ``S'`` ``y_b`` one token earlier (zeros enter at the ends);
    otherwise both are the identity. Returns ``[B, T, H P]`` in the dtype of ``y_f``."""
    check_summed(y_f, y_b, z, weight, x, delta, group_size)
    ct, dtype = compute_dtype(y_f), y_f.dtype
    y_f, y_b = y_f.to(ct), y_b.to(ct)
    if shifted:
        y = F.pad(y_f[:, :-1], (0, 0, 0, 0, 1, 0)) + F.pad(y_b[:, 1:], (0, 0, 0, 0, 0, 1))
    else:
        y = y_f + y_b
    if x is not None:
        y = y + x.to(ct) * delta.to(ct)[..., None]
    out = naive_gated_rmsnorm(
        y.flatten(-2), z, weight, eps=eps, norm_before_gate=norm_before_gate, group_size=group_size
    )
    return out.to(dtype)
