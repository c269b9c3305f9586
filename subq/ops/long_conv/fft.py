"""Depthwise long convolution by FFT: O(B C n log n) with ``n`` the smallest 5-smooth size ``>= T + L``.

One zero-padded ``rfft`` of the input and of the filter, a product, one ``irfft``. Gradients come from
autograd through ``torch.fft``, which keeps the two spectra for the backward (see ``README.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.layout import to_channels_first, to_channels_last
from subq.ops.long_conv.naive import check_long_conv, compute_dtype


def fft_size(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n``: a length FFT libraries transform fast (no large prime factor)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    best = 1 << (n - 1).bit_length()  # the next power of two
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fft_long_conv(u: Tensor, h: Tensor, bias: Tensor | None = None, *, causal: bool = True) -> Tensor:
    """Long convolution by FFT; same semantics as :func:`~subq.ops.long_conv.naive.naive_long_conv`.

    The FFT size ``n = fft_size(T + L - 1)`` (``T + L`` when bidirectional) is the least that keeps the
    circular convolution from wrapping onto the ``T`` outputs. Computes in float32 (float64 for float64
    inputs). Not bitwise causal: rounding in the transforms lets inputs after ``t`` move output ``t`` by
    about ``1e-16`` (float64) relative; use :func:`~subq.ops.long_conv.chunk.chunk_long_conv` where that
    matters.

    Args:
        u: `[B, T, C]`.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``: forward taps, lags ``0 .. L-1``; reverse
            taps, lags ``-1 .. -L``), ``1 <= L <= T``.
        bias: `[C]` or None (default None): adds ``bias * u``.
        causal: default True.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    B, T, C, L = check_long_conv(u, h, bias, causal)
    acc = compute_dtype(u)
    n = fft_size(T + L - 1 if causal else T + L)
    if causal:
        kernel = h.to(acc)  # [C, L], zero-padded to n by rfft
    else:
        # lags 0 .. L-1 at the front, lags -1 .. -L at the back: kernel[n - 1 - j] = h_rev[j]
        gap = torch.zeros(C, n - 2 * L, dtype=acc, device=u.device)
        kernel = torch.cat([h[0].to(acc), gap, h[1].to(acc).flip(-1)], dim=-1)  # [C, n]
    # transforms along the contiguous last axis: cuFFT's strided transforms along T of [B, T, C] are
    # 1.4x (T = 64k) to 2.5x (T = 1M) slower on the H200 than the two transposing copies, which run
    # as tiled copies on CUDA (subq.ops.common.layout), in u's dtype
    u_cf = to_channels_first(u).transpose(1, 2).to(acc)  # [B, C, T]
    u_f = torch.fft.rfft(u_cf, n=n)  # [B, C, n // 2 + 1]
    k_f = torch.fft.rfft(kernel, n=n)  # [C, n // 2 + 1]
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :T]  # [B, C, T]
    if bias is not None:
        y = y + bias.to(acc)[:, None] * u_cf
    return to_channels_last(y.to(u.dtype).transpose(1, 2))  # [B, T, C]
