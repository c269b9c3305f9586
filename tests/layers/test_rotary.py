"""Rotary embedding: the shared cos/sin table against the closed form."""

from __future__ import annotations

import math

import torch

from subq.layers import rotary
from subq.layers.rotary import RotaryEmbedding


def _closed_form(x: torch.Tensor, offset: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE in float64, written out pair by pair."""
    B, T, H, D = x.shape
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(D // 2):
        freq = base ** (-2 * i / D)
        a = torch.tensor([(offset + t) * freq for t in range(T)], dtype=torch.float64)[None, :, None]
        x1, x2 = x[..., i].double(), x[..., i + D // 2].double()
        out[..., i] = x1 * a.cos() - x2 * a.sin()
        out[..., i + D // 2] = x2 * a.cos() + x1 * a.sin()
    return out


def test_table_matches_the_closed_form_and_fresh_angles():
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 7, 3, 16)
    for offset in (0, 5, 300, 1000):  # 300 and 1000 grow the table past its first 256 positions
        y = rope(x, offset)
        assert torch.allclose(y.double(), _closed_form(x, offset), atol=1e-4), offset
        fresh = rope(x, torch.tensor(offset))  # a tensor offset bypasses the table
        assert torch.allclose(y, fresh, atol=1e-6), offset
    q, k = rope.rotate_pair(x, 2 * x, 9)
    assert torch.equal(q, rope(x, 9)) and torch.equal(k, rope(2 * x, 9))


def test_the_table_is_shared_and_spans_past_it_are_computed(monkeypatch):
    monkeypatch.setattr(rotary, "CACHED_POSITIONS", 512)
    monkeypatch.setattr(rotary, "_TABLES", {})
    a, b = RotaryEmbedding(8), RotaryEmbedding(8)
    x = torch.randn(1, 4, 1, 8)
    a(x, 10)
    b(x, 20)
    assert len(rotary._TABLES) == 1  # one table for both layers
    ((cos, _),) = rotary._TABLES.values()
    assert cos.shape[0] == 256
    y = a(x, 600)  # past CACHED_POSITIONS: computed, and the table stays within its cap
    assert torch.allclose(y.double(), _closed_form(x, 600), atol=1e-4)
    assert next(iter(rotary._TABLES.values()))[0].shape[0] <= 512
    RotaryEmbedding(8, base=500.0)(x, 0)
    assert len(rotary._TABLES) == 2


def test_a_table_built_under_inference_mode_trains(monkeypatch):
    monkeypatch.setattr(rotary, "_TABLES", {})
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 5, 2, 8)
    with torch.inference_mode():
        rope(x, 3)  # generation first ...
    w = torch.randn(1, 5, 2, 8, requires_grad=True)
    rope(w, 3).square().sum().backward()  # ... then training: the table is not an inference tensor
    assert w.grad is not None and math.isfinite(w.grad.sum().item())
