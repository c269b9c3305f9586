"""Triton Hyena filter, forward and backward: the Sin MLP, the window and the channels-first store in
one kernel each way (``naive.py`` has the math).

The PyTorch form makes a dozen passes over ``[L, F]`` and ``[L, C]`` float32 tensors each way (the
linears, the frequency products, the sines, the window, its product, the transposing copy and the
cast to the activations' dtype), which at ``L = 2^20`` cost more than the long convolution they feed.
Here the hidden activations never leave the chip:

- ``hyena_filter_fwd_kernel``: one program per ``BL`` positions runs the MLP on ``[BL, F]`` tiles
  and stores ``[BC, BL]`` tiles of the taps, windowed, in the output's dtype, lags contiguous.
- ``hyena_filter_bwd_kernel``: ``NPROG`` programs walk the positions, recompute the forward
  activations, and carry the gradient back through the layers; each program sums its weight,
  bias and frequency gradients in registers (``W_4``'s in a per-program buffer when ``C`` spans
  several blocks) and stores one partial per program, summed by the caller (deterministic).

The forward's matmuls, and the backward's recomputation of them, run in TF32 three times over
(``"tf32x3"``, about float32's precision) whatever the output dtype: the frequencies (``w = 10`` in
HyenaDNA) amplify operand rounding through three sines, and single TF32 (10 mantissa bits) moves
the taps by about 3e-2 relative on the H200 (``BENCHMARKS.md``). The backward's own matmuls (the
gradient times a weight or an activation, where nothing amplifies the rounding) run in single TF32:
the gradients agree with float32 to about 1e-3, and the kernel's shared memory stays within the
H200's (``tf32x3`` throughout needs 271 KB). Exact float32 dots (``"ieee"``) run on the FMA units
and spill heavily at these tile sizes. The MLP's width is at most 64 (Hyena's and HyenaDNA's; wider
MLPs, such as M2-BERT's 128, take the PyTorch form).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _reduce(x):
    """``x`` reduced to ``[-pi, pi]`` for ``sin.approx`` / ``cos.approx``: two-constant Cody-Waite,
    ``2 pi = 6.28125 + 1.9353e-3``, the first part exact in a few bits, so ``k 6.28125`` is exact for
    the ``|x|`` of a Sin MLP; the approximate functions are then accurate to about 1e-6 absolute."""
    k = tl.floor(x * 0.15915494309189535 + 0.5)
    return (x - k * 6.28125) - k * 0.0019353071795864769


@triton.jit
def _sin(x, FAST: tl.constexpr):
    """``sin x``: ``sin.approx`` after :func:`_reduce` with ``FAST``, else libdevice's."""
    if FAST:
        return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [_reduce(x)], dtype=tl.float32,
                                         is_pure=True, pack=1)  # fmt: skip
    return tl.sin(x)


@triton.jit
def _cos(x, FAST: tl.constexpr):
    """``cos x``, as :func:`_sin`."""
    if FAST:
        return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [_reduce(x)], dtype=tl.float32,
                                         is_pure=True, pack=1)  # fmt: skip
    return tl.cos(x)


