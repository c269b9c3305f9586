"""Combiner attention (full attention support at sub-quadratic cost): ``naive`` (the T x T matrix),
``blocked`` (pure PyTorch, O(T sqrt T) / O(T log T)) and ``fused`` (Triton, Combiner-Axial)."""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import Tensor

from subq.ops.combiner.blocked import blocked_combiner_attention
from subq.ops.combiner.naive import (
    VARIANTS,
    CombinerPlan,
    check_combiner_args,
    combiner_attention_matrix,
    combiner_plan,
    naive_combiner_attention,
)


def combiner_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    variant: str = "axial",
    block_size: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    row_summary_key: Callable[[Tensor], Tensor] | None = None,
    mode: str = "auto",
) -> tuple[Tensor, None]:
    """Dispatch on ``mode``: ``triton`` (the fused kernels, variant ``axial`` only; backward by the
    blocked PyTorch twins of its two passes), ``torch`` (the blocked form), ``naive`` (the ``T x T``
    matrix) or ``auto`` (Triton for CUDA inputs the kernels take, else the blocked form). Arguments
    as in :func:`naive_combiner_attention`."""
    kw = dict(
        variant=variant, block_size=block_size, causal=causal, scale=scale, row_summary_key=row_summary_key
    )
    if mode not in ("auto", "triton", "torch", "naive"):
        raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")
    if mode == "naive":
        return naive_combiner_attention(q, k, v, **kw)
    if mode == "triton":
        from subq.ops.combiner.fused import check_fused_inputs, fused_combiner_attention

        check_combiner_args(q, k, v, variant, block_size, row_summary_key)
        check_fused_inputs(q, v, variant)
        if not triton_form_available(q):
            raise RuntimeError(
                "combiner_attention: mode='triton' needs a CUDA tensor and Triton (pip install subq[gpu]); "
                f"got device {q.device}"
            )
        return fused_combiner_attention(q, k, v, **kw)
    if mode == "auto" and q.is_cuda and triton_form_available(q):
        from subq.ops.combiner.fused import check_fused_inputs, fused_combiner_attention

        try:
            check_fused_inputs(q, v, variant)
        except ValueError:
            return blocked_combiner_attention(q, k, v, **kw)
        return fused_combiner_attention(q, k, v, **kw)
    return blocked_combiner_attention(q, k, v, **kw)


def triton_form_available(q: Tensor) -> bool:
    """True when the Triton kernels can run on ``q``: CUDA with Triton installed, or Triton's CPU
    interpreter (``TRITON_INTERPRET=1``, for tests)."""
    if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = [
    "VARIANTS",
    "CombinerPlan",
    "blocked_combiner_attention",
    "combiner_attention",
    "combiner_attention_matrix",
    "combiner_plan",
    "naive_combiner_attention",
    "triton_form_available",
]
