"""Reference kernelized attention with RPE: positive random features and an explicit ``T x T`` Toeplitz
matrix ``C[i, j] = exp(b_{j - i})``. Also the pieces every form shares: the random-feature draw, the
feature map and the input checks. See ``README.md`` for the math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.common.checks import check_qkv

KernelizedRPEHistory = tuple[Tensor, Tensor]
"""``(phi_k: [B, S, H, m], v: [B, S, H, D_v])``: the key features and values of the ``S`` tokens so far,
which is what a causal decoder needs (the Toeplitz weights depend on the distance, so they do not fold
into a fixed-size state)."""


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def draw_random_features(
    num_heads: int, num_features: int, head_dim: int, *, seed: int = 0, device=None, dtype=None
) -> Tensor:
    """The projection ``W: [H, m, D]`` of the positive random features, ``W[h, r] ~ N(0, I_D)`` i.i.d.

    Drawn in float32 on the CPU from ``torch.Generator().manual_seed(seed)`` and then moved, so a seed
    gives the same features on every device and, up to rounding, in every dtype.
    """
    for name, n in (("num_heads", num_heads), ("num_features", num_features), ("head_dim", head_dim)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_heads, num_features, head_dim, generator=g, dtype=torch.float32)
    return w.to(device=device, dtype=dtype if dtype is not None else torch.float32)


def prf_feature_map(
    x: Tensor, projection: Tensor, *, normalize_qk: bool = True, is_query: bool = False
) -> Tensor:
    """Positive random features (Performer's PRF) of queries or keys.

    ``phi(x) = m^{-1/2} exp(W x~ - |x~|^2 / 2)`` with ``x~ = x / |x|`` (``normalize_qk=True``: the
    kernel is ``exp(q^ . k^)`` of unit vectors) or ``x~ = x / D^{1/4}`` (``exp(q . k / sqrt(D))``), so
    that ``E_W[phi(q) . phi(k)]`` is that kernel. Queries (``is_query=True``) are divided by their
    largest feature, as Performer's FAVOR+ does: a per-query factor that cancels between the numerator
    and the normaliser of the attention (up to ``eps``) and keeps the query features in ``(0, m^{-1/2}]``.

    Args:
        x: `[..., H, D]`, computed in its own dtype.
        projection: `[H, m, D]`, cast to the dtype of ``x``.
        normalize_qk: unit-normalise ``x`` first (default True, the paper's stable variant).
        is_query: apply the per-query rescaling (default False).

    Returns:
        ``phi(x): [..., H, m]`` in the dtype of ``x``.
    """
    D, m = x.shape[-1], projection.shape[1]
    x = F.normalize(x, dim=-1) if normalize_qk else x * D**-0.25
    logits = torch.einsum("...hd,hmd->...hm", x, projection.to(x.dtype))
    logits = logits - x.pow(2).sum(-1, keepdim=True) / 2
    if is_query:
        logits = logits - logits.amax(-1, keepdim=True)
    return logits.exp() * m**-0.5


def check_projection(projection: Tensor, H: int, D: int) -> int:
    """``projection`` must be a floating ``[H, m, D]`` tensor; returns ``m``."""
    if not isinstance(projection, Tensor):
        raise TypeError(f"projection must be a torch.Tensor [H, m, D], got {type(projection).__name__}")
    if not projection.is_floating_point():
        raise TypeError(f"projection must be floating point, got dtype {projection.dtype}")
    if (
        projection.dim() != 3
        or projection.shape[0] != H
        or projection.shape[2] != D
        or projection.shape[1] < 1
    ):
        raise ValueError(
            f"projection must be [H={H}, m, D={D}] with m >= 1, got shape {tuple(projection.shape)}"
        )
    return projection.shape[1]


def check_rpe_bias(rpe_bias: Tensor, H: int, T: int) -> None:
    """``rpe_bias`` must be a floating ``[H, 2T - 1]`` tensor (offsets ``-(T-1) .. T-1``)."""
    if not isinstance(rpe_bias, Tensor):
        raise TypeError(f"rpe_bias must be a torch.Tensor [H, 2T - 1], got {type(rpe_bias).__name__}")
    if not rpe_bias.is_floating_point():
        raise TypeError(f"rpe_bias must be floating point, got dtype {rpe_bias.dtype}")
    if tuple(rpe_bias.shape) != (H, 2 * T - 1):
        raise ValueError(
            f"rpe_bias must be [H, 2T - 1] = [{H}, {2 * T - 1}] (offsets -(T-1) .. T-1 for T={T}), "
            f"got shape {tuple(rpe_bias.shape)}"
        )


def check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def prepare_kernelized_rpe(
    q: Tensor, k: Tensor, v: Tensor, rpe_bias: Tensor, projection: Tensor, normalize_qk: bool, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate, then return ``phi(q), phi(k): [B, T, H, m]``, ``v`` and ``rpe_bias`` in the
    accumulation dtype."""
    B, T, H, H_kv, D = check_qkv(q, k, v)
    if k.shape[1] != T:
        raise ValueError(f"q and k lengths differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H_kv != H:
        raise ValueError(
            f"kernelized attention needs as many key/value heads as query heads: q H={H}, k H={H_kv}"
        )
    check_projection(projection, H, D)
    check_rpe_bias(rpe_bias, H, T)
    check_eps(eps)
    dt = compute_dtype(q)
    phi_q = prf_feature_map(q.to(dt), projection, normalize_qk=normalize_qk, is_query=True)
    phi_k = prf_feature_map(k.to(dt), projection, normalize_qk=normalize_qk)
    return phi_q, phi_k, v.to(dt), rpe_bias.to(dt)


def toeplitz_rpe_matrix(rpe_bias: Tensor, causal: bool) -> Tensor:
    """``C: [H, T, T]`` with ``C[h, i, j] = exp(rpe_bias[h, j - i + T - 1])``, zero above the diagonal
    when ``causal`` (``rpe_bias: [H, 2T - 1]``)."""
    T = (rpe_bias.shape[-1] + 1) // 2
    pos = torch.arange(T, device=rpe_bias.device)
    C = rpe_bias[:, pos[None, :] - pos[:, None] + T - 1].exp()  # [H, T, T]
    if causal:
        C = torch.where(pos[None, :] <= pos[:, None], C, torch.zeros((), dtype=C.dtype, device=C.device))
    return C


def naive_kernelized_rpe_attention(
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
) -> tuple[Tensor, KernelizedRPEHistory | None]:
    """Quadratic form: ``W = (phi(q) phi(k)^T) * C``, ``o = W v / (W 1 + eps)``, with the Toeplitz
    matrix ``C[i, j] = exp(b_{j - i})`` built explicitly. O(B H T^2 (m + D_v)).

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H, D]`; v: `[B, T, H, D_v]`.
        rpe_bias: `[H, 2T - 1]`, ``rpe_bias[h, delta + T - 1] = b_delta`` for the offset ``delta = j - i``
            of key ``j`` from query ``i``. Causal attention reads only ``delta <= 0`` (the first ``T``
            entries).
        projection: `[H, m, D]`, the random features (:func:`draw_random_features`).
        causal: sum over keys ``j <= i`` (default) or over all keys.
        normalize_qk: unit-normalise queries and keys before the feature map (default True).
        eps: added to the normaliser (default 1e-6).
        output_final_state: also return the decoding history ``(phi(k), v)``.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, (phi_k: [B, T, H, m], v: [B, T, H, D_v]) or None)``.
    """
    phi_q, phi_k, vf, bias = prepare_kernelized_rpe(q, k, v, rpe_bias, projection, normalize_qk, eps)
    A = torch.einsum("bthm,bshm->bhts", phi_q, phi_k) * toeplitz_rpe_matrix(bias, causal)  # [B, H, T, T]
    o = torch.einsum("bhts,bshd->bthd", A, vf)
    o = o / (A.sum(-1).transpose(1, 2) + eps)[..., None]
    return o.to(q.dtype), ((phi_k, vf) if output_final_state else None)
