"""Triton chunked SSD, forward and backward: the GPU training path.

The kernels read ``x``, ``dt`` and ``A`` and form the discretised inputs ``xbar = dt x`` (rounded to the
dtype of ``x`` for the matmuls) and the per-step log decays ``a = dt A`` in registers, chunk by chunk;
the backward kernel returns ``dxbar`` and ``da``, from which PyTorch makes ``dx``, ``ddt`` and ``dA``
(``D`` is added around the kernels). ``x``, ``B`` and ``C`` are read in place with any batch and time
strides (slices of a projection), with unit-stride last dimensions. A reverse scan (``REVERSE``)
walks the tokens from the last; with ``DIRS = 2`` one launch runs the forward scan of every batch row
and the reverse scan of the same inputs (Hydra), the reverse direction's ``dt`` heads after the
forward ones and its ``B``, ``C`` ``s_dir`` elements further on. ``README.md`` has the math.

- ``ssd_fwd_kernel``: one program per (block of ``P``, batch x head) walks the chunks and keeps the
  state ``h [P, N]`` in registers (float32): across chunks one read and one update of the state, and
  with ``STORE_Y`` inside a chunk the masked quadratic form. With ``STORE_STATES`` it writes the state
  before every chunk: for the backward (float32; its first launch recomputes them instead of keeping
  them from the forward) and for the chunk-parallel forward (in the dtype of ``x``).
- ``ssd_chunk_out_kernel``: the chunk-parallel forward's second launch, one program per (block of
  ``P``, batch x head, chunk): the chunk's outputs from the state before it. With the walk carrying
  one matmul a chunk instead of four, the forward's sequential path is a quarter as long.
- ``ssd_dstate_kernel``: one program per (block of ``P``, batch x head) walks the chunks backwards
  carrying only the state gradient ``dh`` (one matmul a chunk) and writes it after every chunk.
- ``ssd_bwd_kernel``: one program per (block of ``P``, batch x head, chunk): with the state before
  the chunk (recomputed by the forward kernel) and the state gradient after it, every chunk's
  gradients are independent: ``dxbar``, and per block of ``P`` partial ``dB``, ``dC`` and ``da``
  (summed by the caller). ``da`` is built from pairs that straddle each position (no difference of
  large sums), so it stays accurate at long ``T``. Before this split one program walked all the
  chunks with the whole chunk's work on the sequential path: at ``B = 4``, 16 heads and ``T = 4096``
  its 128 programs left most of the H200 idle and the backward took 9x the forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.common.checks import check_int32_rows
from subq.ops.ssd.naive import check_ssd_inputs


@triton.jit
def _load_chunk(p_x, p_dt, A_h, p_B, p_C, o_t, m_t, o_p, m_p, o_n, m_n, s_xt, s_bt, s_dt):
    """``xbar = dt x [BT, BP]`` (in the dtype of ``x``), ``x [BT, BP]``, ``dt [BT]``, the inclusive
    cumulative log decay ``dt A`` from the chunk's start ``[BT]``, the chunk's total log decay,
    ``B, C [BT, BN]``; padded rows are zero (no decay, no input)."""
    o_t64 = o_t.to(tl.int64)
    b_x = tl.load(p_x + o_t64[:, None] * s_xt + o_p[None, :], mask=m_t[:, None] & m_p[None, :], other=0.0)
    b_dt = tl.load(p_dt + o_t64 * s_dt, mask=m_t, other=0.0).to(tl.float32)
    b_xbar = (b_x.to(tl.float32) * b_dt[:, None]).to(b_x.dtype)
    b_a = b_dt * A_h
    m_tn = m_t[:, None] & m_n[None, :]
    b_B = tl.load(p_B + o_t64[:, None] * s_bt + o_n[None, :], mask=m_tn, other=0.0)
    b_C = tl.load(p_C + o_t64[:, None] * s_bt + o_n[None, :], mask=m_tn, other=0.0)
    return b_xbar, b_x, b_dt, tl.cumsum(b_a, 0), tl.sum(b_a, 0), b_B, b_C


@triton.jit
def _token(o_t, T, rev):
    """The token in memory at scan step ``o_t``: ``T - 1 - o_t`` for the reverse scan (``rev`` 1)."""
    return o_t + rev * (T - 1 - 2 * o_t)


@triton.jit
def _direction(i_bh, NBI, H: tl.constexpr, DIRS: tl.constexpr, REVERSE: tl.constexpr):
    """``(output batch, input batch, direction, reversed)`` of the program's row of ``DIRS NBI H``
    (batch x head) rows: with two directions, output batches ``NBI ..`` are the reverse scans of the
    same inputs."""
    i_o = i_bh // H
    if DIRS == 2:
        d = i_o // NBI
        return i_o, i_o % NBI, d, d
    if REVERSE:
        return i_o, i_o, 0, 1
    return i_o, i_o, 0, 0


@triton.jit
def _row_pointers(x, dt, A, Bm, Cm, i_bh, T, NBI, s_xb, s_bb, s_dir, H: tl.constexpr, G: tl.constexpr,
                  P: tl.constexpr, N: tl.constexpr, DIRS: tl.constexpr, REVERSE: tl.constexpr):  # fmt: skip
    """Where the program's row of ``DIRS NBI H`` (batch x head) rows reads and writes: ``(reversed,
    first output element / P, x, dt, A of its head, B, C)``. ``x``, ``B``, ``C`` in place (batch and
    time strides; the reverse direction's ``B``, ``C`` ``s_dir`` further on); ``dt [NBI, T, DIRS H]``
    and the outputs ``[DIRS NBI, T, H, ...]`` contiguous."""
    i_o, i_b, i_d, rev = _direction(i_bh, NBI, H, DIRS, REVERSE)
    i_h = i_bh % H
    i_g = i_h // (H // G)
    row0 = i_o.to(tl.int64) * T * H + i_h
    p_x = x + i_b.to(tl.int64) * s_xb + i_h * P
    p_dt = dt + i_b.to(tl.int64) * T * DIRS * H + i_d * H + i_h
    A_h = tl.load(A + i_h).to(tl.float32)
    p_B = Bm + i_b.to(tl.int64) * s_bb + i_d * s_dir + i_g * N
    p_C = Cm + i_b.to(tl.int64) * s_bb + i_d * s_dir + i_g * N
    return rev, row0, p_x, p_dt, A_h, p_B, p_C


@triton.jit
def _chunk_output(b_x, b_acs, b_B, b_C, b_h, DT, PREC: tl.constexpr, BT: tl.constexpr):
    """``y [BT, BP]`` of one chunk: inside it ``(L o C B^T) xbar``, plus the state before it ``h [BP,
    BN]`` decayed to each position."""
    o_i = tl.arange(0, BT)
    b_s = tl.dot(b_C, tl.trans(b_B), input_precision=PREC)  # [BT, BT]
    b_s = tl.where(o_i[:, None] >= o_i[None, :], b_s * tl.exp(b_acs[:, None] - b_acs[None, :]), 0.0)
    b_y = tl.dot(b_s.to(DT), b_x, input_precision=PREC)
    return b_y + tl.exp(b_acs)[:, None] * tl.dot(b_C, tl.trans(b_h).to(DT), input_precision=PREC)


@triton.jit(do_not_specialize=["T"])
def ssd_fwd_kernel(
    x,
    dt,
    A,
    Bm,
    Cm,
    y,
    h0,
    ht,
    hs,
    T,
    NBI,
    s_xb,
    s_xt,
    s_bb,
    s_bt,
    s_dir,
    H: tl.constexpr,
    G: tl.constexpr,
    P: tl.constexpr,
    N: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    DIRS: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_Y: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    STORE_STATES: tl.constexpr,
    REVERSE: tl.constexpr,
    PREC: tl.constexpr,
):
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    rev, row0, p_x, p_dt, A_h, p_B, p_C = _row_pointers(
        x, dt, A, Bm, Cm, i_bh, T, NBI, s_xb, s_bb, s_dir, H, G, P, N, DIRS, REVERSE
    )
    DT = x.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    m_pn = m_p[:, None] & m_n[None, :]
    p_state = o_p[:, None] * N + o_n[None, :]  # [BP, BN] inside one [P, N] state

    if USE_INITIAL_STATE:
        b_h = tl.load(h0 + i_bh.to(tl.int64) * P * N + p_state, mask=m_pn, other=0.0).to(tl.float32)
    else:
        b_h = tl.zeros([BP, BN], dtype=tl.float32)

    NT = tl.cdiv(T, BT)
    for i_t in range(NT):
        o_t = i_t * BT + o_i  # the scan's step; the token in memory is o_m
        m_t = o_t < T
        o_m = _token(o_t, T, rev)
        b_x, _, _, b_acs, b_last, b_B, b_C = _load_chunk(
            p_x, p_dt, A_h, p_B, p_C, o_m, m_t, o_p, m_p, o_n, m_n, s_xt, s_bt, DIRS * H
        )
        if STORE_STATES:
            p_hs = hs + (i_bh.to(tl.int64) * NT + i_t) * P * N + p_state
            tl.store(p_hs, b_h.to(hs.dtype.element_ty), mask=m_pn)
        if STORE_Y:
            b_y = _chunk_output(b_x, b_acs, b_B, b_C, b_h, DT, PREC, BT)
            tl.store(
                y + row0 * P + o_m[:, None].to(tl.int64) * H * P + o_p[None, :],
                b_y.to(DT),
                mask=m_t[:, None] & m_p[None, :],
            )
        # h <- exp(sum a) h + sum_j exp(a_cum[end] - a_cum[j]) xbar_j B_j^T  [BP, BT] @ [BT, BN]
        b_xd = (b_x * tl.exp(b_last - b_acs)[:, None]).to(DT)
        b_h = tl.exp(b_last) * b_h + tl.dot(tl.trans(b_xd), b_B, input_precision=PREC)

    if STORE_FINAL_STATE:
        tl.store(ht + i_bh.to(tl.int64) * P * N + p_state, b_h, mask=m_pn)


@triton.jit(do_not_specialize=["T"])
def ssd_chunk_out_kernel(
    x,
    dt,
    A,
    Bm,
    Cm,
    y,
    hs,
    T,
    NBI,
    s_xb,
    s_xt,
    s_bb,
    s_bt,
    s_dir,
    H: tl.constexpr,
    G: tl.constexpr,
    P: tl.constexpr,
    N: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    DIRS: tl.constexpr,
    REVERSE: tl.constexpr,
    PREC: tl.constexpr,
):
    """The chunk-parallel forward's second launch: one program per (block of ``P``, batch x head,
    chunk) computes the chunk's outputs from the state before it (``hs``, written by the first
    launch, ``ssd_fwd_kernel`` with ``STORE_STATES`` alone)."""
    i_p, i_bh, i_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rev, row0, p_x, p_dt, A_h, p_B, p_C = _row_pointers(
        x, dt, A, Bm, Cm, i_bh, T, NBI, s_xb, s_bb, s_dir, H, G, P, N, DIRS, REVERSE
    )
    DT = x.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_m = _token(o_t, T, rev)
    b_x, _, _, b_acs, _, b_B, b_C = _load_chunk(
        p_x, p_dt, A_h, p_B, p_C, o_m, m_t, o_p, m_p, o_n, m_n, s_xt, s_bt, DIRS * H
    )
    p_hs = hs + (i_bh.to(tl.int64) * tl.cdiv(T, BT) + i_t) * P * N + o_p[:, None] * N + o_n[None, :]
    b_h = tl.load(p_hs, mask=m_p[:, None] & m_n[None, :], other=0.0)
    b_y = _chunk_output(b_x, b_acs, b_B, b_C, b_h, DT, PREC, BT)
    tl.store(
        y + row0 * P + o_m[:, None].to(tl.int64) * H * P + o_p[None, :],
        b_y.to(DT),
        mask=m_t[:, None] & m_p[None, :],
    )


@triton.jit(do_not_specialize=["T"])
def ssd_dstate_kernel(
    dt,
    A,
    Cm,
    dy,
    dht,
    dhs,
    dh0,
    T,
    NBI,
    s_bb,
    s_bt,
    s_dir,
    H: tl.constexpr,
    G: tl.constexpr,
    P: tl.constexpr,
    N: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    DIRS: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    USE_FINAL_STATE_GRAD: tl.constexpr,
    REVERSE: tl.constexpr,
    PREC: tl.constexpr,
):
    """The state gradients' recurrence, walked backwards: ``dhs[c]`` is the gradient of the state
    after chunk ``c`` (``dht`` after the last), and
    ``dh <- exp(sum a) dh + sum_i exp(a_cum[i]) dy_i C_i^T`` carries it to the chunk's start."""
    i_p, i_bh = tl.program_id(0), tl.program_id(1)
    i_o, i_b, i_d, rev = _direction(i_bh, NBI, H, DIRS, REVERSE)
    i_h = i_bh % H
    i_g = i_h // (H // G)
    DT = dy.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    m_pn = m_p[:, None] & m_n[None, :]
    p_dt = dt + i_b.to(tl.int64) * T * DIRS * H + i_d * H + i_h
    A_h = tl.load(A + i_h).to(tl.float32)
    p_dy = dy + (i_o.to(tl.int64) * T * H + i_h) * P
    p_C = Cm + i_b.to(tl.int64) * s_bb + i_d * s_dir + i_g * N
    p_state = o_p[:, None] * N + o_n[None, :]
    if USE_FINAL_STATE_GRAD:
        b_dh = tl.load(dht + i_bh.to(tl.int64) * P * N + p_state, mask=m_pn, other=0.0).to(tl.float32)
    else:
        b_dh = tl.zeros([BP, BN], dtype=tl.float32)
    NT = tl.cdiv(T, BT)
    for i in range(NT):
        i_t = NT - 1 - i
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_m = _token(o_t, T, rev).to(tl.int64)
        tl.store(dhs + (i_bh.to(tl.int64) * NT + i_t) * P * N + p_state, b_dh, mask=m_pn)
        b_a = tl.load(p_dt + o_m * DIRS * H, mask=m_t, other=0.0).to(tl.float32) * A_h
        m_tn, m_tp = m_t[:, None] & m_n[None, :], m_t[:, None] & m_p[None, :]
        b_C = tl.load(p_C + o_m[:, None] * s_bt + o_n[None, :], mask=m_tn, other=0.0)
        b_dy = tl.load(p_dy + o_m[:, None] * H * P + o_p[None, :], mask=m_tp, other=0.0)
        b_dyd = (b_dy * tl.exp(tl.cumsum(b_a, 0))[:, None]).to(DT)
        b_dh = tl.exp(tl.sum(b_a, 0)) * b_dh + tl.dot(tl.trans(b_dyd), b_C, input_precision=PREC)
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_bh.to(tl.int64) * P * N + p_state, b_dh, mask=m_pn)


