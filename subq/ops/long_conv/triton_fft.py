"""Triton causal long convolution: a real FFT of size ``N = 2 T`` by matmuls, three kernels.

The FFT is the four-step (Cooley-Tukey) split ``N = N1 x N2`` with ``n = n1 N2 + n2`` and
``k = k1 + N1 k2``; every DFT is a matmul (``tl.dot``) against a DFT matrix. The columns (``N1 <= 512``
points up to ``T = 1M``) are one matmul each; the rows (``N2 = R1 R2`` points) are ``F_R1 . X . F_R2``
with a twiddle between (FlashFFTConv's Monarch form).

1. :func:`long_conv_dft_cols_kernel`: the column DFTs of the real input by the ``[N1 / 2, N1 / 2]``
   corner of ``F_N1``, then the twiddle ``w_N^(n2 k1)``. Real input: only the rows ``k1 <= N1 / 2``
   are kept (the others are their conjugates), and the zero padding (``n >= T``, i.e.
   ``n1 >= N1 / 2``) is never read nor multiplied.
2. :func:`long_conv_fft_rows_kernel`: for each kept row ``k1``, the row DFTs of size ``N2`` of both
   operands, their product (or product with the conjugate: the correlations of the backward), the
   inverse row DFT and the inverse twiddle; both spectra stay in registers.
3. :func:`long_conv_dft_icols_kernel`: the complex-to-real inverse column DFT, only for the outputs
   ``n < T``.

HBM traffic per real signal of ``T`` samples: read ``T`` reals, write and read ``T / 2 + N2`` complex
(the half spectrum) once per pass, in float16 with a power-of-two scale per row and group of columns
for ``fp16`` (:class:`Spectrum`). ``README.md`` has the math, the plan and the error analysis.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.common.launch import FastLaunch
from subq.ops.common.layout import channels_first, channels_last
from subq.ops.long_conv.naive import check_long_conv

PRECISIONS = ("tf32x3", "tf32", "fp16", "ieee")
MAX_ROW_LOG2 = 12  # rows of at most 4096 complex points: both operands' rows in registers


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
    """A power of two ``>= max |x|`` (``2^-99`` for an all-zero block): ``x / scale`` is in ``[-1, 1]``."""
    m = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    return tl.exp2(tl.ceil(tl.log2(tl.maximum(m, 1e-30))))


@triton.jit
def _half(x, s):
    return (x * (1.0 / s)).to(tl.float16)


@triton.jit
def _table_dot(f, x, acc, PREC: tl.constexpr):
    """``f @ x + acc`` in float32 for a DFT table ``f`` already in the operand format of ``PREC``
    (:func:`_dft_tables`: rounded to tf32, or float16); ``x`` is rounded or scaled here."""
    if PREC == "fp16":
        s = _scale(x)
        c = acc + tl.dot(f, _half(x, s), out_dtype=tl.float32) * s
    else:
        c = tl.dot(f, _rnd(x, PREC), acc, input_precision=PREC)
    return c


@triton.jit
def _pow2_max(xr, xi):
    """A power of two ``>= max(|xr|, |xi|)`` over the block (one reduction for both parts)."""
    m = tl.max(tl.max(tl.maximum(tl.abs(xr), tl.abs(xi)), axis=1), axis=0)
    return tl.exp2(tl.ceil(tl.log2(tl.maximum(m, 1e-30))))


@triton.jit
def _pow2_rows(xr, xi):
    """Per row of the block: a power of two ``>= max(|xr|, |xi|)`` (``2^-99`` for a zero row)."""
    m = tl.max(tl.maximum(tl.abs(xr), tl.abs(xi)), axis=1)
    return tl.exp2(tl.ceil(tl.log2(tl.maximum(m, 1e-30))))


@triton.jit
def _store_parts(pr, pi, ps, p, p_s, xr, xi):
    """Store a complex block at offsets ``p``: as it is in float32 planes, or in float16 planes each row
    divided by a power of two bounding it (its scale, stored at ``ps + p_s``). The ``fp16`` kernels
    round every matmul operand so (to 11 bits after a power-of-two scaling): stored where it is
    computed, the rounding moves and the planes' traffic halves."""
    if pr.dtype.element_ty == tl.float16:
        s = _pow2_rows(xr, xi)
        tl.store(ps + p_s, s)
        xr, xi = xr * (1.0 / s)[:, None], xi * (1.0 / s)[:, None]
    tl.store(pr + p, xr.to(pr.dtype.element_ty))
    tl.store(pi + p, xi.to(pi.dtype.element_ty))


@triton.jit
def _load_parts(pr, pi, ps, p, p_s):
    """A complex block stored by :func:`_store_parts`, in float32, and a power of two bounding it
    (float16 planes; else 1. ``p_s``: the offsets of the rows' scales, broadcastable to ``p``)."""
    xr, xi = tl.load(pr + p).to(tl.float32), tl.load(pi + p).to(tl.float32)
    bound = 1.0
    if pr.dtype.element_ty == tl.float16:
        sc = tl.load(ps + p_s)
        bound = tl.max(tl.max(sc, axis=1), axis=0)
        xr, xi = xr * sc, xi * sc
    return xr, xi, bound


@triton.jit
def _operands(xr, xi, s, PREC: tl.constexpr):
    """Complex data ``(xr + i xi) / s`` as ``tl.dot`` operands of ``PREC``: float16 (``s`` must bound
    the parts), rounded to tf32, or float32 as it is (``s`` is a power of two: exact)."""
    if PREC == "fp16":
        return (xr * (1.0 / s)).to(tl.float16), (xi * (1.0 / s)).to(tl.float16)
    else:
        return _rnd(xr * (1.0 / s), PREC), _rnd(xi * (1.0 / s), PREC)


