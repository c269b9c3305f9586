"""Combiner mixer: every query attends to all positions in one softmax at sub-quadratic cost.

Projects ``x`` to multi-head queries/keys/values (rotary optional), runs
:func:`subq.ops.combiner.combiner_attention` (variants ``fixed``, ``logsparse``, ``axial``, ``mixture``;
math in ``subq/ops/combiner/README.md``) and projects back. Causal decoding keeps the span abstractions
finished so far plus the keys/values the next tokens still read directly (one state class per variant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from subq.layers.base import Mixer
from subq.layers.registry import register_mixer
from subq.layers.rotary import RotaryEmbedding
from subq.ops.combiner import combiner_attention
from subq.ops.combiner.blocked import row_parts, span_summary
from subq.ops.combiner.naive import check_block_size, check_variant

ROW_SUMMARIES = ("proj", "max")

SummaryKey = Callable[[Tensor, Tensor], Tensor]
"""Axial summary keys: ``(row summaries [B, m, H, D], layer input [B, m, d_model]) -> [B, m, H, D]``."""


def _attend(q: Tensor, keys: list[Tensor], values: list[Tensor], scale: float) -> Tensor:
    """One query ``[B, H, D]`` against the concatenated ``[B, H, K_g, D]`` groups: one joint softmax."""
    k, v = torch.cat(keys, dim=2), torch.cat(values, dim=2)
    w = torch.softmax(scale * torch.einsum("bhd,bhkd->bhk", q, k), dim=-1)
    return torch.einsum("bhk,bhkd->bhd", w, v)


def _append(cache: Tensor, length: int, x: Tensor) -> Tensor:
    """Write ``x: [B, H, D]`` at slot ``length`` of ``cache: [B, H, capacity, D]`` (capacity doubles)."""
    if length == cache.shape[2]:
        B, H, _, D = cache.shape
        cache = torch.cat([cache, cache.new_zeros(B, H, max(length, 16), D)], dim=2)
    cache[:, :, length] = x
    return cache


def _summary_value(q_bar: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Span value of a finished span: ``q_bar: [..., D]`` attends all of ``k, v: [..., S, D]``."""
    return span_summary(q_bar, k, v, torch.ones(k.shape[:-1], dtype=torch.bool, device=k.device), scale)


