"""Fused Combiner-Axial attention in Triton: two FlashAttention-style passes, one joint softmax.

Query ``(u, l)`` (row ``u``, column ``l`` of rows of ``m``) takes one softmax over its own row
(columns ``<= l`` when causal) and the summaries ``(v, l)`` of the earlier (bidirectional: other)
rows. The row part and the span part tile differently (a row shares its keys; a column shares its
summaries), so the softmax runs in two passes that hand over its running state:

1. ``combiner_axial_rows_fwd_kernel``, one program per (column block of a row, batch x head): one
   sweep over the row's keys feeds two online softmaxes, the direct one (causal inside the row) and
   the row summaries (every query of the row over the whole row). Writes the direct part as a
   normalised output and its log-sum-exp, and the summaries.
2. The summary keys, O(T D) data: max-pooled row keys, or ``row_summary_key(summaries)`` (any
   PyTorch function, e.g. the ``combiner`` layer's learned projection).
3. ``combiner_axial_spans_fwd_kernel``, one program per (column, block of rows, batch x head):
   resumes each query's softmax from (output, log-sum-exp) of pass 1 and walks the column's
   summaries of the earlier rows (bidirectional: the other rows, and the last row's tokens
   directly for columns that the partial last row does not reach).

Per query: ``m`` row logits (``2 m`` products with the summaries) and ``n = ceil(T / m)`` span
logits, O(T sqrt T D) at ``m = sqrt T``, with no ``[T, m]`` or ``[T, n]`` tensor in memory. The
backward recomputes each pass with the blocked PyTorch pieces below (:func:`axial_rows` and
:func:`axial_spans`) and differentiates them: gradients are exact, at the blocked form's cost and
memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from subq.ops.combiner.blocked import _blocks, masked_max
from subq.ops.combiner.naive import call_summary_key, check_combiner_args

LOG2E = math.log2(math.e)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


@triton.jit
def _online_softmax_step(b_s, b_v, m_i, l_i, b_acc, PREC: tl.constexpr):
    """One FlashAttention-2 update with masked logits ``b_s: [BM, BN]`` (base 2, ``-inf`` = masked;
    every row already has a finite ``m_i`` or a finite logit here) and values ``b_v: [BN, BV]``."""
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    b_p = tl.exp2(b_s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(b_p, 1)
    b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * alpha[:, None], input_precision=PREC)
    return m_new, l_i, b_acc


@triton.jit(do_not_specialize=["T", "M"])
def combiner_axial_rows_fwd_kernel(
    q,
    k,
    v,
    o_direct,
    lse_direct,
    summaries,
    qk_scale,
    T,
    M,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_u, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    o_m = i_c * BM + tl.arange(0, BM)  # query columns
    o_t = i_u * M + o_m  # query positions
    m_q = (o_m < M) & (o_t < T)
    o_t = o_t.to(tl.int64)
    # [B, T, heads, *]: row t of (batch, head) at (b * T + t) * heads + head
    p_q = q + (i_b.to(tl.int64) * T * H + i_h) * K
    p_k = k + (i_b.to(tl.int64) * T * H_KV + i_h // (H // H_KV)) * K
    p_v = v + (i_b.to(tl.int64) * T * H_KV + i_h // (H // H_KV)) * V
    b_q = tl.load(p_q + o_t[:, None] * H * K + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)

    # row summaries (every key of the row) and, causal, the direct part (columns <= l)
    m_f = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_f = tl.zeros([BM], dtype=tl.float32)
    b_f = tl.zeros([BM, BV], dtype=tl.float32)
    m_c = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_c = tl.zeros([BM], dtype=tl.float32)
    b_c = tl.zeros([BM, BV], dtype=tl.float32)
    # key block 0 holds column 0, which every query row (padded ones included) may read: after it
    # every running max is finite
    for i_n in range(tl.cdiv(M, BN)):
        o_n = i_n * BN + tl.arange(0, BN)  # key columns
        o_s = i_u * M + o_n
        m_n = (o_n < M) & (o_s < T)
        o_s = o_s.to(tl.int64)
        b_k = tl.load(
            p_k + o_s[:, None] * H_KV * K + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0
        )
        b_v = tl.load(
            p_v + o_s[:, None] * H_KV * V + o_v[None, :], mask=m_n[:, None] & m_v[None, :], other=0.0
        )
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * qk_scale  # [BM, BN]
        m_f, l_f, b_f = _online_softmax_step(
            tl.where(m_n[None, :], b_s, float("-inf")), b_v, m_f, l_f, b_f, PREC
        )
        if CAUSAL:
            if i_n * BN < (i_c + 1) * BM:  # key blocks past every query's column add nothing
                m_own = m_n[None, :] & (o_n[None, :] <= o_m[:, None])
                m_c, l_c, b_c = _online_softmax_step(
                    tl.where(m_own, b_s, float("-inf")), b_v, m_c, l_c, b_c, PREC
                )

    m_qv = m_q[:, None] & m_v[None, :]
    p_sum = summaries + (i_b.to(tl.int64) * T * H + i_h) * V + o_t[:, None] * H * V + o_v[None, :]
    tl.store(p_sum, (b_f / l_f[:, None]).to(summaries.dtype.element_ty), mask=m_qv)
    if CAUSAL:
        b_o, b_lse = b_c / l_c[:, None], m_c + tl.log2(l_c)
    else:  # the direct part is the whole row
        b_o, b_lse = b_f / l_f[:, None], m_f + tl.log2(l_f)
    p_o = o_direct + (i_b.to(tl.int64) * T * H + i_h) * V + o_t[:, None] * H * V + o_v[None, :]
    tl.store(p_o, b_o, mask=m_qv)
    tl.store(lse_direct + (i_b.to(tl.int64) * T + o_t) * H + i_h, b_lse / 1.4426950408889634, mask=m_q)


@triton.jit(do_not_specialize=["T", "M", "N", "R", "ks_sb", "ks_sr", "ks_sc"])
def combiner_axial_spans_fwd_kernel(
    q,
    k,
    v,
    ks,
    summaries,
    o_direct,
    lse_direct,
    o,
    qk_scale,
    T,
    M,
    N,
    R,
    ks_sb,
    ks_sr,
    ks_sc,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    KS_GROUP: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BU: tl.constexpr,
    BR: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CAUSAL: tl.constexpr,
    TAIL: tl.constexpr,
    PREC: tl.constexpr,
):
    i_l, i_u, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    o_u = i_u * BU + tl.arange(0, BU)  # query rows of column i_l
    o_t = o_u * M + i_l
    m_q = o_t < T
    m_qv = m_q[:, None] & m_v[None, :]
    row_q = (i_b.to(tl.int64) * T * H + i_h) + o_t[:, None] * H
    b_q = tl.load(q + row_q * K + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
    # resume the softmax from the direct part: running max = its log-sum-exp, sum 1
    b_acc = tl.load(o_direct + row_q * V + o_v[None, :], mask=m_qv, other=0.0)
    m_i = (
        tl.load(lse_direct + (i_b.to(tl.int64) * T + o_t) * H + i_h, mask=m_q, other=0.0) * 1.4426950408889634
    )
    l_i = tl.full([BU], 1.0, dtype=tl.float32)

    # the column's summaries (v, i_l): keys from ks (strided: pooled keys repeat along a row),
    # values = the row summaries
    p_ks = ks + i_b.to(tl.int64) * ks_sb + (i_h // KS_GROUP) * K + i_l * ks_sc
    p_sum = summaries + (i_b.to(tl.int64) * T * H + i_h) * V
    if CAUSAL:
        hi = tl.minimum((i_u + 1) * BU, N)
    else:
        hi = N
    for i_r in range(tl.cdiv(hi, BR)):
        o_r = i_r * BR + tl.arange(0, BR)  # summary rows
        o_sr = o_r * M + i_l
        m_r = o_sr < T
        o_sr = o_sr.to(tl.int64)
        b_ks = tl.load(
            p_ks + o_r[:, None].to(tl.int64) * ks_sr + o_k[None, :],
            mask=m_r[:, None] & m_k[None, :],
            other=0.0,
        )
        b_sv = tl.load(
            p_sum + o_sr[:, None] * H * V + o_v[None, :], mask=m_r[:, None] & m_v[None, :], other=0.0
        )
        b_s = tl.dot(b_q, tl.trans(b_ks), input_precision=PREC) * qk_scale  # [BU, BR]
        if CAUSAL:
            m_s = m_r[None, :] & (o_r[None, :] < o_u[:, None])
        else:
            m_s = m_r[None, :] & (o_r[None, :] != o_u[:, None])
        m_i, l_i, b_acc = _online_softmax_step(tl.where(m_s, b_s, float("-inf")), b_sv, m_i, l_i, b_acc, PREC)

    if TAIL:
        # bidirectional, partial last row: columns >= R have no summary there and read its R tokens
        if i_l >= R:
            p_k = k + (i_b.to(tl.int64) * T * H_KV + i_h // (H // H_KV)) * K
            p_v = v + (i_b.to(tl.int64) * T * H_KV + i_h // (H // H_KV)) * V
            for i_n in range(tl.cdiv(R, BR)):
                o_n = i_n * BR + tl.arange(0, BR)
                o_s = (N - 1) * M + o_n
                m_n = o_n < R
                o_s = o_s.to(tl.int64)
                b_k = tl.load(
                    p_k + o_s[:, None] * H_KV * K + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0
                )
                b_v = tl.load(
                    p_v + o_s[:, None] * H_KV * V + o_v[None, :], mask=m_n[:, None] & m_v[None, :], other=0.0
                )
                b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * qk_scale
                m_s = m_n[None, :] & (o_u[:, None] != N - 1)
                m_i, l_i, b_acc = _online_softmax_step(
                    tl.where(m_s, b_s, float("-inf")), b_v, m_i, l_i, b_acc, PREC
                )

    tl.store(o + row_q * V + o_v[None, :], (b_acc / l_i[:, None]).to(o.dtype.element_ty), mask=m_qv)


# ---- the two passes in blocked PyTorch: what the kernels compute, and their backward -------------


def _heads(x: Tensor, group: int) -> Tensor:
    """``[B, T, H_kv, D]`` -> ``[B, H, T, D]``, float32 or wider, each head repeated ``group`` times."""
    return x.to(torch.promote_types(x.dtype, torch.float32)).repeat_interleave(group, dim=2).transpose(1, 2)


def axial_rows(q: Tensor, k: Tensor, v: Tensor, m: int, causal: bool, scale: float):
    """Pass 1 by blocks: ``(o_direct [B, T, H, D_v], lse_direct [B, T, H], summaries [B, T, H, D_v])``:
    the direct part normalised on its own and its log-sum-exp (float32 or wider), and the attention
    of every query over its whole row (in the dtype of ``v``)."""
    B, T, H, _ = q.shape
    group, n = H // k.shape[2], -(-T // m)
    qr, kr, vr = (_blocks(x, n, m) for x in (_heads(q, 1), _heads(k, group), _heads(v, group)))
    valid = (torch.arange(n * m, device=q.device) < T).view(n, m)
    scores = scale * qr @ kr.transpose(-1, -2)  # [B, H, n, m, m]
    full = scores.masked_fill(~valid[:, None, :], float("-inf"))
    summaries = torch.softmax(full, -1) @ vr
    if causal:
        col = torch.arange(m, device=q.device)
        direct = full.masked_fill(col[None, :] > col[:, None], float("-inf"))
    else:
        direct = full
    lse = torch.logsumexp(direct, -1)  # [B, H, n, m]
    o_direct = torch.exp(direct - lse[..., None]) @ vr

    def flat(x: Tensor) -> Tensor:
        return x.flatten(2, 3)[:, :, :T].transpose(1, 2)

    return flat(o_direct), flat(lse[..., None])[..., 0], flat(summaries).to(v.dtype)


def axial_spans(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keys: Tensor,
    summaries: Tensor,
    o_direct: Tensor,
    lse_direct: Tensor,
    m: int,
    causal: bool,
    scale: float,
) -> Tensor:
    """Pass 2 by blocks: the direct part ``(o_direct, lse_direct)`` joined in one softmax with the
    span logits against ``keys`` (``[B, T, H, D]``, or ``[B, n, H_ks, D]`` one per row) and the
    ``summaries`` as values (bidirectional, partial last row: plus that row's tokens) -> ``o``."""
    B, T, H, _ = q.shape
    group, n = H // k.shape[2], -(-T // m)
    dev = q.device
    qr, sr = (_blocks(_heads(x, 1), n, m) for x in (q, summaries))  # [B, H, n, m, D]
    if keys.shape[1] == T:
        kr = _blocks(_heads(keys, H // keys.shape[2]), n, m)
    else:
        kr = _heads(keys, H // keys.shape[2])[:, :, :, None].expand_as(qr)
    od, ld = (_blocks(_heads(x, 1), n, m) for x in (o_direct, lse_direct[..., None]))
    valid = (torch.arange(n * m, device=dev) < T).view(n, m)
    rows = torch.arange(n, device=dev)
    other = rows[None, :] < rows[:, None] if causal else rows[None, :] != rows[:, None]  # [n_u, n_v]
    logits = scale * torch.einsum("bhuld,bhvld->bhulv", qr, kr)
    logits = logits.masked_fill(~(other[:, None, :] & valid.T[None]), float("-inf"))
    groups, values = [ld, logits], [None, sr]
    r = T - (n - 1) * m
    if not causal and n > 1 and r < m:  # columns without a last-row summary read the last row
        kl, vl = (_blocks(_heads(x, group), n, m)[:, :, -1:, :r] for x in (k, v))  # [B, H, 1, r, D]
        tail = scale * qr @ kl.transpose(-1, -2)  # [B, H, n, m, r]
        reach = (rows != n - 1)[:, None] & (torch.arange(m, device=dev) >= r)[None, :]
        groups.append(tail.masked_fill(~reach[..., None], float("-inf")))
        values.append(vl)
    lse = torch.logsumexp(torch.cat(groups, -1), -1, keepdim=True)
    o = od * torch.exp(ld - lse) + torch.einsum("bhulv,bhvld->bhuld", torch.exp(logits - lse), sr)
    if len(groups) == 3:
        o = o + torch.exp(groups[2] - lse) @ values[2]
    return o.flatten(2, 3)[:, :, :T].transpose(1, 2)


# ---- launches ------------------------------------------------------------------------------------


def _dims(q: Tensor, v: Tensor) -> dict:
    BK, BV = (max(16, triton.next_power_of_2(x.shape[-1])) for x in (q, v))
    return dict(
        K=q.shape[-1],
        V=v.shape[-1],
        BK=BK,
        BV=BV,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if max(BK, BV) <= 64 else 8,  # head dim 128 with 4 warps spills registers
    )


def _block(length: int) -> int:
    """Tile size along a row or a column of ``length``: a power of two in 16 .. 64."""
    return min(64, max(16, triton.next_power_of_2(length)))


class _AxialRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, m, causal, scale):
        B, T, H, _ = q.shape
        n, dims = -(-T // m), _dims(q, v)
        o_direct = torch.empty(B, T, H, v.shape[-1], device=q.device, dtype=torch.float32)
        lse_direct = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
        summaries = torch.empty(B, T, H, v.shape[-1], device=q.device, dtype=v.dtype)
        BM = _block(m)
        combiner_axial_rows_fwd_kernel[(triton.cdiv(m, BM), n, B * H)](
            q, k, v, o_direct, lse_direct, summaries, scale * LOG2E, T, m,
            H=H, H_KV=k.shape[2], BM=BM, BN=BM, CAUSAL=causal, **dims,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v)
        ctx.args = (m, causal, scale)
        return o_direct, lse_direct, summaries

    @staticmethod
    def backward(ctx, d_o, d_lse, d_sum):
        return _recompute_grads(axial_rows, ctx, (d_o, d_lse, d_sum)) + (None, None, None)


class _AxialSpans(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keys, summaries, o_direct, lse_direct, m, causal, scale):
        B, T, H, _ = q.shape
        n, dims = -(-T // m), _dims(q, v)
        r = T - (n - 1) * m
        o = torch.empty(B, T, H, v.shape[-1], device=q.device, dtype=q.dtype)
        if keys.shape[1] == T:  # one key per position
            ks_sb, ks_sr, ks_sc = (
                T * keys.shape[2] * keys.shape[3],
                m * keys.shape[2] * keys.shape[3],
                keys.shape[2] * keys.shape[3],
            )
        else:  # one key per row
            ks_sb, ks_sr, ks_sc = n * keys.shape[2] * keys.shape[3], keys.shape[2] * keys.shape[3], 0
        BU = _block(n)
        combiner_axial_spans_fwd_kernel[(m, triton.cdiv(n, BU), B * H)](
            q, k, v, keys, summaries, o_direct, lse_direct, o, scale * LOG2E, T, m, n, r,
            ks_sb, ks_sr, ks_sc, H=H, H_KV=k.shape[2], KS_GROUP=H // keys.shape[2], BU=BU, BR=BU,
            CAUSAL=causal, TAIL=not causal and n > 1 and r < m, **dims,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, keys, summaries, o_direct, lse_direct)
        ctx.args = (m, causal, scale)
        return o

    @staticmethod
    def backward(ctx, d_o):
        return _recompute_grads(axial_spans, ctx, (d_o,)) + (None, None, None)


def _recompute_grads(fn, ctx, grads: tuple) -> tuple:
    """Gradients of ``fn(*saved, *ctx.args)`` (the blocked PyTorch twin of a pass) for the saved
    tensors, given the output gradients (``None``: no gradient)."""
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[: len(saved)]
    inputs = [x.detach().requires_grad_(need) for x, need in zip(saved, needs, strict=True)]
    with torch.enable_grad():
        outs = fn(*inputs, *ctx.args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        wanted = [x for x in inputs if x.requires_grad]
        if not pairs or not wanted:
            return tuple(None for _ in inputs)
        got = iter(
            torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
        )
    return tuple(next(got) if x.requires_grad else None for x in inputs)


def check_fused_inputs(q: Tensor, v: Tensor, variant: str) -> None:
    """Raise ``ValueError`` unless the Triton kernels take these inputs (shapes already checked)."""
    if variant != "axial":
        raise ValueError(
            f"combiner_attention: the Triton kernels implement variant='axial' only, got {variant!r}"
        )
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"combiner_attention: the Triton kernels take float32, float16 or bfloat16, got {q.dtype}; "
            "mode must be one of auto, torch, naive for this input"
        )
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"combiner_attention: the Triton kernels take head dims <= {MAX_HEAD_DIM}, "
            f"got D={q.shape[-1]}, D_v={v.shape[-1]}"
        )


def fused_combiner_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    variant: str = "axial",
    block_size: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    row_summary_key: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, None]:
    """Combiner-Axial attention with the Triton kernels; same arguments and result as
    :func:`~subq.ops.combiner.naive.naive_combiner_attention` (``variant="axial"`` only).

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H_kv, D]`; v: `[B, T, H_kv, D_v]` (float32, float16 or
            bfloat16; ``k, v`` are cast to the dtype of ``q``; ``D, D_v <= 256``).
        variant, block_size, causal, scale, row_summary_key: see the naive form.

    Returns:
        ``(o: [B, T, H, D_v], None)``.
    """
    B, T, H, H_kv, D, block_size = check_combiner_args(q, k, v, variant, block_size, row_summary_key)
    check_fused_inputs(q, v, variant)
    scale = D**-0.5 if scale is None else float(scale)
    m = min(block_size, T)  # one row when the block covers the sequence
    n = -(-T // m)
    q = q.contiguous()
    k, v = k.to(q.dtype).contiguous(), v.to(q.dtype).contiguous()
    o_direct, lse_direct, summaries = _AxialRows.apply(q, k, v, m, causal, scale)
    if row_summary_key is None:  # max-pooled keys of each row: [B, n, H_kv, D]
        valid = (torch.arange(n * m, device=q.device) < T).view(n, m)
        keys = masked_max(_blocks(k.transpose(1, 2), n, m), valid, -2).transpose(1, 2)
    else:
        keys = call_summary_key(row_summary_key, summaries, (B, T, H, D))
    keys = keys.to(q.dtype).contiguous()
    o = _AxialSpans.apply(q, k, v, keys, summaries, o_direct, lse_direct, m, causal, scale)
    return o, None


__all__ = ["axial_rows", "axial_spans", "check_fused_inputs", "fused_combiner_attention"]