@triton.jit(do_not_specialize=["T"])
def ssd_bwd_kernel(
    x,
    dt,
    A,
    Bm,
    Cm,
    dy,
    hs,
    dhs,
    dx,
    dB,
    dC,
    ddt,
    dA,
    T,
    NBI,
    s_xb,
    s_xt,
    s_bb,
    s_bt,
    s_dir,
    NB: tl.constexpr,
    H: tl.constexpr,
    G: tl.constexpr,
    P: tl.constexpr,
    N: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    DIRS: tl.constexpr,
    REVERSE: tl.constexpr,
    PREC: tl.constexpr,
):
    i_p, i_bh, i_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rev, row0, p_x, p_dt, A_h, p_B, p_C = _row_pointers(
        x, dt, A, Bm, Cm, i_bh, T, NBI, s_xb, s_bb, s_dir, H, G, P, N, DIRS, REVERSE
    )
    DT = x.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_p = i_p * BP + tl.arange(0, BP)
    o_n = tl.arange(0, BN)
    m_p, m_n = o_p < P, o_n < N
    m_pn = m_p[:, None] & m_n[None, :]
    m_causal = o_i[:, None] >= o_i[None, :]
    p_dy = dy + row0 * P
    p_dx = dx + row0 * P
    # dB, dC, ddt and dA: one float32 partial per block of P, per head (the caller sums blocks and groups)
    p_dB = dB + (i_p.to(tl.int64) * NB * T * H + row0) * N
    p_dC = dC + (i_p.to(tl.int64) * NB * T * H + row0) * N
    p_ddt = ddt + i_p.to(tl.int64) * NB * T * H + row0
    p_dA = dA + i_p.to(tl.int64) * NB * T * H + row0
    p_state = o_p[:, None] * N + o_n[None, :]

    NT = tl.cdiv(T, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    m_tp = m_t[:, None] & m_p[None, :]
    m_tn = m_t[:, None] & m_n[None, :]
    o_m = _token(o_t, T, rev)
    b_x, b_xin, b_dt, b_acs, b_last, b_B, b_C = _load_chunk(
        p_x, p_dt, A_h, p_B, p_C, o_m, m_t, o_p, m_p, o_n, m_n, s_xt, s_bt, DIRS * H
    )
    o_t64 = o_m.to(tl.int64)
    b_dy = tl.load(p_dy + o_t64[:, None] * H * P + o_p[None, :], mask=m_tp, other=0.0)
    p_chunk = (i_bh.to(tl.int64) * NT + i_t) * P * N + p_state
    b_h = tl.load(hs + p_chunk, mask=m_pn, other=0.0)  # the state before the chunk
    b_dh = tl.load(dhs + p_chunk, mask=m_pn, other=0.0)  # the gradient of the state after it
    b_decay = tl.exp(b_acs)  # [BT], from the chunk's start
    b_to_end = tl.exp(b_last - b_acs)  # [BT], to the chunk's end
    # rows i (outputs), columns j (inputs)  [BT, BT]
    b_g = tl.where(m_causal, tl.exp(b_acs[:, None] - b_acs[None, :]), 0.0)
    b_s = tl.dot(b_C, tl.trans(b_B), input_precision=PREC) * b_g  # (L o C B^T)_ij
    b_dyx = tl.dot(b_dy, tl.trans(b_x), input_precision=PREC)  # dy_i . xbar_j
    b_M = b_s * b_dyx  # each (i, j) term's share of d(loss) / d(log decay), for da
    b_dyx = b_dyx * b_g

    b_dhB = tl.dot(b_B, tl.trans(b_dh).to(DT), input_precision=PREC)  # [BT, BP]: dh B_j
    b_dx = tl.dot(tl.trans(b_s).to(DT), b_dy, input_precision=PREC) + b_to_end[:, None] * b_dhB
    b_dB = tl.dot(tl.trans(b_dyx).to(DT), b_C, input_precision=PREC)
    b_dB += b_to_end[:, None] * tl.dot(b_x, b_dh.to(DT), input_precision=PREC)
    b_dyh = tl.dot(b_dy, b_h.to(DT), input_precision=PREC)  # [BT, BN]: h^T dy_i
    b_dC = tl.dot(b_dyx.to(DT), b_B, input_precision=PREC) + b_decay[:, None] * b_dyh

    # da_k: every term whose decay spans step k
    b_Mx = tl.cumsum(b_M, 1) - b_M  # [i, k] = sum_{j < k} M_ij
    b_da = tl.sum(tl.where(m_causal, b_Mx, 0.0), 0)  # sum_{i >= k}
    b_off = b_decay * tl.sum(b_C.to(tl.float32) * b_dyh, 1)  # [BT]: dy_i . y_off_i
    b_da += tl.sum(tl.where(m_causal, b_off[:, None], 0.0), 0)  # sum_{i >= k}
    b_w = b_to_end * tl.sum(b_x.to(tl.float32) * b_dhB, 1)  # [BT]: xbar_j . (exp(..) dh B_j)
    b_da += tl.cumsum(b_w, 0) - b_w  # sum_{j < k}
    b_da += tl.exp(b_last) * tl.sum(b_dh * b_h)  # the state before the chunk decays through all of it

    # through xbar = dt x and a = dt A: dx = dt dxbar, ddt = x . dxbar + A da, dA = sum dt da
    b_ddt = tl.sum(b_xin.to(tl.float32) * b_dx, 1) + A_h * b_da
    tl.store(p_dx + o_t64[:, None] * H * P + o_p[None, :], b_dx * b_dt[:, None], mask=m_tp)
    tl.store(p_dB + o_t64[:, None] * H * N + o_n[None, :], b_dB, mask=m_tn)
    tl.store(p_dC + o_t64[:, None] * H * N + o_n[None, :], b_dC, mask=m_tn)
    tl.store(p_ddt + o_t64 * H, b_ddt, mask=m_t)
    tl.store(p_dA + o_t64 * H, b_da * b_dt, mask=m_t)


def triton_chunk_size_ok(chunk_size) -> bool:
    """The kernels take chunks of a power of two in [16, 128] tokens."""
    return isinstance(chunk_size, int) and 16 <= chunk_size <= 128 and not chunk_size & (chunk_size - 1)


def _launch_config(P: int, N: int, dtype: torch.dtype, rows: int, device: torch.device) -> dict:
    """Chunk ``BT``, block of ``P`` ``BP`` and ``N`` padded to a power of two (the state ``[BP, BN]``
    stays in registers: ``N`` is not blocked), for ``rows`` (directions x batch x heads) scans.

    Half precision: the widest ``BP`` (64, 32, 16) that still launches at least half a program per
    SM, as ``benchmarks/ssd_tune.py`` measured on the H200 (bidirectional, 8 x 24 heads at 4k: 64,
    0.60 ms against 0.77 ms at 32; one sequence at 32k: 16); ``BP = 64`` is pipelined two deep.
    float32 tiles use ``BP <= 32`` and are not software-pipelined: at ``N = 128`` and chunk 64 the
    pipelined fp32 kernels need 246 KB of shared memory, more than the H200's 227 KB."""
    widest = max(16, triton.next_power_of_2(P))
    if dtype == torch.float32:
        BP, stages = min(32, widest), 1
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        BP = next((bp for bp in (64, 32) if bp <= widest and triton.cdiv(P, bp) * rows * 2 >= sms), 16)
        stages = 2 if BP == 64 else 3
    return dict(BT=64, BP=BP, BN=max(16, triton.next_power_of_2(N)), num_warps=4, num_stages=stages)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _in_place(t: Tensor) -> Tensor:
    """``t: [B, T, K, L]`` as the kernels read it: any batch and time strides, ``[K, L]`` contiguous
    within a row (a copy otherwise)."""
    K, L = t.shape[2], t.shape[3]
    return t if t.stride(3) == 1 and t.stride(2) == L or K == 1 and t.stride(3) == 1 else t.contiguous()


def _strides(x: Tensor, B: Tensor) -> tuple[int, int, int, int]:
    return x.stride(0), x.stride(1), B.stride(0), B.stride(1)


# The forward's form: "parallel" (default: the walk carries only the state and stores it before every
# chunk, in the dtype of x, which is the precision the outputs' state term reads it in; then one
# program per chunk computes the outputs) or "walk" (one launch; each program walks its chunks with
# the whole chunk's work on the sequential path). Same outputs bit for bit; on the H200 "parallel" took
# 0.41 ms against 0.50 ms at Hydra's 4k shape (BENCHMARKS.md), for a states buffer the size of y.
FORWARD = "parallel"


def _forward(
    x, dt, A, B, C, h0, store_y: bool, store_final: bool, store_states: bool, chunk_size: int, reverse: bool,
    dirs: int = 1, s_dir: int = 0, form: str | None = None,
):  # fmt: skip
    """The forward kernel over ``dirs`` directions of the inputs ``x [b, T, H, P]``, ``dt [b, T, dirs
    H]`` (contiguous), ``B``, ``C`` (the reverse direction's ``s_dir`` elements further on): ``y``,
    the final and the per-chunk states (float32) with ``dirs b`` leading rows (the reverse scans
    second). ``form``: :data:`FORWARD`'s choices (default: :data:`FORWARD`), for ``y`` without the
    per-chunk states."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    cfg = _launch_config(P, N, x.dtype, dirs * b * H, x.device)
    cfg["BT"] = chunk_size
    NT = triton.cdiv(T, cfg["BT"])
    parallel = (form or FORWARD) == "parallel" and store_y and not store_states
    y = x.new_empty(dirs * b, T, H, P) if store_y else None
    ht = x.new_empty(dirs * b, H, P, N, dtype=torch.float32) if store_final else None
    hs = None
    if store_states or parallel:
        hs = x.new_empty(dirs * b, H, NT, P, N, dtype=x.dtype if parallel else torch.float32)
    grid = (triton.cdiv(P, cfg["BP"]), dirs * b * H)
    kw = dict(H=H, G=G, P=P, N=N, BT=cfg["BT"], BP=cfg["BP"], BN=cfg["BN"], DIRS=dirs, REVERSE=reverse,
              PREC=_precision(x.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])  # fmt: skip
    ssd_fwd_kernel[grid](
        x, dt, A, B, C, None if parallel else y, h0, ht, hs, T, b, *_strides(x, B), s_dir,
        USE_INITIAL_STATE=h0 is not None, STORE_Y=store_y and not parallel, STORE_FINAL_STATE=store_final,
        STORE_STATES=store_states or parallel, **kw,
    )  # fmt: skip
    if parallel:
        ssd_chunk_out_kernel[(*grid, NT)](x, dt, A, B, C, y, hs, T, b, *_strides(x, B), s_dir, **kw)
        hs = None
    return y, ht, hs


def _backward(x, dt, A, B, C, h0, dy, dht, chunk_size: int, reverse: bool, dirs: int = 1, s_dir: int = 0):
    """The backward kernels (after the forward one recomputes the chunk states, the state gradients'
    recurrence, then every chunk at once): ``dx [dirs b, T, H, P]`` float32, ``ddt [dirs b, T, H]``,
    ``dA [H]``, ``dB, dC [dirs b, T, G, N]`` float32, ``dh0``."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    _, _, hs = _forward(x, dt, A, B, C, h0, False, False, True, chunk_size, reverse, dirs, s_dir)
    cfg = _launch_config(P, N, x.dtype, dirs * b * H, x.device)
    NP, nb = triton.cdiv(P, cfg["BP"]), dirs * b
    dy = dy.to(x.dtype).contiguous()
    dx = torch.empty(nb, T, H, P, device=x.device, dtype=torch.float32)
    dB = x.new_empty(NP, nb, T, H, N, dtype=torch.float32)
    dC = x.new_empty(NP, nb, T, H, N, dtype=torch.float32)
    ddt = x.new_empty(NP, nb, T, H, dtype=torch.float32)
    dA = x.new_empty(NP, nb, T, H, dtype=torch.float32)
    dh0 = torch.empty_like(h0) if h0 is not None else None
    dhs = torch.empty_like(hs)  # the gradient of the state after every chunk
    ssd_dstate_kernel[(NP, nb * H)](
        dt, A, C, dy, None if dht is None else dht.float().contiguous(), dhs, dh0, T, b,
        B.stride(0), B.stride(1), s_dir,
        H=H, G=G, P=P, N=N, BT=chunk_size, BP=cfg["BP"], BN=cfg["BN"], DIRS=dirs,
        USE_INITIAL_STATE=h0 is not None, USE_FINAL_STATE_GRAD=dht is not None,
        REVERSE=reverse, PREC=_precision(x.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    # with both states known, the chunks are independent: one program per chunk
    ssd_bwd_kernel[(NP, nb * H, triton.cdiv(T, chunk_size))](
        x, dt, A, B, C, dy, hs, dhs, dx, dB, dC, ddt, dA, T, b, *_strides(x, B), s_dir,
        NB=nb, H=H, G=G, P=P, N=N, BT=chunk_size, BP=cfg["BP"], BN=cfg["BN"], DIRS=dirs,
        REVERSE=reverse, PREC=_precision(x.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    dB = dB.sum(0).reshape(nb, T, G, H // G, N).sum(3)
    dC = dC.sum(0).reshape(nb, T, G, H // G, N).sum(3)
    return dx, ddt.sum(0), dA.sum((0, 1, 2)), dB, dC, dh0


class FusedChunkSSD(torch.autograd.Function):
    """``(x, dt, A, B, C, h0) -> (y, h_T)`` without the skip ``D x``: the kernels' gradients for
    ``x``, ``dt`` (float32 ``[B, T, H]``), ``A`` (float32 ``[H]``), ``B``, ``C`` and ``h0``. ``B`` and
    ``C`` share their strides."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, output_final_state, chunk_size, reverse):
        y, ht, _ = _forward(x, dt, A, B, C, h0, True, output_final_state, False, chunk_size, reverse)
        ctx.save_for_backward(x, dt, A, B, C, h0)
        ctx.chunk_size, ctx.reverse = chunk_size, reverse
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        x, dt, A, B, C, h0 = ctx.saved_tensors
        dx, ddt, dA, dB, dC, dh0 = _backward(x, dt, A, B, C, h0, dy, dht, ctx.chunk_size, ctx.reverse)
        return dx.to(x.dtype), ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dh0, None, None, None


class FusedChunkSSDBidirectional(torch.autograd.Function):
    """``(x, dt [b, T, 2 H], A, B_f, C_f, B_b, C_b) -> y [2 b, T, H, P]``: the forward scan of ``(x,
    dt[..., :H], B_f, C_f)`` and the reverse scan of ``(x, dt[..., H:], B_b, C_b)`` in one launch.
    The four ``B``, ``C`` share their strides, and ``B_b``, ``C_b`` lie ``s_dir`` elements after
    ``B_f``, ``C_f`` in memory."""

    @staticmethod
    def forward(ctx, x, dt, A, B_f, C_f, B_b, C_b, s_dir, chunk_size):
        y, _, _ = _forward(x, dt, A, B_f, C_f, None, True, False, False, chunk_size, False, 2, s_dir)
        # B_b and C_b are read through B_f and C_f, but kept too: their memory must outlive the forward
        ctx.save_for_backward(x, dt, A, B_f, C_f, B_b, C_b)
        ctx.chunk_size, ctx.s_dir = chunk_size, s_dir
        return y

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, B_f, C_f, _, _ = ctx.saved_tensors
        b = x.shape[0]
        dx, ddt, dA, dB, dC, _ = _backward(
            x, dt, A, B_f, C_f, None, dy, None, ctx.chunk_size, False, 2, ctx.s_dir
        )
        dx = (dx[:b] + dx[b:]).to(x.dtype)
        ddt = torch.cat([ddt[:b], ddt[b:]], dim=-1)  # [b, T, 2 H]
        dB, dC = dB.to(B_f.dtype), dC.to(C_f.dtype)
        return dx, ddt, dA, dB[:b], dC[:b], dB[b:], dC[b:], None, None


def _direction_offset(B_f: Tensor, C_f: Tensor, B_b: Tensor, C_b: Tensor) -> int | None:
    """Elements from ``B_f`` to ``B_b`` when that is also the way from ``C_f`` to ``C_b`` and all four
    share their strides (slices of one projection); else None."""
    if not (B_f.stride() == C_f.stride() == B_b.stride() == C_b.stride()):
        return None
    size = B_f.element_size()
    off = B_b.data_ptr() - B_f.data_ptr()
    if off != C_b.data_ptr() - C_f.data_ptr() or off % size:
        return None
    return off // size


def fused_chunk_ssd_bidirectional(
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
) -> tuple[Tensor, Tensor]:
    """Both scans of a bidirectional SSD (Hydra) in one launch of the Triton kernels: ``y_f`` the
    forward scan of ``(x, dt_f, A, B_f, C_f)``, ``y_b`` the reverse scan (``reverse=True``: from the
    last token) of ``(x, dt_b, A, B_b, C_b)``, both in token order. Twice the programs of one scan,
    so short batches keep the GPU busy, and no flipped or concatenated copies of the inputs.

    Args:
        x: `[B, T, H, P]`; dt_f, dt_b: `[B, T, H]`; A: `[H]`; B_f, C_f, B_b, C_b: `[B, T, G, N]`, read
            in place when they are slices of one tensor at a common offset (as Hydra's projection
            gives them), else copied into one.
        chunk_size: as :func:`fused_chunk_ssd`.

    Returns:
        ``(y_f, y_b)``, each `[B, T, H, P]` in the dtype of ``x``.
    """
    for dt, B, C in ((dt_f, B_f, C_f), (dt_b, B_b, C_b)):
        _check("fused_chunk_ssd_bidirectional", x, dt, A, B, C, None, None, chunk_size)
    Bs = [_in_place(t.to(x.dtype)) for t in (B_f, C_f, B_b, C_b)]
    s_dir = _direction_offset(*Bs)
    if s_dir is None:
        B2, C2 = torch.stack([Bs[0], Bs[2]]), torch.stack([Bs[1], Bs[3]])
        Bs, s_dir = [B2[0], C2[0], B2[1], C2[1]], B2.stride(0)
    dt = torch.cat([dt_f, dt_b], dim=-1).float()  # [B, T, 2 H]
    y = FusedChunkSSDBidirectional.apply(_in_place(x), dt, A.float().contiguous(), *Bs, s_dir, chunk_size)
    b = x.shape[0]
    return y[:b], y[b:]


def _check(name: str, x, dt, A, B, C, D, initial_state, chunk_size) -> None:
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    check_int32_rows("ssd", x=x, B=B, C=C)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name} takes float32, float16 or bfloat16 x, got {x.dtype}")
    if not triton_chunk_size_ok(chunk_size):
        raise ValueError(f"{name}: chunk_size must be a power of two in [16, 128], got {chunk_size!r}")


def fused_chunk_ssd(
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
    reverse: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """SSD by the Triton kernels; same semantics as :func:`~subq.ops.ssd.naive.naive_ssd`.

    Args:
        x: `[B, T, H, P]` (float32, float16 or bfloat16; ``B`` and ``C`` are cast to its dtype);
            dt: `[B, T, H]`; A: `[H]`; B, C: `[B, T, G, N]`; D: `[H]` or None. ``x``, ``B`` and ``C``
            are read in place when each row ``[H, P]`` (``[G, N]``) is contiguous, e.g. slices of
            one projection's output; other layouts are copied.
        initial_state: `[B, H, P, N]` or None (used in float32).
        chunk_size: tokens per chunk (default 64; a power of two in [16, 128]: the chunk's ``[Q, Q]``
            blocks live in registers).
        reverse: scan from the last token to the first (default False): the outputs of
            ``naive_ssd`` on the time-flipped inputs, flipped back, read and written in place (no
            flipped copies); the initial state enters at ``T - 1``, the final state is after token 0.

    Returns:
        ``(y: [B, T, H, P] in the dtype of x, final_state: [B, H, P, N] float32 or None)``.
    """
    _check("fused_chunk_ssd", x, dt, A, B, C, D, initial_state, chunk_size)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    B, C = _in_place(B.to(x.dtype)), _in_place(C.to(x.dtype))
    if B.stride() != C.stride():
        B, C = B.contiguous(), C.contiguous()
    dt, A = dt.float().contiguous(), A.float().contiguous()
    y, ht = FusedChunkSSD.apply(_in_place(x), dt, A, B, C, h0, output_final_state, chunk_size, reverse)
    if D is not None:
        y = y + x * D.to(x.dtype)[:, None]
    return y, ht
