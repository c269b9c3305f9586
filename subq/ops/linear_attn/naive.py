"""Reference linear attention: the quadratic masked form and the token-by-token recurrence.

Both compute in float64 for float64 inputs and float32 otherwise; they are the ground truth for
``chunk.py`` (see ``README.md`` for the math).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from subq.ops.common.checks import check_qkv

LinearAttentionState = tuple[Tensor, Tensor]
"""``(S: [B, H, E, D_v], z: [B, H, E])``: ``sum phi(k) v^T`` and ``sum phi(k)`` so far."""


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_linear_attention_inputs(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None, eps: float
) -> tuple[int, int, int, int, int]:
    """Validate ``q, k: [B, T, H, D]``, ``v: [B, T, H, D_v]``, ``scale`` and ``eps``; return
    ``(B, T, H, D, D_v)``."""
    B, T, H, H_kv, D = check_qkv(q, k, v)
    if k.shape[1] != T:
        raise ValueError(f"q and k lengths differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H_kv != H:
        raise ValueError(
            f"linear attention needs as many key/value heads as query heads: q has H={H}, k and v H_kv={H_kv}"
        )
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    return B, T, H, D, v.shape[-1]


def check_initial_state(
    initial_state: LinearAttentionState | None, B: int, H: int, E: int, Dv: int
) -> tuple[Tensor | None, Tensor | None]:
    """``initial_state`` must be ``(S: [B, H, E, D_v], z: [B, H, E])`` or None."""
    if initial_state is None:
        return None, None
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise TypeError("initial_state must be a pair (S: [B, H, E, D_v], z: [B, H, E])")
    S0, z0 = initial_state
    if tuple(S0.shape) != (B, H, E, Dv) or tuple(z0.shape) != (B, H, E):
        raise ValueError(
            f"initial_state must be (S [B, H, E, D_v] = {(B, H, E, Dv)}, z [B, H, E] = {(B, H, E)}), "
            f"got S {tuple(S0.shape)}, z {tuple(z0.shape)}"
        )
    return S0, z0


def prepare_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map: str | Callable[[Tensor], Tensor],
    scale: float | None,
    eps: float,
    initial_state: LinearAttentionState | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Validate, then return ``phi(scale * q), phi(k): [B, T, H, E]``, ``v`` and the initial state,
    all in the accumulation dtype."""
    from subq.ops.linear_attn.feature_maps import get_feature_map

    B, T, H, D, Dv = check_linear_attention_inputs(q, k, v, scale, eps)
    phi = get_feature_map(feature_map)
    dt = compute_dtype(q)
    qf = q.to(dt) if scale is None else q.to(dt) * scale
    phi_q, phi_k = phi(qf), phi(k.to(dt))
    S0, z0 = check_initial_state(initial_state, B, H, phi_q.shape[-1], Dv)
    if S0 is not None:
        S0, z0 = S0.to(dt), z0.to(dt)
    return phi_q, phi_k, v.to(dt), S0, z0


def naive_linear_attention(
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
) -> tuple[Tensor, LinearAttentionState | None]:
    """Quadratic form: ``A = phi(q) phi(k)^T`` (lower-triangular when causal), ``o = A v / (A 1 + eps)``.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H, D]`; v: `[B, T, H, D_v]`.
        feature_map: a name in ``FEATURE_MAPS`` or a callable ``[..., D] -> [..., E]`` (default identity).
        causal: sum over ``s <= t`` (default) or over all ``s``.
        normalize: divide by ``phi(q_t) . z_t + eps`` (default True).
        scale: multiplies ``q`` before the feature map (default None: no scaling; see README).
        eps: added to the normaliser (default 1e-6).
        initial_state: ``(S: [B, H, E, D_v], z: [B, H, E])`` added to every prefix sum.
        output_final_state: also return the state after the last token.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, final_state or None)``.
    """
    phi_q, phi_k, vf, S0, z0 = prepare_linear_attention(q, k, v, feature_map, scale, eps, initial_state)
    T = q.shape[1]
    A = torch.einsum("bthe,bshe->bhts", phi_q, phi_k)
    if causal:
        A = A * torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    o = torch.einsum("bhts,bshd->bthd", A, vf)
    den = A.sum(-1).transpose(1, 2)  # [B, T, H]
    if S0 is not None:
        o = o + torch.einsum("bthe,bhed->bthd", phi_q, S0)
        den = den + torch.einsum("bthe,bhe->bth", phi_q, z0)
    if normalize:
        o = o / (den + eps)[..., None]
    final = None
    if output_final_state:
        S = torch.einsum("bthe,bthd->bhed", phi_k, vf)
        z = phi_k.sum(1)
        final = (S, z) if S0 is None else (S0 + S, z0 + z)
    return o.to(q.dtype), final


def naive_recurrent_linear_attention(
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
) -> tuple[Tensor, LinearAttentionState | None]:
    """Recurrent form: ``S_t = S_{t-1} + phi(k_t) v_t^T``, ``z_t = z_{t-1} + phi(k_t)``,
    ``o_t = phi(q_t)^T S_t / (phi(q_t) . z_t + eps)``, one token at a time (bidirectional: every query
    reads the state after the last token). Arguments and returns as :func:`naive_linear_attention`."""
    phi_q, phi_k, vf, S0, z0 = prepare_linear_attention(q, k, v, feature_map, scale, eps, initial_state)
    B, T, H, E = phi_q.shape
    S = vf.new_zeros(B, H, E, vf.shape[-1]) if S0 is None else S0
    z = vf.new_zeros(B, H, E) if z0 is None else z0
    states = []
    for t in range(T):
        S = S + phi_k[:, t, :, :, None] * vf[:, t, :, None, :]
        z = z + phi_k[:, t]
        states.append((S, z))
    outs = []
    for t in range(T):
        S_t, z_t = states[t] if causal else states[-1]
        o_t = torch.einsum("bhe,bhed->bhd", phi_q[:, t], S_t)
        if normalize:
            o_t = o_t / (torch.einsum("bhe,bhe->bh", phi_q[:, t], z_t) + eps)[..., None]
        outs.append(o_t)
    return torch.stack(outs, 1).to(q.dtype), ((S, z) if output_final_state else None)
