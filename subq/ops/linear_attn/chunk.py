"""Chunked linear attention in pure PyTorch: O(T C E + T E D_v) time, the CPU path.

The sequence is cut into chunks of ``C`` tokens. Inside a chunk the quadratic masked form; across
chunks the states ``S = sum phi(k) v^T`` and ``z = sum phi(k)`` of all earlier chunks, obtained with
one exclusive cumulative sum over chunks. Everything accumulates in float32 (float64 for float64
inputs), so bf16 inputs do not overflow the normaliser at long ``T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.linear_attn.naive import LinearAttentionState, prepare_linear_attention


def chunk_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str | Callable[[Tensor], Tensor] = "identity",
    causal: bool = True,
    normalize: bool = True,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, LinearAttentionState | None]:
    """Linear attention by chunks; same semantics as :func:`naive_linear_attention`.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H, D]`; v: `[B, T, H, D_v]`.
        chunk_size: tokens per chunk ``C`` (default 64; any ``T`` is padded up to a multiple).
        Others as :func:`~subq.ops.linear_attn.naive.naive_linear_attention`.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, final_state: (S [B, H, E, D_v], z [B, H, E]) or None)``.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    phi_q, phi_k, vf, S0, z0 = prepare_linear_attention(q, k, v, feature_map, scale, eps, initial_state)
    B, T, H, E = phi_q.shape
    if not causal:
        S = torch.einsum("bthe,bthd->bhed", phi_k, vf)  # [B, H, E, D_v]
        z = phi_k.sum(1)  # [B, H, E]
        if S0 is not None:
            S, z = S0 + S, z0 + z
        o = torch.einsum("bthe,bhed->bthd", phi_q, S)
        if normalize:
            o = o / (torch.einsum("bthe,bhe->bth", phi_q, z) + eps)[..., None]
        return o.to(q.dtype), ((S, z) if output_final_state else None)

    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T
    # [B, H, n, C, *]; padded keys and values are zero, so they add nothing to any state
    qc, kc, vc = (
        F.pad(x, (0, 0, 0, 0, 0, pad)).reshape(B, n, C, H, -1).transpose(1, 3).transpose(2, 3)
        for x in (phi_q, phi_k, vf)
    )
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = (qc @ kc.transpose(-1, -2)) * mask  # [B, H, n, C, C]
    o = A @ vc  # [B, H, n, C, D_v]
    den = A.sum(-1)  # [B, H, n, C]
    kv = kc.transpose(-1, -2) @ vc  # [B, H, n, E, D_v]
    ks = kc.sum(-2)  # [B, H, n, E]
    # state before each chunk: initial state plus all earlier chunks
    S_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(2)], dim=2)
    z_prev = torch.cat([torch.zeros_like(ks[:, :, :1]), ks[:, :, :-1].cumsum(2)], dim=2)
    if S0 is not None:
        S_prev, z_prev = S_prev + S0[:, :, None], z_prev + z0[:, :, None]
    o = o + qc @ S_prev
    den = den + (qc @ z_prev[..., None])[..., 0]
    if normalize:
        o = o / (den + eps)[..., None]
    o = o.transpose(2, 3).transpose(1, 3).reshape(B, n * C, H, -1)[:, :T]
    final = None
    if output_final_state:
        final = (S_prev[:, :, -1] + kv[:, :, -1], z_prev[:, :, -1] + ks[:, :, -1])
    return o.to(q.dtype), final
