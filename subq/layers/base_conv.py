"""BASED's gated short convolution (``base_conv``): ``out_proj(SiLU(short_conv(u1)) * u2)``.

As ``BaseConv`` in ``HazyResearch/based`` (``based/models/mixers/convolution.py``, the class the
released ``based-360m`` / ``based-1b`` configs instantiate, ``expand_proj: 4``, kernel size 3):
``in_proj: d -> expand * d`` with bias, split into ``u1, u2`` of width ``expand * d / 2``, a causal
depthwise convolution of ``u1`` without bias (``ShortConvolution``'s default ``conv_bias=False``;
the fused ``causal-conv1d`` path there switches a bias on), SiLU, the gate ``u2``, and
``out_proj: expand * d / 2 -> d`` with bias (``use_bias=True`` applies to both projections).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.ops.short_conv import (
    MAX_KERNEL_SIZE,
    MIN_KERNEL_SIZE,
    naive_short_conv,
    short_conv,
    short_conv_state,
    short_conv_step,
)


@register_mixer("base_conv")
class BaseConv(Mixer):
    """Gated causal short convolution.

    Args:
        d_model: model width.
        kernel_size: ``k``, taps of the depthwise convolution, 2..8 (default 3, as in BASED).
        expand: ``in_proj`` width as a multiple of ``d_model`` (default 4, as in BASED); the
            convolution and the gate are each ``expand * d_model / 2`` wide.
        bias: biases in ``in_proj`` and ``out_proj`` (default True, as in BASED).
        conv_bias: bias in the convolution (default False, as in BASED's PyTorch path).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`. Causal only.

    Decoding keeps the last ``k`` inputs of the convolution, ``[B, expand * d_model / 2, k]`` in the
    model dtype, so ``state_size(L) = expand * d_model / 2 * k`` for every ``L``.
    """

    modes = ("torch", "naive")
    supports_decode = True
    supports_bidirectional = False
    example_kwargs = {}

    def __init__(
        self,
        d_model: int,
        *,
        kernel_size: int = 3,
        expand: int = 4,
        bias: bool = True,
        conv_bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        if not isinstance(kernel_size, int) or not MIN_KERNEL_SIZE <= kernel_size <= MAX_KERNEL_SIZE:
            raise ValueError(
                f"kernel_size must be an int in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {kernel_size!r}"
            )
        if not isinstance(expand, int) or expand < 1 or (expand * d_model) % 2:
            raise ValueError(
                f"expand must be a positive int with expand * d_model even, got expand={expand!r} "
                f"and d_model={d_model}"
            )
        self.kernel_size, self.expand = kernel_size, expand
        self.d_inner = expand * d_model // 2
        fk = self.factory_kwargs
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, kernel_size, **fk))  # [d_inner, k]
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner, **fk)) if conv_bias else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        self.reset_conv_parameters()

    def reset_conv_parameters(self) -> None:
        """``nn.Conv1d``'s default init for a depthwise filter: ``U(-1/sqrt(k), 1/sqrt(k))``."""
        bound = 1 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)

    def _gate(self, c: Tensor, u2: Tensor) -> Tensor:
        return self.out_proj(F.silu(c) * u2)

    def _conv_params(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """The filter (and bias) in the dtype of the activations (they differ under autocast)."""
        bias = None if self.conv_bias is None else self.conv_bias.to(like.dtype)
        return self.conv_weight.to(like.dtype), bias

    def _forward(self, x: Tensor) -> Tensor:
        u1, u2 = self.in_proj(x).split(self.d_inner, dim=-1)  # [B, T, d_inner] each
        conv = naive_short_conv if self.resolve_mode(x) == "naive" else short_conv
        return self._gate(conv(u1, *self._conv_params(u1)), u2)

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.kernel_size

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        self._require_decode("init_state")
        device = device if device is not None else self.conv_weight.device
        dtype = dtype if dtype is not None else self.conv_weight.dtype
        return torch.zeros(batch_size, self.d_inner, self.kernel_size, device=device, dtype=dtype)

    def _prefill(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u1, u2 = self.in_proj(x).split(self.d_inner, dim=-1)
        conv = naive_short_conv if self.resolve_mode(x) == "naive" else short_conv
        y = self._gate(conv(u1, *self._conv_params(u1)), u2)
        return y, short_conv_state(u1, self.kernel_size)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        u1, u2 = self.in_proj(x_t).split(self.d_inner, dim=-1)  # [B, d_inner] each
        c, state = short_conv_step(u1, state.to(u1.dtype), *self._conv_params(u1))
        return self._gate(c, u2), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, expand={self.expand}, "
            f"d_inner={self.d_inner}"
        )
