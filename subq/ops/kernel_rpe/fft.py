"""Kernelized attention with RPE by FFT (Algorithm 1 of arXiv 2106.12566): the Toeplitz products
``C [phi(k) v^T]`` and ``C phi(k)`` along the sequence run as long convolutions, O(T log T) per
feature channel. See ``README.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.kernel_rpe.naive import KernelizedRPEHistory, prepare_kernelized_rpe
from subq.ops.long_conv import long_conv

TOEPLITZ_FORMS = ("fft", "chunk")


def rpe_toeplitz_filter(rpe_bias: Tensor, causal: bool) -> Tensor:
    """The Toeplitz matrix ``C[i, j] = exp(b_{j - i})`` as the filter of a long convolution.

    ``(C A)[i] = sum_j c_{j - i} A[j]`` is the convolution ``sum_lag h[lag] A[i - lag]`` with
    ``h_fwd[lag] = exp(b_{-lag})`` for ``lag = 0 .. T-1`` and, when bidirectional,
    ``h_rev[lag] = exp(b_{1 + lag})`` for the keys after the query (``b_T`` does not exist: that tap
    never reaches an output, so it is zero).

    Args:
        rpe_bias: `[H, 2T - 1]` (offsets ``-(T-1) .. T-1``).
        causal: return only the forward half.

    Returns:
        ``h: [H, T]`` (causal) or ``[2, H, T]``, the layout of :func:`subq.ops.long_conv.long_conv`.
    """
    T = (rpe_bias.shape[-1] + 1) // 2
    c = rpe_bias.exp()
    h_fwd = c[:, :T].flip(-1)  # [H, T]: lag j reads b_{-j}
    if causal:
        return h_fwd
    h_rev = F.pad(c[:, T:], (0, 1))  # [H, T]: lag -(1 + j) reads b_{1 + j}
    return torch.stack([h_fwd, h_rev])


def fft_kernelized_rpe_attention(
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
    toeplitz_form: str = "fft",
) -> tuple[Tensor, KernelizedRPEHistory | None]:
    """Kernelized attention with RPE, the Toeplitz products by FFT; same semantics as
    :func:`~subq.ops.kernel_rpe.naive.naive_kernelized_rpe_attention`.

    Stacks ``A[j] = phi(k_j) [v_j, 1]^T`` (``[m, D_v + 1]`` per token and head), computes ``D = C A``
    along the sequence as a long convolution per feature channel, and reads
    ``o_i = phi(q_i)^T D[i, :, :D_v] / (phi(q_i)^T D[i, :, D_v] + eps)``. Computes in float32 (float64
    for float64 inputs).

    Args:
        q, k, v, rpe_bias, projection, causal, normalize_qk, eps, output_final_state: as the naive form.
        toeplitz_form: ``"fft"`` (default: one zero-padded FFT of at least ``2T`` points, the paper's
            algorithm) or ``"chunk"`` (dyadic FFT blocks, O(T (b + log^2 T)) per channel; the output at
            ``t`` is bitwise independent of the tokens after ``t``). See
            :mod:`subq.ops.long_conv`.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, (phi_k: [B, T, H, m], v: [B, T, H, D_v]) or None)``.
    """
    if toeplitz_form not in TOEPLITZ_FORMS:
        raise ValueError(f"toeplitz_form must be one of {', '.join(TOEPLITZ_FORMS)}, got {toeplitz_form!r}")
    phi_q, phi_k, vf, bias = prepare_kernelized_rpe(q, k, v, rpe_bias, projection, normalize_qk, eps)
    B, T, H, m = phi_k.shape
    Dv = vf.shape[-1]
    v1 = torch.cat(
        [vf, torch.ones_like(vf[..., :1])], dim=-1
    )  # [B, T, H, D_v + 1]: the last column is the normaliser's
    # every (batch, feature, value column) is a sequence of T tokens with one channel per head
    A = torch.einsum("bthm,bthe->bmeth", phi_k, v1).reshape(B * m * (Dv + 1), T, H)
    D = long_conv(A, rpe_toeplitz_filter(bias, causal), causal=causal, mode=toeplitz_form)
    D = D.view(B, m, Dv + 1, T, H)
    out = torch.einsum("bthm,bmeth->bthe", phi_q, D)  # [B, T, H, D_v + 1]
    o = out[..., :Dv] / (out[..., Dv:] + eps)
    return o.to(q.dtype), ((phi_k, vf) if output_final_state else None)
