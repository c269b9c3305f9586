"""Sliding-window softmax attention: ``naive`` (reference), ``chunk`` (PyTorch), ``flex`` (CUDA)."""

from __future__ import annotations

from torch import Tensor

from subq.ops.sliding_window.chunk import chunk_sliding_window_attention
from subq.ops.sliding_window.flex import FLEX_MIN_HEAD_DIM, flex_sliding_window_attention
from subq.ops.sliding_window.naive import naive_sliding_window_attention


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = True,
    scale: float | None = None,
    mode: str = "auto",
    output_final_state: bool = False,
):
    """Dispatch: ``mode`` in ``auto`` (FlexAttention on CUDA with ``head_dim >= 16``, else the chunked
    PyTorch form), ``triton`` (FlexAttention), ``torch`` (chunked), ``naive``. Arguments as in the naive
    form."""
    kw = dict(window=window, causal=causal, scale=scale, output_final_state=output_final_state)
    if mode == "auto":
        mode = "triton" if q.is_cuda and q.shape[-1] >= FLEX_MIN_HEAD_DIM else "torch"
    if mode == "triton":
        return flex_sliding_window_attention(q, k, v, **kw)
    if mode == "torch":
        return chunk_sliding_window_attention(q, k, v, **kw)
    if mode == "naive":
        return naive_sliding_window_attention(q, k, v, **kw)
    raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")


__all__ = [
    "chunk_sliding_window_attention",
    "flex_sliding_window_attention",
    "naive_sliding_window_attention",
    "sliding_window_attention",
]
