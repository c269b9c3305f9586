"""HiP attention: hierarchically pruned block-sparse attention (``README.md`` has the math).

``hierarchical_mask`` estimates each query block's top key blocks in O(T log T);
``block_sparse_attention`` attends over ``sinks | selected blocks | window``;
``hip_decode_attention`` does one decoding step over a (cached) mask and ``hip_decode_step`` keeps
that mask between steps, searching it again every ``refresh_interval`` steps; ``hip_attention`` chains the
first two; ``OffloadedKVCache`` decodes over a KV cache kept in host memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.hip.block_sparse import block_sparse_attention
from subq.ops.hip.decode import hip_decode_attention, hip_decode_step
from subq.ops.hip.mask import hierarchical_mask
from subq.ops.hip.naive import (
    attention_mass_recall,
    hip_token_mask,
    naive_block_sparse_attention,
    naive_hip_attention,
    naive_hip_mask,
    topk_oracle_mask,
)
from subq.ops.hip.offload import OffloadedKVCache


def hip_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask_k: int = 512,
    block_size_q: int = 64,
    block_stride_q: int = 2,
    block_size_k: int = 2,
    block_stride_k: int = 1,
    sink_size: int = 16,
    window: int = 256,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | None = None,
    mode: str = "auto",
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """HiP attention: the hierarchical mask search, then block-sparse attention over it.

    Args:
        q: `[B, T_q, H, D]`; k: `[B, T_k, H_kv, D]`; v: `[B, T_k, H_kv, D_v]` (``H`` a multiple of ``H_kv``).
        mask_k: key budget (512); block_size_q / block_stride_q: query block and its sampling stride
            (64, 2); block_size_k / block_stride_k: key block and its sampling stride (2, 1);
            sink_size: first keys always attended (16); window: sliding window always attended (256).
        causal: causal or bidirectional; scale: default ``D ** -0.5``; q_offset: position of the first
            query (default ``T_k - T_q``).
        mode: ``auto`` (Triton on CUDA, PyTorch elsewhere), ``triton``, ``torch``, ``naive``.
        output_final_state: also return ``(k, v)``, the KV cache.

    Returns:
        ``(o: [B, T_q, H, D_v], final_state)``. With at most ``mask_k // block_size_k`` candidate
        blocks per query block (e.g. ``mask_k >= T``) this is exact softmax attention.
    """
    geo = dict(block_size_q=block_size_q, block_size_k=block_size_k, sink_size=sink_size, window=window)
    with torch.no_grad():
        indices, counts = hierarchical_mask(
            q, k, mask_k=mask_k, block_stride_q=block_stride_q, block_stride_k=block_stride_k,
            causal=causal, q_offset=q_offset, mode=mode, **geo,
        )  # fmt: skip
    attn_mode = mode
    if mode == "auto":  # the Triton attention kernel tiles queries by block_size_q >= 16
        attn_mode = "triton" if q.is_cuda and block_size_q >= 16 else "torch"
    o, _ = block_sparse_attention(
        q, k, v, indices, counts, causal=causal, scale=scale, q_offset=q_offset, mode=attn_mode, **geo
    )
    return o, ((k, v) if output_final_state else None)


__all__ = [
    "OffloadedKVCache",
    "attention_mass_recall",
    "block_sparse_attention",
    "hierarchical_mask",
    "hip_attention",
    "hip_decode_attention",
    "hip_decode_step",
    "hip_token_mask",
    "naive_block_sparse_attention",
    "naive_hip_attention",
    "naive_hip_mask",
    "topk_oracle_mask",
]
