"""``hip``: HiP attention (hierarchically pruned block-sparse softmax attention) as a sequence mixer.

The projections, grouped-query heads and rotary embedding are those of :class:`Attention`; the
attention itself is :func:`~subq.ops.hip.hip_attention`. Decoding keeps the full KV cache plus the
block mask of the newest query, searched again every ``refresh_interval`` steps; in between, the
window is widened to cover the tokens generated since the search (``subq/ops/hip/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from subq.layers.attention import Attention, KVCache
from subq.layers.registry import register_mixer
from subq.ops.hip import hip_attention, hip_decode_step, naive_hip_attention
from subq.ops.hip.checks import HIP_DECODE_ARGS, check_hip_args


@dataclass
class HiPCache(KVCache):
    """A :class:`KVCache` plus the cached decode mask: ``indices [B, H, 1, G]``, ``counts [B, H, 1]``
    and ``searched_at``, the position of the query that searched it."""

    indices: Tensor | None = None
    counts: Tensor | None = None
    searched_at: int = -1


@register_mixer("hip")
class HiPAttention(Attention):
    """Softmax attention over ``sinks | top key blocks | sliding window`` per block of queries.

    Args:
        d_model, num_heads, num_kv_heads, rotary, rotary_base, bias, causal, layer_idx, mode, device,
            dtype: as :class:`~subq.layers.attention.Attention`.
        mask_k: key budget of the search (512); block_size_q, block_stride_q (64, 2); block_size_k,
            block_stride_k (2, 1); sink_size (16); window (256): see :func:`~subq.ops.hip.hip_attention`.
        refresh_interval: decode steps between two mask searches (8).

    With at most ``mask_k // block_size_k`` candidate key blocks per query block (short inputs) the
    layer is exact attention. ``state_size(L) = 2 * L * num_kv_heads * head_dim``: HiP keeps the
    whole KV cache.
    """

    modes = ("torch", "triton", "naive")
    supports_decode = True
    # budget large enough that the generic contract tests (T <= 100) see exact attention
    example_kwargs = {"num_heads": 2, "mask_k": 128, "block_size_q": 16, "sink_size": 4, "window": 8}

    def __init__(
        self,
        d_model: int,
        *,
        mask_k: int = 512,
        block_size_q: int = 64,
        block_stride_q: int = 2,
        block_size_k: int = 2,
        block_stride_k: int = 1,
        sink_size: int = 16,
        window: int = 256,
        refresh_interval: int = 8,
        **kwargs,
    ):
        super().__init__(d_model, **kwargs)
        self.hip_kwargs = dict(
            mask_k=mask_k,
            block_size_q=block_size_q,
            block_stride_q=block_stride_q,
            block_size_k=block_size_k,
            block_stride_k=block_stride_k,
            sink_size=sink_size,
            window=window,
        )
        check_hip_args(**self.hip_kwargs)
        if not isinstance(refresh_interval, int) or refresh_interval < 1:
            raise ValueError(f"refresh_interval must be a positive int, got {refresh_interval!r}")
        self.refresh_interval = refresh_interval

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mode: str) -> Tensor:
        if mode == "naive":
            return naive_hip_attention(q, k, v, causal=self.causal, **self.hip_kwargs)[0]
        return hip_attention(q, k, v, causal=self.causal, mode=mode, **self.hip_kwargs)[0]

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> HiPCache:
        kv = super().init_state(batch_size, device=device, dtype=dtype)
        return HiPCache(kv.k, kv.v)

    def _attend_cache(self, q: Tensor, k: Tensor, v: Tensor, x_t: Tensor, state: HiPCache) -> Tensor:
        """The newest query ``[B, 1, H, D]`` over the cache, with the mask searched again when stale."""
        mask = None if state.indices is None else (state.indices, state.counts, state.searched_at)
        o, (state.indices, state.counts, state.searched_at) = hip_decode_step(
            q, k, v, mask, refresh_interval=self.refresh_interval, mode=self.resolve_mode(x_t),
            **{n: self.hip_kwargs[n] for n in HIP_DECODE_ARGS},
        )  # fmt: skip
        return o

    def _step(self, x_t: Tensor, state: HiPCache) -> tuple[Tensor, HiPCache]:
        q, k, v = self._qkv(x_t[:, None], offset=state.length)
        self._write(state, k, v)
        n = state.filled
        o = self._attend_cache(q, state.k[:, :n], state.v[:, :n], x_t, state)
        return self.out_proj(o.flatten(1)), state

    def _prefill(self, x: Tensor) -> tuple[Tensor, HiPCache]:
        y, kv = super()._prefill(x)
        return y, HiPCache(kv.k, kv.v, kv.length)

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hip_kwargs.items())
        return f"{super().extra_repr()}, {hp}, refresh_interval={self.refresh_interval}"
