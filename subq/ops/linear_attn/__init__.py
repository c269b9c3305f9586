"""Feature-mapped linear attention: ``naive`` (quadratic and recurrent references), ``chunk`` (PyTorch).

The Triton kernel is not in this build yet: ``mode="triton"`` raises.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from subq.ops.linear_attn.chunk import chunk_linear_attention
from subq.ops.linear_attn.feature_maps import (
    FEATURE_MAPS,
    elu_plus_one_feature_map,
    feature_dim,
    get_feature_map,
    identity_feature_map,
    relu_feature_map,
    taylor_feature_map,
)
from subq.ops.linear_attn.naive import (
    LinearAttentionState,
    naive_linear_attention,
    naive_recurrent_linear_attention,
)


def linear_attention(
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
    mode: str = "auto",
) -> tuple[Tensor, LinearAttentionState | None]:
    """Dispatch: ``mode`` in ``auto`` / ``torch`` (chunked PyTorch), ``naive`` (quadratic reference),
    ``triton`` (not in this build: ``NotImplementedError``). Arguments as in
    :func:`~subq.ops.linear_attn.naive.naive_linear_attention`."""
    kw = dict(
        feature_map=feature_map,
        causal=causal,
        normalize=normalize,
        scale=scale,
        eps=eps,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
    if mode in ("auto", "torch"):
        return chunk_linear_attention(q, k, v, **kw)
    if mode == "naive":
        return naive_linear_attention(q, k, v, **kw)
    if mode == "triton":
        raise NotImplementedError(
            "linear_attention: the Triton kernel is not in this build yet; use mode='auto' or mode='torch'"
        )
    raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")


__all__ = [
    "FEATURE_MAPS",
    "LinearAttentionState",
    "chunk_linear_attention",
    "elu_plus_one_feature_map",
    "feature_dim",
    "get_feature_map",
    "identity_feature_map",
    "linear_attention",
    "naive_linear_attention",
    "naive_recurrent_linear_attention",
    "relu_feature_map",
    "taylor_feature_map",
]
