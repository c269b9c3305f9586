"""Exactly causal long convolution by dyadic blocks: O(B C T (b + log^2 T)) for base blocks of ``b`` tokens.

The sequence is padded to ``b * 2^m`` tokens. Pairs of inputs and outputs in the same base block are
summed directly (a lower-triangular Toeplitz matmul per block); every other pair ``s < t`` is covered
once, at the level where ``s`` lies in the left and ``t`` in the right half of one block of ``2S``
tokens, by an FFT of that left half alone. No output is computed from a transform that saw a later
input, so output ``t`` is bitwise independent of inputs after ``t`` (the plain FFT form is not: its
rounding spreads every input over all outputs). See ``README.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.long_conv.fft import fft_size
from subq.ops.long_conv.naive import check_long_conv, compute_dtype


def _block_size(T: int, chunk_size: int) -> tuple[int, int]:
    """``(b, m)``: ``m`` halvings so that ``b = ceil(T / 2^m) <= chunk_size``, with ``b`` rounded up to a
    5-smooth size (fast FFTs of ``2 b 2^k`` points); the padded length ``b 2^m`` stays close to ``T``."""
    levels = (-(-T // chunk_size) - 1).bit_length()
    return fft_size(-(-T // (1 << levels))), levels


def _causal_chunk_conv(u: Tensor, h: Tensor, chunk_size: int) -> Tensor:
    """``y[:, t] = sum_{j < L} h[:, j] u[:, t - j]`` for ``u: [B, T, C]``, ``h: [C, L]`` (compute dtype)."""
    B, T, C = u.shape
    L = h.shape[-1]
    b, levels = _block_size(T, chunk_size)
    Tp = b << levels
    # channels first, zeros after the last token: the FFTs run along the contiguous time axis
    u = F.pad(u.transpose(1, 2), (0, Tp - T)).contiguous()  # [B, C, Tp]

    # lags 0 .. b-1 inside each base block: toeplitz[c, i, i'] = h[c, i - i'] for i >= i', else 0
    lag = torch.arange(b, device=u.device)
    taps = F.pad(h, (0, max(0, b - L)))[:, :b]  # [C, b]
    toeplitz = taps[:, (lag[:, None] - lag[None, :]).abs()].tril()  # [C, b, b]
    y = torch.einsum("cij,bcnj->bcni", toeplitz, u.view(B, C, Tp // b, b)).reshape(B, C, Tp)

    for k in range(levels if L > 1 else 0):
        S = b << k  # half-block: the left half's inputs feed the right half's outputs, lags 1 .. 2S - 1
        left_f = torch.fft.rfft(u.view(B, C, Tp // (2 * S), 2, S)[..., 0, :], n=2 * S)  # [B, C, P, S + 1]
        k_f = torch.fft.rfft(h[:, : 2 * S], n=2 * S)[:, None]  # [C, 1, S + 1]
        # with n = 2S the circular product never wraps onto indices S .. 2S - 1 (lags <= 3S - 2)
        right = torch.fft.irfft(left_f * k_f, n=2 * S)[..., S:]  # [B, C, P, S]
        y = y + torch.stack([torch.zeros_like(right), right], dim=-2).reshape(B, C, Tp)
    return y[:, :, :T].transpose(1, 2)  # [B, T, C]


def chunk_long_conv(
    u: Tensor, h: Tensor, bias: Tensor | None = None, *, causal: bool = True, chunk_size: int = 64
) -> Tensor:
    """Long convolution by dyadic blocks; same semantics as
    :func:`~subq.ops.long_conv.naive.naive_long_conv`, and bitwise causal when ``causal=True``.

    The bidirectional form adds the reverse half as a causal convolution of the time-reversed input
    with ``[0, h_rev]``. Computes in float32 (float64 for float64 inputs).

    Args:
        u: `[B, T, C]`.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``), ``1 <= L <= T``.
        bias: `[C]` or None (default None): adds ``bias * u``.
        causal: default True.
        chunk_size: base block size ``b`` (default 64; rounded so that ``b 2^m`` just covers ``T``);
            base blocks are summed directly, O(T b) per channel, with ``ceil(log2(T / b))`` FFT
            levels above them.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, C, L = check_long_conv(u, h, bias, causal)
    acc = compute_dtype(u)
    uf = u.to(acc)
    if causal:
        y = _causal_chunk_conv(uf, h.to(acc), chunk_size)
    else:
        y = _causal_chunk_conv(uf, h[0].to(acc), chunk_size)
        # sum_j h_rev[j] u[t + 1 + j] is the causal convolution of u reversed in time with [0, h_rev]
        shifted = F.pad(h[1].to(acc), (1, 0))[:, :T]  # [C, min(L + 1, T)]
        y = y + _causal_chunk_conv(uf.flip(1), shifted, chunk_size).flip(1)
    if bias is not None:
        y = y + bias.to(acc) * uf
    return y.to(u.dtype)
