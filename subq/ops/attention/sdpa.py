"""Softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

PyTorch picks the kernel (cuDNN / FlashAttention / memory-efficient on CUDA, a fused CPU kernel
otherwise); this wrapper only fixes the ``[B, T, H, D]`` layout and grouped-query heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.attention.naive import attention_mask
from subq.ops.common.checks import check_qkv

# SDPA reads grouped key/value heads itself from torch 2.5 (``enable_gqa``): no copy of K and V per
# query head. On the H200 in bf16 it costs the same as MHA (ANCHORS.md); on a CPU a decode step at 32k
# with 32 / 8 heads is 6x faster than repeating the cache first. Float32 on CUDA keeps the repeated
# heads: the backends that take float32 there were not measured with grouped heads.
SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def sdpa_gqa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``scaled_dot_product_attention`` of ``q: [B, H, T, D]`` over ``k, v: [B, H_kv, S, D]`` with
    ``H_kv`` dividing ``H`` (grouped-query heads), without copying ``k, v`` per query head where
    PyTorch can."""
    H, H_kv = q.shape[1], k.shape[1]
    if H_kv == H:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    if SDPA_GQA and not (q.is_cuda and q.dtype == torch.float32):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Causal or bidirectional softmax attention; same arguments as :func:`naive_attention`.

    With ``causal=True`` and ``S > T`` the queries are aligned to the last ``T`` keys (decoding).
    """
    B, T, H, H_kv, D = check_qkv(q, k, v)
    S = k.shape[1]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    if causal and S != T:
        if T != 1:
            mask = attention_mask(T, S, causal=True, device=q.device)
            o = sdpa_gqa(qh, kh, vh, attn_mask=mask, scale=scale)
        else:  # one query at the end of the cache sees every key
            o = sdpa_gqa(qh, kh, vh, scale=scale)
    else:
        o = sdpa_gqa(qh, kh, vh, is_causal=causal, scale=scale)
    return o.transpose(1, 2), ((k, v) if output_final_state else None)
