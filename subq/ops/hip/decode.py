"""One decoding step of HiP attention: split-K over ``sinks | selected blocks | window``.

The query is the token at position ``T_k - 1``. Program ``(batch x head, split)`` runs the online
softmax over its share of the key chunks and writes a partial ``(max, sum, acc)``; the last program of
a head to finish (a ticket counter per head, taken atomically after the partial is stored) merges the
head's partials by log-sum-exp and resets the ticket, so one launch does the whole step. The block
mask comes from a (possibly earlier) search; ``window`` is the effective window, widened by the caller
to cover every token since that search; :func:`hip_decode_step` keeps the mask between steps and does
that widening, as a decoding layer does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip.block_sparse import block_sparse_attention
from subq.ops.hip.checks import check_hip_inputs, check_indices, check_triton_device
from subq.ops.hip.common import _chunk_keys, _key_mask
from subq.ops.hip.mask import hierarchical_mask

DecodeMask = tuple[Tensor, Tensor, int]
"""A decode mask kept between steps: ``(indices [B, H, 1, G], counts [B, H, 1], searched_at)``, the
last the position of the query that searched it."""


# strides stay specialised (Triton keys on divisibility by 16, not the value): it is what lets the
# gathers of key and value rows vectorise; unspecialised strides cost 5-10x on the H200
@triton.jit(do_not_specialize=["T_k", "sink", "window"])
def hip_decode_kernel(
    q,
    k,
    v,
    m_out,
    l_out,
    acc_out,
    o,
    ticket,
    indices,
    counts,
    scale,
    T_k,
    sink,
    window,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    H: tl.constexpr,
    H_KV: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    G: tl.constexpr,
    S: tl.constexpr,
    BS: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_bh, i_s = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hk = i_h // (H // H_KV)
    o_d, o_dv = tl.arange(0, BD), tl.arange(0, BDV)
    m_d, m_dv = o_d < D, o_dv < DV
    b_q = tl.load(q + i_bh.to(tl.int64) * D + o_d, mask=m_d, other=0.0).to(tl.float32)  # [BD]
    t = tl.full([1], T_k - 1, dtype=tl.int32)
    count = tl.load(counts + i_bh)
    p_idx = indices + i_bh.to(tl.int64) * G
    w_lo = tl.maximum(T_k - window, sink)
    n_sink = tl.cdiv(tl.minimum(sink, T_k), BN)
    n_sel = tl.cdiv(count * BLOCK_K, BN)
    n_chunks = n_sink + n_sel + tl.cdiv(tl.maximum(T_k - w_lo, 0), BN)
    per = tl.cdiv(n_chunks, S)
    p_k = k + i_b.to(tl.int64) * stride_kb + i_hk.to(tl.int64) * stride_kh
    p_v = v + i_b.to(tl.int64) * stride_vb + i_hk.to(tl.int64) * stride_vh

    b_m = tl.full([1], -1.0e30, dtype=tl.float32)
    b_l = tl.zeros([1], dtype=tl.float32)
    b_acc = tl.zeros([BDV], dtype=tl.float32)
    for c in range(i_s * per, tl.minimum((i_s + 1) * per, n_chunks)):
        pos, exists, kind = _chunk_keys(c, n_sink, n_sel, p_idx, count, w_lo, BLOCK_K, BN)
        m_n = exists & (pos >= 0) & (pos < T_k)
        b_k = tl.load(
            p_k + pos.to(tl.int64)[:, None] * stride_kt + o_d[None, :],
            mask=m_n[:, None] & m_d[None, :],
            other=0.0,
        )
        b_v = tl.load(
            p_v + pos.to(tl.int64)[:, None] * stride_vt + o_dv[None, :],
            mask=m_n[:, None] & m_dv[None, :],
            other=0.0,
        )
        b_s = tl.sum(b_q[None, :] * b_k.to(tl.float32), 1)[None, :] * scale  # [1, BN]
        b_s = tl.where(_key_mask(t, pos, exists, kind, T_k, sink, window, True), b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.exp(b_s - b_mn[:, None])  # [1, BN]
        alpha = tl.exp(b_m - b_mn)
        b_l = b_l * alpha + tl.sum(b_p, 1)
        b_acc = b_acc * alpha + tl.sum(tl.trans(b_p) * b_v.to(tl.float32), 0)
        b_m = b_mn
    if S == 1:
        tl.store(o + i_bh.to(tl.int64) * DV + o_dv, (b_acc / b_l).to(o.dtype.element_ty), mask=m_dv)
    else:
        o_s = i_bh * S + i_s
        tl.store(m_out + o_s + tl.arange(0, 1), b_m)
        tl.store(l_out + o_s + tl.arange(0, 1), b_l)
        tl.store(acc_out + o_s.to(tl.int64) * DV + o_dv, b_acc, mask=m_dv)
        # every warp's stores precede the ticket (one thread takes it, acq_rel at GPU scope), so the
        # last program of the head sees all partials
        tl.debug_barrier()
        if tl.atomic_add(ticket + i_bh, 1) == S - 1:
            _merge_partials(m_out, l_out, acc_out, o, i_bh, S, DV, BS, BDV)
            tl.atomic_xchg(ticket + i_bh, 0)


@triton.jit
def _merge_partials(
    m_in, l_in, acc_in, o, i_bh, S: tl.constexpr, DV: tl.constexpr, BS: tl.constexpr, BDV: tl.constexpr
):
    """Merge the ``S`` partial softmaxes of one ``(batch, head)`` by log-sum-exp into ``o [DV]``
    (loads bypass L1: other programs wrote them)."""
    o_s, o_dv = tl.arange(0, BS), tl.arange(0, BDV)
    m_s, m_dv = o_s < S, o_dv < DV
    b_m = tl.load(m_in + i_bh * S + o_s, mask=m_s, other=-1.0e30, cache_modifier=".cg")
    b_l = tl.load(l_in + i_bh * S + o_s, mask=m_s, other=0.0, cache_modifier=".cg")
    p_acc = acc_in + (i_bh.to(tl.int64) * S + o_s[:, None]) * DV + o_dv[None, :]
    b_acc = tl.load(p_acc, mask=m_s[:, None] & m_dv[None, :], other=0.0, cache_modifier=".cg")
    b_w = tl.exp(b_m - tl.max(b_m, 0))  # [BS]
    b_o = tl.sum(b_w[:, None] * b_acc, 0) / tl.sum(b_w * b_l, 0)
    tl.store(o + i_bh.to(tl.int64) * DV + o_dv, b_o.to(o.dtype.element_ty), mask=m_dv)


_TICKETS: dict[torch.device, Tensor] = {}


def _tickets(n: int, device: torch.device) -> Tensor:
    """A zeroed int32 counter per ``(batch, head)``, kept per device: each launch leaves it zeroed (the
    merging program resets its head's ticket), so it is allocated once, outside any CUDA graph capture
    that replays the steady state. One buffer per device: HiP decode kernels running at the same time
    on two streams of one device would share it."""
    t = _TICKETS.get(device)
    if t is None or t.numel() < n:
        t = _TICKETS[device] = torch.zeros(max(n, 1024), device=device, dtype=torch.int32)
    return t


def _hip_decode_triton(q, k, v, indices, counts, *, scale, block_size_k, sink, window, num_splits):
    B, _, H, D = q.shape
    DV = v.shape[-1]
    v = v.to(k.dtype)
    if k.stride(-1) != 1 or v.stride(-1) != 1:  # any other layout is read in place (HF's [B, H_kv, T, D])
        k, v = k.contiguous(), v.contiguous()
    BN = max(64, block_size_k)
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    if num_splits is None:  # one chunk of keys per program (the three key ranges round up
        # separately: + 2), at most 8 programs per SM
        keys = min(sink, k.shape[1]) + indices.shape[-1] * block_size_k + window
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
        num_splits = max(1, min(triton.cdiv(keys, BN) + 2, triton.cdiv(8 * sms, B * H)))
    S = num_splits
    m = torch.empty(B * H, S, device=q.device, dtype=torch.float32)
    den = torch.empty_like(m)
    acc = torch.empty(B * H, S, DV, device=q.device, dtype=torch.float32)
    o = torch.empty(B, 1, H, DV, device=q.device, dtype=q.dtype)
    hip_decode_kernel[(B * H, S)](
        q.contiguous(), k, v, m, den, acc, o, _tickets(B * H, q.device),
        indices.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous(), scale, k.shape[1], sink,
        window, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        H=H, H_KV=k.shape[2], D=D, DV=DV, G=indices.shape[-1], S=S, BS=max(2, triton.next_power_of_2(S)),
        BN=BN, BD=BD, BDV=BDV, BLOCK_K=block_size_k, num_warps=2 if max(BD, BDV) <= 128 else 4,
    )  # fmt: skip
    return o


def hip_decode_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    counts: Tensor,
    *,
    block_size_k: int = 2,
    sink_size: int = 16,
    window: int = 256,
    scale: float | None = None,
    num_splits: int | None = None,
    mode: str = "auto",
) -> tuple[Tensor, None]:
    """Attention of the newest token over its HiP key set.

    Args:
        q: `[B, 1, H, D]`, the token at position ``T_k - 1``; k: `[B, T_k, H_kv, D]`; v: `[B, T_k, H_kv, D_v]`
            (views are read in place when rows have unit stride: a slice of a larger cache, or Hugging
            Face's ``[B, H_kv, T, D]`` cache transposed).
        indices, counts: `[B, H, 1, G]`, `[B, H, 1]`: a block mask for one query.
        window: effective window; num_splits: split-K factor (default: one chunk of 64 keys per
            ``(batch x head, split)`` program, at most 8 programs per SM).
        mode: ``auto`` (Triton on CUDA, gather form elsewhere), ``triton``, ``torch`` or ``naive``.

    Returns:
        ``(o: [B, 1, H, D_v], None)``.
    """
    check_hip_inputs(q, k, v, causal=True, q_offset=None)
    B, T_q, H, D = q.shape
    if T_q != 1:
        raise ValueError(f"decode takes one query per sequence, got q {tuple(q.shape)}")
    check_indices(indices, counts, B, H, 1)
    scale = D**-0.5 if scale is None else float(scale)
    if mode == "auto":
        mode = "triton" if q.is_cuda else "torch"
    if mode == "triton":
        check_triton_device(q)
        o = _hip_decode_triton(
            q, k, v, indices, counts, scale=scale, block_size_k=block_size_k, sink=sink_size,
            window=window, num_splits=num_splits,
        )  # fmt: skip
        return o, None
    return block_sparse_attention(
        q, k, v, indices, counts, block_size_q=1, block_size_k=block_size_k, sink_size=sink_size,
        window=window, causal=True, scale=scale, mode=mode,
    )  # fmt: skip


def hip_decode_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: DecodeMask | None,
    *,
    mask_k: int = 512,
    block_size_k: int = 2,
    block_stride_k: int = 1,
    sink_size: int = 16,
    window: int = 256,
    refresh_interval: int = 8,
    scale: float | None = None,
    mode: str = "auto",
) -> tuple[Tensor, DecodeMask]:
    """One decoding step over a block mask kept between steps (the ``hip`` layer's and ``subq_hip``'s).

    Args:
        q: `[B, 1, H, D]`, the token at position ``p = T_k - 1``; k: `[B, T_k, H_kv, D]`;
            v: `[B, T_k, H_kv, D_v]`.
        mask: the :data:`DecodeMask` of an earlier step, or None. It is searched again
            (:func:`~subq.ops.hip.mask.hierarchical_mask` of the newest query alone, ``mode="triton_split"``
            on CUDA) when None, of
            another batch size, searched after ``p``, or ``refresh_interval`` or more steps old (8).
        window: widened by ``p - searched_at`` so that every token since the search is attended.
        Other arguments as :func:`hip_decode_attention` and :func:`~subq.ops.hip.mask.hierarchical_mask`.

    Returns:
        ``(o: [B, 1, H, D_v], mask)``: the mask used, for the next step.
    """
    p = k.shape[1] - 1
    stale = mask is None or mask[0].shape[0] != q.shape[0] or p < mask[2] or p - mask[2] >= refresh_interval
    if stale:
        # on CUDA the search is spread over the GPU (decode_mask.py: same masks, 2.5x faster at 128k)
        search = "triton_split" if q.is_cuda and mode in ("auto", "triton") else mode
        indices, counts = hierarchical_mask(
            q, k, mask_k=mask_k, block_size_q=1, block_stride_q=1, block_size_k=block_size_k,
            block_stride_k=block_stride_k, sink_size=sink_size, window=window, causal=True, mode=search,
        )  # fmt: skip
        mask = (indices, counts, p)
    indices, counts, searched_at = mask
    o, _ = hip_decode_attention(
        q, k, v, indices, counts, block_size_k=block_size_k, sink_size=sink_size,
        window=window + p - searched_at, scale=scale, mode=mode,
    )  # fmt: skip
    return o, mask
