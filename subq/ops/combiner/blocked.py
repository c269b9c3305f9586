"""Blocked Combiner attention in pure PyTorch: O(T sqrt(T)) (fixed, axial, mixture), O(T log T) (logsparse).

The sequence is padded to whole blocks (rows, segments, dyadic blocks) and viewed as
``[B, H, n_blocks, block, D]``; span abstractions are computed once per span with masked max-pooling
and a masked softmax inside the span, and every query takes one joint softmax over its direct logits
and its span logits. Padded positions are masked out of every set, so the result equals
``naive.py`` for any ``T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.combiner.naive import call_summary_key, check_combiner_args

NEG_INF = float("-inf")


# ---- shared pieces (also used by the combiner layer's decoding step) ----------------------------


def masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim of ``x`` restricted to ``mask`` (broadcastable). Rows without any
    allowed entry get finite weights that callers never use (their span or query is masked)."""
    x = x.masked_fill(~mask, NEG_INF)
    x = x.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return torch.softmax(x, dim=-1)


def masked_max(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Max-pool ``x: [..., D]`` over ``dim`` (< -1) where ``mask`` (``x``'s shape without ``D``); 0 for
    empty sets."""
    m = mask.unsqueeze(-1)
    out = x.masked_fill(~m, NEG_INF).amax(dim)
    return out.masked_fill(~m.any(dim), 0.0)


def span_summary(q_bar: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Span values: ``q_bar: [..., D]`` attends its span ``k: [..., S, D]``, ``v: [..., S, D_v]``
    (members where ``mask: [..., S]``) -> ``[..., D_v]``."""
    p = masked_softmax(scale * torch.einsum("...d,...sd->...s", q_bar, k), mask)
    return torch.einsum("...s,...sd->...d", p, v)


def joint_softmax(logits: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, ...]:
    """One softmax over the concatenated last dims of ``logits`` (``[B, H, ..., K_g]`` each, masks
    broadcastable to ``[..., K_g]``); returns the weights split back per group."""
    sizes = [x.shape[-1] for x in logits]
    mask = torch.cat([m.expand(x.shape[2:]) for x, m in zip(logits, masks, strict=True)], dim=-1)
    return masked_softmax(torch.cat(logits, dim=-1), mask).split(sizes, dim=-1)


def _blocks(x: Tensor, n: int, size: int) -> Tensor:
    """``[B, H, T, D]`` -> zero-padded ``[B, H, n, size, D]``."""
    return F.pad(x, (0, 0, 0, n * size - x.shape[2])).unflatten(2, (n, size))


def _shift(x: Tensor, dim: int, fill, reverse: bool) -> Tensor:
    """``out[i] = x[i - 1]`` along ``dim`` (reverse: ``x[i + 1]``), ``fill`` at the vacated end."""
    n = x.shape[dim]
    pad = torch.full_like(x.narrow(dim, 0, 1), fill)
    if reverse:
        return torch.cat([x.narrow(dim, 1, n - 1), pad], dim)
    return torch.cat([pad, x.narrow(dim, 0, n - 1)], dim)


def _exclusive_cummax(x: Tensor, valid: Tensor, dim: int, reverse: bool) -> tuple[Tensor, Tensor]:
    """Max of ``x: [B, H, n, m, D]`` over the valid positions strictly before (reverse: after) each
    index along ``dim`` (-3 rows, -2 columns) -> (max, 0 where none; ``[n, m]`` bool: any)."""
    xm = x.masked_fill(~valid.unsqueeze(-1), NEG_INF)
    seen = valid.long()
    if reverse:
        xm, seen = xm.flip(dim), seen.flip(dim + 1)
    xm, seen = torch.cummax(xm, dim).values, seen.cumsum(dim + 1) > 0
    if reverse:
        xm, seen = xm.flip(dim), seen.flip(dim + 1)
    xm, seen = _shift(xm, dim, NEG_INF, reverse), _shift(seen, dim + 1, False, reverse)
    return xm.masked_fill(~seen.unsqueeze(-1), 0.0), seen


# ---- the variants: q, k, v are [B, H, T, D] in the accumulation dtype -----------------------------


def _fixed(q: Tensor, k: Tensor, v: Tensor, s: int, causal: bool, scale: float) -> Tensor:
    B, H, T, _ = q.shape
    dev, n = q.device, -(-T // s)
    qb, kb, vb = (_blocks(x, n, s) for x in (q, k, v))  # [B, H, n, s, D]
    valid = (torch.arange(n * s, device=dev) < T).view(n, s)
    # segment abstractions: max-pooled query and key, value = the pooled query's attention in the segment
    q_bar, k_bar = masked_max(qb, valid, -2), masked_max(kb, valid, -2)  # [B, H, n, D]
    v_bar = span_summary(q_bar, kb, vb, valid, scale)
    pos, seg = torch.arange(s, device=dev), torch.arange(n, device=dev)
    own = pos[None, :] <= pos[:, None] if causal else torch.ones(s, s, dtype=torch.bool, device=dev)
    other = seg[None, :] < seg[:, None] if causal else seg[None, :] != seg[:, None]  # [n_query, n_span]
    w_direct, w_span = joint_softmax(
        [scale * qb @ kb.transpose(-1, -2), scale * torch.einsum("bhnsd,bhrd->bhnsr", qb, k_bar)],
        [valid[:, None, :] & own, (other & valid.any(-1))[:, None, :]],
    )
    o = w_direct @ vb + torch.einsum("bhnsr,bhrd->bhnsd", w_span, v_bar)
    return o.flatten(2, 3)[:, :, :T]


def _logsparse(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Tensor:
    B, H, T, _ = q.shape
    levels = (T - 1).bit_length()
    Tp, dev = 1 << levels, q.device
    q, k, v = (F.pad(x, (0, 0, 0, Tp - T)) for x in (q, k, v))
    valid = torch.arange(Tp, device=dev) < T
    pos = torch.arange(Tp, device=dev)
    logits, masks = [scale * (q * k).sum(-1)], [torch.ones_like(valid)]  # itself
    if Tp > 1:  # the partner i xor 1 (causal: i - 1 when i is odd)
        partner = pos ^ 1
        logits.append(scale * (q * k[:, :, partner]).sum(-1))
        masks.append(valid[partner] & (partner < pos if causal else True))
    summaries = []  # per level and neighbour: (block values [B, H, n_l, D_v] for block b's queries)
    for lv in range(1, levels):
        c, nl = 1 << lv, Tp >> lv
        qb, kb, vb = (x.unflatten(2, (nl, c)) for x in (q, k, v))  # [B, H, n_l, 2^l, D]
        vmask = valid.view(nl, c)
        q_bar, k_bar = masked_max(qb, vmask, -2), masked_max(kb, vmask, -2)
        v_bar = span_summary(q_bar, kb, vb, vmask, scale)  # [B, H, n_l, D_v]
        nonempty, odd = vmask.any(-1), (torch.arange(nl, device=dev) & 1).bool()
        # bit l of i set <=> i's level-l block is odd: it reads the block before; bidirectional
        # queries in even blocks read the block after
        neighbours = [(1, odd & nonempty.roll(1))] + ([] if causal else [(-1, ~odd & nonempty.roll(-1))])
        for shift, use in neighbours:
            logits.append(scale * torch.einsum("bhncd,bhnd->bhnc", qb, k_bar.roll(shift, 2)).flatten(2))
            masks.append(use[:, None].expand(nl, c).reshape(Tp))
            summaries.append(v_bar.roll(shift, 2))
    w = masked_softmax(torch.stack(logits, -1), torch.stack(masks, -1))  # [B, H, Tp, K]
    o = w[..., 0, None] * v
    if Tp > 1:
        o = o + w[..., 1, None] * v[:, :, pos ^ 1]
    for g, v_bar in enumerate(summaries, start=2):
        nl = v_bar.shape[2]
        o = o + (w[..., g].unflatten(2, (nl, Tp // nl))[..., None] * v_bar[:, :, :, None]).flatten(2, 3)
    return o[:, :, :T]


def _axial(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    m: int,
    causal: bool,
    scale: float,
    row_summary_key: Callable[[Tensor], Tensor] | None,
    io_dtype: torch.dtype,
) -> Tensor:
    B, H, T, D = q.shape
    dev, n = q.device, -(-T // m)
    qr, kr, vr = (_blocks(x, n, m) for x in (q, k, v))  # [B, H, n_rows, m, D]
    valid = (torch.arange(n * m, device=dev) < T).view(n, m)
    scores = scale * qr @ kr.transpose(-1, -2)  # [B, H, n, m, m]
    # row summaries: the query at (v, l) attends its whole row v
    row_out = masked_softmax(scores, valid[:, None, :]) @ vr  # [B, H, n, m, D_v]
    if row_summary_key is None:
        k_sum = masked_max(kr, valid, -2)[:, :, :, None].expand_as(kr)
    else:
        summaries = row_out.flatten(2, 3)[:, :, :T].transpose(1, 2).to(io_dtype)  # [B, T, H, D_v]
        keys = call_summary_key(row_summary_key, summaries, (B, T, H, D)).to(q.dtype).transpose(1, 2)
        k_sum = _blocks(keys, n, m)
    col, rows = torch.arange(m, device=dev), torch.arange(n, device=dev)
    own = col[None, :] <= col[:, None] if causal else torch.ones(m, m, dtype=torch.bool, device=dev)
    other = rows[None, :] < rows[:, None] if causal else rows[None, :] != rows[:, None]  # [n_u, n_v]
    logits = [scores, scale * torch.einsum("bhuld,bhvld->bhulv", qr, k_sum)]
    masks = [valid[:, None, :] & own, other[:, None, :] & valid.T[None]]
    r = T - (n - 1) * m  # tokens in the last row
    tail = not causal and n > 1 and r < m
    if tail:  # columns without a last-row summary reach the last row directly
        logits.append(scale * torch.einsum("bhuld,bhjd->bhulj", qr, kr[:, :, -1, :r]))
        masks.append(((rows != n - 1)[:, None] & (col >= r)[None, :])[..., None])
    w = joint_softmax(logits, masks)
    o = w[0] @ vr + torch.einsum("bhulv,bhvld->bhuld", w[1], row_out)
    if tail:
        o = o + w[2] @ vr[:, :, -1:, :r]
    return o.flatten(2, 3)[:, :, :T]


def column_parts(
    qr: Tensor, kr: Tensor, vr: Tensor, valid: Tensor, reverse: bool, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Spans ``(s, c)`` = column ``c`` above row ``s`` (reverse: below): ``(k_bar, v_bar, nonempty)``."""
    rows = torch.arange(qr.shape[2], device=qr.device)
    q_bar, nonempty = _exclusive_cummax(qr, valid, -3, reverse)
    k_bar, _ = _exclusive_cummax(kr, valid, -3, reverse)
    beyond = rows[None, :] > rows[:, None] if reverse else rows[None, :] < rows[:, None]  # [n_s, n_t]
    p = masked_softmax(scale * torch.einsum("bhscd,bhtcd->bhsct", q_bar, kr), beyond[:, None] & valid.T[None])
    return k_bar, torch.einsum("bhsct,bhtcd->bhscd", p, vr), nonempty


def row_parts(
    qr: Tensor, kr: Tensor, vr: Tensor, valid: Tensor, reverse: bool, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Spans ``(t, u)`` = row ``t`` left of column ``u`` (reverse: right): ``(k_bar, v_bar, nonempty)``."""
    col = torch.arange(qr.shape[3], device=qr.device)
    q_bar, nonempty = _exclusive_cummax(qr, valid, -2, reverse)
    k_bar, _ = _exclusive_cummax(kr, valid, -2, reverse)
    beyond = col[None, :] > col[:, None] if reverse else col[None, :] < col[:, None]  # [m_u, m_c]
    p = masked_softmax(scale * q_bar @ kr.transpose(-1, -2), beyond & valid[:, None])
    return k_bar, p @ vr, nonempty


def _mixture(q: Tensor, k: Tensor, v: Tensor, m: int, causal: bool, scale: float) -> Tensor:
    B, H, T, _ = q.shape
    dev, n = q.device, -(-T // m)
    qr, kr, vr = (_blocks(x, n, m) for x in (q, k, v))  # [B, H, n_rows, m, D]
    valid = (torch.arange(n * m, device=dev) < T).view(n, m)
    col, rows = torch.arange(m, device=dev), torch.arange(n, device=dev)
    own_col = col[None, :] <= col[:, None] if causal else torch.ones(m, m, dtype=torch.bool, device=dev)
    other_row = rows[None, :] < rows[:, None] if causal else rows[None, :] != rows[:, None]  # [n_s, n_t]
    not_own_col = col[None, :] != col[:, None]  # [m_u, m_c]
    # direct: own column in the other (causal: earlier) rows, own row (causal: up to u)
    logits = [scale * torch.einsum("bhsud,bhtud->bhsut", qr, kr), scale * qr @ kr.transpose(-1, -2)]
    masks = [other_row[:, None, :] & valid.T[None], valid[:, None, :] & own_col]
    values = []  # how each span group's weights meet its span values
    for reverse in (False,) if causal else (False, True):  # the other columns above (below) row s
        k_bar, v_bar, nonempty = column_parts(qr, kr, vr, valid, reverse, scale)
        logits.append(scale * torch.einsum("bhsud,bhscd->bhsuc", qr, k_bar))
        masks.append(not_own_col[None] & nonempty[:, None, :])
        values.append(("bhsuc,bhscd->bhsud", v_bar))
    for reverse in (False, True):  # the other (causal: earlier) rows left (right) of column u
        k_bar, v_bar, nonempty = row_parts(qr, kr, vr, valid, reverse, scale)
        logits.append(scale * torch.einsum("bhsud,bhtud->bhsut", qr, k_bar))
        masks.append(other_row[:, None, :] & nonempty.T[None])
        values.append(("bhsut,bhtud->bhsud", v_bar))
    w = joint_softmax(logits, masks)
    o = torch.einsum("bhsut,bhtud->bhsud", w[0], vr) + w[1] @ vr
    for w_g, (expr, v_bar) in zip(w[2:], values, strict=True):
        o = o + torch.einsum(expr, w_g, v_bar)
    return o.flatten(2, 3)[:, :, :T]


def blocked_combiner_attention(
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
    """Combiner attention by blocks; same arguments and result as
    :func:`~subq.ops.combiner.naive.naive_combiner_attention`.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H_kv, D]`; v: `[B, T, H_kv, D_v]`.
        variant, block_size, causal, scale, row_summary_key: see the naive form.

    Returns:
        ``(o: [B, T, H, D_v], None)``.
    """
    B, T, H, H_kv, D, block_size = check_combiner_args(q, k, v, variant, block_size, row_summary_key)
    scale = D**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    group = H // H_kv
    qh = q.to(acc).transpose(1, 2)  # [B, H, T, D]
    kh = k.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    if variant == "fixed":
        o = _fixed(qh, kh, vh, block_size, causal, scale)
    elif variant == "logsparse":
        o = _logsparse(qh, kh, vh, causal, scale)
    elif variant == "axial":
        o = _axial(qh, kh, vh, block_size, causal, scale, row_summary_key, v.dtype)
    else:
        o = _mixture(qh, kh, vh, block_size, causal, scale)
    return o.transpose(1, 2).to(q.dtype), None