@triton.jit
def _cmm(fr, fi, xr, xi, LEFT: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr):
    """``F X`` (``LEFT``) or ``X F`` for a complex DFT table ``F = fr + i fi`` (``conj(F)`` if ``CONJ``)
    and complex data ``X = xr + i xi``, both already operands of ``PREC`` (:func:`_operands`): four
    real matmuls, float32 accumulation."""
    # Re = fr xr - fi xi, Im = fr xi + fi xr; conj(F): the fi terms change sign
    if CONJ:
        ur, ui = xi, -xr
    else:
        ur, ui = -xi, xr
    if LEFT:
        cr = _mm(fi, ur, _mm(fr, xr, None, PREC), PREC)
        ci = _mm(fi, ui, _mm(fr, xi, None, PREC), PREC)
    else:
        cr = _mm(ur, fi, _mm(xr, fr, None, PREC), PREC)
        ci = _mm(ui, fi, _mm(xi, fr, None, PREC), PREC)
    return cr, ci


@triton.jit
def _mm(a, b, acc, PREC: tl.constexpr):
    """``a @ b (+ acc)``, float32 accumulation, for operands already in the format of ``PREC``."""
    if PREC == "fp16":
        c = tl.dot(a, b, acc, out_dtype=tl.float32)
    else:
        c = tl.dot(a, b, acc, input_precision=PREC)
    return c


@triton.jit
def _load_mat(p, o_r, o_c, NC: tl.constexpr):
    """A real ``[len(o_r), len(o_c)]`` block of a row-major matrix with ``NC`` columns."""
    return tl.load(p + o_r[:, None] * NC + o_c[None, :])


@triton.jit
def _row_dft(b_r, b_i, s, f1r, f1i, f2r, f2i, t2r, t2i, R: tl.constexpr, PREC: tl.constexpr):
    """Forward DFT of a row ``[R1, R2]`` (natural order ``n2 = R2 r1 + r2``), in the order
    ``k2 = k_r1 + R1 k_r2`` (``[k_r1, k_r2]``): ``(re, im, g)`` with the DFT ``g (re + i im)``.

    The data stay in a scaled domain: divided by ``s`` (a power of two bounding the row; 1 unless
    ``fp16``: :func:`_load_parts`), the parts after ``F_R1`` are at most ``sqrt(2) R1``, and the
    twiddle table comes divided by ``2 R`` (``R = max(R1, R2)``), so the second matmul's operands are
    below 1 in magnitude: ``fp16`` needs no reduction, and every scaling is an exact power of two."""
    xr, xi = _operands(b_r, b_i, s, PREC)
    cr, ci = _cmm(f1r, f1i, xr, xi, True, False, PREC)
    cr, ci = cr * t2r - ci * t2i, cr * t2i + ci * t2r  # w_N2^(r2 k_r1) / (2 R)
    xr, xi = _operands(cr, ci, 1.0, PREC)
    cr, ci = _cmm(f2r, f2i, xr, xi, False, False, PREC)
    return cr, ci, s * (2 * R)


