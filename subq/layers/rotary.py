"""Rotary position embedding (RoPE), rotate-half convention, applied to ``[B, T, H, D]`` tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotates pairs ``(x[..., i], x[..., i + D/2])`` by ``pos * base ** (-2i / D)``.

    Args:
        head_dim: ``D``, must be even.
        base: frequency base (default 10000).
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0, device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """``x: [B, T, H, D]`` whose first token sits at absolute position ``offset``."""
        T = x.shape[1]
        pos = torch.arange(T, device=x.device, dtype=torch.float32) + offset
        angles = pos[:, None] * self.inv_freq[None, :]  # [T, D/2]
        cos = angles.cos()[None, :, None, :]
        sin = angles.sin()[None, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.to(x.dtype)
