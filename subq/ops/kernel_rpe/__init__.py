"""Kernelized attention with relative positional encoding (arXiv 2106.12566): positive random features
``phi`` and a learnable bias ``b_{j - i}`` per offset, entering as the Toeplitz matrix
``C[i, j] = exp(b_{j - i})``::

    o_i = phi(q_i)^T sum_j C[i, j] phi(k_j) v_j^T / (phi(q_i)^T sum_j C[i, j] phi(k_j) + eps)

Forms: ``naive_kernelized_rpe_attention`` (explicit ``T x T`` matrix, the reference),
``fft_kernelized_rpe_attention`` (the Toeplitz products by FFT, O(T log T)) and
``kernelized_rpe_attention_step`` (one causal decoding step on the feature history). Layout
``[B, T, H, D]``. See ``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.kernel_rpe.fft import TOEPLITZ_FORMS, fft_kernelized_rpe_attention, rpe_toeplitz_filter
from subq.ops.kernel_rpe.naive import (
    KernelizedRPEHistory,
    check_eps,
    check_projection,
    compute_dtype,
    draw_random_features,
    naive_kernelized_rpe_attention,
    prf_feature_map,
    toeplitz_rpe_matrix,
)

KERNELIZED_RPE_MODES = ("auto", "fft", "chunk", "naive")


def kernelized_rpe_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rpe_bias: Tensor,
    *,
    projection: Tensor,
    causal: bool = True,
    normalize_qk: bool = True,
    eps: float = 1e-6,
    output_final_state: bool = False,
    mode: str = "auto",
) -> tuple[Tensor, KernelizedRPEHistory | None]:
    """Dispatch on ``mode``: ``"fft"`` / ``"auto"`` (one FFT), ``"chunk"`` (dyadic FFT blocks, bitwise
    causal) or ``"naive"`` (explicit Toeplitz matrix). Arguments as in
    :func:`~subq.ops.kernel_rpe.naive.naive_kernelized_rpe_attention`."""
    if mode not in KERNELIZED_RPE_MODES:
        raise ValueError(f"mode must be one of {', '.join(KERNELIZED_RPE_MODES)}; got {mode!r}")
    kw = dict(
        projection=projection,
        causal=causal,
        normalize_qk=normalize_qk,
        eps=eps,
        output_final_state=output_final_state,
    )
    if mode == "naive":
        return naive_kernelized_rpe_attention(q, k, v, rpe_bias, **kw)
    return fft_kernelized_rpe_attention(
        q, k, v, rpe_bias, toeplitz_form="chunk" if mode == "chunk" else "fft", **kw
    )


def kernelized_rpe_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    history: KernelizedRPEHistory | None,
    rpe_bias: Tensor,
    *,
    projection: Tensor,
    normalize_qk: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, KernelizedRPEHistory]:
    """One causal decoding step at position ``S`` (the number of tokens in ``history``).

    ``o = sum_{j <= S} w_j v_j / (sum_j w_j + eps)`` with ``w_j = phi(q) . phi(k_j) exp(b_{j - S})``:
    O(B H S (m + D_v)) per step. Computes in float32 (float64 for float64 inputs).

    Args:
        q: `[B, H, D]`; k: `[B, H, D]`; v: `[B, H, D_v]`, the new token.
        history: ``(phi_k: [B, S, H, m], v: [B, S, H, D_v])`` in the compute dtype, or None (``S = 0``).
            Not modified.
        rpe_bias: `[H, 2S + 1]`, the bias of a sequence of ``S + 1`` tokens (as the full-sequence ops
            take it; only the first ``S + 1`` entries, offsets ``-S .. 0``, are read).
        projection, normalize_qk, eps: as :func:`kernelized_rpe_attention`.

    Returns:
        ``(o: [B, H, D_v] in the dtype of q, history with the new token appended)``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 3-D tensor [B, H, D], got {got}")
    B, H, D = q.shape
    if k.shape != q.shape or v.shape[:2] != (B, H):
        raise ValueError(
            f"q, k [B, H, D] and v [B, H, D_v] disagree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    m = check_projection(projection, H, D)
    check_eps(eps)
    dt = compute_dtype(q)
    if history is None:
        history = (q.new_zeros(B, 0, H, m, dtype=dt), q.new_zeros(B, 0, H, v.shape[-1], dtype=dt))
    hist_k, hist_v = history
    S = hist_k.shape[1]
    if tuple(hist_k.shape) != (B, S, H, m) or tuple(hist_v.shape) != (B, S, H, v.shape[-1]):
        raise ValueError(
            f"history must be (phi_k [B, S, H, m] = [{B}, S, {H}, {m}], v [B, S, H, D_v] = "
            f"[{B}, S, {H}, {v.shape[-1]}]), got {tuple(hist_k.shape)}, {tuple(hist_v.shape)}"
        )
    if not isinstance(rpe_bias, Tensor) or tuple(rpe_bias.shape) != (H, 2 * S + 1):
        got = tuple(rpe_bias.shape) if isinstance(rpe_bias, Tensor) else type(rpe_bias).__name__
        raise ValueError(f"rpe_bias must be [H, 2S + 1] = [{H}, {2 * S + 1}] at position S={S}, got {got}")
    phi_q = prf_feature_map(q.to(dt), projection, normalize_qk=normalize_qk, is_query=True)  # [B, H, m]
    phi_k = prf_feature_map(k.to(dt), projection, normalize_qk=normalize_qk)
    hist_k = torch.cat([hist_k.to(dt), phi_k[:, None]], dim=1)  # [B, S + 1, H, m]
    hist_v = torch.cat([hist_v.to(dt), v.to(dt)[:, None]], dim=1)  # [B, S + 1, H, D_v]
    # key j sits at offset j - S from the query: rpe_bias[:, j] with T = S + 1
    w = torch.einsum("bhm,bshm->bsh", phi_q, hist_k) * rpe_bias[:, : S + 1].to(dt).exp().T
    o = torch.einsum("bsh,bshd->bhd", w, hist_v) / (w.sum(1) + eps)[..., None]
    return o.to(q.dtype), (hist_k, hist_v)


__all__ = [
    "KERNELIZED_RPE_MODES",
    "KernelizedRPEHistory",
    "TOEPLITZ_FORMS",
    "draw_random_features",
    "fft_kernelized_rpe_attention",
    "kernelized_rpe_attention",
    "kernelized_rpe_attention_step",
    "naive_kernelized_rpe_attention",
    "prf_feature_map",
    "rpe_toeplitz_filter",
    "toeplitz_rpe_matrix",
]