@triton.jit
def long_conv_fft_rows_kernel(
    a,
    a_s,
    b,
    b_s,
    w,
    w_s,
    tab_f,
    tab_t,
    a_plane,
    b_plane,
    w_plane,
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
    GZ: tl.constexpr,
    CONJ: tl.constexpr,
    PREC: tl.constexpr,
):
    # program: kept row k1 of output row (b, c); W = sum_s IDFT_row(DFT_row(A) * [conj] DFT_row(B))
    # (fp16: the operands' rows come with one scale per GZ columns, W's with one per R2). Each of
    # a, b, w: a real plane [rows, H1, N2] and the imaginary plane *_plane elements after it
    N2: tl.constexpr = R1 * R2
    N: tl.constexpr = N1 * N2
    H1: tl.constexpr = N1 // 2 + 1
    ar, ai = a, a + a_plane
    br, bi = b, b + b_plane
    wr, wi = w, w + w_plane
    # tab_f (operand format): F_R1 re, im, F_R2 re, im; tab_t (float32): the twiddle w_N2^(r1 k_r2) / (2 R)
    # re, im, then the outer twiddle's two factors [H1, R1] re, im and [H1, R2] re, im
    f1r, f1i = tab_f, tab_f + R1 * R1
    f2r, f2i = tab_f + 2 * R1 * R1, tab_f + 2 * R1 * R1 + R2 * R2
    t2r, t2i = tab_t, tab_t + R1 * R2
    o1r, o1i = tab_t + 2 * R1 * R2, tab_t + 2 * R1 * R2 + H1 * R1
    o2r, o2i = tab_t + 2 * R1 * R2 + 2 * H1 * R1, tab_t + 2 * R1 * R2 + 2 * H1 * R1 + H1 * R2
    R: tl.constexpr = max(R1, R2)  # the row twiddle table t2 comes divided by 2 R (_row_dft)
    i_k, i_bc = tl.program_id(0) % H1, tl.program_id(0) // H1  # a 1-D grid: any number of rows
    i_b, i_c = i_bc // C, i_bc % C
    o_1, o_2 = tl.arange(0, R1), tl.arange(0, R2)
    o_row = o_1[:, None] * R2 + o_2[None, :]  # [R1, R2], natural order
    if GZ >= R2:  # the operands' scale groups: whole rows r1 of the block
        o_g = (o_1 * R2 // GZ)[:, None]
    else:
        o_g = o_row // GZ
    b_f1r, b_f1i = _load_mat(f1r, o_1, o_1, R1), _load_mat(f1i, o_1, o_1, R1)
    b_f2r, b_f2i = _load_mat(f2r, o_2, o_2, R2), _load_mat(f2i, o_2, o_2, R2)
    b_t2r, b_t2i = _load_mat(t2r, o_1, o_2, R2), _load_mat(t2i, o_1, o_2, R2)

    b_yr = tl.zeros([R1, R2], dtype=tl.float32)
    b_yi = tl.zeros([R1, R2], dtype=tl.float32)
    for i_s in range(NSUM):
        # rows of the [rows, H1, N2] spectra planes, in units of rows
        a_row = i_b * a_sb + i_c * a_sc + i_s * a_ss
        b_row = i_b * b_sb + i_c * b_sc + i_s * b_ss
        r_a = a_row.to(tl.int64) * H1 + i_k
        r_b = b_row.to(tl.int64) * H1 + i_k
        b_ar, b_ai, s_a = _load_parts(ar, ai, a_s, r_a * N2 + o_row, r_a * (N2 // GZ) + o_g)
        b_br, b_bi, s_b = _load_parts(br, bi, b_s, r_b * N2 + o_row, r_b * (N2 // GZ) + o_g)
        b_ar, b_ai, g_a = _row_dft(b_ar, b_ai, s_a, b_f1r, b_f1i, b_f2r, b_f2i, b_t2r, b_t2i, R, PREC)
        b_br, b_bi, g_b = _row_dft(b_br, b_bi, s_b, b_f1r, b_f1i, b_f2r, b_f2i, b_t2r, b_t2i, R, PREC)
        if CONJ:
            b_bi = -b_bi
        b_yr += (b_ar * b_br - b_ai * b_bi) * (g_a * g_b)
        b_yi += (b_ar * b_bi + b_ai * b_br) * (g_a * g_b)

    # inverse row DFT: right by conj(F_R2), twiddle conj, left by conj(F_R1) -> natural order [R1, R2],
    # in the scaled domain of _row_dft: the result is g_y times the inverse
    g_y = 1.0
    if PREC == "fp16":
        g_y = _pow2_max(b_yr, b_yi)
    xr, xi = _operands(b_yr, b_yi, g_y, PREC)
    b_yr, b_yi = _cmm(b_f2r, b_f2i, xr, xi, False, True, PREC)
    b_yr, b_yi = b_yr * b_t2r + b_yi * b_t2i, b_yi * b_t2r - b_yr * b_t2i
    xr, xi = _operands(b_yr, b_yi, 1.0, PREC)
    b_yr, b_yi = _cmm(b_f1r, b_f1i, xr, xi, True, True, PREC)
    g_y = g_y * (2 * R)
    # inverse outer twiddle w_N^(-n2 k1); 1 / N and the weight 2 of the conjugate rows k1 = 1 .. N1/2-1
    # w_N^(n2 k1) = w_N^(r1 R2 k1) w_N^(r2 k1) for n2 = r1 R2 + r2 (two small tables)
    ar, ai = tl.load(o1r + i_k * R1 + o_1)[:, None], tl.load(o1i + i_k * R1 + o_1)[:, None]
    br, bi = tl.load(o2r + i_k * R2 + o_2)[None, :], tl.load(o2i + i_k * R2 + o_2)[None, :]
    cr, ci = ar * br - ai * bi, -(ar * bi + ai * br)  # conj(w_N^(n2 k1))
    scale = tl.where((i_k > 0) & (i_k < N1 // 2), 2.0, 1.0) * (g_y / N)
    b_wr = (b_yr * cr - b_yi * ci) * scale
    b_wi = (b_yr * ci + b_yi * cr) * scale
    w_row = i_bc.to(tl.int64) * H1 + i_k
    _store_parts(wr, wi, w_s, w_row * N2 + o_row, w_row * R1 + o_1, b_wr, b_wi)


@triton.jit
def _twiddle(ohr, ohi, olr, oli, o_m, i_n, o_j, NB: tl.constexpr, BN: tl.constexpr):
    """``w_N^(k1 (i_n BN + j))`` for the rows ``k1 = o_m`` and ``j = o_j``: ``[len(o_m), BN]``, the
    product of ``hi[k1, i_n] = w_N^(k1 i_n BN)`` (``[H1, NB]``) and ``lo[k1, j] = w_N^(k1 j)``
    (``[H1, BN]``)."""
    ar, ai = tl.load(ohr + o_m * NB + i_n)[:, None], tl.load(ohi + o_m * NB + i_n)[:, None]
    o_l = o_m[:, None] * BN + o_j[None, :]
    br, bi = tl.load(olr + o_l), tl.load(oli + o_l)
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _program(MB: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """A column-kernel program's ``(i_mb, i_n, i_bc)`` from a 1-D grid whose fastest index is the block
    of output rows: the programs that read the same input columns run side by side (L2 reuse)."""
    NMB: tl.constexpr = N1 // 2 // BM // MB
    NB: tl.constexpr = N2 // BN
    pid = tl.program_id(0)
    return pid % NMB, (pid // NMB) % NB, pid // (NMB * NB)


@triton.jit
def long_conv_dft_cols_kernel(
    x,
    x2,
    bias,
    z,
    zs,
    tab_f,
    tab_t,
    z_plane,
    T,
    s_b,
    s_c,
    s_t,
    T2,
    s2_c,
    NS1,
    C: tl.constexpr,
    N1: tl.constexpr,
    N2: tl.constexpr,
    BN: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    MB: tl.constexpr,
    UNIT_T: tl.constexpr,
    PREC: tl.constexpr,
    HAS_BIAS: tl.constexpr = False,
):
    # program: MB blocks of BM output rows k1, for BN columns n2, of one real signal: x[b, c] of T
    # samples for the first NS1 = B C rows of z, then x2[c] of T2 samples (strides s2_c and s_t):
    # Z[k1, n2] = w_N^(n2 k1) sum_{n1 < N1 / 2} F_N1[k1, n1] x[n1 N2 + n2], k1 < N1 / 2
    # (rows n1 >= N1 / 2 are the zero padding; F_N1 is read as its [N1 / 2, N1 / 2] corner); the
    # programs of the first row block also write the Nyquist row k1 = N1 / 2; fp16: one scale per row
    # and block of BN columns (_store_parts). HAS_BIAS: x2[c] gets bias[c] at t = 0 (a lag-0 tap):
    # its column pass adds bias[c] to every row k1 at n2 = 0 (F_N1[k1, 0] = 1, w^0 = 1)
    i_mb, i_n, i_bc = _program(MB, N1, N2, BM, BN)
    i_b, i_c = i_bc // C, i_bc % C
    K: tl.constexpr = N1 // 2
    NB: tl.constexpr = N2 // BN
    zr, zi = z, z + z_plane  # real plane [rows, K + 1, N2], the imaginary one z_plane elements after
    # tab_f: the corner of F_N1, re then im; tab_t: the outer twiddle's factors [H1, NB] re, im and
    # [H1, BN] re, im
    fr, fi = tab_f, tab_f + K * K
    ohr, ohi = tab_t, tab_t + (K + 1) * NB
    olr, oli = tab_t + 2 * (K + 1) * NB, tab_t + 2 * (K + 1) * NB + (K + 1) * BN
    o_j = tl.arange(0, BN)
    first = i_bc < NS1
    p_x = tl.where(
        first, x + i_b.to(tl.int64) * s_b + i_c.to(tl.int64) * s_c, x2 + (i_bc - NS1).to(tl.int64) * s2_c
    )
    n_t = tl.where(first, T, T2)
    row0 = i_bc.to(tl.int64) * (K + 1) * N2
    o_n = i_n * BN + o_j
    b_nyq = tl.zeros([BN], dtype=tl.float32)
    b_tap0 = tl.zeros([BN], dtype=tl.float32)
    if HAS_BIAS:
        b_d = tl.load(bias + tl.where(first, 0, i_bc - NS1)).to(tl.float32)
        b_tap0 = tl.where((o_n == 0) & (not first), b_d, 0.0)
    for i_mm in range(MB):
        i_m = i_mb * MB + i_mm
        o_m = i_m * BM + tl.arange(0, BM)
        b_zr = tl.zeros([BM, BN], dtype=tl.float32)
        b_zi = tl.zeros([BM, BN], dtype=tl.float32)
        for i_k in range(K // BK):
            o_k = i_k * BK + tl.arange(0, BK)
            o_t = o_k[:, None] * N2 + o_n[None, :]
            if UNIT_T:
                b_x = tl.load(p_x + o_t, mask=o_t < n_t, other=0.0).to(tl.float32)  # [BK, BN]
            else:
                b_x = tl.load(p_x + o_t.to(tl.int64) * s_t, mask=o_t < n_t, other=0.0).to(tl.float32)
            if i_m == 0:  # Nyquist row k1 = N1 / 2: sum_n1 (-1)^n1 x, exact in float32
                b_nyq += tl.sum(b_x * (1.0 - 2.0 * (o_k % 2).to(tl.float32))[:, None], axis=0)
            b_zr = _table_dot(_load_mat(fr, o_m, o_k, K), b_x, b_zr, PREC)
            b_zi = _table_dot(_load_mat(fi, o_m, o_k, K), b_x, b_zi, PREC)
        b_zr += b_tap0[None, :]
        # w_N^(k1 n2) = w_N^(k1 i_n BN) w_N^(k1 j) for n2 = i_n BN + j (two small tables)
        cr, ci = _twiddle(ohr, ohi, olr, oli, o_m, i_n, o_j, NB, BN)
        o_w = row0 + o_m[:, None] * N2 + o_n[None, :]
        o_s = (i_bc.to(tl.int64) * (K + 1) + o_m) * NB + i_n
        _store_parts(zr, zi, zs, o_w, o_s, b_zr * cr - b_zi * ci, b_zr * ci + b_zi * cr)
    if i_mb == 0:
        b_nyq += b_tap0
        o_m = K + tl.arange(0, 1)
        cr, ci = _twiddle(ohr, ohi, olr, oli, o_m, i_n, o_j, NB, BN)
        o_w = row0 + o_m[:, None] * N2 + o_n[None, :]
        o_s = (i_bc.to(tl.int64) * (K + 1) + o_m) * NB + i_n
        _store_parts(zr, zi, zs, o_w, o_s, b_nyq[None, :] * cr, b_nyq[None, :] * ci)


@triton.jit
def long_conv_dft_icols_kernel(
    w,
    ws,
    y,
    y2,
    tab_f,
    w_plane,
    T,
    s_b,
    s_c,
    s_t,
    T2,
    s2_c,
    NS1,
    C: tl.constexpr,
    N1: tl.constexpr,
    N2: tl.constexpr,
    BN: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    MB: tl.constexpr,
    GW: tl.constexpr,
    UNIT_T: tl.constexpr,
    PREC: tl.constexpr,
):
    # program: MB blocks of BM outputs n1 < N1 / 2 (t < T), for BN columns n2, of output row (b, c)
    # of y for the first NS1 = B C rows of W, then of row c of y2 (T2 samples, strides s2_c and s_t):
    # y[n1, n2] = Re sum_k1 W[k1, n2] w_N1^(-n1 k1)
    #                       = (Re F W_re + Im F W_im)[n1, n2] + (-1)^n1 Re W[N1 / 2, n2]   (F: F_N1's corner)
    # fp16: W comes with one scale per row and GW columns (_store_parts)
    i_mb, i_n, i_bc = _program(MB, N1, N2, BM, BN)
    i_b, i_c = i_bc // C, i_bc % C
    K: tl.constexpr = N1 // 2
    NG: tl.constexpr = N2 // GW
    wr, wi = w, w + w_plane  # real plane [rows, K + 1, N2], the imaginary one w_plane elements after
    fr, fi = tab_f, tab_f + K * K  # the corner of F_N1, re then im
    row0 = i_bc.to(tl.int64) * (K + 1)
    first = i_bc < NS1
    p_y = tl.where(
        first, y + i_b.to(tl.int64) * s_b + i_c.to(tl.int64) * s_c, y2 + (i_bc - NS1).to(tl.int64) * s2_c
    )
    n_t = tl.where(first, T, T2)
    o_n = i_n * BN + tl.arange(0, BN)
    if GW >= BN:  # one scale group per row of the block
        o_g = i_n * BN // GW
    else:
        o_g = (o_n // GW)[None, :]
    o_nyq = (row0 + K + tl.arange(0, 1))[:, None]
    b_nyq, _, _ = _load_parts(wr, wi, ws, o_nyq * N2 + o_n[None, :], o_nyq * NG + o_g)  # [1, BN]
    for i_mm in range(MB):
        o_m = (i_mb * MB + i_mm) * BM + tl.arange(0, BM)
        b_y = tl.zeros([BM, BN], dtype=tl.float32)
        for i_k in range(K // BK):
            o_k = (row0 + i_k * BK + tl.arange(0, BK))[:, None]
            f_k = i_k * BK + tl.arange(0, BK)
            b_wr, b_wi, s = _load_parts(wr, wi, ws, o_k * N2 + o_n[None, :], o_k * NG + o_g)
            if wr.dtype.element_ty == tl.float16:  # one power of two bounds both parts: (F W) s
                xr, xi = _operands(b_wr, b_wi, s, PREC)
                c = tl.dot(_load_mat(fr, o_m, f_k, K), xr, out_dtype=tl.float32)
                b_y += tl.dot(_load_mat(fi, o_m, f_k, K), xi, c, out_dtype=tl.float32) * s
            else:
                b_y = _table_dot(_load_mat(fr, o_m, f_k, K), b_wr, b_y, PREC)
                b_y = _table_dot(_load_mat(fi, o_m, f_k, K), b_wi, b_y, PREC)
        b_y += (1.0 - 2.0 * (o_m % 2).to(tl.float32))[:, None] * b_nyq
        o_t = o_m[:, None] * N2 + o_n[None, :]
        if UNIT_T:
            tl.store(p_y + o_t, b_y.to(y.dtype.element_ty), mask=o_t < n_t)
        else:
            tl.store(p_y + o_t.to(tl.int64) * s_t, b_y.to(y.dtype.element_ty), mask=o_t < n_t)


def fft_plan(T: int, min_factor: int = 16) -> tuple[int, int, int]:
    """``(N1, R1, R2)``: the FFT size ``N = N1 R1 R2 = 2 T'`` (``T'`` the least power of two ``>= T``
    that gives ``N1 / 2, R1, R2 >= min_factor``), columns ``N1``, rows ``N2 = R1 R2``.

    Rows are 512 points (``16 x 32``: the row kernel's best size per point on the H200) while the
    columns stay at most 512 (the column kernels' matmuls have ``N1 / 2`` terms); beyond ``T = 128k``
    the rows grow, up to 4096 points (then ``N1`` grows). ``tl.dot`` on a GPU needs
    ``min_factor = 16`` (then ``T' >= 4096``)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if min_factor < 2 or min_factor & (min_factor - 1):
        raise ValueError(f"min_factor must be a power of two >= 2, got {min_factor}")
    f = (min_factor - 1).bit_length()
    n = max((2 * T - 1).bit_length(), 3 * f + 1)
    n2 = min(MAX_ROW_LOG2, max(9, n - 9), n - f - 1)
    return 1 << (n - n2), 1 << (n2 // 2), 1 << (n2 - n2 // 2)


_TABLES: dict[tuple, tuple[Tensor, ...]] = {}


def _tf32(t: Tensor) -> Tensor:
    """``t`` (float32) rounded to the nearest tf32 (10-bit mantissa, ties to even), in float32."""
    b = t.contiguous().view(torch.int32)
    b = (b + 0xFFF + ((b >> 13) & 1)) & ~0x1FFF
    return b.view(torch.float32)


def _operand(t: Tensor, precision: str) -> Tensor:
    """A float32 DFT table (entries in ``[-1, 1]``) in the ``tl.dot`` operand format of ``precision``:
    float16 for ``"fp16"``, float32 rounded to tf32 for ``"tf32"``, else float32 as it is."""
    if precision == "fp16":
        return t.half()
    return _tf32(t) if precision == "tf32" else t


def _dft_tables(
    rows: int, cols: int, mod: int, device: torch.device, precision: str | None = None, step: int = 1
) -> tuple[Tensor, Tensor]:
    """``exp(-2 pi i j k step / mod)`` for ``j < rows``, ``k < cols``: real and imaginary parts, computed
    in float64 (exponents reduced mod ``mod``), then float32, or the operand format of ``precision``."""
    key = (rows, cols, mod, device, precision, step)
    if key not in _TABLES:
        j, k = torch.arange(rows, dtype=torch.int64), torch.arange(cols, dtype=torch.int64) * step
        jk = torch.outer(j, k) % mod
        w = torch.exp(-2j * math.pi * jk.to(torch.float64) / mod)
        parts = (w.real.to(device=device, dtype=torch.float32), w.imag.to(device=device, dtype=torch.float32))
        if precision is not None:
            parts = tuple(_operand(t, precision) for t in parts)
        _TABLES[key] = tuple(t.contiguous() for t in parts)
    return _TABLES[key]


class _Plan:
    def __init__(self, T: int, device: torch.device, precision: str, min_factor: int | None):
        if min_factor is None:
            min_factor = 16 if device.type == "cuda" else 2
        self.N1, self.R1, self.R2 = fft_plan(T, min_factor)
        self.N2 = self.R1 * self.R2
        self.H1 = self.N1 // 2 + 1
        K = self.N1 // 2
        cols = min(64, self.N2)  # columns per program of the column kernels
        # the column kernels' launches: output rows and sum terms per matmul, columns per program, warps,
        # pipelining stages
        # (the fastest of a sweep at T = 64k and 1M on the H200, BENCHMARKS.md)
        half = precision == "fp16"
        # forward: one block of output rows per program, two pipelining stages up to 128 sum terms
        # (one at 256: 1.09x at T = 1M, the same time at 64k); inverse: all of them
        stages = 2 if K <= 128 else 1
        bk = min(128 if half else 64, K)
        fwd = dict(BM=min(64, K), BK=bk, MB=1, BN=cols, num_warps=4, num_stages=stages)
        # fp16 (float16 planes): two pipelining stages at 256 sum terms (1.09x at T = 1M)
        bk = 128 if half else (64 if K > 128 else 32)
        stages = 2 if half and K > 128 else 1
        self.inv = dict(BM=min(128, K), BK=min(bk, K), MB=1, BN=cols, num_warps=8, num_stages=stages)
        self.inv["MB"] = K // self.inv["BM"]
        # the tables, each kernel's packed into one tensor per format (fewer launch arguments; the
        # kernels take them apart at constant offsets). Columns: the [N1 / 2, N1 / 2] corner of F_N1;
        # rows: F_R1, F_R2 and the twiddle w_N2^(r1 k_r2)
        self.device = device
        self.corner = _packed(_dft_tables(K, K, self.N1, device, precision))
        self.row_dfts = _packed(
            _dft_tables(self.R1, self.R1, self.R1, device, precision)
            + _dft_tables(self.R2, self.R2, self.R2, device, precision)
        )
        # the outer twiddle w_N^(k1 n2) of the kept rows k1 = 0 .. N1 / 2, as products of two tables:
        # n2 = i BN + j for the column kernel, n2 = r1 R2 + r2 for the row kernel
        N = self.N1 * self.N2
        self.set_forward(fwd)
        self.row_twiddles = _packed(
            tuple(t / (2 * max(self.R1, self.R2)) for t in _dft_tables(self.R1, self.R2, self.N2, device))
            + _dft_tables(self.H1, self.R1, N, device, step=self.R2)
            + _dft_tables(self.H1, self.R2, N, device)
        )
        self.no_scales = torch.ones(1, device=device)  # the scales' placeholder of float32 planes
        self.precision = precision
        self.row_launch = dict(num_warps=2 if self.N2 <= 512 else 4)

    def set_forward(self, launch: dict) -> None:
        """Launch the forward column kernel with ``launch`` (its outer twiddle tables follow the
        columns per program, ``BN``)."""
        self.fwd = dict(launch)
        bn, N = launch["BN"], self.N1 * self.N2
        self.outer_cols = _packed(
            _dft_tables(self.H1, self.N2 // bn, N, self.device, step=bn)
            + _dft_tables(self.H1, bn, N, self.device)
        )

    def _programs(self, launch: dict, signals: int) -> int:
        """Programs of a column kernel: blocks of ``MB BM`` output rows x blocks of ``BN`` columns x
        signals."""
        return (self.N1 // 2) // (launch["BM"] * launch["MB"]) * (self.N2 // launch["BN"]) * signals

    def _empty(self, rows: int, groups: int, device: torch.device, half: bool | None = None) -> Spectrum:
        """Uninitialised ``[2, rows, H1, N2]`` planes with ``groups`` scales per row (float16 planes by
        default for ``fp16``)."""
        half = self.precision == "fp16" if half is None else half
        planes = torch.empty(
            2, rows, self.H1, self.N2, device=device, dtype=torch.float16 if half else torch.float32
        )
        return Spectrum(planes, torch.empty(rows, self.H1, groups, device=device) if half else self.no_scales)

    def spectrum(
        self,
        x: Tensor,
        B: int,
        C: int,
        T: int,
        strides: tuple[int, int, int],
        half: bool | None = None,
        filters: tuple[Tensor, int] | None = None,
        bias: Tensor | None = None,
    ):
        """Half spectrum (column pass) of ``B C`` real signals ``x[b, c, t]`` (``t < T``, zero after):
        ``[2, B C, N1 / 2 + 1, N2]`` (real, imaginary planes; :class:`Spectrum`, float16 planes by
        default for ``fp16``). ``filters=(h, L)``: also the ``C`` signals ``h[c, :L]`` (``x``'s dtype and
        stride in time), in the same launch and one allocation; returns both spectra. ``bias: [C]``
        (with ``filters``): the filters' spectra are those of ``h`` with ``bias`` added to lag 0, in
        float32 before the spectra are rounded."""
        n = B * C
        z = self._empty(n + (C if filters else 0), self.N2 // self.fwd["BN"], x.device, half)
        h, L = filters or (x, T)
        _COLS[(self._programs(self.fwd, z.planes.shape[1]),)](
            x, h, bias, z.planes, z.scales, self.corner, self.outer_cols, z.planes.stride(0), T, *strides,
            L, h.stride(0), n, C=C, N1=self.N1, N2=self.N2, UNIT_T=strides[2] == 1, PREC=self.precision,
            HAS_BIAS=bias is not None and filters is not None, **self.fwd,
        )  # fmt: skip
        if not filters:
            return z
        return z.rows(0, n), z.rows(n, n + C)

    def product(
        self, a: Spectrum, b: Spectrum, rows: int, C: int, a_strides, b_strides, nsum: int, conj: bool
    ):
        """``sum_s IDFT_rows(DFT_rows(a) [conj] DFT_rows(b))`` on the kept rows: ``[2, rows, H1, N2]``
        (:class:`Spectrum`, ``fp16``: one scale per row and ``R2`` columns)."""
        if self.precision == "fp16" and {a.planes.dtype, b.planes.dtype} != {torch.float16}:
            raise ValueError("fp16 products take float16 planes (Spectrum with scales)")
        gz = a.group(self.N2)
        if b.group(self.N2) != gz:
            raise ValueError(f"spectra with scale groups of {gz} and {b.group(self.N2)} columns")
        w = self._empty(rows, self.R1, a.planes.device)
        _ROWS[(self.H1 * rows,)](
            a.planes, a.scales, b.planes, b.scales, w.planes, w.scales, self.row_dfts, self.row_twiddles,
            a.planes.stride(0), b.planes.stride(0), w.planes.stride(0), *a_strides, *b_strides, C=C,
            NSUM=nsum, N1=self.N1, R1=self.R1, R2=self.R2, GZ=gz, CONJ=conj, PREC=self.precision,
            **self.row_launch,
        )  # fmt: skip
        return w

    def inverse(
        self,
        w: Spectrum,
        y: Tensor,
        C: int,
        T: int,
        strides: tuple[int, int, int],
        filters: tuple[Tensor, int] | None = None,
    ) -> None:
        """Write the real signals ``y[b, c, t]``, ``t < T``, from the row-pass output ``w``; with
        ``filters=(g, L)`` (``y``'s dtype and stride in time) the rows of ``w`` after ``y``'s ``B C``
        write ``g[c, :L]``, in the same launch."""
        g, L = filters or (y, T)
        rows = w.planes.shape[1]
        _ICOLS[(self._programs(self.inv, rows),)](
            w.planes, w.scales, y, g, self.corner, w.planes.stride(0), T, *strides, L, g.stride(0),
            rows - (C if filters else 0), C=C, N1=self.N1, N2=self.N2, GW=w.group(self.N2),
            UNIT_T=strides[2] == 1, PREC=self.precision, **self.inv,
        )  # fmt: skip

    def dense(self, z: Spectrum) -> Tensor:
        """The planes of ``z`` in float32, scales applied."""
        if z.planes.dtype != torch.float16:
            return z.planes
        return z.planes.float() * z.scales.repeat_interleave(z.group(self.N2), -1)

    def stored(self, z: Tensor, group: int) -> Spectrum:
        """Float32 planes ``z`` as the kernels store them (``fp16``: each row's groups of ``group``
        columns divided by a power of two bounding them, in float16)."""
        if self.precision != "fp16":
            return Spectrum(z.contiguous(), self.no_scales)
        g = z.unflatten(-1, (-1, group))
        s = torch.exp2(torch.ceil(torch.log2(g.abs().amax(dim=(0, -1)).clamp_min(1e-30))))
        return Spectrum((g / s[None, ..., None]).half().flatten(-2), s)


def _packed(tables: tuple[Tensor, ...]) -> Tensor:
    """``tables`` (one dtype) flattened into one tensor, in order."""
    return torch.cat([t.reshape(-1) for t in tables])


class Spectrum(NamedTuple):
    """Complex planes ``[2, rows, H1, N2]`` (contiguous) between the kernels: float32, or for ``fp16``
    float16 with ``scales[row, k1, g]``, a power of two per row and group of columns (``planes *
    scales`` is the value; float32 planes carry a placeholder)."""

    planes: Tensor
    scales: Tensor

    def rows(self, start: int, stop: int) -> Spectrum:
        """Rows ``start .. stop - 1`` (views)."""
        scales = self.scales[start:stop] if self.scales.dim() == 3 else self.scales
        return Spectrum(self.planes[:, start:stop], scales)

    def group(self, n2: int) -> int:
        """Columns per scale (``n2`` for a placeholder)."""
        return n2 // self.scales.shape[-1] if self.scales.dim() == 3 else n2


# the kernels' launches: compiled once per specialization, then launched without Triton's binder
_COLS = FastLaunch(long_conv_dft_cols_kernel)
_ROWS = FastLaunch(long_conv_fft_rows_kernel)
_ICOLS = FastLaunch(long_conv_dft_icols_kernel)
_PLANS: dict[tuple, _Plan] = {}


def _plan(T: int, device: torch.device, precision: str, min_factor: int | None) -> _Plan:
    """The (cached) plan of length ``T`` on ``device``."""
    key = (T, device, precision, min_factor)
    if key not in _PLANS:
        _PLANS[key] = _Plan(T, device, precision, min_factor)
    return _PLANS[key]


def _time_contiguous(x: Tensor) -> Tensor:
    """``x: [B, T, C]`` with unit stride in ``T`` (a view of channels-first storage): ``x`` itself when
    it has that already, else a copy. The column kernels read and write 64-long runs in ``t``; on a
    token-major ``[B, T, C]`` tensor every element would cost a 32-byte sector of its own."""
    return channels_first(x, kernel=True)


def _like(y: Tensor, x: Tensor) -> Tensor:
    """``y`` (channels-first) in the memory layout of ``x`` (a copy when they differ; both
    ``[B, T, C]``)."""
    if y.stride() == x.stride():
        return y
    if x.is_contiguous():
        return channels_last(y, kernel=True)
    return torch.empty_like(x, dtype=y.dtype).copy_(y)


def _btc_strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(2), t.stride(1)


def _filter_strides(h: Tensor) -> tuple[int, int, int]:
    return 0, h.stride(0), h.stride(1)


def _reversed_spectrum(z: Tensor) -> Tensor:
    """The column pass of ``x[-n mod N]`` from the column pass ``z`` of a real ``x``.

    With ``n = n1 N2 + n2`` and ``k = k1 + N1 k2`` the column pass is ``Z[k1, n2] = (1 / N2)
    sum_k2 X[k] w_N2^(-n2 k2)``; reversing a real signal conjugates its DFT, so
    ``Z'[k1, n2] = conj(Z[k1, -n2 mod N2])`` on the same kept rows ``k1``."""
    idx = (-torch.arange(z.shape[-1], device=z.device)) % z.shape[-1]
    z = z[..., idx]
    return torch.stack((z[0], -z[1]))


class TritonLongConvFunction(torch.autograd.Function):
    """``y = h * u`` (causal, ``h: [C, L]``) or, with ``h: [2, C, L]``, the two-sided convolution with
    lags ``-L .. L - 1`` as one circular convolution of size ``N``: the reverse taps sit at
    ``N - 1 .. N - L``, and their spectrum is that of ``r = [0, h_rev]`` reversed
    (:func:`_reversed_spectrum`), so both halves cost one product and one inverse transform."""

    @staticmethod
    def forward(
        ctx, u: Tensor, h: Tensor, bias: Tensor | None, precision: str, min_factor: int | None
    ) -> Tensor:
        B, T, C = u.shape
        L = h.shape[-1]
        bidirectional = h.dim() == 3
        plan = _plan(T, u.device, precision, min_factor)
        u_in, u = u, _time_contiguous(u)
        stacked = False
        ctx.h_dtype, ctx.bias_dtype = h.dtype, None if bias is None else bias.dtype
        if not bidirectional:
            h = _lag_contiguous(h)
        # bias * u is a lag-0 tap. With u and h transformed in one launch, the column kernel adds it to
        # the filter's column pass; otherwise it is folded into a float32 copy of the filter
        in_kernel = not bidirectional and h.dtype == u.dtype and u.stride(1) == h.stride(1)
        if bias is not None and not in_kernel:
            h = h.float().clone() if h.dtype == torch.float32 else h.float()
            (h[:, 0] if not bidirectional else h[0, :, 0]).add_(bias.float())
        if bidirectional:
            z_u = plan.spectrum(
                u, B, C, T, _btc_strides(u)
            )  # [2, B C, H1, N2]  # both halves' column passes in float32, their sum rounded once
            z_h = _filter_spectrum(plan, h[0], C, L, half=False)  # [2, C, H1, N2]
            # r[m] = h_rev[m - 1] (lag -m); lags beyond -(T - 1) reach no output
            r = torch.nn.functional.pad(h[1], (1, 0))[:, :T]
            z_r = _filter_spectrum(plan, r, C, r.shape[-1], half=False).planes
            z_h = plan.stored(z_h.planes + _reversed_spectrum(z_r), plan.fwd["BN"])
        else:
            if in_kernel:  # both column passes in one launch
                z_u, z_h = plan.spectrum(u, B, C, T, _btc_strides(u), filters=(h, L), bias=bias)
                stacked = True  # z_h's rows follow z_u's in one tensor
            else:
                z_u = plan.spectrum(u, B, C, T, _btc_strides(u))
                z_h = _filter_spectrum(plan, h, C, L)  # [2, C, H1, N2]
        w = plan.product(z_u, z_h, B * C, C, (C, 1, 0), (0, 1, 0), 1, False)
        y = torch.empty_like(u)  # unit stride in t, as the kernels write best
        plan.inverse(w, y, C, T, _btc_strides(y))
        ctx.save_for_backward(*z_u, *z_h)
        ctx.plan, ctx.shape, ctx.L, ctx.dtypes = plan, (B, T, C), L, (u.dtype, h.dtype)
        ctx.bidirectional = bidirectional
        ctx.stacked = stacked
        return _like(y, u_in)

    @staticmethod
    def _filter_grads(ctx, dh: Tensor | None) -> tuple:
        """The gradients after ``du``: ``dh`` in the filter's dtype, the bias's (``dh``'s lag 0), and
        none for the settings."""
        if dh is None:
            return None, None, None, None
        dbias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = (dh[:, 0] if dh.dim() == 2 else dh[0, :, 0]).to(ctx.bias_dtype)
        return (dh.to(ctx.h_dtype) if ctx.needs_input_grad[1] else None), dbias, None, None

    @staticmethod
    def backward(ctx, dy: Tensor):
        saved = ctx.saved_tensors
        z_u, z_h = Spectrum(*saved[:2]), Spectrum(*saved[2:])
        plan, (B, T, C), L = ctx.plan, ctx.shape, ctx.L
        dy_in, dy = dy, _time_contiguous(dy)
        z_dy = plan.spectrum(dy, B, C, T, _btc_strides(dy))
        du = dh = None
        need_dh = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]  # the bias's is dh's lag 0
        if ctx.stacked and B == 1 and ctx.needs_input_grad[0] and need_dh:
            # both products in one launch, rows c (du: DY conj(H)) then C + c (dh: DY conj(U)): the rows
            # of z_h, then C rows before them (z_u's); both inverses in one launch
            w = plan.product(z_dy, z_h, 2 * C, C, (0, 1, 0), (-C, 1, 0), 1, True)
            du = torch.empty_like(dy, dtype=ctx.dtypes[0])
            dh = torch.empty(C, L, device=dy.device, dtype=ctx.dtypes[1])
            plan.inverse(w, du, C, T, _btc_strides(du), filters=(dh, L))
            return (_like(du, dy_in), *TritonLongConvFunction._filter_grads(ctx, dh))
        if ctx.needs_input_grad[0]:
            # du = corr(dy, h): IDFT(DY conj(H))
            w = plan.product(z_dy, z_h, B * C, C, (C, 1, 0), (0, 1, 0), 1, True)
            du = torch.empty_like(dy, dtype=ctx.dtypes[0])
            plan.inverse(w, du, C, T, _btc_strides(du))
            du = _like(du, dy_in)
        if need_dh:
            # dh[j] = sum_b sum_t dy[t] u[t - j] = IDFT(sum_b DY_b conj(U_b))[j], the first L lags
            w = plan.product(z_dy, z_u, C, C, (0, 1, C), (0, 1, C), B, True)
            dh = torch.empty(C, L, device=dy.device, dtype=ctx.dtypes[1])
            plan.inverse(w, dh, C, L, _filter_strides(dh))
            if ctx.bidirectional:
                # dh_rev[m - 1] = sum_b sum_t dy[t] u[t + m] = IDFT(sum_b U_b conj(DY_b))[m], m <= T - 1
                w = plan.product(z_u, z_dy, C, C, (0, 1, C), (0, 1, C), B, True)
                n = min(L + 1, T)
                lags = torch.empty(C, n, device=dy.device, dtype=ctx.dtypes[1])
                plan.inverse(w, lags, C, n, _filter_strides(lags))
                dh_rev = torch.nn.functional.pad(lags[:, 1:], (0, L + 1 - n))
                dh = torch.stack((dh, dh_rev))
        return (du, *TritonLongConvFunction._filter_grads(ctx, dh))


def _lag_contiguous(h: Tensor) -> Tensor:
    """Filters ``h: [C, L]`` with unit stride in the lag (a copy if needed)."""
    return _time_contiguous(h.t()[None])[0].t()


def _filter_spectrum(plan: _Plan, h: Tensor, C: int, L: int, half: bool | None = None) -> Spectrum:
    """The column pass of the filters ``h: [C, L]`` (copied to unit stride in the lag first)."""
    h = _lag_contiguous(h)
    return plan.spectrum(h, 1, C, L, _filter_strides(h), half)


def triton_long_conv(
    u: Tensor,
    h: Tensor,
    bias: Tensor | None = None,
    *,
    causal: bool = True,
    precision: str = "tf32x3",
    min_factor: int | None = None,
) -> Tensor:
    """Long convolution by Triton FFTs (matmul DFTs); same semantics as
    :func:`~subq.ops.long_conv.naive.naive_long_conv`, for float32, float16 and bfloat16 inputs.

    The FFT size is ``2 T'`` with ``T'`` the least power of two ``>= T`` (at least 4096 on a GPU, where
    every DFT factor must be at least 16): other lengths are zero-padded and the outputs sliced, which
    is exact. The transforms compute in float32 with ``tl.dot`` at ``precision``; outputs are stored in
    the dtype of ``u``. The bidirectional form is one circular convolution of size ``N`` whose filter
    holds the reverse taps at its end, at the cost of the causal one. Not bitwise causal (as
    :func:`fft_long_conv`).

    Args:
        u: `[B, T, C]`, CUDA (or CPU under ``TRITON_INTERPRET=1``), any strides. Fastest as the view
            of channels-first ``[B, C, T]`` storage; other layouts are copied to it for the kernels
            (and ``y`` back to ``u``'s layout).
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
    check_long_conv(u, h, bias, causal)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if u.dtype == torch.float64:
        raise TypeError("triton_long_conv computes in float32; got float64 inputs (use mode='fft')")
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"triton_long_conv needs CUDA tensors (or TRITON_INTERPRET=1), got {u.device}")
    return TritonLongConvFunction.apply(u, h, bias, precision, min_factor)
