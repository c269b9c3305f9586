"""The GELU-gated product of a GLU, the reference: ``GELU(h[..., :n]) * h[..., n:]`` in PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_gelu_gate(h: Tensor) -> int:
    """``n``, half the last axis of ``h``; a clear error for anything that is not ``[..., 2 n]`` float."""
    if not isinstance(h, Tensor) or h.dim() < 1:
        raise ValueError(f"h must be a tensor [..., 2 n], got {getattr(h, 'shape', type(h))}")
    if h.shape[-1] % 2:
        raise ValueError(f"h's last axis holds the gate and the value, so it must be even; got {h.shape[-1]}")
    if not h.is_floating_point():
        raise TypeError(f"h must be a float tensor, got {h.dtype}")
    return h.shape[-1] // 2


def naive_gelu_gate(h: Tensor) -> Tensor:
    """``GELU(g) * v`` with ``[g, v] = h.chunk(2, -1)`` and the exact (erf) GELU, computed in float32
    (float64 for float64 inputs); ``[..., n]`` in the dtype of ``h``."""
    n = check_gelu_gate(h)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    g, v = h[..., :n].to(acc), h[..., n:].to(acc)
    return (F.gelu(g) * v).to(h.dtype)
