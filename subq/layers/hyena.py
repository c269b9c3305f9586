"""Hyena (``hyena``): gated long convolutions whose filters an MLP computes from the position.

As ``HyenaOperator`` with ``HyenaFilter`` in ``HazyResearch/safari`` (``src/models/sequence/hyena.py``;
``HazyResearch/hyena-dna`` holds the same code), at its defaults (one head, one block, no outer
mixing, no post-order FFN, identity activation, unnormalised filters):

- ``in_proj: d -> (N + 1) d`` with bias, then a causal depthwise short convolution (kernel 3, with
  bias) over all ``(N + 1) d`` channels, split into ``x_0, ..., x_{N-1}, v``;
- implicit filters for ``N - 1`` long convolutions of ``d`` channels each: positional features
  ``z_t = [t / (l_max - 1), Re e^{-i f w_t}, Im e^{-i f w_t}]``, ``w_t = 2 pi t / l_max``,
  ``f = linspace(1e-4, B - 1, B)`` for ``B = (emb_dim - 1) / 2`` bands; an MLP
  ``Linear(emb_dim, F) -> Sin -> [Linear(F, F) -> Sin] x 2 -> Linear(F, d (N - 1), bias=False)``
  with ``Sin(x) = sin(freq * x)``, one learnable ``freq: [F]`` (initialised to ``w``) shared by the
  three activations; the window ``exp(-t / (l_max - 1) |delta_c|)`` with ``delta_c`` fixed, spaced
  evenly from ``ln(1e-2) / 1.5`` to ``ln(1e-2) / 0.3`` over the ``d (N - 1)`` channels. The MLP's
  output channel ``c = i (N - 1) + o`` is channel ``i`` of filter ``o`` (the reference's
  ``"l (v o) -> o v l"``);
- for ``o = 0 .. N - 2`` with ``x_i = x_{N-1-o}``: ``v = dropout(v * x_i)``, then
  ``v = h_o * v + D_o * v`` (a long convolution plus the per-channel skip ``D``, the reference's
  ``HyenaFilter.bias``, drawn from ``randn``);
- ``y = out_proj(v * x_0)`` with bias.

So order ``N`` has ``N - 1`` long convolutions (the reference's convention; the paper's order counts
one more). Differences, each deliberate:

- The positional features are computed for the positions needed, not stored as an ``l_max`` table;
  they are fixed (HyenaDNA's ``lr_pos_emb = 0``; Safari's default trains the table). ``max_seq_len``
  (the reference's ``l_max``) sets their time scale and caps the filter at ``max_seq_len`` taps; any
  ``T`` works, and for ``T > max_seq_len`` the long convolution reaches back ``max_seq_len - 1``
  tokens (the reference truncates the sequence instead).
- The filter MLP runs in the parameters' precision under autocast too (the reference's runs its
  linears in bf16, and with ``w = 10`` the sines amplify that rounding to about 20% of the taps'
  RMS at ``T = 2^20``; ``BENCHMARKS.md``); the taps are then cast to the activations' dtype. On
  CUDA one fused Triton kernel each way computes them (``filter_mode``, :mod:`subq.ops.hyena_filter`).
- Bidirectional (``causal=False``) uses M2-BERT's two-sided filter: a second MLP, sharing ``freq``
  and the window, gives the taps for lags ``-1 .. -L`` (``HazyResearch/m2``,
  ``bert/src/mm/hyena_utils.py``). HyenaDNA's padded bidirectional convolution is not used; see
  ``subq/ops/long_conv/README.md`` for what it computes.
- ``mode="torch"`` computes the long convolutions with ``long_conv_form="chunk"`` by default, the
  exactly causal O(T log^2 T) form, so outputs are bitwise independent of later tokens;
  ``long_conv_form="fft"`` is the reference's single FFT (faster; later tokens move earlier outputs
  by rounding); ``"triton"``, ``"triton_tf32"`` and ``"triton_fp16"`` run the Triton FFT convolution
  (CUDA; the last two with operands rounded to 10 mantissa bits).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.ops.common.layout import project_from_channels_first, project_to_channels_first
from subq.ops.gated_short_conv import gated_short_conv
from subq.ops.hyena_filter import HYENA_FILTER_MODES, hyena_filter
from subq.ops.long_conv import long_conv, long_conv_step
from subq.ops.short_conv import (
    MAX_KERNEL_SIZE,
    MIN_KERNEL_SIZE,
    check_short_conv_mode,
    naive_short_conv,
    resolve_short_conv_mode,
    short_conv,
    short_conv_state,
    short_conv_step,
)

LONG_CONV_FORMS = ("chunk", "fft", "triton", "triton_tf32", "triton_fp16")


def check_filter_args(
    filter_order: int, emb_dim: int, short_filter_order: int, max_seq_len: int, dropout: float
) -> None:
    """Validate the arguments shared by the mixers built on :class:`HyenaFilter` and a short
    convolution (``hyena``, ``monarch_mixer``); ``ValueError`` naming the argument and its range."""
    if not isinstance(filter_order, int) or filter_order < 1:
        raise ValueError(f"filter_order must be a positive int, got {filter_order!r}")
    if not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(
            f"emb_dim must be an odd int >= 3 (time plus cosine and sine bands), got {emb_dim!r}"
        )
    if not isinstance(short_filter_order, int) or not (
        MIN_KERNEL_SIZE <= short_filter_order <= MAX_KERNEL_SIZE
    ):
        raise ValueError(
            f"short_filter_order must be an int in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], "
            f"got {short_filter_order!r}"
        )
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ValueError(f"max_seq_len must be an int >= 2, got {max_seq_len!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class HyenaState(NamedTuple):
    """Hyena's decoding state after ``t`` tokens."""

    conv: Tensor
    """``[B, (N + 1) d, k]``: the last ``k`` inputs of the short convolution."""
    history: Tensor
    """``[B, N - 1, d, S]``: the last ``S = min(t, max_seq_len - 1)`` inputs of each long convolution."""
    filters: Tensor
    """``[N - 1, d, min(t, max_seq_len)]``: the filter taps evaluated so far (shared by the batch)."""


