"""Softmax attention ops: SDPA wrapper vs the naive reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch

from subq.ops.attention import attention_mask, naive_attention, sdpa_attention
from subq.ops.attention import sdpa as sdpa_module
from tests.conftest import assert_close

SHAPES = [(1, 1, 2, 2, 8), (2, 63, 4, 2, 60), (2, 100, 3, 1, 16), (1, 1000, 2, 2, 32)]


@pytest.mark.parametrize(
    "B,T,H,H_kv,D", SHAPES, ids=[f"B{b}-T{t}-H{h}-Hkv{g}-D{d}" for b, t, h, g, d in SHAPES]
)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_sdpa_matches_naive(B, T, H, H_kv, D, causal):
    q = torch.randn(B, T, H, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, T, H_kv, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, T, H_kv, D, dtype=torch.float64, requires_grad=True)
    o_ref, _ = naive_attention(q, k, v, causal=causal)
    o, _ = sdpa_attention(q, k, v, causal=causal)
    assert_close(o, o_ref, 1e-12, "o")
    do = torch.randn_like(o)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do), strict=True
    ):
        assert_close(a, b, 1e-12, f"d{name}")


@pytest.mark.parametrize("native_gqa", [True, False], ids=["enable_gqa", "repeated_heads"])
@pytest.mark.parametrize("T,S", [(1, 10), (4, 10), (10, 10)])
def test_queries_align_to_the_end_of_the_keys(T, S, native_gqa, monkeypatch):
    # grouped heads both ways: SDPA's enable_gqa (torch >= 2.5) and the repeated cache before it
    monkeypatch.setattr(sdpa_module, "SDPA_GQA", native_gqa and sdpa_module.SDPA_GQA)
    q = torch.randn(1, T, 4, 8, dtype=torch.float64)
    k = torch.randn(1, S, 2, 8, dtype=torch.float64)
    v = torch.randn(1, S, 2, 8, dtype=torch.float64)
    o, _ = sdpa_attention(q, k, v, causal=True)
    full_q = torch.cat([torch.randn(1, S - T, 4, 8, dtype=torch.float64), q], 1)
    o_full, _ = naive_attention(full_q, k, v, causal=True)
    assert_close(o, o_full[:, -T:], 1e-12, "aligned decode")


def test_mask_semantics():
    m = attention_mask(5, 5, causal=True, window=2)
    assert m.tolist()[4] == [False, False, False, True, True]
    m = attention_mask(5, 5, causal=False, window=1)
    assert m.tolist()[2] == [False, True, True, True, False]


def test_bad_shapes_name_the_argument():
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads H_kv=2"):
        sdpa_attention(q, torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8))
    with pytest.raises(ValueError, match="q must be 4-D"):
        naive_attention(q[0], q, q)
    with pytest.raises(ValueError, match="head dims differ"):
        naive_attention(q, torch.randn(1, 4, 3, 4), torch.randn(1, 4, 3, 4))
