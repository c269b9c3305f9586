"""Combiner attention (full attention support at sub-quadratic cost): ``naive`` (the T x T matrix)
and ``blocked`` (pure PyTorch, O(T sqrt T) / O(T log T))."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from subq.ops.combiner.blocked import blocked_combiner_attention
from subq.ops.combiner.naive import (
    VARIANTS,
    CombinerPlan,
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
    """Dispatch: ``mode`` in ``auto`` / ``torch`` (the blocked form) or ``naive``. Arguments as in
    :func:`naive_combiner_attention`."""
    kw = dict(
        variant=variant, block_size=block_size, causal=causal, scale=scale, row_summary_key=row_summary_key
    )
    if mode in ("auto", "torch"):
        return blocked_combiner_attention(q, k, v, **kw)
    if mode == "naive":
        return naive_combiner_attention(q, k, v, **kw)
    raise ValueError(f"mode must be one of auto, torch, naive; got {mode!r}")


__all__ = [
    "VARIANTS",
    "CombinerPlan",
    "blocked_combiner_attention",
    "combiner_attention",
    "combiner_attention_matrix",
    "combiner_plan",
    "naive_combiner_attention",
]
