"""SSD, the state-space dual of Mamba-2: ``naive`` (quadratic and recurrent references), ``chunk``
(PyTorch) and ``fused_chunk`` (Triton, forward and backward). :func:`ssd` picks the form;
:func:`ssd_step` is the decoding step.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from subq.ops.common.checks import fits_int32_rows
from subq.ops.ssd.chunk import chunk_ssd
from subq.ops.ssd.naive import naive_recurrent_ssd, naive_ssd, segsum, ssd_matrix, ssd_step


def fused_chunk_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, **kwargs):
    """:func:`subq.ops.ssd.fused_chunk.fused_chunk_ssd` (imports Triton on first use)."""
    from subq.ops.ssd.fused_chunk import fused_chunk_ssd as fused

    return fused(x, dt, A, B, C, **kwargs)


def triton_form_available(x: Tensor) -> bool:
    """True when the Triton kernels can run on ``x``: CUDA with Triton installed, or Triton's CPU
    interpreter (``TRITON_INTERPRET=1``, for tests)."""
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    mode: str = "auto",
    reverse: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Dispatch on ``mode``: ``triton`` (the chunked kernels), ``torch`` (chunked PyTorch), ``naive``
    (quadratic reference) or ``auto`` (Triton on CUDA for float32/float16/bfloat16, a ``chunk_size``
    the kernels take, a power of two in [16, 128], and sequences of fewer than 2^31 elements; else
    PyTorch).
    Arguments as in :func:`~subq.ops.ssd.naive.naive_ssd` and
    :func:`~subq.ops.ssd.chunk.chunk_ssd`; ``reverse=True`` scans from the last token to the first
    (the outputs for the time-flipped inputs, flipped back; the Triton kernels read and write in
    place, the other forms flip copies)."""
    kw = dict(D=D, initial_state=initial_state, output_final_state=output_final_state)
    if mode not in ("auto", "triton", "torch", "naive"):
        raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")
    if _uses_kernels(x, B, C, chunk_size, mode):
        return fused_chunk_ssd(x, dt, A, B, C, chunk_size=chunk_size, reverse=reverse, **kw)
    if reverse:
        y, h = ssd(x.flip(1), dt.flip(1), A, B.flip(1), C.flip(1), chunk_size=chunk_size, mode=mode, **kw)
        return y.flip(1), h
    if mode == "naive":
        return naive_ssd(x, dt, A, B, C, **kw)
    return chunk_ssd(x, dt, A, B, C, chunk_size=chunk_size, **kw)


def ssd_bidirectional(
    x: Tensor,
    dt_f: Tensor,
    dt_b: Tensor,
    A: Tensor,
    B_f: Tensor,
    C_f: Tensor,
    B_b: Tensor,
    C_b: Tensor,
    *,
    chunk_size: int = 64,
    mode: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The two scans of a bidirectional SSD over one input ``x`` (Hydra): ``y_f = ssd(x, dt_f, A, B_f,
    C_f)`` and ``y_b = ssd(x, dt_b, A, B_b, C_b, reverse=True)``, both in token order, no ``D``, no
    states. Where :func:`ssd` would run the Triton kernels, both scans run in one launch
    (:func:`~subq.ops.ssd.fused_chunk.fused_chunk_ssd_bidirectional`); otherwise two calls of
    :func:`ssd` with ``mode``."""
    if mode not in ("auto", "triton", "torch", "naive"):
        raise ValueError(f"mode must be one of auto, triton, torch, naive; got {mode!r}")
    if _uses_kernels(x, B_f, C_f, chunk_size, mode):
        from subq.ops.ssd.fused_chunk import fused_chunk_ssd_bidirectional

        return fused_chunk_ssd_bidirectional(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, chunk_size=chunk_size)
    y_f, _ = ssd(x, dt_f, A, B_f, C_f, chunk_size=chunk_size, mode=mode)
    y_b, _ = ssd(x, dt_b, A, B_b, C_b, chunk_size=chunk_size, mode=mode, reverse=True)
    return y_f, y_b


def _uses_kernels(x: Tensor, B: Tensor, C: Tensor, chunk_size: int, mode: str) -> bool:
    """Whether :func:`ssd` runs the Triton kernels for ``mode`` (raises for ``"triton"`` without them)."""
    if mode == "triton":
        if not triton_form_available(x):
            raise RuntimeError("ssd: mode='triton' needs a CUDA tensor and Triton (pip install subq[gpu])")
        return True
    if mode == "auto" and x.is_cuda and x.dtype != torch.float64 and triton_form_available(x):
        from subq.ops.ssd.fused_chunk import triton_chunk_size_ok

        return triton_chunk_size_ok(chunk_size) and fits_int32_rows(x, B, C)
    return False


__all__ = [
    "chunk_ssd",
    "fused_chunk_ssd",
    "naive_recurrent_ssd",
    "naive_ssd",
    "segsum",
    "ssd",
    "ssd_bidirectional",
    "ssd_matrix",
    "ssd_step",
]
