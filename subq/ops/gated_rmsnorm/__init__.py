"""Gated RMSNorm, the output norm of Mamba-2 and Hydra: ``naive`` (PyTorch, the reference) and a Triton
kernel pair (one pass forward, one backward). :func:`gated_rmsnorm` picks the form."""

from __future__ import annotations

from torch import Tensor

from subq.ops.gated_rmsnorm.naive import (
    check_gated_rmsnorm,
    naive_gated_rmsnorm,
    naive_summed_gated_rmsnorm,
)


def gated_rmsnorm(
    y: Tensor,
    z: Tensor,
    weight: Tensor,
    *,
    eps: float = 1e-5,
    norm_before_gate: bool,
    group_size: int | None = None,
    mode: str = "torch",
) -> Tensor:
    """``RMSNorm(y) * w * SiLU(z)`` (``norm_before_gate=True``) or ``RMSNorm(y * SiLU(z)) * w``.

    Args:
        y, z: `[..., d]`, any float dtype (any strides; the Triton form wants a unit last stride).
        weight: `[d]`.
        eps: default 1e-5. group_size: channels per normalised group (default ``d``).
        mode: ``"torch"`` (default, :func:`~subq.ops.gated_rmsnorm.naive.naive_gated_rmsnorm`) or
            ``"triton"`` (:mod:`subq.ops.gated_rmsnorm.triton_norm`: float32 inside, one read of ``y``
            and ``z`` and one write forward; CUDA, or Triton's interpreter).

    Returns:
        ``[..., d]`` in the dtype of ``y``.
    """
    gs = y.shape[-1] if group_size is None else group_size
    kw = dict(eps=eps, norm_before_gate=norm_before_gate, group_size=gs)
    if mode == "torch":
        return naive_gated_rmsnorm(y, z, weight, **kw)
    if mode == "triton":
        from subq.ops.gated_rmsnorm.triton_norm import triton_gated_rmsnorm

        return triton_gated_rmsnorm(y, z, weight, **kw)
    raise ValueError(f"mode must be 'torch' or 'triton', got {mode!r}")


def summed_gated_rmsnorm(
    y_f: Tensor,
    y_b: Tensor,
    z: Tensor,
    weight: Tensor,
    *,
    x: Tensor | None = None,
    delta: Tensor | None = None,
    shifted: bool,
    eps: float = 1e-5,
    norm_before_gate: bool,
    group_size: int | None = None,
    mode: str = "torch",
) -> Tensor:
    """Hydra's output norm: the gated RMSNorm of ``S y_f + S' y_b (+ x delta)``, the two scans'
    outputs (``S``, ``S'``: one-token shifts when ``shifted``) plus the diagonal term.

    Args and result as :func:`~subq.ops.gated_rmsnorm.naive.naive_summed_gated_rmsnorm`; ``mode``:
    ``"torch"`` (default, that function) or ``"triton"`` (one kernel forms the sum in registers and
    normalises it: no ``[B, T, H P]`` sum written for inference; CUDA, or Triton's interpreter).
    """
    gs = z.shape[-1] if group_size is None else group_size
    kw = dict(x=x, delta=delta, shifted=shifted, eps=eps, norm_before_gate=norm_before_gate, group_size=gs)
    if mode == "torch":
        return naive_summed_gated_rmsnorm(y_f, y_b, z, weight, **kw)
    if mode == "triton":
        from subq.ops.gated_rmsnorm.triton_norm import triton_summed_gated_rmsnorm

        return triton_summed_gated_rmsnorm(y_f, y_b, z, weight, **kw)
    raise ValueError(f"mode must be 'torch' or 'triton', got {mode!r}")


__all__ = [
    "check_gated_rmsnorm",
    "gated_rmsnorm",
    "naive_gated_rmsnorm",
    "naive_summed_gated_rmsnorm",
    "summed_gated_rmsnorm",
]