def hyena_positional_features(positions: Tensor, emb_dim: int, max_seq_len: int) -> tuple[Tensor, Tensor]:
    """Hyena's filter inputs at integer ``positions: [L]``, in float64.

    Returns ``(z: [L, emb_dim], t: [L, 1])``: ``t = position / (max_seq_len - 1)`` and
    ``z = [t, cos(f w), -sin(f w)]`` (the real and imaginary parts of ``exp(-i f w)``) with
    ``w = 2 pi position / max_seq_len`` and ``f = linspace(1e-4, bands - 1, bands)``,
    ``bands = (emb_dim - 1) / 2``.
    """
    p = positions.to(torch.float64)[:, None]  # [L, 1]
    t = p / (max_seq_len - 1)
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64, device=p.device)  # [bands]
    fw = f * (2 * math.pi * p / max_seq_len)  # [L, bands]
    return torch.cat([t, torch.cos(fw), -torch.sin(fw)], dim=-1), t


class HyenaFilter(nn.Module):
    """Hyena's implicit filter: positional features -> Sin MLP -> exponential decay window.

    Args:
        channels: output channels ``d (N - 1)``.
        emb_dim: positional features (odd, >= 3).
        filter_order: MLP width ``F``.
        max_seq_len: the time scale of the features and of the window.
        w: initial frequency of the Sin activations.
        bidirectional: add a second MLP for the reverse taps (sharing ``freq`` and the window).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        channels: int,
        *,
        emb_dim: int,
        filter_order: int,
        max_seq_len: int,
        w: float,
        bidirectional: bool,
        device=None,
        dtype=None,
    ):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.emb_dim, self.max_seq_len = emb_dim, max_seq_len
        self.freq = nn.Parameter(torch.full((filter_order,), float(w), **fk))  # [F]
        self.mlp = self._make_mlp(channels, emb_dim, filter_order, fk)
        self.mlp_rev = self._make_mlp(channels, emb_dim, filter_order, fk) if bidirectional else None
        target, fast_decay_pct, slow_decay_pct = 1e-2, 0.3, 1.5  # the reference's ExponentialModulation
        min_decay, max_decay = math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct
        deltas = torch.linspace(min_decay, max_decay, channels, dtype=torch.float64)
        self.register_buffer("deltas", deltas.to(device, dtype or torch.get_default_dtype()))  # [channels]

    @staticmethod
    def _make_mlp(channels: int, emb_dim: int, width: int, fk: dict) -> nn.ModuleList:
        return nn.ModuleList(
            [
                nn.Linear(emb_dim, width, **fk),
                nn.Linear(width, width, **fk),
                nn.Linear(width, width, **fk),
                nn.Linear(width, channels, bias=False, **fk),
            ]
        )

    def _apply_mlp(self, mlp: nn.ModuleList, z: Tensor) -> Tensor:
        for linear in mlp[:-1]:
            z = torch.sin(self.freq * linear(z))
        return mlp[-1](z)

    def weights(self, reverse: bool = False) -> tuple[Tensor, ...]:
        """``(w1, b1, w2, b2, w3, b3, w4)`` of the forward (or the reverse taps') MLP."""
        mlp = self.mlp_rev if reverse else self.mlp
        return tuple(p for linear in mlp for p in (linear.weight, linear.bias) if p is not None)

    def _features(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """``(z [L, emb_dim], t [L])`` of positions ``start ..``, in the parameters' dtype; the last
        ones are kept (they depend on the positions alone)."""
        key = (start, length, self.freq.device, self.freq.dtype)
        cached = getattr(self, "_feature_cache", None)
        if cached is None or cached[0] != key:
            positions = torch.arange(start, start + length, device=self.freq.device)
            z, t = hyena_positional_features(positions, self.emb_dim, self.max_seq_len)
            cached = (key, z.to(self.freq.dtype), t[:, 0].to(self.freq.dtype))
            self._feature_cache = cached
        return cached[1], cached[2]

    def taps(
        self,
        length: int,
        start: int = 0,
        *,
        groups: int = 1,
        dtype: torch.dtype | None = None,
        mode: str = "auto",
    ) -> Tensor:
        """Taps at positions ``start .. start + length - 1``, channels-first with contiguous lags:
        ``[groups, channels / groups, length]`` (channel ``c`` at ``(c % groups, c // groups)``), or
        ``[2, groups, channels / groups, length]`` (forward, reverse) when bidirectional; in ``dtype``
        (default: the parameters'). ``mode``: :func:`~subq.ops.hyena_filter.hyena_filter`'s (the
        Triton form computes the MLP, the window and the layout in one kernel each way). Autocast does
        not reach the MLP: the taps are computed in the parameters' dtype, then stored in ``dtype``."""
        z, t = self._features(start, length)
        kw = dict(groups=groups, dtype=dtype, mode=mode)
        with torch.autocast(self.freq.device.type, enabled=False):  # the parameters' precision
            h = hyena_filter(z, t, self.freq, self.weights(), self.deltas, **kw)
            if self.mlp_rev is None:
                return h
            return torch.stack(
                [h, hyena_filter(z, t, self.freq, self.weights(reverse=True), self.deltas, **kw)]
            )

    def forward(self, positions: Tensor) -> Tensor:
        """Taps at ``positions: [L]`` -> ``[L, channels]``, or ``[2, L, channels]`` (forward, reverse)
        when bidirectional: the PyTorch form, position-major (:meth:`taps` gives the layout the
        convolutions read)."""
        z, t = hyena_positional_features(positions, self.emb_dim, self.max_seq_len)
        z, t = z.to(self.freq.dtype), t.to(self.freq.dtype)
        window = torch.exp(-t * self.deltas.abs())  # [L, channels]
        h = self._apply_mlp(self.mlp, z) * window
        if self.mlp_rev is None:
            return h
        return torch.stack([h, self._apply_mlp(self.mlp_rev, z) * window])


def _per_order(h: Tensor) -> tuple[Tensor, ...]:
    """The filters of each order from ``h: [N - 1, ...]``: views, whose gradients are stacked once (an
    index per order would fill a zero tensor as large as ``h`` and copy into it, per order)."""
    return (h.squeeze(0),) if h.shape[0] == 1 else h.unbind(0)


@register_mixer("hyena")
class Hyena(Mixer):
    """The Hyena operator of order ``N``: short convolution, implicit long convolutions, gates.

    Args:
        d_model: model width ``d``.
        order: ``N >= 2``; ``N - 1`` long convolutions and ``N`` gates (default 2).
        filter_order: width ``F`` of the filter MLP (default 64).
        emb_dim: positional features fed to the MLP, odd and ``>= 3``: time plus ``(emb_dim - 1) / 2``
            cosine and sine bands (default 3).
        short_filter_order: taps of the short convolution, 2..8 (default 3).
        max_seq_len: ``l_max``, the time scale of the positional features and of the decay window, and
            the most filter taps (default 1024). Longer sequences run with a filter of
            ``max_seq_len`` taps.
        w: initial frequency of the Sin activations (default 1, the reference's; HyenaDNA uses 10).
        dropout: on the gated inputs of the long convolutions (default 0).
        long_conv_form: ``"chunk"`` (default, bitwise causal), ``"fft"``, or the Triton FFT
            convolution on CUDA: ``"triton"`` (float32-exact), ``"triton_tf32"`` or ``"triton_fp16"``
            (faster, relative RMS about 7e-4; :func:`~subq.ops.long_conv.long_conv`): how
            ``mode="torch"`` computes the long convolutions (``mode="naive"`` uses the tap-by-tap
            reference).
        filter_mode: how ``mode="torch"`` computes the implicit filters: ``"auto"`` (default: the fused
            Triton kernels for float32 CUDA parameters, else PyTorch), ``"torch"`` or ``"triton"``
            (:func:`~subq.ops.hyena_filter.hyena_filter`).
        short_conv_mode: how ``mode="torch"`` computes the short convolution: ``"auto"`` (default:
            ``"triton"`` on CUDA tensors when Triton is installed, else ``"torch"``), ``"torch"``
            (``F.conv1d`` on token-major activations) or ``"triton"``: the activations are then stored
            channels first from the input projection to the output projection, and one Triton kernel
            each way computes the short convolution, the projection's bias and the first gate
            (:func:`~subq.ops.gated_short_conv.gated_short_conv`; CUDA, or Triton's interpreter).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    Decoding keeps the short convolution's last ``k`` inputs and the last ``min(t, max_seq_len - 1)``
    inputs of each long convolution, so ``state_size(L) = (N + 1) d k + (N - 1) d min(L, max_seq_len
    - 1)``: it grows with ``L`` up to the filter length. A step costs O(d min(t, max_seq_len)) for the
    convolutions plus one MLP evaluation (the new filter tap) while ``t < max_seq_len``; the taps
    already evaluated ride in the state, shared by the batch and not counted in ``state_size``.
    """

    modes = ("torch", "naive")
    supports_decode = True
    supports_bidirectional = True
    example_kwargs = {"filter_order": 16, "max_seq_len": 64}

    def __init__(
        self,
        d_model: int,
        *,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 3,
        short_filter_order: int = 3,
        max_seq_len: int = 1024,
        w: float = 1.0,
        dropout: float = 0.0,
        long_conv_form: str = "chunk",
        filter_mode: str = "auto",
        short_conv_mode: str = "auto",
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        if not isinstance(order, int) or order < 2:
            raise ValueError(f"order must be an int >= 2, got {order!r}")
        check_filter_args(filter_order, emb_dim, short_filter_order, max_seq_len, dropout)
        if long_conv_form not in LONG_CONV_FORMS:
            raise ValueError(f"long_conv_form must be one of {LONG_CONV_FORMS}, got {long_conv_form!r}")
        if filter_mode not in HYENA_FILTER_MODES:
            raise ValueError(f"filter_mode must be one of {HYENA_FILTER_MODES}, got {filter_mode!r}")
        check_short_conv_mode(short_conv_mode)
        self.short_conv_mode, self.filter_mode = short_conv_mode, filter_mode
        self.order, self.filter_order, self.emb_dim = order, filter_order, emb_dim
        self.short_filter_order, self.max_seq_len, self.long_conv_form = (
            short_filter_order,
            max_seq_len,
            long_conv_form,
        )
        fk = self.factory_kwargs
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width, **fk)
        self.short_filter_weight = nn.Parameter(torch.empty(width, short_filter_order, **fk))  # [(N+1)d, k]
        self.short_filter_bias = nn.Parameter(torch.empty(width, **fk))
        self.filter = HyenaFilter(
            d_model * (order - 1),
            emb_dim=emb_dim,
            filter_order=filter_order,
            max_seq_len=max_seq_len,
            w=w,
            bidirectional=not causal,
            **fk,
        )
        self.D = nn.Parameter(torch.randn(order - 1, d_model, **fk))  # [N-1, d]
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model, **fk)
        self.reset_short_filter_parameters()

    def reset_short_filter_parameters(self) -> None:
        """``nn.Conv1d``'s default init for a depthwise filter: ``U(-1/sqrt(k), 1/sqrt(k))``."""
        bound = 1 / math.sqrt(self.short_filter_order)
        nn.init.uniform_(self.short_filter_weight, -bound, bound)
        nn.init.uniform_(self.short_filter_bias, -bound, bound)

    def _short_filter(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The short filter's weight and bias in the dtype of the activations (they differ under
        autocast)."""
        return self.short_filter_weight.to(like.dtype), self.short_filter_bias.to(like.dtype)

    def long_filters(
        self, length: int, start: int = 0, *, dtype: torch.dtype | None = None, mode: str = "torch"
    ) -> Tensor:
        """Taps at positions ``start .. start + length - 1``: ``[N - 1, d, length]``, or
        ``[N - 1, 2, d, length]`` (forward, reverse) when bidirectional, lags contiguous, in ``dtype``
        (default: the parameters'); ``mode`` is the layer's (``"naive"`` computes them in PyTorch)."""
        form = "torch" if mode == "naive" else self.filter_mode
        h = self.filter.taps(length, start, groups=self.order - 1, dtype=dtype, mode=form)
        return h if self.causal else h.transpose(0, 1)

    def _mix(self, x: Tensor, mode: str) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """``x: [B, T, d]`` -> ``(y, the short convolution's last inputs [B, min(T, k), (N+1)d], long-conv
        inputs [B, T, d] per order, filters)``."""
        if mode != "naive" and resolve_short_conv_mode(self.short_conv_mode, x) == "triton":
            return self._mix_channels_first(x)
        T, d = x.shape[1], self.d_model
        p = self.in_proj(x)  # [B, T, (N+1)d]
        if mode == "naive":
            conv = naive_short_conv(p, *self._short_filter(p))
        else:
            conv = short_conv(p, *self._short_filter(p), mode="torch")
        *xs, v = conv.split(d, dim=-1)  # [B, T, d] each
        h = self.long_filters(min(T, self.max_seq_len), dtype=p.dtype, mode=mode)  # [N-1, (2,) d, L]
        taps = _per_order(h)
        form = "naive" if mode == "naive" else self.long_conv_form
        inputs = []
        for o, x_i in enumerate(reversed(xs[1:])):
            v = self.dropout(v * x_i)
            inputs.append(v)
            v = long_conv(v, taps[o].to(v.dtype), self.D[o].to(v.dtype), causal=self.causal, mode=form)
        return self.out_proj(v * xs[0]), p[:, -self.short_filter_order :], inputs, h

    def _mix_channels_first(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """:meth:`_mix` with the activations stored channels first (``[B, C, T]``, unit stride in
        ``T``), where the long convolution and the short one read them: the input projection is computed
        as ``W x^T``, one Triton kernel each way computes the short convolution with the projection's
        bias and the first gate (:func:`~subq.ops.gated_short_conv.gated_short_conv`), and the output
        projection reads the gated output in place; no transposing copy in the forward or the
        backward."""
        T, d, N = x.shape[1], self.d_model, self.order
        dev = x.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        p = project_to_channels_first(x.to(cdt), self.in_proj.weight.to(cdt))  # [B, (N+1)d, T]
        w, b, b_in = self.short_filter_weight, self.short_filter_bias, self.in_proj.bias
        xs, v = gated_short_conv(p, w, b, b_in, order=N, mode="triton")  # [B, (N-1)d, T], [B, d, T]
        h = self.long_filters(min(T, self.max_seq_len), dtype=p.dtype, mode="torch")  # [N-1, (2,) d, L]
        taps = _per_order(h)
        inputs = []
        for o in range(N - 1):
            if o:  # x_{N-1} gated v inside the kernel
                v = v * xs[:, (N - 1 - o) * d : (N - o) * d]
            v = self.dropout(v)
            inputs.append(v.transpose(1, 2))
            y = long_conv(
                v.transpose(1, 2),
                taps[o].to(v.dtype),
                self.D[o].to(v.dtype),
                causal=self.causal,
                mode=self.long_conv_form,
            )
            v = y.transpose(1, 2)  # [B, d, T], channels first for the Triton forms
        z = v * xs[:, :d]
        y = project_from_channels_first(z, self.out_proj.weight.to(cdt), self.out_proj.bias.to(cdt))
        tail = p[..., -self.short_filter_order :] + b_in.to(p.dtype)[:, None]  # the decoding state's inputs
        return y, tail.transpose(1, 2), inputs, h

    def _forward(self, x: Tensor) -> Tensor:
        return self._mix(x, self.resolve_mode(x))[0]

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        width = (self.order + 1) * self.d_model
        return width * self.short_filter_order + (self.order - 1) * self.d_model * min(
            seq_len, self.max_seq_len - 1
        )

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> HyenaState:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        N, d = self.order, self.d_model
        return HyenaState(
            conv=torch.zeros(batch_size, (N + 1) * d, self.short_filter_order, device=device, dtype=dtype),
            history=torch.zeros(batch_size, N - 1, d, 0, device=device, dtype=dtype),
            filters=torch.zeros(N - 1, d, 0, device=device, dtype=self.filter.freq.dtype),
        )

    def _prefill(self, x: Tensor) -> tuple[Tensor, HyenaState]:
        y, p_tail, inputs, h = self._mix(x, self.resolve_mode(x))
        history = torch.stack(inputs, dim=1).transpose(-1, -2)  # [B, N-1, d, T]
        state = HyenaState(
            conv=short_conv_state(p_tail, self.short_filter_order),
            history=history[..., -(self.max_seq_len - 1) :].contiguous(),
            filters=h,
        )
        return y, state

    def _step(self, x_t: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        d = self.d_model
        p = self.in_proj(x_t)  # [B, (N+1)d]
        c, conv = short_conv_step(p, state.conv.to(p.dtype), *self._short_filter(p))
        *xs, v = c.split(d, dim=-1)  # [B, d] each
        filters = state.filters
        if filters.shape[-1] < self.max_seq_len:  # the tap for this position, once
            tap = self.long_filters(
                1, start=filters.shape[-1], dtype=filters.dtype, mode=self.resolve_mode(x_t)
            )
            filters = torch.cat([filters, tap], dim=-1)
        history = []
        for o, x_i in enumerate(reversed(xs[1:])):
            v = self.dropout(v * x_i)
            v, hist_o = long_conv_step(
                v,
                state.history[:, o].to(v.dtype),
                filters[o].to(v.dtype),
                self.D[o].to(v.dtype),
                max_history=self.max_seq_len - 1,
            )
            history.append(hist_o)
        y = self.out_proj(v * xs[0])
        return y, HyenaState(conv=conv, history=torch.stack(history, dim=1), filters=filters)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, order={self.order}, filter_order={self.filter_order}, "
            f"emb_dim={self.emb_dim}, short_filter_order={self.short_filter_order}, "
            f"max_seq_len={self.max_seq_len}, long_conv_form={self.long_conv_form!r}, "
            f"filter_mode={self.filter_mode!r}, short_conv_mode={self.short_conv_mode!r}"
        )
