"""Rotary position embedding (RoPE), rotate-half convention, applied to ``[B, T, H, D]`` tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

CACHED_POSITIONS = 1 << 16
_TABLES: dict[tuple[int, float, str, torch.dtype], tuple[Tensor, Tensor]] = {}


class RotaryEmbedding(nn.Module):
    """Rotates pairs ``(x[..., i], x[..., i + D/2])`` by ``pos * base ** (-2i / D)``.

    The cosines and sines of integer positions below ``CACHED_POSITIONS`` are kept in one table per
    (head dim, base, device, dtype of ``inv_freq``), shared by every layer and grown by doubling, so a
    decoding step or a forward pass slices it instead of recomputing them; longer spans and tensor
    offsets compute them afresh (a table of 1M positions would hold 512 MB at D = 128).

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
        self.base = float(base)

    def _angles(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        angles = pos[:, None] * self.inv_freq[None, :]  # [T, D/2]
        return angles.cos(), angles.sin()

    def cos_sin(self, T: int, offset: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(cos, sin)``, each ``[T, D/2]`` float32, of positions ``offset .. offset + T - 1``."""
        if not isinstance(offset, int) or offset + T > CACHED_POSITIONS:
            return self._angles(torch.arange(T, device=device, dtype=torch.float32) + offset)
        end = offset + T
        key = (self.inv_freq.shape[0], self.base, str(self.inv_freq.device), self.inv_freq.dtype)
        table = _TABLES.get(key)
        if table is None or table[0].shape[0] < end:
            n = min(max(end, 2 * table[0].shape[0] if table is not None else 0, 256), CACHED_POSITIONS)
            # a normal tensor even when first built under inference_mode: training may use it later
            with torch.inference_mode(False), torch.no_grad():
                table = _TABLES[key] = self._angles(
                    torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
                )
        return table[0][offset:end], table[1][offset:end]

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x: [B, T, H, D]`` rotated by ``cos, sin: [T, 1, D/2]``."""
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """``x: [B, T, H, D]`` whose first token sits at absolute position ``offset``."""
        cos, sin = self.cos_sin(x.shape[1], offset, x.device)
        return self.rotate(x, cos[:, None], sin[:, None])

    def rotate_pair(self, q: Tensor, k: Tensor, offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """Queries and keys of the same positions, one table lookup for both."""
        cos, sin = self.cos_sin(q.shape[1], offset, q.device)
        cos, sin = cos[:, None], sin[:, None]
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
