"""The residual block: ``x = x + mixer(norm(x)); x = x + channel(norm(x))``. It does not know which
mixer it holds."""

from __future__ import annotations

from torch import Tensor, nn

from subq.layers.base import Mixer, State
from subq.layers.channel import ChannelMixer, NoChannelMixer


def make_norm(kind: str, d_model: int, device=None, dtype=None) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model, device=device, dtype=dtype)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, device=device, dtype=dtype)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class Block(nn.Module):
    """Pre-norm residual block around a sequence mixer and a channel mixer (``none`` skips it)."""

    def __init__(
        self, mixer: Mixer, channel: ChannelMixer, *, norm: str = "layernorm", device=None, dtype=None
    ):
        super().__init__()
        d = mixer.d_model
        self.norm1 = make_norm(norm, d, device, dtype)
        self.mixer = mixer
        self.has_channel = not isinstance(channel, NoChannelMixer)
        self.norm2 = make_norm(norm, d, device, dtype) if self.has_channel else None
        self.channel = channel if self.has_channel else None

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d)
        x = x + self.mixer(self.norm1(x))
        if self.has_channel:
            x = x + self.channel(self.norm2(x))
        return x

    def prefill(self, x: Tensor) -> tuple[Tensor, State]:
        y, state = self.mixer.prefill(self.norm1(x))
        x = x + y
        if self.has_channel:
            x = x + self.channel(self.norm2(x))
        return x, state

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:  # x_t: (B, d)
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y
        if self.has_channel:
            x_t = x_t + self.channel(self.norm2(x_t))
        return x_t, state
