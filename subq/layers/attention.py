"""Softmax attention mixers: ``attention`` (full, via SDPA) and ``sliding_window`` (banded).

Both project ``x`` to multi-head queries/keys/values (grouped-query heads optional), optionally
apply rotary embeddings, attend, and project back. Decoding keeps a KV cache: the whole history
for ``attention``, a ring buffer of the last ``window`` tokens for ``sliding_window``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.layers.rotary import RotaryEmbedding
from subq.ops.attention import naive_attention, sdpa_attention
from subq.ops.sliding_window import sliding_window_attention


@dataclass
class KVCache:
    """Keys/values ``[B, capacity, H_kv, D]`` of the tokens seen so far; ``length`` tokens seen.

    ``step`` writes into the buffers in place and returns the same object.
    """

    k: Tensor
    v: Tensor
    length: int = 0

    @property
    def filled(self) -> int:
        return min(self.length, self.k.shape[1])


@register_mixer("attention")
class Attention(Mixer):
    """Multi-head softmax attention through ``scaled_dot_product_attention``.

    Args:
        d_model: model width.
        num_heads: query heads; ``d_model`` must be divisible by it (default 1, as in Zoology).
        num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``).
        rotary: apply rotary position embedding to queries and keys.
        rotary_base: RoPE frequency base.
        bias: biases in the projections.
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``state_size(L) = 2 * L * num_kv_heads * head_dim`` (``2 * L * d_model`` without GQA).
    """

    modes = ("torch", "naive")
    supports_decode = True
    example_kwargs = {"num_heads": 2}

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 1,
        num_kv_heads: int | None = None,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} (>= 1)")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads} (>= 1)"
            )
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        qkv_dim = (num_heads + 2 * num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(d_model, qkv_dim, bias=bias, **self.factory_kwargs)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **self.factory_kwargs)
        self.rotary = RotaryEmbedding(self.head_dim, base=rotary_base, device=device) if rotary else None

    # ---- pieces shared by forward and decode ---------------------------------------------------------
    def _qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """``x: [B, T, d_model]`` -> q ``[B, T, H, D]``, k and v ``[B, T, H_kv, D]``."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split(
            [
                self.num_heads * self.head_dim,
                self.num_kv_heads * self.head_dim,
                self.num_kv_heads * self.head_dim,
            ],
            dim=-1,
        )
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if self.rotary is not None:
            q, k = self.rotary.rotate_pair(q, k, offset)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mode: str) -> Tensor:
        if mode == "naive":
            return naive_attention(q, k, v, causal=self.causal)[0]
        return sdpa_attention(q, k, v, causal=self.causal)[0]

    def _forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        o = self._attend(q, k, v, self.resolve_mode(x))
        return self.out_proj(o.flatten(2))

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.num_kv_heads * self.head_dim

    def _cache_capacity(self, batch_size: int) -> int:
        return 64

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> KVCache:
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        shape = (batch_size, self._cache_capacity(batch_size), self.num_kv_heads, self.head_dim)
        return KVCache(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    def _write(self, cache: KVCache, k: Tensor, v: Tensor) -> None:
        """Append ``k, v: [B, n, H_kv, D]`` to a growing cache (capacity doubles as needed)."""
        end = cache.length + k.shape[1]
        if end > cache.k.shape[1]:
            cap = max(end, 2 * cache.k.shape[1])
            grow = (0, 0, 0, 0, 0, cap - cache.k.shape[1])
            cache.k = nn.functional.pad(cache.k, grow)
            cache.v = nn.functional.pad(cache.v, grow)
        cache.k[:, cache.length : end] = k.to(cache.k.dtype)
        cache.v[:, cache.length : end] = v.to(cache.v.dtype)
        cache.length = end

    def _prefill(self, x: Tensor) -> tuple[Tensor, KVCache]:
        q, k, v = self._qkv(x)
        y = self.out_proj(self._attend(q, k, v, self.resolve_mode(x)).flatten(2))
        cache = self.init_state(x.shape[0], device=x.device, dtype=k.dtype)
        self._write(cache, k, v)
        return y, cache

    def _step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        q, k, v = self._qkv(x_t[:, None], offset=state.length)
        self._write(state, k, v)
        n = state.filled
        o = self._attend_cache(q, state.k[:, :n], state.v[:, :n], x_t)
        return self.out_proj(o.flatten(1)), state

    def _attend_cache(self, q: Tensor, k: Tensor, v: Tensor, x_t: Tensor) -> Tensor:
        """One query ``[B, 1, H, D]`` against every cached key: no mask needed (slot order does not
        matter either: positions are already rotated into q and k)."""
        if self.resolve_mode(x_t) == "naive":
            return naive_attention(q, k, v, causal=False)[0]
        if not q.is_cuda:
            return sdpa_attention(q, k, v, causal=False)[0]
        # cuDNN's SDPA builds a new plan for every new key length: about 2 ms of CPU per layer and
        # decode step (H200, PyTorch 2.11). FlashAttention and the others do not.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return sdpa_attention(q, k, v, causal=False)[0]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"rotary={self.rotary is not None}"
        )


@register_mixer("sliding_window")
class SlidingWindowAttention(Attention):
    """Exact softmax attention restricted to a band of ``window`` tokens.

    Causal: each token attends the last ``window`` tokens (itself included); bidirectional: the
    tokens within ``+-window``. Decoding keeps only the last ``window`` keys and values (a ring
    buffer), so ``state_size(L) = 2 * min(L, window) * num_kv_heads * head_dim``.

    Args:
        window: band width (default 64). Other arguments as :class:`Attention`.
    """

    modes = ("torch", "triton", "naive")
    example_kwargs = {"num_heads": 2, "window": 5}

    def __init__(self, d_model: int, *, window: int = 64, **kwargs):
        super().__init__(d_model, **kwargs)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.window = window

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mode: str) -> Tensor:
        # mode="auto" lets the op choose: FlexAttention only from head_dim 16
        mode = "auto" if self.mode == "auto" and mode != "naive" else mode
        return sliding_window_attention(q, k, v, window=self.window, causal=self.causal, mode=mode)[0]

    def state_size(self, seq_len: int) -> int:
        return 2 * min(seq_len, self.window) * self.num_kv_heads * self.head_dim

    def _cache_capacity(self, batch_size: int) -> int:
        return self.window

    def _write(self, cache: KVCache, k: Tensor, v: Tensor) -> None:
        """Ring buffer: token ``p`` lives in slot ``p % window``."""
        n = k.shape[1]
        if n > self.window:  # only the last window tokens matter
            cache.length += n - self.window
            k, v, n = k[:, -self.window :], v[:, -self.window :], self.window
        slots = torch.arange(cache.length, cache.length + n, device=k.device) % self.window
        cache.k[:, slots] = k.to(cache.k.dtype)
        cache.v[:, slots] = v.to(cache.v.dtype)
        cache.length += n

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
