"""LiT's simplified linear attention (``linear_attention``): ReLU features, few heads, and a depthwise
convolution on the values (arXiv 2501.12976).

``o = out_proj(LinAttn(relu(q), relu(k), v) + DWConv(v))``. LiT is an image model with a 5x5
convolution on the token grid; as a sequence mixer the convolution runs along the sequence (kernel
``conv_size``, causal: left-padded; bidirectional: centred).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.ops.linear_attn import FEATURE_MAPS, feature_dim, linear_attention, linear_attention_step


@dataclass
class LinearAttentionCache:
    """``S: [B, H, E, D]`` and ``z: [B, H, E]`` (float32, float64 for float64 models) and the last
    ``conv_size - 1`` values ``conv: [B, conv_size - 1, d_model]``."""

    S: Tensor
    z: Tensor
    conv: Tensor


@register_mixer("linear_attention")
class LinearAttention(Mixer):
    """Normalised ReLU linear attention plus a depthwise convolution on the values (LiT).

    Args:
        d_model: model width.
        num_heads: heads (default 2: LiT's "fewer heads"); ``d_model`` must be divisible by it.
        feature_map: a name in ``subq.ops.linear_attn.FEATURE_MAPS`` (default ``"relu"``).
        conv_size: depthwise kernel along the sequence (default 5; 0 disables the convolution;
            odd when bidirectional).
        eps: added to the normaliser (default 1e-6).
        bias: biases in the q/k/v and output projections (the convolution always has one).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``state_size(L) = H * (E * D + E) + (conv_size - 1) * d_model`` for every ``L`` (``D = E =
    d_model / H`` for ReLU features).
    """

    modes = ("torch", "triton", "naive")
    supports_decode = True
    supports_bidirectional = True
    example_kwargs = {"num_heads": 2}

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 2,
        feature_map: str = "relu",
        conv_size: int = 5,
        eps: float = 1e-6,
        bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        if not isinstance(num_heads, int) or num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} (>= 1)")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}, got {feature_map!r}")
        if not isinstance(conv_size, int) or conv_size < 0:
            raise ValueError(f"conv_size must be an int >= 0, got {conv_size!r}")
        if not causal and conv_size % 2 == 0 and conv_size > 0:
            raise ValueError(
                f"conv_size must be odd for a centred (bidirectional) convolution, got {conv_size}"
            )
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.feature_map, self.conv_size, self.eps = feature_map, conv_size, eps
        fk = self.factory_kwargs
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **fk)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **fk)
        self.conv = nn.Conv1d(d_model, d_model, conv_size, groups=d_model, **fk) if conv_size else None

    @property
    def expanded_dim(self) -> int:
        return feature_dim(self.feature_map, self.head_dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x: [B, T, d_model]`` -> q, k, v ``[B, T, H, D]``."""
        B, T, _ = x.shape
        return tuple(t.view(B, T, self.num_heads, self.head_dim) for t in self.qkv_proj(x).chunk(3, dim=-1))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mode: str, state=None, want_state: bool = False):
        o, final = linear_attention(
            q,
            k,
            v,
            feature_map=self.feature_map,
            causal=self.causal,
            eps=self.eps,
            initial_state=state,
            output_final_state=want_state,
            # "auto" lets the op fall back to PyTorch for sizes the kernels do not take
            mode="auto" if self.mode == "auto" else mode,
        )
        return o.flatten(2), final  # [B, T, d_model]

    def _conv(self, v: Tensor) -> Tensor:
        """Depthwise convolution of ``v: [B, T, d_model]`` along T."""
        k = self.conv_size
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        return self.conv(F.pad(v.transpose(1, 2), pad)).transpose(1, 2)

    def _forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        o, _ = self._attend(q, k, v, self.resolve_mode(x))
        if self.conv is not None:
            o = o + self._conv(v.flatten(2))
        return self.out_proj(o)

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        E = self.expanded_dim
        return self.num_heads * (E * self.head_dim + E) + max(self.conv_size - 1, 0) * self.d_model

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LinearAttentionCache:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        E, H, D = self.expanded_dim, self.num_heads, self.head_dim
        return LinearAttentionCache(
            S=torch.zeros(batch_size, H, E, D, device=device, dtype=acc),
            z=torch.zeros(batch_size, H, E, device=device, dtype=acc),
            conv=torch.zeros(
                batch_size, max(self.conv_size - 1, 0), self.d_model, device=device, dtype=dtype
            ),
        )

    def _prefill(self, x: Tensor) -> tuple[Tensor, LinearAttentionCache]:
        q, k, v = self._qkv(x)
        o, (S, z) = self._attend(q, k, v, self.resolve_mode(x), want_state=True)
        v = v.flatten(2)
        if self.conv is not None:
            o = o + self._conv(v)
        n = max(self.conv_size - 1, 0)
        conv = F.pad(v, (0, 0, n, 0))[:, v.shape[1] :]  # the last n values, zeros before the start
        return self.out_proj(o), LinearAttentionCache(S, z, conv)

    def _step(self, x_t: Tensor, state: LinearAttentionCache) -> tuple[Tensor, LinearAttentionCache]:
        q, k, v = (t[:, 0] for t in self._qkv(x_t[:, None]))  # [B, H, D]
        mode = self.resolve_mode(x_t)
        # on CUDA the fused recurrent kernel updates S and z in place
        o, (S, z) = linear_attention_step(
            q,
            k,
            v,
            (state.S, state.z),
            feature_map=self.feature_map,
            eps=self.eps,
            mode="auto" if self.mode == "auto" else mode,
        )
        o, v = o.flatten(1), v.flatten(1)[:, None]  # [B, d_model], [B, 1, d_model]
        conv = state.conv
        if self.conv is not None:
            window = torch.cat([conv.to(v.dtype), v], dim=1)  # [B, conv_size, d_model]
            o = o + torch.einsum("bkd,dk->bd", window, self.conv.weight[:, 0]) + self.conv.bias
            conv = window[:, 1:]
        return self.out_proj(o), LinearAttentionCache(S, z, conv)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, feature_map={self.feature_map!r}, "
            f"conv_size={self.conv_size}"
        )
