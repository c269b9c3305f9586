"""Monarch Mixer's sequence mixer (``monarch_mixer``): gated long convolutions with implicit filters,
computed through the DFT (a Monarch matrix), bidirectional as in M2-BERT or causal.

As ``MonarchMixerSequenceMixing`` in ``HazyResearch/m2`` (``bert/src/mm/monarch_mixer_sequence_mixer.py``
with ``bert/src/mm/hyena_utils.py``), input ``u: [B, T, d]``:

1. ``in_linear: d -> 3d`` with bias; a causal depthwise short convolution (kernel 3, with bias) over
   the ``3d`` channels (causal even in the bidirectional model); split into ``x1, x2, v``.
2. ``v = v * x1``; ``y = k * v + b * v``: a long convolution with Hyena's implicit filter (positional
   features, Sin MLP, exponential window; :class:`~subq.layers.hyena.HyenaFilter`) plus the per-channel
   skip ``b`` (``randn``). Bidirectional (``causal=False``): a second MLP (sharing the Sin frequency
   and the window) gives the taps for lags ``-1 .. -L`` (M2-BERT's ``filter_rev``).
3. ``y = y * x2``.
4. ``residual_long_conv`` (default True, as every released M2-BERT config): ``y = y + k2 * u + b2 * u``,
   a second implicit long convolution applied to the layer input ``u``.
5. ``out_linear: d -> d`` with bias.

Causal (``causal=True``): the filters are one-sided and the long convolutions causal. M2's causal
parameterisation computes them as ``M^{-1}((M k) * (M u))`` with Monarch evaluation and
interpolation matrices on zero-padded inputs (``subq/ops/monarch/README.md``): polynomial
multiplication, causal by construction; ``long_conv_form="monarch"`` runs exactly that. The
authors' causal code was never released.

Differences, each deliberate: the filter's positional features are computed for the positions
needed and fixed (M2 trains them at lr 1e-5); ``max_seq_len`` caps the filter at ``max_seq_len`` taps
for longer inputs (the reference ties the filter length to the input length); the legacy
``hyena_training_additions`` (input LayerNorm, dropout and activation) are not built.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.hyena import HyenaFilter, check_filter_args
from subq.layers.registry import register_mixer
from subq.ops.hyena_filter import HYENA_FILTER_MODES
from subq.ops.long_conv import long_conv
from subq.ops.monarch import monarch_conv
from subq.ops.short_conv import (
    check_short_conv_mode,
    naive_short_conv,
    resolve_short_conv_mode,
    short_conv,
)

LONG_CONV_FORMS = ("auto", "fft", "chunk", "monarch", "triton", "triton_tf32", "triton_fp16")


@register_mixer("monarch_mixer")
class MonarchMixer(Mixer):
    """M2's sequence mixer: short convolution, gated implicit long convolutions, residual long
    convolution.

    Args:
        d_model: model width ``d``.
        filter_order: width of the filter MLP (default 128, M2-BERT's ``hyena_filter_order``).
        emb_dim: positional features of the filter, odd and ``>= 3`` (default 5, ``hyena_emb_dim``).
        w: initial Sin frequency (default 10, ``hyena_w``).
        short_filter_order: taps of the short convolution, 2..8 (default 3).
        max_seq_len: the filter's time scale and most taps (default 512).
        residual_long_conv: add the long convolution of the layer input (default True).
        dropout: on the gated long-convolution input (default 0).
        long_conv_form: how ``mode="torch"`` convolves: ``"fft"`` (one FFT), ``"chunk"`` (bitwise
            causal dyadic blocks), ``"monarch"`` (Monarch evaluation/interpolation, ``O(T^1.5)`` batched
            matmuls), the Triton FFT convolution on CUDA (``"triton"``: float32-exact; ``"triton_tf32"``,
            ``"triton_fp16"``: relative RMS about 7e-4; :func:`~subq.ops.long_conv.long_conv`) or
            ``"auto"`` (default: ``"chunk"`` when causal, ``"fft"`` when bidirectional; on the H200
            ``"triton_fp16"`` is 13% faster at 4k tokens when the host keeps up, see ``BENCHMARKS.md``).
        filter_mode: how the implicit filters are computed outside ``mode="naive"``: ``"auto"`` (default:
            the fused Triton kernels for float32 CUDA parameters and ``filter_order <= 64``, else
            PyTorch), ``"torch"`` or ``"triton"`` (:func:`~subq.ops.hyena_filter.hyena_filter`).
        short_conv_mode: the short convolution's form outside ``mode="naive"``: ``"auto"`` (default:
            the Triton kernels on CUDA, ``F.conv1d`` otherwise), ``"torch"`` or ``"triton"``
            (:func:`~subq.ops.short_conv.short_conv`).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``state_size(L)``: the short convolution's ``3 d k`` inputs plus the inputs each long convolution
    must keep, ``d min(L, max_seq_len - 1)`` per convolution (two with ``residual_long_conv``).
    """

    modes = ("torch", "naive")
    supports_decode = False
    supports_bidirectional = True
    example_kwargs = {"filter_order": 16, "max_seq_len": 64}

    def __init__(
        self,
        d_model: int,
        *,
        filter_order: int = 128,
        emb_dim: int = 5,
        w: float = 10.0,
        short_filter_order: int = 3,
        max_seq_len: int = 512,
        residual_long_conv: bool = True,
        dropout: float = 0.0,
        long_conv_form: str = "auto",
        filter_mode: str = "auto",
        short_conv_mode: str = "auto",
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        check_filter_args(filter_order, emb_dim, short_filter_order, max_seq_len, dropout)
        check_short_conv_mode(short_conv_mode)
        if filter_mode not in HYENA_FILTER_MODES:
            raise ValueError(f"filter_mode must be one of {HYENA_FILTER_MODES}, got {filter_mode!r}")
        self.short_conv_mode, self.filter_mode = short_conv_mode, filter_mode
        if long_conv_form not in LONG_CONV_FORMS:
            raise ValueError(f"long_conv_form must be one of {LONG_CONV_FORMS}, got {long_conv_form!r}")
        self.filter_order, self.emb_dim, self.short_filter_order = filter_order, emb_dim, short_filter_order
        self.max_seq_len, self.residual_long_conv, self.long_conv_form = (
            max_seq_len,
            residual_long_conv,
            long_conv_form,
        )
        fk = self.factory_kwargs
        d = d_model
        self.in_linear = nn.Linear(d, 3 * d, **fk)
        self.short_filter_weight = nn.Parameter(torch.empty(3 * d, short_filter_order, **fk))  # [3d, k]
        self.short_filter_bias = nn.Parameter(torch.empty(3 * d, **fk))
        filt = dict(emb_dim=emb_dim, filter_order=filter_order, max_seq_len=max_seq_len, w=w)
        self.filter = HyenaFilter(d, bidirectional=not causal, **filt, **fk)
        self.filter_bias = nn.Parameter(torch.randn(d, **fk))
        if residual_long_conv:
            self.filter2 = HyenaFilter(d, bidirectional=not causal, **filt, **fk)
            self.filter2_bias = nn.Parameter(torch.randn(d, **fk))
        self.dropout = nn.Dropout(dropout)
        self.out_linear = nn.Linear(d, d, **fk)
        bound = 1 / math.sqrt(short_filter_order)  # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.short_filter_weight, -bound, bound)
        nn.init.uniform_(self.short_filter_bias, -bound, bound)

    def _taps(self, filt: HyenaFilter, length: int, mode: str) -> Tensor:
        """``[d, length]`` (causal) or ``[2, d, length]`` (forward, reverse); ``mode`` the layer's
        (``"naive"``: PyTorch; else ``filter_mode``)."""
        h = filt.taps(length, mode="torch" if mode == "naive" else self.filter_mode)  # [(2,) 1, d, length]
        return h.squeeze(-3)

    def _conv(self, x: Tensor, h: Tensor, bias: Tensor, mode: str) -> Tensor:
        h, bias = h.to(x.dtype), bias.to(x.dtype)
        if mode == "naive":
            return long_conv(x, h, bias, causal=self.causal, mode="naive")
        form = self.long_conv_form
        if form == "auto":
            form = "chunk" if self.causal else "fft"
        if form == "monarch":
            return monarch_conv(x, h, bias, causal=self.causal)
        return long_conv(x, h, bias, causal=self.causal, mode=form)

    def _forward(self, u: Tensor) -> Tensor:
        mode = self.resolve_mode(u)
        T, d = u.shape[1], self.d_model
        p = self.in_linear(u)  # [B, T, 3d]
        # the short filter in the activations' dtype (they differ under autocast)
        w, b = self.short_filter_weight.to(p.dtype), self.short_filter_bias.to(p.dtype)
        if mode == "naive":
            conv = naive_short_conv(p, w, b)
        else:
            conv = short_conv(p, w, b, mode=resolve_short_conv_mode(self.short_conv_mode, p))
        x1, x2, v = conv.split(d, dim=-1)
        L = min(T, self.max_seq_len)
        v = self.dropout(v * x1)
        y = self._conv(v, self._taps(self.filter, L, mode), self.filter_bias, mode) * x2  # [B, T, d]
        if self.residual_long_conv:
            y = y + self._conv(u, self._taps(self.filter2, L, mode), self.filter2_bias, mode)
        return self.out_linear(y)

    def state_size(self, seq_len: int) -> int:
        convs = 2 if self.residual_long_conv else 1
        history = min(seq_len, self.max_seq_len - 1) if self.causal else seq_len
        return 3 * self.d_model * self.short_filter_order + convs * self.d_model * max(history, 1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, filter_order={self.filter_order}, emb_dim={self.emb_dim}, "
            f"max_seq_len={self.max_seq_len}, residual_long_conv={self.residual_long_conv}, "
            f"long_conv_form={self.long_conv_form!r}, filter_mode={self.filter_mode!r}, "
            f"short_conv_mode={self.short_conv_mode!r}"
        )