@triton.jit
def _forward_tile(z, t, freq, w1, b1, w2, b2, w3, b3, o_l, m_l, E, Fw, EP: tl.constexpr, FP: tl.constexpr,
                  PREC: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """``(t, z, a_1, a_2, a_3, h_1, h_2, h_3)`` of the positions ``o_l`` (float32; the padded
    columns of every ``h`` are zero, and so are their rows past ``L`` in ``z``)."""
    o_e, o_f = tl.arange(0, EP), tl.arange(0, FP)
    m_e, m_f = o_e < E, o_f < Fw
    o_l64 = o_l.to(tl.int64)
    b_t = tl.load(t + o_l64, mask=m_l, other=0.0).to(tl.float32)
    b_z = tl.load(z + o_l64[:, None] * E + o_e[None, :], mask=m_l[:, None] & m_e[None, :], other=0.0)
    b_z = b_z.to(tl.float32)
    b_freq = tl.load(freq + o_f, mask=m_f, other=0.0).to(tl.float32)
    # the weights as stored, [out, in], transposed in the dots
    w1n = tl.load(w1 + o_f[:, None] * E + o_e[None, :], mask=m_f[:, None] & m_e[None, :], other=0.0)
    a1 = tl.dot(b_z, tl.trans(w1n.to(tl.float32)), input_precision=PREC)
    a1 += tl.load(b1 + o_f, mask=m_f, other=0.0).to(tl.float32)[None, :]
    h1 = _sin(b_freq[None, :] * a1, FAST)
    w2n, w3n = _hidden_weights(w2, w3, Fw, FP)
    a2 = tl.dot(h1, tl.trans(w2n), input_precision=PREC)
    a2 += tl.load(b2 + o_f, mask=m_f, other=0.0).to(tl.float32)[None, :]
    h2 = _sin(b_freq[None, :] * a2, FAST)
    a3 = tl.dot(h2, tl.trans(w3n), input_precision=PREC)
    a3 += tl.load(b3 + o_f, mask=m_f, other=0.0).to(tl.float32)[None, :]
    h3 = _sin(b_freq[None, :] * a3, FAST)
    return b_t, b_z, a1, a2, a3, h1, h2, h3


@triton.jit
def _hidden_weights(w2, w3, Fw, FP: tl.constexpr):
    """``W_2``, ``W_3`` as stored (``[out, in]``), float32, padded to ``[FP, FP]`` with zeros."""
    o_f = tl.arange(0, FP)
    m = (o_f < Fw)[:, None] & (o_f < Fw)[None, :]
    p = o_f[:, None] * Fw + o_f[None, :]
    return tl.load(w2 + p, mask=m, other=0.0).to(tl.float32), tl.load(w3 + p, mask=m, other=0.0).to(
        tl.float32
    )


@triton.jit
def _channels(deltas, w4, i_c, C, Fw, GROUPS: tl.constexpr, BC: tl.constexpr, FP: tl.constexpr):
    """Block ``i_c`` of the channels: their output rows, mask, ``|delta|`` and ``W_4`` rows ``[BC, FP]``."""
    o_c = i_c * BC + tl.arange(0, BC)
    o_f = tl.arange(0, FP)
    m_c = o_c < C
    rows = (o_c % GROUPS) * (
        C // GROUPS
    ) + o_c // GROUPS  # channel c = i groups + o -> row o (C / groups) + i
    b_d = tl.abs(tl.load(deltas + o_c, mask=m_c, other=0.0).to(tl.float32))
    b_w4 = tl.load(w4 + o_c[:, None] * Fw + o_f[None, :], mask=m_c[:, None] & (o_f < Fw)[None, :], other=0.0)
    return rows.to(tl.int64), m_c, b_d, b_w4.to(tl.float32)


@triton.jit(do_not_specialize=["L"])
def hyena_filter_fwd_kernel(
    z, t, freq, w1, b1, w2, b2, w3, b3, w4, deltas, out, L, E, Fw, C,
    GROUPS: tl.constexpr, BL: tl.constexpr, EP: tl.constexpr, FP: tl.constexpr, BC: tl.constexpr,
    PREC: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    o_l = tl.program_id(0) * BL + tl.arange(0, BL)
    m_l = o_l < L
    b_t, _, _, _, _, _, _, h3 = _forward_tile(
        z, t, freq, w1, b1, w2, b2, w3, b3, o_l, m_l, E, Fw, EP, FP, PREC, FAST
    )
    for i_c in range(tl.cdiv(C, BC)):
        rows, m_c, b_d, b_w4 = _channels(deltas, w4, i_c, C, Fw, GROUPS, BC, FP)
        b_o = tl.dot(b_w4, tl.trans(h3), input_precision=PREC)  # [BC, BL]
        b_o *= tl.exp(-b_d[:, None] * b_t[None, :])
        p = out + rows[:, None] * L + o_l[None, :]
        tl.store(p, b_o.to(out.dtype.element_ty), mask=m_c[:, None] & m_l[None, :])


@triton.jit
def _back_through_sin(dh, a, b_freq, FAST: tl.constexpr):
    """``(d a, d freq's share [FP])`` from ``dh`` through ``h = sin(freq a)``."""
    ds = dh * _cos(b_freq[None, :] * a, FAST)
    return ds * b_freq[None, :], tl.sum(ds * a, 0)


@triton.jit(do_not_specialize=["L"])
def hyena_filter_bwd_kernel(
    z, t, freq, w1, b1, w2, b2, w3, b3, w4, deltas, g, part, part_w4, L, E, Fw, C,
    GROUPS: tl.constexpr, BL: tl.constexpr, EP: tl.constexpr, FP: tl.constexpr, BC: tl.constexpr,
    ONE_BLOCK: tl.constexpr, REC_PREC: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    pid, nprog = tl.program_id(0), tl.num_programs(0)
    o_e, o_f = tl.arange(0, EP), tl.arange(0, FP)
    m_f = o_f < Fw
    b_freq = tl.load(freq + o_f, mask=m_f, other=0.0).to(tl.float32)
    w2n, w3n = _hidden_weights(w2, w3, Fw, FP)  # [out, in]
    acc_w1 = tl.zeros([FP, EP], dtype=tl.float32)
    acc_w2 = tl.zeros([FP, FP], dtype=tl.float32)
    acc_w3 = tl.zeros([FP, FP], dtype=tl.float32)
    acc_w4 = tl.zeros([BC, FP], dtype=tl.float32)  # used when the channels are one block
    acc_b1 = tl.zeros([FP], dtype=tl.float32)
    acc_b2 = tl.zeros([FP], dtype=tl.float32)
    acc_b3 = tl.zeros([FP], dtype=tl.float32)
    acc_f = tl.zeros([FP], dtype=tl.float32)
    p_w4 = part_w4 + pid.to(tl.int64) * C * FP
    for i_l in range(pid, tl.cdiv(L, BL), nprog):
        o_l = i_l * BL + tl.arange(0, BL)
        m_l = o_l < L
        b_t, b_z, a1, a2, a3, h1, h2, h3 = _forward_tile(
            z, t, freq, w1, b1, w2, b2, w3, b3, o_l, m_l, E, Fw, EP, FP, REC_PREC, FAST
        )
        dh3 = tl.zeros([BL, FP], dtype=tl.float32)
        for i_c in range(tl.cdiv(C, BC)):
            rows, m_c, b_d, b_w4 = _channels(deltas, w4, i_c, C, Fw, GROUPS, BC, FP)
            b_g = tl.load(g + rows[:, None] * L + o_l[None, :], mask=m_c[:, None] & m_l[None, :], other=0.0)
            b_go = b_g.to(tl.float32) * tl.exp(-b_d[:, None] * b_t[None, :])  # [BC, BL]: d(MLP output)
            dh3 += tl.dot(tl.trans(b_go), b_w4, input_precision=PREC)
            dw4 = tl.dot(b_go, h3, input_precision=PREC)  # [BC, FP]
            if ONE_BLOCK:
                acc_w4 += dw4
            else:
                q = p_w4 + (i_c * BC + tl.arange(0, BC))[:, None] * FP + o_f[None, :]
                m_q = m_c[:, None] & (o_f < FP)[None, :]
                tl.store(q, tl.load(q, mask=m_q, other=0.0) + dw4, mask=m_q)
        da3, df = _back_through_sin(dh3, a3, b_freq, FAST)
        acc_f += df
        acc_w3 += tl.dot(tl.trans(da3), h2, input_precision=PREC)
        acc_b3 += tl.sum(da3, 0)
        da2, df = _back_through_sin(tl.dot(da3, w3n, input_precision=PREC), a2, b_freq, FAST)
        acc_f += df
        acc_w2 += tl.dot(tl.trans(da2), h1, input_precision=PREC)
        acc_b2 += tl.sum(da2, 0)
        da1, df = _back_through_sin(tl.dot(da2, w2n, input_precision=PREC), a1, b_freq, FAST)
        acc_f += df
        acc_w1 += tl.dot(tl.trans(da1), b_z, input_precision=PREC)
        acc_b1 += tl.sum(da1, 0)
    # one partial per program: [w1 (FP EP) | w2 (FP FP) | w3 (FP FP) | b1 | b2 | b3 | freq (FP each)]
    p = part + pid.to(tl.int64) * (FP * EP + 2 * FP * FP + 4 * FP)
    tl.store(p + o_f[:, None] * EP + o_e[None, :], acc_w1)
    p += FP * EP
    tl.store(p + o_f[:, None] * FP + o_f[None, :], acc_w2)
    p += FP * FP
    tl.store(p + o_f[:, None] * FP + o_f[None, :], acc_w3)
    p += FP * FP
    tl.store(p + o_f, acc_b1)
    tl.store(p + FP + o_f, acc_b2)
    tl.store(p + 2 * FP + o_f, acc_b3)
    tl.store(p + 3 * FP + o_f, acc_f)
    if ONE_BLOCK:
        o_c = tl.arange(0, BC)
        tl.store(p_w4 + o_c[:, None] * FP + o_f[None, :], acc_w4, mask=(o_c < C)[:, None])


def _config(E: int, Fw: int, C: int) -> dict:
    """Padded widths and the channels' block."""
    EP = max(16, triton.next_power_of_2(E))
    FP = max(16, triton.next_power_of_2(Fw))
    BC = min(128, max(16, triton.next_power_of_2(C)))
    return dict(EP=EP, FP=FP, BC=BC)


FWD_BL, FWD_WARPS = 64, 4
BWD_BL, BWD_WARPS = 32, 8


def _fast_sin(device: torch.device) -> bool:
    """``sin.approx`` on a GPU; Triton's interpreter has no inline PTX (it computes NumPy's sines)."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"


def _programs(L: int, BL: int, device: torch.device) -> int:
    """Programs of the backward: two per SM on a GPU (each sums its own partials), at most one per
    block of positions."""
    blocks = triton.cdiv(L, BL)
    if device.type != "cuda":
        return min(blocks, 3)
    return min(blocks, 2 * torch.cuda.get_device_properties(device).multi_processor_count)


class TritonHyenaFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, t, freq, deltas, groups, dtype, w1, b1, w2, b2, w3, b3, w4):
        L, E = z.shape
        Fw, C = freq.shape[0], w4.shape[0]
        cfg = _config(E, Fw, C)
        out = torch.empty(groups, C // groups, L, device=z.device, dtype=dtype)
        weights = (w1, b1, w2, b2, w3, b3, w4)
        hyena_filter_fwd_kernel[(triton.cdiv(L, FWD_BL),)](
            z, t, freq, *weights, deltas, out, L, E, Fw, C,
            GROUPS=groups, PREC="tf32x3", FAST=_fast_sin(z.device), BL=FWD_BL, num_warps=FWD_WARPS,
            num_stages=1, **cfg,
        )  # fmt: skip
        ctx.save_for_backward(z, t, freq, deltas, *weights)
        ctx.groups, ctx.cfg = groups, cfg
        return out

    @staticmethod
    def backward(ctx, g):
        z, t, freq, deltas, *weights = ctx.saved_tensors
        L, E = z.shape
        Fw, C = freq.shape[0], weights[-1].shape[0]
        cfg = ctx.cfg
        EP, FP, BC = cfg["EP"], cfg["FP"], cfg["BC"]
        nprog = _programs(L, BWD_BL, z.device)
        one_block = C <= BC
        part = z.new_empty(nprog, FP * EP + 2 * FP * FP + 4 * FP, dtype=torch.float32)
        alloc = torch.empty if one_block else torch.zeros
        part_w4 = alloc(nprog, C, FP, device=z.device, dtype=torch.float32)
        hyena_filter_bwd_kernel[(nprog,)](
            z, t, freq, *weights, deltas, g.contiguous(), part, part_w4, L, E, Fw, C,
            GROUPS=ctx.groups, EP=EP, FP=FP, BC=BC, BL=BWD_BL, ONE_BLOCK=one_block, REC_PREC="tf32x3",
            PREC="tf32", FAST=_fast_sin(z.device), num_warps=BWD_WARPS, num_stages=1,
        )  # fmt: skip
        s = part.sum(0)
        sizes = [FP * EP, FP * FP, FP * FP, FP, FP, FP, FP]
        pw1, pw2, pw3, pb1, pb2, pb3, pf = s.split(sizes)
        w1, b1, w2, b2, w3, b3, w4 = weights
        grads = (
            pw1.view(FP, EP)[:Fw, :E],
            pb1[:Fw],
            pw2.view(FP, FP)[:Fw, :Fw],
            pb2[:Fw],
            pw3.view(FP, FP)[:Fw, :Fw],
            pb3[:Fw],
            part_w4.sum(0)[:, :Fw],
        )
        grads = tuple(gr.to(w.dtype) for gr, w in zip(grads, weights, strict=True))
        return (None, None, pf[:Fw].to(freq.dtype), None, None, None, *grads)


def triton_hyena_filter(
    z: Tensor,
    t: Tensor,
    freq: Tensor,
    weights: tuple[Tensor, ...],
    deltas: Tensor,
    *,
    groups: int = 1,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """:func:`~subq.ops.hyena_filter.naive.naive_hyena_filter` by the Triton kernels (CUDA, or
    Triton's interpreter): ``[groups, C / groups, L]`` in ``dtype`` (default: the parameters')."""
    dtype = freq.dtype if dtype is None else dtype
    z, t = z.contiguous(), t.contiguous()
    weights = tuple(w.contiguous() for w in weights)
    return TritonHyenaFilter.apply(z, t, freq.contiguous(), deltas.contiguous(), groups, dtype, *weights)
