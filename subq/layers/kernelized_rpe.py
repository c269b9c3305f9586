"""Positive-random-feature attention: ``performer`` (Performer's PRF attention, no positions) and
``kernelized_rpe`` (the same features with a learnable relative-position bias, applied as a Toeplitz
matrix by FFT; Luo et al., arXiv 2106.12566).

``o = out_proj(attn(phi(q), phi(k), v))`` per head, with ``m`` fixed random features per head
(``subq/ops/kernel_rpe/README.md`` for the math). ``performer`` with ``rpe_normalize=False`` is the
vanilla PRF baseline, with ``rpe_normalize=True`` the normalised PRF without positions; together with
``kernelized_rpe`` they are the paper's stability ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.ops.kernel_rpe import (
    TOEPLITZ_FORMS,
    draw_random_features,
    kernelized_rpe_attention,
    kernelized_rpe_attention_step,
    prf_feature_map,
)
from subq.ops.linear_attn import linear_attention, linear_attention_step


@dataclass
class PerformerCache:
    """``S: [B, H, m, D]`` and ``z: [B, H, m]``: ``sum phi(k) v^T`` and ``sum phi(k)`` so far (float32,
    float64 for float64 models)."""

    S: Tensor
    z: Tensor


@dataclass
class KernelizedRPECache:
    """The key features ``phi_k: [B, S, H, m]`` and values ``v: [B, S, H, D]`` of the ``S`` tokens so far
    (float32, float64 for float64 models)."""

    phi_k: Tensor
    v: Tensor


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _RandomFeatureAttention(Mixer):
    """Shared pieces: q/k/v and output projections and the fixed random features ``projection: [H, m, D]``
    (a buffer, saved with the weights)."""

    modes = ("torch", "naive")
    supports_bidirectional = True

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        num_features: int,
        rpe_normalize: bool,
        feature_seed: int,
        eps: float,
        bias: bool,
        causal: bool,
        layer_idx: int | None,
        mode: str,
        device,
        dtype,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        if (
            not isinstance(num_heads, int)
            or isinstance(num_heads, bool)
            or num_heads < 1
            or d_model % num_heads
        ):
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads!r} (an int >= 1)")
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(
                f"num_features (m, random features per head) must be an int >= 1, got {num_features!r}"
            )
        if not isinstance(rpe_normalize, bool):
            raise TypeError(f"rpe_normalize must be a bool, got {type(rpe_normalize).__name__}")
        if not isinstance(feature_seed, int) or isinstance(feature_seed, bool):
            raise TypeError(f"feature_seed must be an int, got {type(feature_seed).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps must be a float >= 0, got {eps!r}")
        self.num_heads, self.head_dim, self.num_features = num_heads, d_model // num_heads, num_features
        self.rpe_normalize, self.feature_seed, self.eps = rpe_normalize, feature_seed, float(eps)
        fk = self.factory_kwargs
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **fk)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **fk)
        self.register_buffer("projection", self._draw(feature_seed + (layer_idx or 0)))

    def _draw(self, seed: int) -> Tensor:
        return draw_random_features(
            self.num_heads, self.num_features, self.head_dim, seed=seed, **self.factory_kwargs
        )

    @torch.no_grad()
    def redraw_features(self, seed: int) -> None:
        """Replace the random features with those of ``seed`` (in place; changes the function). The
        layers never call this themselves: features are fixed unless a training loop redraws them."""
        self.projection.copy_(self._draw(seed))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x: [B, T, d_model]`` -> q, k, v ``[B, T, H, D]``."""
        B, T, _ = x.shape
        return tuple(t.view(B, T, self.num_heads, self.head_dim) for t in self.qkv_proj(x).chunk(3, dim=-1))

    def _features(self, x: Tensor, is_query: bool) -> Tensor:
        """``x: [..., H, D]`` -> ``phi(x): [..., H, m]`` in the accumulation dtype."""
        x = x.to(_accumulation_dtype(x.dtype))
        return prf_feature_map(x, self.projection, normalize_qk=self.rpe_normalize, is_query=is_query)

    def _out(self, o: Tensor, dtype: torch.dtype) -> Tensor:
        """``o: [B, (T,) H, D]`` -> ``out_proj`` of the heads concatenated, in the model dtype."""
        return self.out_proj(o.flatten(-2).to(dtype))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, num_features={self.num_features}, "
            f"rpe_normalize={self.rpe_normalize}"
        )


