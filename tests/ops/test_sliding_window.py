"""Sliding-window attention: chunked (CPU) and FlexAttention (CUDA) forms vs the naive reference."""

from __future__ import annotations

import pytest
import torch

from subq.ops.sliding_window import (
    chunk_sliding_window_attention,
    flex_sliding_window_attention,
    naive_sliding_window_attention,
    sliding_window_attention,
)
from tests.conftest import assert_close

CASES = [
    # B, T, H, H_kv, D, window, chunk
    (1, 1, 2, 2, 8, 4, None),
    (2, 63, 4, 2, 60, 8, None),
    (2, 100, 3, 1, 16, 16, 7),
    (1, 37, 2, 2, 16, 100, None),
    (1, 1000, 2, 1, 32, 64, None),
    (2, 200, 2, 2, 8, 1, 16),
]


def _ids(case):
    B, T, H, H_kv, D, W, C = case
    return f"B{B}-T{T}-H{H}-Hkv{H_kv}-D{D}-W{W}-C{C}"


def _inputs(B, T, H, H_kv, D, dtype=torch.float64, device="cpu"):
    q = torch.randn(B, T, H, D, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(B, T, H_kv, D, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(B, T, H_kv, D, dtype=dtype, device=device, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_chunk_matches_naive(case, causal):
    B, T, H, H_kv, D, W, C = case
    q, k, v = _inputs(B, T, H, H_kv, D)
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=W, causal=causal)
    o, _ = chunk_sliding_window_attention(q, k, v, window=W, causal=causal, chunk_size=C)
    assert_close(o, o_ref, 1e-12, "o")
    do = torch.randn_like(o)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do), strict=True
    ):
        assert_close(a, b, 1e-12, f"d{name}")


def test_window_covering_everything_is_full_attention():
    from subq.ops.attention import naive_attention

    q, k, v = _inputs(1, 50, 2, 2, 8)
    o, _ = chunk_sliding_window_attention(q, k, v, window=50)
    assert_close(o, naive_attention(q, k, v)[0], 1e-12, "window >= T")


def test_window_one_is_identity_on_values():
    q, k, v = _inputs(1, 20, 2, 2, 8)
    o, _ = chunk_sliding_window_attention(q, k, v, window=1, causal=True)
    assert_close(o, v, 1e-12, "window=1 attends only itself")


def test_final_state_is_the_last_window():
    q, k, v = _inputs(1, 20, 2, 2, 8)
    _, (k_last, v_last) = sliding_window_attention(q, k, v, window=6, mode="torch", output_final_state=True)
    assert torch.equal(k_last, k[:, -6:]) and torch.equal(v_last, v[:, -6:])


def test_bad_arguments():
    q, k, v = _inputs(1, 8, 2, 2, 8)
    with pytest.raises(ValueError, match="window must be a positive int, got 0"):
        chunk_sliding_window_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        sliding_window_attention(q, k, v, window=2, mode="fast")
    with pytest.raises(ValueError, match="head_dim >= 16"):
        flex_sliding_window_attention(q, k, v, window=2)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        flex_sliding_window_attention(*_inputs(1, 8, 2, 2, 16), window=2)


@pytest.mark.gpu
def test_auto_takes_the_chunked_form_below_flex_head_dim_on_cuda():
    """FlexAttention's compiled kernels need head_dim >= 16: ``auto`` (and the layer in ``auto``) runs
    the chunked form for smaller heads on CUDA."""
    from subq.layers.registry import get_mixer

    q, k, v = _inputs(2, 100, 2, 2, 8, dtype=torch.float32, device="cuda")
    o, _ = sliding_window_attention(q, k, v, window=16, mode="auto")
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=16)
    assert_close(o, o_ref, 1e-5, "o")
    layer = get_mixer("sliding_window")(16, num_heads=2, window=8, device="cuda")
    assert layer(torch.randn(2, 50, 16, device="cuda")).shape == (2, 50, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [128, 1000, 4096])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_flex_matches_naive_on_cuda(T, causal):
    q, k, v = _inputs(2, T, 4, 2, 64, dtype=torch.bfloat16, device="cuda")
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=128, causal=causal)
    o, _ = flex_sliding_window_attention(q, k, v, window=128, causal=causal)
    assert_close(o, o_ref, 2e-2, "o")
    do = torch.randn_like(o)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do), strict=True
    ):
        assert_close(a, b, 2e-2, f"d{name}")
