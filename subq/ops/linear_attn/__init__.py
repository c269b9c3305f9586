"""Feature-mapped linear attention: ``naive`` (quadratic and recurrent references), ``chunk`` (PyTorch),
``fused_chunk`` (Triton, forward and backward) and ``fused_recurrent`` (Triton decode step).
:func:`linear_attention` and :func:`linear_attention_step` pick the form.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from subq.ops.common.checks import check_int32_rows
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
from subq.ops.linear_attn.limits import check_fused_chunk_sizes
from subq.ops.linear_attn.naive import (
    LinearAttentionState,
    naive_linear_attention,
    naive_recurrent_linear_attention,
)


def fused_chunk_linear_attention(q: Tensor, k: Tensor, v: Tensor, **kwargs):
    """:func:`subq.ops.linear_attn.fused_chunk.fused_chunk_linear_attention` (imports Triton on first use)."""
    from subq.ops.linear_attn.fused_chunk import fused_chunk_linear_attention as fused

    return fused(q, k, v, **kwargs)


def chunk_parallel_linear_attention(q: Tensor, k: Tensor, v: Tensor, **kwargs):
    """:func:`subq.ops.linear_attn.chunk_parallel.chunk_parallel_linear_attention` (imports Triton on first
    use)."""
    from subq.ops.linear_attn.chunk_parallel import chunk_parallel_linear_attention as parallel

    return parallel(q, k, v, **kwargs)


def _triton_form(q: Tensor, k: Tensor, v: Tensor, causal: bool, **kw):
    """The faster Triton form: the chunk-parallel kernels when causal (faster in both directions on the
    H200, see BENCHMARKS.md), the fused chunked kernels when bidirectional (the parallel form is causal
    only)."""
    if causal:
        return chunk_parallel_linear_attention(q, k, v, causal=True, **kw)
    return fused_chunk_linear_attention(q, k, v, causal=False, **kw)


def linear_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: LinearAttentionState,
    *,
    feature_map: str | Callable[[Tensor], Tensor] = "identity",
    normalize: bool = True,
    scale: float | None = None,
    eps: float = 1e-6,
    mode: str = "auto",
) -> tuple[Tensor, LinearAttentionState]:
    """One decoding step: ``q, k: [B, H, D]``, ``v: [B, H, D_v]``, ``state = (S, z)`` -> ``(o: [B, H, D_v],
    state after the token)``.

    ``triton`` (``auto`` on CUDA with a float32 state): the fused recurrent kernel, which updates ``S``
    and ``z`` in place and returns them; sizes it does not take fall back under ``auto`` with a one-time
    warning. ``torch`` / ``naive``: the chunked / quadratic form on one token, returning a new state.
    """
    S = state[0] if isinstance(state, (tuple, list)) and len(state) == 2 else None
    fused = mode == "triton" or (
        mode == "auto"
        and isinstance(S, Tensor)
        and S.dtype == torch.float32
        and q.is_cuda
        and not callable(feature_map)
        and triton_form_available(q)
    )
    if fused:
        from subq.ops.linear_attn.fused_recurrent import fused_recurrent_linear_attention_step

        try:
            return fused_recurrent_linear_attention_step(
                q, k, v, state, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps
            )
        except ValueError as e:
            if mode == "triton":
                raise
            _warn_once(f"linear_attention_step: {e}; falling back to the PyTorch form")
    o, new_state = linear_attention(
        q[:, None],
        k[:, None],
        v[:, None],
        feature_map=feature_map,
        normalize=normalize,
        scale=scale,
        eps=eps,
        initial_state=state,
        output_final_state=True,
        mode="naive" if mode == "naive" else "torch",
    )
    return o[:, 0], new_state


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


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


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
    """Dispatch on ``mode``: ``triton`` (chunk-parallel kernels when causal, fused chunked kernels when
    bidirectional), ``torch`` (chunked PyTorch), ``naive``
    (quadratic reference) or ``auto`` (Triton on CUDA for the sizes and maps the kernels take, else
    PyTorch, with a one-time warning when a CUDA input falls back). Arguments as in
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
    if mode not in ("auto", "triton", "torch", "naive"):
        raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")
    if mode == "naive":
        return naive_linear_attention(q, k, v, **kw)
    if mode == "torch" or q.dtype == torch.float64:
        if mode == "triton":
            raise ValueError(
                "linear_attention: the Triton kernels take float32, float16 or bfloat16, not float64"
            )
        return chunk_linear_attention(q, k, v, **kw)
    if mode == "triton":
        if not triton_form_available(q):
            raise RuntimeError(
                "linear_attention: mode='triton' needs a CUDA tensor and Triton (pip install subq[gpu])"
            )
        if callable(feature_map):
            raise ValueError("linear_attention: the Triton kernels take a named feature map, not a callable")
        return _triton_form(q, k, v, **kw)
    if not triton_form_available(q) or not q.is_cuda:
        return chunk_linear_attention(q, k, v, **kw)
    try:
        if callable(feature_map):
            raise ValueError("the Triton kernels take a named feature map, not a callable")
        check_fused_chunk_sizes(feature_map, q.shape[-1], v.shape[-1])
        check_int32_rows("linear_attention", q=q, k=k, v=v)
    except ValueError as e:
        _warn_once(f"linear_attention: {e}; falling back to the PyTorch chunked form")
        return chunk_linear_attention(q, k, v, **kw)
    return _triton_form(q, k, v, **kw)


__all__ = [
    "FEATURE_MAPS",
    "LinearAttentionState",
    "chunk_linear_attention",
    "elu_plus_one_feature_map",
    "feature_dim",
    "chunk_parallel_linear_attention",
    "fused_chunk_linear_attention",
    "get_feature_map",
    "identity_feature_map",
    "linear_attention",
    "linear_attention_step",
    "naive_linear_attention",
    "naive_recurrent_linear_attention",
    "relu_feature_map",
    "taylor_feature_map",
]