@dataclass
class FixedState:
    """Combiner-Fixed: finished segments' abstractions ``[B, H, n, D]`` and the open segment's keys,
    values ``[B, H, s, D]`` and running query max ``[B, H, D]``."""

    span_k: Tensor
    span_v: Tensor
    seg_k: Tensor
    seg_v: Tensor
    seg_q_max: Tensor
    length: int = 0

    def add(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> None:
        slot = self.length % self.seg_k.shape[2]
        self.seg_k[:, :, slot], self.seg_v[:, :, slot] = k, v
        self.seg_q_max = q if slot == 0 else torch.maximum(self.seg_q_max, q)

    def attend(self, q: Tensor, scale: float) -> Tensor:
        n = self.length % self.seg_k.shape[2] + 1
        return _attend(q, [self.seg_k[:, :, :n], self.span_k], [self.seg_v[:, :, :n], self.span_v], scale)

    def finish(self, scale: float, summary_key: SummaryKey | None) -> None:
        self.length += 1
        if self.length % self.seg_k.shape[2] == 0:  # the segment is complete: store its abstraction
            k_bar = self.seg_k.amax(2, keepdim=True)
            v_bar = _summary_value(self.seg_q_max, self.seg_k, self.seg_v, scale)[:, :, None]
            self.span_k = torch.cat([self.span_k, k_bar], dim=2)
            self.span_v = torch.cat([self.span_v, v_bar], dim=2)


@dataclass
class LogsparseState:
    """Combiner-Logsparse: every key/value ``[B, H, capacity, D]`` (the next level-``l`` block summary
    needs all its tokens once its pooled query is known), and per level ``l >= 1`` the last finished
    block's abstraction and the open block's running query max (``[B, H, D]`` each)."""

    k: Tensor
    v: Tensor
    prefix_q_max: Tensor
    level_k: list[Tensor] = field(default_factory=list)
    level_v: list[Tensor] = field(default_factory=list)
    level_q_max: list[Tensor] = field(default_factory=list)
    length: int = 0

    def add(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> None:
        i = self.length
        self.k, self.v = _append(self.k, i, k), _append(self.v, i, v)
        self.prefix_q_max = q if i == 0 else torch.maximum(self.prefix_q_max, q)
        for lv, q_max in enumerate(self.level_q_max, start=1):
            self.level_q_max[lv - 1] = q if i % 2**lv == 0 else torch.maximum(q_max, q)

    def attend(self, q: Tensor, scale: float) -> Tensor:
        i = self.length
        keys, values = [self.k[:, :, i : i + 1]], [self.v[:, :, i : i + 1]]
        if i & 1:
            keys.append(self.k[:, :, i - 1 : i])
            values.append(self.v[:, :, i - 1 : i])
        for lv in range(1, i.bit_length()):
            if (i >> lv) & 1:  # the block just before i's own level-lv block: the last finished one
                keys.append(self.level_k[lv - 1][:, :, None])
                values.append(self.level_v[lv - 1][:, :, None])
        return _attend(q, keys, values, scale)

    def finish(self, scale: float, summary_key: SummaryKey | None) -> None:
        self.length += 1
        end, lv = self.length, 1
        while 2**lv <= end:
            if end % 2**lv == 0:  # the level-lv block ending here is complete
                size = 2**lv
                new = lv > len(self.level_k)
                q_bar = self.prefix_q_max if new else self.level_q_max[lv - 1]
                kb, vb = self.k[:, :, end - size : end], self.v[:, :, end - size : end]
                k_bar, v_bar = kb.amax(2), _summary_value(q_bar, kb, vb, scale)
                if new:
                    self.level_k.append(k_bar)
                    self.level_v.append(v_bar)
                    self.level_q_max.append(q_bar)  # reset by the next token, which opens a block
                else:
                    self.level_k[lv - 1], self.level_v[lv - 1] = k_bar, v_bar
            lv += 1


@dataclass
class AxialState:
    """Combiner-Axial (rows of ``m``): the summary keys/values ``[B, H, n, m, D]`` of every finished
    row, and the open row's queries, keys, values ``[B, H, m, D]`` and layer input ``[B, m, d_model]``
    (the summaries need the whole row)."""

    sum_k: Tensor
    sum_v: Tensor
    row_q: Tensor
    row_k: Tensor
    row_v: Tensor
    row_x: Tensor
    length: int = 0

    def add(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> None:
        col = self.length % self.row_q.shape[2]
        self.row_q[:, :, col], self.row_k[:, :, col], self.row_v[:, :, col] = q, k, v
        self.row_x[:, col] = x

    def attend(self, q: Tensor, scale: float) -> Tensor:
        col = self.length % self.row_q.shape[2]
        keys = [self.row_k[:, :, : col + 1], self.sum_k[:, :, :, col]]
        values = [self.row_v[:, :, : col + 1], self.sum_v[:, :, :, col]]
        return _attend(q, keys, values, scale)

    def finish(self, scale: float, summary_key: SummaryKey | None) -> None:
        self.length += 1
        m = self.row_q.shape[2]
        if self.length % m:
            return
        # the row is complete: the query at each of its columns attends the whole row
        p = torch.softmax(scale * self.row_q @ self.row_k.transpose(-1, -2), dim=-1)
        row_out = p @ self.row_v  # [B, H, m, D]
        if summary_key is None:
            keys = self.row_k.amax(2, keepdim=True).expand_as(self.row_k)
        else:
            keys = summary_key(row_out.transpose(1, 2), self.row_x).transpose(1, 2)
        self.sum_k = torch.cat([self.sum_k, keys[:, :, None]], dim=2)
        self.sum_v = torch.cat([self.sum_v, row_out[:, :, None]], dim=2)


@dataclass
class MixtureState:
    """Combiner-Mixture (rows of ``m``): every key/value ``[B, H, capacity, D]`` (own-column tokens are
    read directly), each finished row's left/right part abstractions ``[B, H, n, m, D]``, the
    abstractions of each column above the open row and their running query/key maxima
    ``[B, H, m, D]``, and the open row's queries ``[B, H, m, D]``."""

    k: Tensor
    v: Tensor
    row_q: Tensor
    col_q_max: Tensor
    col_k_max: Tensor
    above_k: Tensor
    above_v: Tensor
    left_k: Tensor
    left_v: Tensor
    right_k: Tensor
    right_v: Tensor
    length: int = 0

    def add(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> None:
        self.k, self.v = _append(self.k, self.length, k), _append(self.v, self.length, v)
        self.row_q[:, :, self.length % self.row_q.shape[2]] = q

    def attend(self, q: Tensor, scale: float) -> Tensor:
        m = self.row_q.shape[2]
        s, u = divmod(self.length, m)
        # direct: own column in earlier rows, own row up to u
        keys = [self.k[:, :, u : s * m : m], self.k[:, :, s * m : s * m + u + 1]]
        values = [self.v[:, :, u : s * m : m], self.v[:, :, s * m : s * m + u + 1]]
        if s > 0:
            others = [c for c in range(m) if c != u]  # the other columns above row s
            keys.append(self.above_k[:, :, others])
            values.append(self.above_v[:, :, others])
            for part_k, part_v, nonempty in (
                (self.left_k, self.left_v, u > 0),
                (self.right_k, self.right_v, u < m - 1),
            ):
                if nonempty:  # earlier rows left (right) of column u
                    keys.append(part_k[:, :, :, u])
                    values.append(part_v[:, :, :, u])
        return _attend(q, keys, values, scale)

    def finish(self, scale: float, summary_key: SummaryKey | None) -> None:
        self.length += 1
        m = self.row_q.shape[2]
        s, u = divmod(self.length, m)
        if u:
            return
        # row s - 1 is complete: its left/right parts, and the columns above row s
        start = (s - 1) * m
        row_k, row_v = self.k[:, :, start : start + m], self.v[:, :, start : start + m]
        full = torch.ones(1, m, dtype=torch.bool, device=row_k.device)
        for reverse, (name_k, name_v) in ((False, ("left_k", "left_v")), (True, ("right_k", "right_v"))):
            k_bar, v_bar, _ = row_parts(
                self.row_q[:, :, None], row_k[:, :, None], row_v[:, :, None], full, reverse, scale
            )
            setattr(self, name_k, torch.cat([getattr(self, name_k), k_bar], dim=2))
            setattr(self, name_v, torch.cat([getattr(self, name_v), v_bar], dim=2))
        first = s == 1
        self.col_q_max = self.row_q.clone() if first else torch.maximum(self.col_q_max, self.row_q)
        self.col_k_max = row_k.clone() if first else torch.maximum(self.col_k_max, row_k)
        cols_k = self.k[:, :, : s * m].unflatten(2, (s, m)).transpose(2, 3)  # [B, H, m, s, D]
        cols_v = self.v[:, :, : s * m].unflatten(2, (s, m)).transpose(2, 3)
        self.above_k = self.col_k_max
        self.above_v = _summary_value(self.col_q_max, cols_k, cols_v, scale)


@register_mixer("combiner")
class Combiner(Mixer):
    """Combiner attention (Ren et al., 2021): full-support softmax attention through span abstractions.

    Args:
        d_model: model width.
        num_heads: heads; ``d_model`` must be divisible by it (default 1).
        variant: ``"fixed"`` (segments of ``block_size``), ``"logsparse"`` (dyadic blocks),
            ``"axial"`` (rows of ``block_size``, the default) or ``"mixture"`` (rows of ``block_size``).
        block_size: segment / row length (default 128, as in the paper's configs); logsparse ignores it.
        row_summary: axial summary keys: ``"proj"`` (default, the paper code's ``row_summary='proj'``:
            ``Linear -> + x -> LayerNorm -> Linear`` of the row summary) or ``"max"`` (max-pooled row keys).
        rotary: apply rotary position embedding to queries and keys.
        rotary_base: RoPE frequency base.
        bias: biases in the projections.
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``state_size(L)`` in floats per sequence, with ``d = d_model``, ``s = block_size`` and
    ``r = min(L, s)``: fixed ``2 d (L // s + r) + d``; logsparse ``2 d L + 3 d floor(log2 L) + d``;
    axial ``2 d s (L // s) + 3 d r`` (``+ d r`` with ``row_summary="proj"``); mixture
    ``2 d L + 4 d s (L // s) + 5 d r``.
    """

    modes = ("torch", "naive")
    supports_decode = True
    example_kwargs = {"num_heads": 2, "variant": "axial", "block_size": 7}

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int = 1,
        variant: str = "axial",
        block_size: int = 128,
        row_summary: str = "proj",
        rotary: bool = False,
        rotary_base: float = 10000.0,
        bias: bool = False,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        check_variant(variant)
        check_block_size(block_size)
        if row_summary not in ROW_SUMMARIES:
            raise ValueError(f"row_summary must be one of {ROW_SUMMARIES}, got {row_summary!r}")
        if not isinstance(num_heads, int) or num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} (>= 1)")
        self.variant, self.block_size, self.row_summary = variant, block_size, row_summary
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **self.factory_kwargs)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **self.factory_kwargs)
        self.rotary = RotaryEmbedding(self.head_dim, base=rotary_base, device=device) if rotary else None
        self.summary_proj = variant == "axial" and row_summary == "proj"
        if self.summary_proj:  # row summary (all heads) -> + x -> LayerNorm -> per-head keys
            self.summary_out = nn.Linear(d_model, d_model, bias=bias, **self.factory_kwargs)
            self.summary_norm = nn.LayerNorm(d_model, **self.factory_kwargs)
            self.summary_key = nn.Linear(d_model, d_model, bias=bias, **self.factory_kwargs)

    def _qkv(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """``x: [B, T, d_model]`` -> q, k, v ``[B, T, H, D]``."""
        q, k, v = self.qkv_proj(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        if self.rotary is not None:
            q, k = self.rotary.rotate_pair(q, k, offset)
        return q, k, v

    def _summary_keys(self, summaries: Tensor, x: Tensor) -> Tensor:
        """Axial ``row_summary="proj"``: summaries ``[B, n, H, D]``, inputs ``[B, n, d_model]`` -> keys."""
        h = self.summary_norm(self.summary_out(summaries.flatten(2)) + x)
        return self.summary_key(h).unflatten(-1, (self.num_heads, self.head_dim))

    def _summary_key_fn(self) -> SummaryKey | None:
        return self._summary_keys if self.summary_proj else None

    def _mix(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Combiner attention of ``q, k, v: [B, T, H, D]`` (inputs ``x``), projected back."""
        key_fn = (lambda s: self._summary_keys(s, x)) if self.summary_proj else None
        # under "auto" the op picks its fused Triton forward on CUDA where it applies (axial)
        mode = "auto" if self.mode == "auto" else self.resolve_mode(x)
        o, _ = combiner_attention(
            q, k, v, variant=self.variant, block_size=self.block_size, causal=self.causal,
            scale=self.scale, row_summary_key=key_fn, mode=mode,
        )  # fmt: skip
        return self.out_proj(o.flatten(2))

    def _forward(self, x: Tensor) -> Tensor:
        return self._mix(x, *self._qkv(x))

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        d, s, L = self.d_model, self.block_size, seq_len
        r = min(L, s)
        if self.variant == "fixed":
            return 2 * d * (L // s + r) + d
        if self.variant == "logsparse":
            return 2 * d * L + 3 * d * max(L.bit_length() - 1, 0) + d
        if self.variant == "axial":
            return 2 * d * s * (L // s) + (4 if self.summary_proj else 3) * d * r
        return 2 * d * L + 4 * d * s * (L // s) + 5 * d * r

    def init_state(self, batch_size: int, *, device=None, dtype=None):
        self._require_decode("init_state")
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        B, H, D, s = batch_size, self.num_heads, self.head_dim, self.block_size

        def zeros(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)

        if self.variant == "fixed":
            return FixedState(
                zeros(B, H, 0, D), zeros(B, H, 0, D), zeros(B, H, s, D), zeros(B, H, s, D), zeros(B, H, D)
            )
        if self.variant == "logsparse":
            return LogsparseState(zeros(B, H, 0, D), zeros(B, H, 0, D), zeros(B, H, D))
        if self.variant == "axial":
            return AxialState(
                zeros(B, H, 0, s, D),
                zeros(B, H, 0, s, D),
                zeros(B, H, s, D),
                zeros(B, H, s, D),
                zeros(B, H, s, D),
                zeros(B, s, self.d_model),
            )
        return MixtureState(
            zeros(B, H, 0, D),
            zeros(B, H, 0, D),
            zeros(B, H, s, D),
            zeros(B, H, s, D),
            zeros(B, H, s, D),
            zeros(B, H, s, D),
            zeros(B, H, s, D),
            *(zeros(B, H, 0, s, D) for _ in range(4)),
        )

    def _prefill(self, x: Tensor):
        q, k, v = self._qkv(x)
        state = self.init_state(x.shape[0], device=x.device, dtype=k.dtype)
        for t in range(x.shape[1]):  # the state after each token (its output comes from the blocked form)
            state.add(q[:, t], k[:, t], v[:, t], x[:, t])
            state.finish(self.scale, self._summary_key_fn())
        return self._mix(x, q, k, v), state

    def _step(self, x_t: Tensor, state):
        q, k, v = (t[:, 0] for t in self._qkv(x_t[:, None], offset=state.length))  # [B, H, D]
        state.add(q, k, v, x_t)
        o = state.attend(q, self.scale)
        state.finish(self.scale, self._summary_key_fn())
        return self.out_proj(o.flatten(1)), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, variant={self.variant!r}, "
            f"block_size={self.block_size}, row_summary={self.row_summary!r}, "
            f"rotary={self.rotary is not None}"
        )
