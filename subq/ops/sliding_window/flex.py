"""Sliding-window attention through FlexAttention (a generated Triton kernel) on CUDA.

The block mask skips every tile outside the band, so cost is O(T * window). Block masks are cached
per (T, window, causal, device); ``flex_attention`` is compiled once per process.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from subq.ops.common.checks import check_qkv, check_window

FLEX_MIN_HEAD_DIM = 16
"""The least head dimension FlexAttention's compiled kernels accept (``tl.dot``'s least tile)."""


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # one static kernel per shape; past dynamo's default of 8 recompiles it would silently fall
    # back to eager flex_attention, which materialises the T x T scores (OOM at long T)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def _block_mask(T: int, window: int, causal: bool, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    if causal:

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx - kv_idx <= window) & (kv_idx - q_idx <= window)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def flex_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = True,
    scale: float | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Same semantics as :func:`naive_sliding_window_attention`; CUDA tensors only."""
    B, T, H, H_kv, D = check_qkv(q, k, v)
    check_window(window)
    if D < FLEX_MIN_HEAD_DIM:
        raise ValueError(
            f"flex_sliding_window_attention needs head_dim >= {FLEX_MIN_HEAD_DIM} (FlexAttention's "
            f"compiled kernels), got {D}; use mode='torch' (mode='auto' does)"
        )
    if not q.is_cuda:
        raise RuntimeError(f"flex_sliding_window_attention needs CUDA tensors, got device {q.device}")
    mask = _block_mask(T, window, causal, str(q.device))
    o = _compiled_flex()(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=mask,
        scale=scale,
        enable_gqa=H_kv != H,
    )
    return o.transpose(1, 2), ((k[:, -window:], v[:, -window:]) if output_final_state else None)
