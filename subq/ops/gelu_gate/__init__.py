"""The GELU gate of a GLU (M2's block-diagonal GLU, GeGLU MLPs): ``GELU(h[..., :n]) * h[..., n:]``.
``naive`` (PyTorch, the reference) and a Triton kernel pair; :func:`gelu_gate` picks the form."""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.gelu_gate.naive import check_gelu_gate, naive_gelu_gate

GELU_GATE_MODES = ("auto", "torch", "triton")


def gelu_gate(h: Tensor, *, mode: str = "auto") -> Tensor:
    """``GELU(g) * v`` with ``[g, v] = h.chunk(2, -1)`` (exact, erf GELU).

    Args:
        h: `[..., 2 n]`, any float dtype (any strides).
        mode: ``"torch"`` (:func:`~subq.ops.gelu_gate.naive.naive_gelu_gate`), ``"triton"``
            (:func:`~subq.ops.gelu_gate.triton_gate.triton_gelu_gate`: one pass over ``h``; CUDA, or
            Triton's interpreter) or ``"auto"`` (default: Triton for CUDA tensors other than
            float64, PyTorch otherwise).

    Returns:
        ``[..., n]`` in the dtype of ``h``.
    """
    if mode not in GELU_GATE_MODES:
        raise ValueError(f"mode must be one of {', '.join(GELU_GATE_MODES)}; got {mode!r}")
    check_gelu_gate(h)
    if mode == "auto":
        mode = "triton" if h.is_cuda and h.dtype != torch.float64 else "torch"
    if mode == "torch":
        return naive_gelu_gate(h)
    from subq.ops.gelu_gate.triton_gate import triton_gelu_gate

    return triton_gelu_gate(h)


__all__ = ["GELU_GATE_MODES", "check_gelu_gate", "gelu_gate", "naive_gelu_gate"]
