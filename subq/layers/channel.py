"""Channel mixers (per-token MLPs): ``mlp``, ``glu`` (SwiGLU) and ``none``.

Same shape contract as sequence mixers: ``[B, T, d_model] -> [B, T, d_model]``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.registry import register_channel_mixer


class ChannelMixer(nn.Module):
    name: ClassVar[str] = "channel_mixer"

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model


def _hidden(d_model: int, expand: float, multiple_of: int = 8) -> int:
    if expand <= 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    h = int(expand * d_model)
    return max(multiple_of, (h + multiple_of - 1) // multiple_of * multiple_of)


@register_channel_mixer("mlp")
class MLP(ChannelMixer):
    """``fc2(gelu(fc1(x)))`` with hidden width ``expand * d_model`` (default 4)."""

    def __init__(self, d_model: int, *, expand: float = 4.0, bias: bool = False, device=None, dtype=None):
        super().__init__(d_model)
        hidden = _hidden(d_model, expand)
        self.fc1 = nn.Linear(d_model, hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


@register_channel_mixer("glu")
class GLU(ChannelMixer):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, hidden width ``expand * d_model`` (default 8/3)."""

    def __init__(self, d_model: int, *, expand: float = 8 / 3, bias: bool = False, device=None, dtype=None):
        super().__init__(d_model)
        hidden = _hidden(d_model, expand)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


@register_channel_mixer("none")
class NoChannelMixer(ChannelMixer):
    """No channel mixing (Zoology's MQAR models): a block holding it skips its second residual branch."""

    def __init__(self, d_model: int, *, device=None, dtype=None):
        super().__init__(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)