@register_mixer("performer")
class Performer(_RandomFeatureAttention):
    """Performer-style attention with positive random features and no positional bias (the ablation of
    ``kernelized_rpe``): linear attention on ``phi(q), phi(k)``.

    Args:
        d_model: model width.
        num_heads: heads (default 4); ``d_model`` must be divisible by it.
        num_features: ``m``, random features per head (default 64; an int >= 1).
        rpe_normalize: unit-normalise queries and keys before the feature map, the RPE paper's
            stabilisation (default False: vanilla PRF, kernel ``exp(q . k / sqrt(D))``).
        feature_seed: the features are drawn from ``torch.Generator().manual_seed(feature_seed +
            layer_idx)`` at init and kept fixed (default 0); see ``redraw_features``.
        eps: added to the normaliser (default 1e-6).
        bias: biases in the q/k/v and output projections (default False).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``mode="torch"`` runs ``subq.ops.linear_attn`` (chunked) on the features, ``"naive"`` its quadratic
    reference. Decoding keeps ``sum phi(k) v^T`` and ``sum phi(k)``: ``state_size(L) = H (m D + m)`` for
    every ``L``.
    """

    supports_decode = True
    example_kwargs = {"num_heads": 2, "num_features": 16}

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        num_features: int = 64,
        rpe_normalize: bool = False,
        feature_seed: int = 0,
        eps: float = 1e-6,
        bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(
            d_model,
            num_heads=num_heads,
            num_features=num_features,
            rpe_normalize=rpe_normalize,
            feature_seed=feature_seed,
            eps=eps,
            bias=bias,
            causal=causal,
            layer_idx=layer_idx,
            mode=mode,
            device=device,
            dtype=dtype,
        )

    def _attend(self, x: Tensor, want_state: bool = False):
        q, k, v = self._qkv(x)
        phi_q, phi_k = self._features(q, is_query=True), self._features(k, is_query=False)
        if v.dtype == torch.bfloat16:  # computed in fp32, stored in bf16 (fp32's exponent range): the
            phi_q, phi_k = phi_q.to(v.dtype), phi_k.to(v.dtype)  # kernels then run on tensor cores
        o, final = linear_attention(
            phi_q,
            phi_k,
            v,
            feature_map="identity",
            causal=self.causal,
            eps=self.eps,
            output_final_state=want_state,
            mode=self.resolve_mode(x),
        )
        return self._out(o, x.dtype), final

    def _forward(self, x: Tensor) -> Tensor:
        return self._attend(x)[0]

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        return self.num_heads * (self.num_features * self.head_dim + self.num_features)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> PerformerCache:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        acc = _accumulation_dtype(dtype if dtype is not None else self.out_proj.weight.dtype)
        H, m, D = self.num_heads, self.num_features, self.head_dim
        return PerformerCache(
            S=torch.zeros(batch_size, H, m, D, device=device, dtype=acc),
            z=torch.zeros(batch_size, H, m, device=device, dtype=acc),
        )

    def _prefill(self, x: Tensor) -> tuple[Tensor, PerformerCache]:
        y, (S, z) = self._attend(x, want_state=True)
        return y, PerformerCache(S, z)

    def _step(self, x_t: Tensor, state: PerformerCache) -> tuple[Tensor, PerformerCache]:
        q, k, v = (t[:, 0] for t in self._qkv(x_t[:, None]))  # [B, H, D]
        o, (S, z) = linear_attention_step(
            self._features(q, is_query=True),
            self._features(k, is_query=False),
            v,
            (state.S, state.z),
            feature_map="identity",
            eps=self.eps,
            mode=self.resolve_mode(x_t),
        )
        return self._out(o, x_t.dtype), PerformerCache(S, z)


