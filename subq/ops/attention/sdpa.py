"""Softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

PyTorch picks the kernel (cuDNN / FlashAttention / memory-efficient on CUDA, a fused CPU kernel
otherwise); this wrapper only fixes the ``[B, T, H, D]`` layout and grouped-query heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from subq.ops.attention.naive import attention_mask
from subq.ops.common.checks import check_qkv


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
    if H_kv != H:
        kh = kh.repeat_interleave(H // H_kv, dim=1)
        vh = vh.repeat_interleave(H // H_kv, dim=1)
    if causal and S != T:
        if T != 1:
            mask = attention_mask(T, S, causal=True, device=q.device)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
        else:  # one query at the end of the cache sees every key
            o = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale)
    return o.transpose(1, 2), ((k, v) if output_final_state else None)
