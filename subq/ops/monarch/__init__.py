"""Monarch matrices ``M = (Q_p B_p) ... (Q_1 B_1)``: block-diagonal factors ``B_i`` interleaved with
grid-axis rotations ``Q_i`` (order 2: ``M = P L P^T R``), multiplied in ``O(N^{(p+1)/p})``.

Layout ``x: [..., N_in]`` (the op acts on the last dim), ``factors``: ``p`` tensors
``[blocks, out, in]`` (:func:`monarch_factor_shapes`). Forms: ``naive_monarch`` (the dense matrix, the
reference) and ``bmm_monarch`` (one batched matmul per factor). Also the DFT as a Monarch product
(``monarch_fft``), polynomial evaluation at structured points (``poly_eval_factors``) and long
convolutions through Monarch evaluation and interpolation (``monarch_conv``, causal or
bidirectional). See ``README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from subq.ops.monarch.bmm import blockdiag_multiply, bmm_monarch
from subq.ops.monarch.fft import (
    conv_size,
    dft_factors,
    monarch_conv,
    monarch_fft,
    poly_eval_factors,
    transpose_grid,
)
from subq.ops.monarch.naive import (
    grid_sizes,
    monarch_factor_shapes,
    monarch_factor_sizes,
    monarch_matrix,
    naive_monarch,
    naive_poly_conv,
)

MONARCH_MODES = ("auto", "bmm", "naive")


def monarch(x: Tensor, factors: Sequence[Tensor], *, mode: str = "auto") -> Tensor:
    """``y = M x`` for the Monarch matrix of ``factors``, dispatched on ``mode``.

    Args:
        x: `[..., N_in]`, real or complex, ``N_in = prod(in_sizes)``.
        factors: ``p`` tensors ``[blocks, out, in]`` (see :func:`monarch_factor_shapes`), x's dtype.
        mode: ``"bmm"`` (:func:`bmm_monarch`), ``"naive"`` (:func:`naive_monarch`) or ``"auto"``
            (default: ``"bmm"``).

    Returns:
        ``y: [..., N_out]``.
    """
    if mode not in MONARCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(MONARCH_MODES)}; got {mode!r}")
    if mode == "naive":
        return naive_monarch(x, factors)
    return bmm_monarch(x, factors)


__all__ = [
    "MONARCH_MODES",
    "blockdiag_multiply",
    "bmm_monarch",
    "conv_size",
    "dft_factors",
    "grid_sizes",
    "monarch",
    "monarch_conv",
    "monarch_factor_shapes",
    "monarch_factor_sizes",
    "monarch_fft",
    "monarch_matrix",
    "naive_monarch",
    "naive_poly_conv",
    "poly_eval_factors",
    "transpose_grid",
]
