"""Triton causal long convolution: a real FFT of size ``N = 2 T`` as Monarch matrices, three kernels.

The FFT is the four-step (Cooley-Tukey) split ``N = N1 x N2`` with ``n = n1 N2 + n2`` and
``k = k1 + N1 k2``; every small DFT is a matmul (``tl.dot``) against a DFT matrix of size 2-64, so a
DFT of ``N1 = P Q`` points is ``F_P . X . F_Q`` with a twiddle between (FlashFFTConv's Monarch form).

1. :func:`long_conv_fft_cols_kernel`: column DFTs of size ``N1`` of the real input, then the twiddle
   ``w_N^(n2 k1)``. Real input: only the rows ``k1 <= N1 / 2`` are kept (the others are their
   conjugates), and the zero padding (``n >= T``, i.e. ``n1 >= N1 / 2``) is never read.
2. :func:`long_conv_fft_rows_kernel`: for each kept row ``k1``, the row DFTs of size ``N2`` of both
   operands, their product (or product with the conjugate: the correlations of the backward), the
   inverse row DFT and the inverse twiddle; both spectra stay in registers.
3. :func:`long_conv_ifft_cols_kernel`: the complex-to-real inverse column DFT, only for the outputs
   ``n < T``.

HBM traffic per real signal of ``T`` samples: read ``T`` reals, write and read ``T / 2 + N2`` complex
(the half spectrum) once per pass. ``README.md`` has the math, the plan and the error analysis.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.long_conv.naive import check_long_conv

PRECISIONS = ("tf32x3", "tf32", "fp16", "ieee")
MAX_ROW_LOG2 = 12  # rows of at most 4096 complex points: two operands in registers


@triton.jit
def _rnd(x, PREC: tl.constexpr):
    """A ``tl.dot`` operand: for ``tf32``, rounded to the nearest tf32 (ties to even) in float32 bits.
    The tensor cores ignore the low 13 bits (truncation), whose bias of -2^-11 per stage would add
    up over the transform's stages; rounded first, the truncation is exact."""
    if PREC == "tf32":
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0xFFF + ((b >> 13) & 1)) & 0xFFFFE000
        x = b.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _scale(x):
    """A power of two ``>= max |x|`` (1 for an all-zero block): ``x / scale`` is in ``[-1, 1]``."""
    m = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    return tl.exp2(tl.ceil(tl.log2(tl.maximum(m, 1e-30))))


@triton.jit
def _half(x, s):
    return (x * (1.0 / s)).to(tl.float16)


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    """``a @ b (+ acc)`` in float32; ``fp16``: both operands scaled by a power of two into [-1, 1]
    (no overflow, exact scaling) and rounded to float16."""
    if PREC == "fp16":
        sa, sb = _scale(a), _scale(b)
        c = tl.dot(_half(a, sa), _half(b, sb), out_dtype=tl.float32) * (sa * sb)
        if acc is not None:
            c += acc
    else:
        c = tl.dot(_rnd(a, PREC), _rnd(b, PREC), acc, input_precision=PREC)
    return c


@triton.jit
def _cdot(ar, ai, br, bi, PREC: tl.constexpr):
    """``(ar + i ai) @ (br + i bi)``, four real matmuls with float32 accumulation."""
    if PREC == "fp16":
        sa = tl.maximum(_scale(ar), _scale(ai))
        sb = tl.maximum(_scale(br), _scale(bi))
        har, hai, hbr, hbi = _half(ar, sa), _half(ai, sa), _half(br, sb), _half(bi, sb)
        cr = tl.dot(har, hbr, out_dtype=tl.float32)
        cr = tl.dot(-hai, hbi, cr, out_dtype=tl.float32)
        ci = tl.dot(har, hbi, out_dtype=tl.float32)
        ci = tl.dot(hai, hbr, ci, out_dtype=tl.float32)
        cr, ci = cr * (sa * sb), ci * (sa * sb)
    else:
        ar, ai, br, bi = _rnd(ar, PREC), _rnd(ai, PREC), _rnd(br, PREC), _rnd(bi, PREC)
        cr = tl.dot(ar, br, input_precision=PREC)
        cr = tl.dot(-ai, bi, cr, input_precision=PREC)
        ci = tl.dot(ar, bi, input_precision=PREC)
        ci = tl.dot(ai, br, ci, input_precision=PREC)
    return cr, ci