@register_mixer("kernelized_rpe")
class KernelizedRPE(_RandomFeatureAttention):
    """Kernelized attention with relative positional encoding (Luo et al., NeurIPS 2021): positive
    random features and one learnable bias ``b_delta`` per offset ``delta = j - i`` and head, entering
    as the Toeplitz matrix ``exp(b_{j - i})`` applied by FFT in O(T log T).

    Args:
        d_model: model width.
        num_heads: heads (default 4); ``d_model`` must be divisible by it.
        num_features: ``m``, random features per head (default 64; an int >= 1).
        rpe_normalize: unit-normalise queries and keys before the feature map (default True: the
            paper's stable variant, kernel ``exp(q^ . k^)``; False: ``exp(q . k / sqrt(D))``).
        max_seq_len: ``n``; the bias has ``n`` entries (offsets ``-(n-1) .. 0``) when causal and
            ``2n - 1`` (``-(n-1) .. n-1``) when bidirectional, initialised to zero (default 2048).
            Longer sequences work: offsets beyond ``n - 1`` share the last entry.
        toeplitz_form: how ``mode="torch"`` applies the Toeplitz matrix: ``"chunk"`` (default; dyadic
            FFT blocks, output ``t`` bitwise independent of later tokens) or ``"fft"`` (the paper's
            single FFT, faster).
        feature_seed: the features are drawn from ``torch.Generator().manual_seed(feature_seed +
            layer_idx)`` at init and kept fixed (default 0); see ``redraw_features``.
        eps: added to the normaliser (default 1e-6).
        bias: biases in the q/k/v and output projections (default False).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``mode="naive"`` builds the ``T x T`` Toeplitz matrix explicitly. Decoding keeps the key features
    and values of every token (the weights depend on the distance, so no fixed-size state exists):
    ``state_size(L) = H L (m + D)``, O(L (m + D)) per step and head.
    """

    supports_decode = True
    example_kwargs = {"num_heads": 2, "num_features": 16, "max_seq_len": 128}

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 4,
        num_features: int = 64,
        rpe_normalize: bool = True,
        max_seq_len: int = 2048,
        toeplitz_form: str = "chunk",
        feature_seed: int = 0,
        eps: float = 1e-6,
        bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(
            d_model,
            num_heads=num_heads,
            num_features=num_features,
            rpe_normalize=rpe_normalize,
            feature_seed=feature_seed,
            eps=eps,
            bias=bias,
            causal=causal,
            layer_idx=layer_idx,
            mode=mode,
            device=device,
            dtype=dtype,
        )
        if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be an int >= 1, got {max_seq_len!r}")
        if toeplitz_form not in TOEPLITZ_FORMS:
            raise ValueError(
                f"toeplitz_form must be one of {', '.join(TOEPLITZ_FORMS)}, got {toeplitz_form!r}"
            )
        self.max_seq_len, self.toeplitz_form = max_seq_len, toeplitz_form
        offsets = max_seq_len if causal else 2 * max_seq_len - 1
        # rpe_bias[h, delta + n - 1] = b_delta
        self.rpe_bias = nn.Parameter(torch.zeros(num_heads, offsets, **self.factory_kwargs))

    def bias_for_length(self, T: int) -> Tensor:
        """``[H, 2T - 1]``: ``b_delta`` for ``delta = -(T-1) .. T-1`` (the ops' layout), offsets past
        ``max_seq_len - 1`` clipped to the last entry; positive offsets read ``b_0`` when causal (never
        used)."""
        n = self.max_seq_len
        delta = torch.arange(-(T - 1), T, device=self.rpe_bias.device)
        return self.rpe_bias[:, delta.clamp(-(n - 1), 0 if self.causal else n - 1) + n - 1]

    def _attend(self, x: Tensor, want_state: bool = False):
        q, k, v = self._qkv(x)
        mode = self.resolve_mode(x)
        o, history = kernelized_rpe_attention(
            q,
            k,
            v,
            self.bias_for_length(x.shape[1]),
            projection=self.projection,
            causal=self.causal,
            normalize_qk=self.rpe_normalize,
            eps=self.eps,
            output_final_state=want_state,
            mode="naive" if mode == "naive" else self.toeplitz_form,
        )
        return self._out(o, x.dtype), history

    def _forward(self, x: Tensor) -> Tensor:
        return self._attend(x)[0]

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        return self.num_heads * seq_len * (self.num_features + self.head_dim)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> KernelizedRPECache:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        acc = _accumulation_dtype(dtype if dtype is not None else self.out_proj.weight.dtype)
        H = self.num_heads
        return KernelizedRPECache(
            phi_k=torch.zeros(batch_size, 0, H, self.num_features, device=device, dtype=acc),
            v=torch.zeros(batch_size, 0, H, self.head_dim, device=device, dtype=acc),
        )

    def _prefill(self, x: Tensor) -> tuple[Tensor, KernelizedRPECache]:
        y, (phi_k, v) = self._attend(x, want_state=True)
        return y, KernelizedRPECache(phi_k, v)

    def _step(self, x_t: Tensor, state: KernelizedRPECache) -> tuple[Tensor, KernelizedRPECache]:
        q, k, v = (t[:, 0] for t in self._qkv(x_t[:, None]))  # [B, H, D]
        o, (phi_k, v) = kernelized_rpe_attention_step(
            q,
            k,
            v,
            (state.phi_k, state.v),
            self.bias_for_length(state.phi_k.shape[1] + 1),
            projection=self.projection,
            normalize_qk=self.rpe_normalize,
            eps=self.eps,
        )
        return self._out(o, x_t.dtype), KernelizedRPECache(phi_k, v)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_seq_len={self.max_seq_len}, toeplitz_form={self.toeplitz_form!r}"
