"""BASED's linear-attention mixer (``based``): Taylor-feature linear attention with a constant-size state.

As ``LinearAttention`` in ``HazyResearch/based`` (``based/models/mixers/linear_attention.py``):
``proj_q, proj_k: d -> H f``, ``proj_v: d -> H D_v``, the Taylor feature map
``phi(x) = [1, x / f^{1/4}, vec(x x^T) / (sqrt(2) sqrt(f))]`` (``E = 1 + f + f^2``), normalised causal
linear attention, ``out_proj: H D_v -> d``, no biases. The released layer has no convolution of its own:
BASED's short convolutions are separate ``BaseConv`` layers of the hybrid stack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.ops.linear_attn import LinearAttentionState, feature_dim, linear_attention, linear_attention_step


@register_mixer("based")
class Based(Mixer):
    """Linear attention with BASED's second-order Taylor feature map.

    Args:
        d_model: model width.
        feature_dim: ``f``, the per-head size of the projected queries and keys (default 16, as in the
            BASED LMs); the feature map lifts it to ``E = 1 + f + f^2``.
        num_heads: heads ``H`` (default 16, as in the reference layer).
        head_dim: value head dim ``D_v`` (default ``d_model // num_heads``).
        eps: added to the normaliser (default 1e-12, as in the reference layer).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    Decoding keeps ``S = sum phi(k) v^T: [B, H, E, D_v]`` and ``z = sum phi(k): [B, H, E]`` in float32
    (float64 for float64 models), so ``state_size(L) = H * (E * D_v + E)`` for every ``L``.
    """

    modes = ("torch", "triton", "naive")
    supports_decode = True
    supports_bidirectional = True
    example_kwargs = {"feature_dim": 4, "num_heads": 2}

    def __init__(
        self,
        d_model: int,
        *,
        feature_dim: int = 16,
        num_heads: int = 16,
        head_dim: int | None = None,
        eps: float = 1e-12,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
            head_dim = d_model // num_heads
        self.feature_dim, self.num_heads, self.head_dim, self.eps = feature_dim, num_heads, head_dim, eps
        fk = self.factory_kwargs
        self.proj_q = nn.Linear(d_model, feature_dim * num_heads, bias=False, **fk)
        self.proj_k = nn.Linear(d_model, feature_dim * num_heads, bias=False, **fk)
        self.proj_v = nn.Linear(d_model, num_heads * head_dim, bias=False, **fk)
        self.out_proj = nn.Linear(num_heads * head_dim, d_model, bias=False, **fk)

    @property
    def expanded_dim(self) -> int:
        """``E = 1 + f + f^2``, the size of the Taylor features."""
        return feature_dim("taylor", self.feature_dim)

    def _attend(
        self, x: Tensor, mode: str, state: LinearAttentionState | None = None, want_state: bool = False
    ) -> tuple[Tensor, LinearAttentionState | None]:
        """``x: [B, T, d_model]`` -> ``([B, T, d_model], state after the last token or None)``."""
        B, T, _ = x.shape
        q = self.proj_q(x).view(B, T, self.num_heads, self.feature_dim)
        k = self.proj_k(x).view(B, T, self.num_heads, self.feature_dim)
        v = self.proj_v(x).view(B, T, self.num_heads, self.head_dim)
        o, final = linear_attention(
            q,
            k,
            v,
            feature_map="taylor",
            causal=self.causal,
            eps=self.eps,
            initial_state=state,
            output_final_state=want_state,
            # "auto" lets the op fall back to PyTorch for sizes the kernels do not take
            mode="auto" if self.mode == "auto" else mode,
        )
        return self.out_proj(o.flatten(2)), final

    def _forward(self, x: Tensor) -> Tensor:
        return self._attend(x, self.resolve_mode(x))[0]

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        E = self.expanded_dim
        return self.num_heads * (E * self.head_dim + E)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LinearAttentionState:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        E = self.expanded_dim
        S = torch.zeros(batch_size, self.num_heads, E, self.head_dim, device=device, dtype=dtype)
        z = torch.zeros(batch_size, self.num_heads, E, device=device, dtype=dtype)
        return S, z

    def _prefill(self, x: Tensor) -> tuple[Tensor, LinearAttentionState]:
        return self._attend(x, self.resolve_mode(x), want_state=True)

    def _step(self, x_t: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        B = x_t.shape[0]
        q = self.proj_q(x_t).view(B, self.num_heads, self.feature_dim)
        k = self.proj_k(x_t).view(B, self.num_heads, self.feature_dim)
        v = self.proj_v(x_t).view(B, self.num_heads, self.head_dim)
        mode = self.resolve_mode(x_t)
        # on CUDA the fused recurrent kernel updates the state in place
        o, state = linear_attention_step(
            q, k, v, state, feature_map="taylor", eps=self.eps, mode="auto" if self.mode == "auto" else mode
        )
        return self.out_proj(o.flatten(1)), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, feature_dim={self.feature_dim}, num_heads={self.num_heads}, "
            f"head_dim={self.head_dim}"
        )