@triton.jit
def _load_mat(p, o_r, o_c, NC: tl.constexpr):
    """A real ``[len(o_r), len(o_c)]`` block of a row-major matrix with ``NC`` columns."""
    return tl.load(p + o_r[:, None] * NC + o_c[None, :])


@triton.jit(do_not_specialize=["T"])
def long_conv_fft_cols_kernel(
    x,
    zr,
    zi,
    fpr,
    fpi,
    fqr,
    fqi,
    twr,
    twi,
    owr,
    owi,
    T,
    s_b,
    s_c,
    s_t,
    C: tl.constexpr,
    P: tl.constexpr,
    Q: tl.constexpr,
    N2: tl.constexpr,
    BN: tl.constexpr,
    PREC: tl.constexpr,
):
    # program: columns n2 in [i_n * BN, (i_n + 1) * BN) of one real signal (b, c) of T samples
    i_n, i_bc = tl.program_id(0), tl.program_id(1)
    i_b, i_c = i_bc // C, i_bc % C
    N1: tl.constexpr = P * Q
    H1: tl.constexpr = N1 // 2 + 1  # kept rows k1 = 0 .. N1 / 2
    o_p, o_q = tl.arange(0, P), tl.arange(0, Q)
    o_n = i_n * BN + tl.arange(0, BN)
    # tile [P, BN, Q]: element (p, j, q) is x[n1 N2 + n2] with n1 = Q p + q, n2 = o_n[j]
    o_t = (Q * o_p[:, None, None] + o_q[None, None, :]) * N2 + o_n[None, :, None]
    m_t = (o_p[:, None, None] < P // 2) & (o_t < T)  # rows n1 >= N1 / 2 are the zero padding
    p_x = x + i_b.to(tl.int64) * s_b + i_c.to(tl.int64) * s_c
    b_x = tl.load(p_x + o_t.to(tl.int64) * s_t, mask=m_t, other=0.0).to(tl.float32)  # [P, BN, Q]

    # Nyquist row k1 = N1 / 2: sum_n1 (-1)^n1 x (Q even), exact in float32
    sgn = 1.0 - 2.0 * (o_q % 2).to(tl.float32)
    b_nyq = tl.sum(tl.sum(b_x * sgn[None, None, :], axis=2), axis=0)  # [BN]

    # DFT over p (left), real input  [P, BN * Q]
    b_x2 = tl.reshape(b_x, (P, BN * Q))
    b_yr = _dot(_load_mat(fpr, o_p, o_p, P), b_x2, None, PREC)
    b_yi = _dot(_load_mat(fpi, o_p, o_p, P), b_x2, None, PREC)
    b_yr = tl.reshape(b_yr, (P, BN, Q))
    b_yi = tl.reshape(b_yi, (P, BN, Q))
    # inner twiddle w_N1^(q k_p)  [P, 1, Q]
    b_twr = _load_mat(twr, o_p, o_q, Q)[:, None, :]
    b_twi = _load_mat(twi, o_p, o_q, Q)[:, None, :]
    b_yr, b_yi = b_yr * b_twr - b_yi * b_twi, b_yr * b_twi + b_yi * b_twr
    # DFT over q (right)  [P * BN, Q]
    b_zr, b_zi = _cdot(
        tl.reshape(b_yr, (P * BN, Q)),
        tl.reshape(b_yi, (P * BN, Q)),
        _load_mat(fqr, o_q, o_q, Q),
        _load_mat(fqi, o_q, o_q, Q),
        PREC,
    )
    b_zr = tl.reshape(b_zr, (P, BN, Q))
    b_zi = tl.reshape(b_zi, (P, BN, Q))

    # outer twiddle w_N^(n2 k1) (a table), k1 = k_p + P k_q; keep k1 < N1 / 2, i.e. k_q < Q / 2
    o_k1 = o_p[:, None, None] + P * o_q[None, None, :]
    m_z = (o_q[None, None, :] < Q // 2) & (o_p[:, None, None] >= 0) & (o_n[None, :, None] < N2)
    o_w = o_k1 * N2 + o_n[None, :, None]
    cr, ci = tl.load(owr + o_w, mask=m_z, other=0.0), tl.load(owi + o_w, mask=m_z, other=0.0)
    b_zr, b_zi = b_zr * cr - b_zi * ci, b_zr * ci + b_zi * cr
    row0 = i_bc.to(tl.int64) * H1 * N2
    tl.store(zr + row0 + o_w, b_zr, mask=m_z)
    tl.store(zi + row0 + o_w, b_zi, mask=m_z)
    nr, ni = tl.load(owr + (N1 // 2) * N2 + o_n), tl.load(owi + (N1 // 2) * N2 + o_n)
    tl.store(zr + row0 + (N1 // 2) * N2 + o_n, b_nyq * nr)
    tl.store(zi + row0 + (N1 // 2) * N2 + o_n, b_nyq * ni)


@triton.jit
def _row_dft(b_r, b_i, f1r, f1i, f2r, f2i, t2r, t2i, PREC: tl.constexpr):
    """Forward DFT of a row ``[R1, R2]`` (natural order ``n2 = R2 r1 + r2``); the result is in the
    order ``k2 = k_r1 + R1 k_r2`` (``[k_r1, k_r2]``)."""
    b_r, b_i = _cdot(f1r, f1i, b_r, b_i, PREC)
    b_r, b_i = b_r * t2r - b_i * t2i, b_r * t2i + b_i * t2r
    return _cdot(b_r, b_i, f2r, f2i, PREC)


@triton.jit
def long_conv_fft_rows_kernel(
    ar,
    ai,
    br,
    bi,
    wr,
    wi,
    f1r,
    f1i,
    f2r,
    f2i,
    t2r,
    t2i,
    owr,
    owi,
    a_sb,
    a_sc,
    a_ss,
    b_sb,
    b_sc,
    b_ss,
    C: tl.constexpr,
    NSUM: tl.constexpr,
    N1: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    CONJ: tl.constexpr,
    PREC: tl.constexpr,
):
    # program: kept row k1 of output row (b, c); W = sum_s IDFT_row(DFT_row(A) * [conj] DFT_row(B))
    i_k, i_bc = tl.program_id(0), tl.program_id(1)
    i_b, i_c = i_bc // C, i_bc % C
    N2: tl.constexpr = R1 * R2
    N: tl.constexpr = N1 * N2
    H1: tl.constexpr = N1 // 2 + 1
    o_1, o_2 = tl.arange(0, R1), tl.arange(0, R2)
    o_row = o_1[:, None] * R2 + o_2[None, :]  # [R1, R2], natural order
    b_f1r, b_f1i = _load_mat(f1r, o_1, o_1, R1), _load_mat(f1i, o_1, o_1, R1)
    b_f2r, b_f2i = _load_mat(f2r, o_2, o_2, R2), _load_mat(f2i, o_2, o_2, R2)
    b_t2r, b_t2i = _load_mat(t2r, o_1, o_2, R2), _load_mat(t2i, o_1, o_2, R2)

    b_yr = tl.zeros([R1, R2], dtype=tl.float32)
    b_yi = tl.zeros([R1, R2], dtype=tl.float32)
    for i_s in range(NSUM):
        # rows of the [rows, H1, N2] spectra planes, in units of rows
        a_row = i_b * a_sb + i_c * a_sc + i_s * a_ss
        b_row = i_b * b_sb + i_c * b_sc + i_s * b_ss
        p_a = (a_row.to(tl.int64) * H1 + i_k) * N2 + o_row
        p_b = (b_row.to(tl.int64) * H1 + i_k) * N2 + o_row
        b_ar, b_ai = _row_dft(
            tl.load(ar + p_a), tl.load(ai + p_a), b_f1r, b_f1i, b_f2r, b_f2i, b_t2r, b_t2i, PREC
        )
        b_br, b_bi = _row_dft(
            tl.load(br + p_b), tl.load(bi + p_b), b_f1r, b_f1i, b_f2r, b_f2i, b_t2r, b_t2i, PREC
        )
        if CONJ:
            b_bi = -b_bi
        b_yr += b_ar * b_br - b_ai * b_bi
        b_yi += b_ar * b_bi + b_ai * b_br

    # inverse row DFT: right by conj(F_R2), twiddle conj, left by conj(F_R1) -> natural order [R1, R2]
    b_yr, b_yi = _cdot(b_yr, b_yi, b_f2r, -b_f2i, PREC)
    b_yr, b_yi = b_yr * b_t2r + b_yi * b_t2i, b_yi * b_t2r - b_yr * b_t2i
    b_yr, b_yi = _cdot(b_f1r, -b_f1i, b_yr, b_yi, PREC)
    # inverse outer twiddle w_N^(-n2 k1); 1 / N and the weight 2 of the conjugate rows k1 = 1 .. N1/2-1
    cr, ci = tl.load(owr + i_k * N2 + o_row), -tl.load(owi + i_k * N2 + o_row)  # conj(w_N^(n2 k1))
    scale = tl.where((i_k > 0) & (i_k < N1 // 2), 2.0, 1.0) / N
    b_wr = (b_yr * cr - b_yi * ci) * scale
    b_wi = (b_yr * ci + b_yi * cr) * scale
    p_w = (i_bc.to(tl.int64) * H1 + i_k) * N2 + o_row
    tl.store(wr + p_w, b_wr)
    tl.store(wi + p_w, b_wi)


@triton.jit(do_not_specialize=["T"])
def long_conv_ifft_cols_kernel(
    wr,
    wi,
    y,
    fpr,
    fpi,
    fqr,
    fqi,
    twr,
    twi,
    T,
    s_b,
    s_c,
    s_t,
    C: tl.constexpr,
    P: tl.constexpr,
    Q: tl.constexpr,
    N2: tl.constexpr,
    BN: tl.constexpr,
    PREC: tl.constexpr,
):
    # program: columns n2 in [i_n * BN, (i_n + 1) * BN) of output row (b, c); real outputs n < T
    i_n, i_bc = tl.program_id(0), tl.program_id(1)
    i_b, i_c = i_bc // C, i_bc % C
    N1: tl.constexpr = P * Q
    H1: tl.constexpr = N1 // 2 + 1
    o_p, o_q = tl.arange(0, P), tl.arange(0, Q)
    o_n = i_n * BN + tl.arange(0, BN)
    row0 = i_bc.to(tl.int64) * H1 * N2
    # tile [P, BN, Q]: (k_p, j, k_q) is W'[k1 = k_p + P k_q, n2 = o_n[j]], kept for k1 < N1 / 2
    o_k1 = o_p[:, None, None] + P * o_q[None, None, :]
    o_w = row0 + o_k1 * N2 + o_n[None, :, None]
    m_w = (o_q[None, None, :] < Q // 2) & (o_p[:, None, None] >= 0) & (o_n[None, :, None] < N2)
    b_vr = tl.reshape(tl.load(wr + o_w, mask=m_w, other=0.0), (P * BN, Q))
    b_vi = tl.reshape(tl.load(wi + o_w, mask=m_w, other=0.0), (P * BN, Q))
    b_nyq = tl.load(wr + row0 + (N1 // 2) * N2 + o_n)  # [BN], real part of row k1 = N1 / 2

    # inverse DFT over k_q (right, conj(F_Q)), twiddle w_N1^(-q k_p), inverse over k_p (left, real part)
    b_gr, b_gi = _cdot(b_vr, b_vi, _load_mat(fqr, o_q, o_q, Q), -_load_mat(fqi, o_q, o_q, Q), PREC)
    b_gr = tl.reshape(b_gr, (P, BN, Q))
    b_gi = tl.reshape(b_gi, (P, BN, Q))
    b_twr = _load_mat(twr, o_p, o_q, Q)[:, None, :]
    b_twi = _load_mat(twi, o_p, o_q, Q)[:, None, :]
    b_gr, b_gi = b_gr * b_twr + b_gi * b_twi, b_gi * b_twr - b_gr * b_twi
    # Re(conj(F_P) G) = Re(F_P) Re(G) + Im(F_P) Im(G)
    b_y = _dot(_load_mat(fpr, o_p, o_p, P), tl.reshape(b_gr, (P, BN * Q)), None, PREC)
    b_y = _dot(_load_mat(fpi, o_p, o_p, P), tl.reshape(b_gi, (P, BN * Q)), b_y, PREC)
    sgn = 1.0 - 2.0 * (o_q % 2).to(tl.float32)
    b_y = tl.reshape(b_y, (P, BN, Q)) + sgn[None, None, :] * b_nyq[None, :, None]

    o_t = (Q * o_p[:, None, None] + o_q[None, None, :]) * N2 + o_n[None, :, None]
    m_t = (o_p[:, None, None] < P // 2) & (o_t < T)
    p_y = y + i_b.to(tl.int64) * s_b + i_c.to(tl.int64) * s_c
    tl.store(p_y + o_t.to(tl.int64) * s_t, b_y.to(y.dtype.element_ty), mask=m_t)


def fft_plan(T: int, min_factor: int = 16) -> tuple[int, int, int, int]:
    """``(P, Q, R1, R2)``: the FFT size ``N = P Q R1 R2 = 2 T'`` (``T'`` the least power of two
    ``>= T`` that gives every factor at least ``min_factor``), columns ``N1 = P Q``, rows
    ``N2 = R1 R2 <= 4096``. ``tl.dot`` on a GPU needs ``min_factor = 16`` (then ``T' >= 32768``)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if min_factor < 2 or min_factor & (min_factor - 1):
        raise ValueError(f"min_factor must be a power of two >= 2, got {min_factor}")
    f = max(1, (min_factor - 1).bit_length())
    n = max((2 * T - 1).bit_length(), 4 * f)
    n1 = max(2 * f, n - MAX_ROW_LOG2)
    n2 = n - n1
    return 1 << (n1 // 2), 1 << (n1 - n1 // 2), 1 << (n2 // 2), 1 << (n2 - n2 // 2)


_TABLES: dict[tuple, tuple[Tensor, ...]] = {}


def _dft_tables(size: int, inner: int, device: torch.device) -> tuple[Tensor, ...]:
    """``F_size`` (``[size, size]``, ``exp(-2 pi i j k / size)``) and the twiddle
    ``w_{size inner}^(k j)`` (``[size, inner]``), real and imaginary parts, float32 from float64."""
    key = (size, inner, device)
    if key not in _TABLES:
        j = torch.arange(size, dtype=torch.float64)
        m = torch.arange(inner, dtype=torch.float64)
        f = torch.exp(-2j * math.pi * (torch.outer(j, j) % size) / size)
        tw = torch.exp(-2j * math.pi * torch.outer(j, m) / (size * inner))
        _TABLES[key] = tuple(
            t.to(device=device, dtype=torch.float32).contiguous() for t in (f.real, f.imag, tw.real, tw.imag)
        )
    return _TABLES[key]


def _outer_twiddles(N1: int, N2: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``w_N^(k1 n2)`` for the kept rows ``k1 = 0 .. N1 / 2`` and ``n2 < N2`` (``N = N1 N2``):
    ``[N1 / 2 + 1, N2]`` real and imaginary parts, float32 from float64 (exponents reduced mod ``N``)."""
    key = ("outer", N1, N2, device)
    if key not in _TABLES:
        N = N1 * N2
        r = torch.outer(torch.arange(N1 // 2 + 1, dtype=torch.int64), torch.arange(N2, dtype=torch.int64)) % N
        w = torch.exp(-2j * math.pi * r.to(torch.float64) / N)
        _TABLES[key] = tuple(t.to(device=device, dtype=torch.float32).contiguous() for t in (w.real, w.imag))
    return _TABLES[key]


COL_WARPS = 8
"""Warps of the two column kernels: their ``[P, BN, Q]`` complex tiles need 251 registers per thread
with spills on 4 warps (Triton 3.6, sm_90), 127 on 8 (``README.md``)."""


class _Plan:
    def __init__(self, T: int, device: torch.device, precision: str, min_factor: int | None):
        if min_factor is None:
            min_factor = 16 if device.type == "cuda" else 2
        self.P, self.Q, self.R1, self.R2 = fft_plan(T, min_factor)
        self.N1, self.N2 = self.P * self.Q, self.R1 * self.R2
        self.H1 = self.N1 // 2 + 1
        self.BN = min(self.N2, max(1, 4096 // self.N1), 32)  # columns per program of the column passes
        self.cols = _dft_tables(self.P, self.Q, device)[:2] + _dft_tables(self.Q, 1, device)[:2]
        self.cols += _dft_tables(self.P, self.Q, device)[2:]
        self.rows = _dft_tables(self.R1, self.R2, device)[:2] + _dft_tables(self.R2, 1, device)[:2]
        self.rows += _dft_tables(self.R1, self.R2, device)[2:]
        self.outer = _outer_twiddles(self.N1, self.N2, device)
        self.precision = precision

    def spectrum(self, x: Tensor, B: int, C: int, T: int, strides: tuple[int, int, int]) -> Tensor:
        """Half spectrum (column pass) of ``B C`` real signals ``x[b, c, t]`` (``t < T``, zero after):
        ``[2, B C, N1 / 2 + 1, N2]`` float32 (real, imaginary planes)."""
        z = torch.empty(2, B * C, self.H1, self.N2, device=x.device, dtype=torch.float32)
        grid = (self.N2 // self.BN, B * C)
        long_conv_fft_cols_kernel[grid](
            x, z[0], z[1], *self.cols, *self.outer, T, *strides, C=C, P=self.P, Q=self.Q, N2=self.N2,
            BN=self.BN, PREC=self.precision, num_warps=COL_WARPS,
        )  # fmt: skip
        return z

    def product(self, a: Tensor, b: Tensor, rows: int, C: int, a_strides, b_strides, nsum: int, conj: bool):
        """``sum_s IDFT_rows(DFT_rows(a) [conj] DFT_rows(b))`` on the kept rows: ``[2, rows, H1, N2]``."""
        w = torch.empty(2, rows, self.H1, self.N2, device=a.device, dtype=torch.float32)
        long_conv_fft_rows_kernel[(self.H1, rows)](
            a[0], a[1], b[0], b[1], w[0], w[1], *self.rows, *self.outer, *a_strides, *b_strides, C=C,
            NSUM=nsum, N1=self.N1, R1=self.R1, R2=self.R2, CONJ=conj, PREC=self.precision,
        )  # fmt: skip
        return w

    def inverse(self, w: Tensor, y: Tensor, C: int, T: int, strides: tuple[int, int, int]) -> None:
        """Write the real signals ``y[b, c, t]``, ``t < T``, from the row-pass output ``w``."""
        grid = (self.N2 // self.BN, w.shape[1])
        long_conv_ifft_cols_kernel[grid](
            w[0], w[1], y, *self.cols, T, *strides, C=C, P=self.P, Q=self.Q, N2=self.N2, BN=self.BN,
            PREC=self.precision, num_warps=COL_WARPS,
        )  # fmt: skip


def _btc_strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(2), t.stride(1)


def _filter_strides(h: Tensor) -> tuple[int, int, int]:
    return 0, h.stride(0), h.stride(1)


class TritonLongConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, h: Tensor, precision: str, min_factor: int | None) -> Tensor:
        B, T, C = u.shape
        L = h.shape[-1]
        plan = _Plan(T, u.device, precision, min_factor)
        z_u = plan.spectrum(u, B, C, T, _btc_strides(u))  # [2, B C, H1, N2]
        z_h = plan.spectrum(h, 1, C, L, _filter_strides(h))  # [2, C, H1, N2]
        w = plan.product(z_u, z_h, B * C, C, (C, 1, 0), (0, 1, 0), 1, False)
        y = torch.empty_like(u)  # u's layout: a channels-first u gets a channels-first y (unit stride in t)
        plan.inverse(w, y, C, T, _btc_strides(y))
        ctx.save_for_backward(z_u, z_h)
        ctx.plan, ctx.shape, ctx.L, ctx.dtypes = plan, (B, T, C), L, (u.dtype, h.dtype)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        z_u, z_h = ctx.saved_tensors
        plan, (B, T, C), L = ctx.plan, ctx.shape, ctx.L
        z_dy = plan.spectrum(dy, B, C, T, _btc_strides(dy))
        du = dh = None
        if ctx.needs_input_grad[0]:
            # du = corr(dy, h): IDFT(DY conj(H))
            w = plan.product(z_dy, z_h, B * C, C, (C, 1, 0), (0, 1, 0), 1, True)
            du = torch.empty_like(dy, dtype=ctx.dtypes[0])
            plan.inverse(w, du, C, T, _btc_strides(du))
        if ctx.needs_input_grad[1]:
            # dh = sum_b corr(dy_b, u_b): IDFT(sum_b DY_b conj(U_b)), the first L lags
            w = plan.product(z_dy, z_u, C, C, (0, 1, C), (0, 1, C), B, True)
            dh = torch.empty(C, L, device=dy.device, dtype=ctx.dtypes[1])
            plan.inverse(w, dh, C, L, _filter_strides(dh))
        return du, dh, None, None


def _causal(u: Tensor, h: Tensor, precision: str, min_factor: int | None) -> Tensor:
    return TritonLongConvFunction.apply(u, h, precision, min_factor)


def triton_long_conv(
    u: Tensor,
    h: Tensor,
    bias: Tensor | None = None,
    *,
    causal: bool = True,
    precision: str = "tf32x3",
    min_factor: int | None = None,
) -> Tensor:
    """Long convolution by Triton Monarch FFTs; same semantics as
    :func:`~subq.ops.long_conv.naive.naive_long_conv`, for float32, float16 and bfloat16 inputs.

    The FFT size is ``2 T'`` with ``T'`` the least power of two ``>= T`` (at least 32768 on a GPU, where
    every DFT factor must be at least 16): other lengths are zero-padded and the outputs sliced, which
    is exact. The transforms compute in float32 with ``tl.dot`` at ``precision``; outputs are stored in
    the dtype of ``u``. The bidirectional form adds the reverse half as a causal convolution of the
    time-reversed input with ``[0, h_rev]``. Not bitwise causal (as :func:`fft_long_conv`).

    Args:
        u: `[B, T, C]`, CUDA (or CPU under ``TRITON_INTERPRET=1``), any strides.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``), ``1 <= L <= T``.
        bias: `[C]` or None (default None): adds ``bias * u``.
        causal: default True.
        precision: the DFT matmuls' operand precision (accumulation is always float32):
            ``"tf32x3"`` (default: three tf32 products, about float32 accuracy), ``"tf32"`` (operands
            rounded to nearest tf32: 6e-4 to 9e-4 relative RMS for T = 4k .. 256k; see
            ``README.md``), ``"fp16"`` (operands scaled by a power of two per block and rounded
            to float16: the error of ``"tf32"`` at twice its tensor-core rate) or ``"ieee"``
            (float32 FMA, no tensor cores).
        min_factor: the least DFT factor of the plan (:func:`fft_plan`); default None: 16 on CUDA (the
            least ``tl.dot`` tile), 2 elsewhere. Tests pin 16 to run the GPU plan in the interpreter.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    B, T, C, L = check_long_conv(u, h, bias, causal)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if u.dtype == torch.float64:
        raise TypeError("triton_long_conv computes in float32; got float64 inputs (use mode='fft')")
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"triton_long_conv needs CUDA tensors (or TRITON_INTERPRET=1), got {u.device}")
    if causal:
        y = _causal(u, h, precision, min_factor)
    else:
        y = _causal(u, h[0], precision, min_factor)
        # sum_j h_rev[j] u[t + 1 + j] is the causal convolution of u reversed in time with [0, h_rev]
        shifted = torch.nn.functional.pad(h[1], (1, 0))[:, :T]  # [C, min(L + 1, T)]
        y = y + _causal(u.flip(1), shifted, precision, min_factor).flip(1)
    if bias is not None:
        y = (y.float() + bias.float() * u.float()).to(u.dtype)
    return y
