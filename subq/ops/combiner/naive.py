"""Reference Combiner attention: the full ``T x T`` factorized attention matrix, built from the definition.

Each variant is first written as a :class:`CombinerPlan` (pure index bookkeeping, plain Python loops):
for every query ``i`` its direct set ``Omega_i^0`` and the spans it reaches through their abstractions.
:func:`combiner_attention_matrix` turns a plan into the row-stochastic matrix ``A`` (one joint softmax
per query over direct logits and span logits, each span weight spread over the span by its own
softmax), and :func:`naive_combiner_attention` returns ``A @ V``. O(T^2) time and memory; the ground
truth for ``blocked.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from subq.ops.common.checks import check_qkv

VARIANTS = ("fixed", "logsparse", "axial", "mixture")


@dataclass
class CombinerPlan:
    """The factorization of every query's support (positions ``0 .. T-1``).

    Attributes:
        direct: ``[T, T]`` bool, ``direct[i, j]``: ``j`` is in the direct set of query ``i``.
        spans: members of each span (positions).
        uses: ``[T, n_spans]`` bool, ``uses[i, r]``: query ``i`` reaches span ``r`` through its abstraction.
        anchors: axial only: the position whose query is span ``r``'s query (``None``: max-pooled query).
    """

    direct: Tensor
    spans: list[list[int]]
    uses: Tensor
    anchors: list[int] | None = None


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size (the span length) must be a positive int, got {block_size!r}")


def default_block_size(T: int) -> int:
    """``ceil(sqrt(T))``: balances the direct part (``block_size``) against the spans (``T / block_size``)."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def check_combiner_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    variant: str,
    block_size: int | None,
    row_summary_key: Callable[[Tensor], Tensor] | None,
) -> tuple[int, int, int, int, int, int]:
    """Validate the public arguments; returns ``(B, T, H, H_kv, D, block_size)`` with the default
    block size filled in."""
    B, T, H, H_kv, D = check_qkv(q, k, v)
    if k.shape[1] != T:
        raise ValueError(f"q and k lengths differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    check_variant(variant)
    block_size = default_block_size(T) if block_size is None else block_size
    check_block_size(block_size)
    if row_summary_key is not None and variant != "axial":
        raise ValueError(f"row_summary_key applies to variant='axial' only, got variant={variant!r}")
    return B, T, H, H_kv, D, block_size


def call_summary_key(fn: Callable[[Tensor], Tensor], summaries: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``fn(summaries)`` with its output shape checked against ``shape`` (``[B, T, H, D]``)."""
    keys = fn(summaries)
    if not isinstance(keys, Tensor) or tuple(keys.shape) != tuple(shape):
        got = tuple(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__
        raise ValueError(f"row_summary_key must return keys of shape {tuple(shape)} [B, T, H, D], got {got}")
    return keys


# ---- plans: one per variant ----------------------------------------------------------------------


def fixed_plan(T: int, s: int, *, causal: bool) -> CombinerPlan:
    """Combiner-Fixed: direct = own segment of ``s`` (``j <= i`` when causal); one span per other
    segment (causal: every earlier segment)."""
    n = -(-T // s)
    spans = [list(range(r * s, min((r + 1) * s, T))) for r in range(n)]
    direct = torch.zeros(T, T, dtype=torch.bool)
    uses = torch.zeros(T, n, dtype=torch.bool)
    for i in range(T):
        seg = i // s
        for j in spans[seg]:
            direct[i, j] = j <= i or not causal
        for r in range(n):
            uses[i, r] = r < seg if causal else r != seg
    return CombinerPlan(direct, spans, uses)


def logsparse_plan(T: int, *, causal: bool) -> CombinerPlan:
    """Combiner-Logsparse: direct = ``{i, i - 1 if i is odd}``; for each level ``l >= 1`` with bit ``l``
    of ``i`` set, the aligned block of ``2^l`` just before ``i``'s own level-``l`` block. Bidirectional
    mirrors it: direct partner ``i xor 1``, and for each clear bit the block just after."""
    levels = (T - 1).bit_length()  # positions 0 .. T-1 need bits 0 .. levels-1
    spans: list[list[int]] = []
    index: dict[tuple[int, int], int] = {}
    for lv in range(1, levels):
        c = 2**lv
        for b in range(-(-T // c)):
            index[lv, b] = len(spans)
            spans.append(list(range(b * c, min((b + 1) * c, T))))
    direct = torch.zeros(T, T, dtype=torch.bool)
    uses = torch.zeros(T, len(spans), dtype=torch.bool)
    for i in range(T):
        direct[i, i] = True
        partner = i ^ 1
        if partner < T and (partner < i or not causal):
            direct[i, partner] = True
        for lv in range(1, levels):
            b = i >> lv
            if b & 1:
                uses[i, index[lv, b - 1]] = True
            elif not causal and (lv, b + 1) in index:
                uses[i, index[lv, b + 1]] = True
    return CombinerPlan(direct, spans, uses)


def axial_plan(T: int, m: int, *, causal: bool) -> CombinerPlan:
    """Combiner-Axial, row-major rows of ``m``: position ``i = u * m + l`` (row ``u``, column ``l``).

    Direct = own row (columns ``<= l`` when causal). One span per position ``(v, l')`` of a row
    (members: row ``v``; query: the query at ``(v, l')``); query ``(u, l)`` reaches the spans ``(v, l)``
    of its own column in every earlier row (bidirectional: every other row). Bidirectional with a
    partial last row: a column with no token in the last row reaches that row directly instead.
    """
    n = -(-T // m)
    spans = [list(range((p // m) * m, min((p // m + 1) * m, T))) for p in range(T)]
    anchors = list(range(T))
    direct = torch.zeros(T, T, dtype=torch.bool)
    uses = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        u, col = divmod(i, m)
        for j in spans[i]:
            direct[i, j] = j <= i or not causal
        for vrow in range(n):
            p = vrow * m + col
            if vrow == u or (causal and vrow > u):
                continue
            if p < T:
                uses[i, p] = True
            else:  # bidirectional, partial last row without column `col`: attend it directly
                direct[i, (n - 1) * m : T] = True
    return CombinerPlan(direct, spans, uses, anchors)


def mixture_plan(T: int, m: int, *, causal: bool) -> CombinerPlan:
    """Combiner-Mixture (the code's ``axial_mixture_unidir``): one softmax over the union of two axial
    plans. For query ``(s, u)``: direct = own column in earlier rows and own row up to ``u``; spans =
    for every other column ``c`` the part of ``c`` above row ``s``, and for every earlier row ``t`` its
    parts left and right of column ``u``. Bidirectional mirrors it (parts below, later rows, whole row)."""
    n = -(-T // m)

    def pos(t: int, c: int) -> int | None:
        p = t * m + c
        return p if 0 <= c < m and p < T else None

    spans: list[list[int]] = []
    index: dict[tuple[str, int, int], int] = {}

    def span(kind: str, a: int, b: int, members: list[int | None]) -> int | None:
        members = [p for p in members if p is not None]
        if not members:
            return None
        if (kind, a, b) not in index:
            index[kind, a, b] = len(spans)
            spans.append(members)
        return index[kind, a, b]

    direct = torch.zeros(T, T, dtype=torch.bool)
    use_list: list[tuple[int, int]] = []
    for i in range(T):
        s, u = divmod(i, m)
        rows = [t for t in range(n) if t < s or (not causal and t != s)]
        for t in rows:
            if (p := pos(t, u)) is not None:
                direct[i, p] = True
        for c in range(m):
            if (p := pos(s, c)) is not None and (c <= u or not causal):
                direct[i, p] = True
        for c in range(m):
            if c == u:
                continue
            parts = [("above", s, c, [pos(t, c) for t in range(s)])]
            if not causal:
                parts.append(("below", s, c, [pos(t, c) for t in range(s + 1, n)]))
            for kind, a, b, members in parts:
                if (r := span(kind, a, b, members)) is not None:
                    use_list.append((i, r))
        for t in rows:
            for kind, cols in (("left", range(u)), ("right", range(u + 1, m))):
                if (r := span(kind, t, u, [pos(t, c) for c in cols])) is not None:
                    use_list.append((i, r))
    uses = torch.zeros(T, len(spans), dtype=torch.bool)
    for i, r in use_list:
        uses[i, r] = True
    return CombinerPlan(direct, spans, uses)


def combiner_plan(T: int, *, variant: str, block_size: int, causal: bool) -> CombinerPlan:
    check_variant(variant)
    check_block_size(block_size)
    if variant == "fixed":
        return fixed_plan(T, block_size, causal=causal)
    if variant == "logsparse":
        return logsparse_plan(T, causal=causal)
    if variant == "axial":
        return axial_plan(T, block_size, causal=causal)
    return mixture_plan(T, block_size, causal=causal)


# ---- the matrix ----------------------------------------------------------------------------------


def _span_max(x: Tensor, spans: list[list[int]]) -> Tensor:
    """Max-pool ``x: [B, H, T, D]`` over each span -> ``[B, H, n_spans, D]``."""
    if not spans:
        return x[:, :, :0]
    width = max(len(s) for s in spans)
    idx = torch.tensor([s + [s[0]] * (width - len(s)) for s in spans], device=x.device)  # pad by repeats
    return x[:, :, idx].amax(dim=3)


def combiner_attention_matrix(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    variant: str = "axial",
    block_size: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    row_summary_key: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The factorized attention matrix ``A: [B, H, T, T]`` (float32, or float64 for float64 inputs).

    Row ``i`` is a distribution over the support of query ``i``:
    ``A[i, j] = softmax-weight of j in the direct set + sum over used spans r containing j of
    (weight of span r) * p(j | r)``, all weights from one joint softmax per query. Arguments as in
    :func:`naive_combiner_attention`; ``v`` is needed only for the axial summary keys.
    """
    B, T, H, H_kv, D, block_size = check_combiner_args(q, k, v, variant, block_size, row_summary_key)
    plan = combiner_plan(T, variant=variant, block_size=block_size, causal=causal)
    scale = D**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    group = H // H_kv
    qh = q.to(acc).transpose(1, 2)  # [B, H, T, D]
    kh = k.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    vh = v.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    dev = q.device
    member = torch.zeros(len(plan.spans), T, dtype=torch.bool, device=dev)
    for r, span in enumerate(plan.spans):
        member[r, span] = True
    direct, uses = plan.direct.to(dev), plan.uses.to(dev)

    # span abstractions: query (max-pooled, or the anchor's), key (max-pooled) and value
    q_bar = qh[:, :, plan.anchors] if plan.anchors is not None else _span_max(qh, plan.spans)
    in_span = (scale * q_bar @ kh.transpose(-1, -2)).masked_fill(~member, float("-inf"))
    p_span = torch.softmax(in_span, dim=-1)  # [B, H, n_spans, T]: p(j | span r)
    if row_summary_key is not None:
        # axial: every position anchors exactly one span; its value is that position's row summary
        summaries = (p_span @ vh).transpose(1, 2).to(v.dtype)  # [B, T, H, D_v]
        k_bar = call_summary_key(row_summary_key, summaries, (B, T, H, D)).to(acc).transpose(1, 2)
    else:
        k_bar = _span_max(kh, plan.spans)

    # one joint softmax per query over its direct logits and its span logits
    logits = torch.cat(
        [
            (scale * qh @ kh.transpose(-1, -2)).masked_fill(~direct, float("-inf")),
            (scale * qh @ k_bar.transpose(-1, -2)).masked_fill(~uses, float("-inf")),
        ],
        dim=-1,
    )
    w = torch.softmax(logits, dim=-1)
    w_direct, w_span = w.split([T, len(plan.spans)], dim=-1)
    return w_direct + w_span @ p_span


def naive_combiner_attention(
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
    """Combiner attention as ``A @ V`` with ``A`` from :func:`combiner_attention_matrix`.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H_kv, D]`; v: `[B, T, H_kv, D_v]` (``H`` a multiple of ``H_kv``).
        variant: ``"fixed"``, ``"logsparse"``, ``"axial"`` or ``"mixture"`` (default ``"axial"``).
        block_size: segment length (fixed) or row length (axial, mixture); ignored by logsparse.
            Default ``ceil(sqrt(T))``.
        causal: every query's support is ``j <= i`` (else all positions).
        scale: logit scale, default ``D ** -0.5``.
        row_summary_key: axial only: maps the row summaries ``[B, T, H, D_v]`` (summary at ``(v, l)``
            = attention of the query at ``(v, l)`` over row ``v``) to their keys ``[B, T, H, D]``.
            Default: the max-pooled keys of the row.

    Returns:
        ``(o: [B, T, H, D_v], None)``; decoding state is built by the ``combiner`` layer.
    """
    a = combiner_attention_matrix(
        q,
        k,
        v,
        variant=variant,
        block_size=block_size,
        causal=causal,
        scale=scale,
        row_summary_key=row_summary_key,
    )
    group = q.shape[2] // k.shape[2]
    vh = v.to(a.dtype).repeat_interleave(group, dim=2).transpose(1, 2)
    return (a @ vh).transpose(1, 2).to(q.dtype), None
