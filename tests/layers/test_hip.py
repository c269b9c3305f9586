"""The ``hip`` mixer beyond the generic contract: sparse budgets, decode with a cached mask."""

from __future__ import annotations

import pytest
import torch

import subq
from subq.ops.hip import naive_block_sparse_attention, naive_hip_mask
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
SPARSE = dict(num_heads=4, num_kv_heads=2, mask_k=8, block_size_q=8, sink_size=2, window=6)


def _mixer(**kw):
    return subq.get_mixer("hip")(32, dtype=torch.float64, **{**SPARSE, **kw}).eval()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_sparse_forward_torch_equals_naive_and_is_sparse(causal):
    fast, ref = _mixer(causal=causal), _mixer(causal=causal, mode="naive")
    ref.load_state_dict(fast.state_dict())
    dense = subq.get_mixer("attention")(32, num_heads=4, num_kv_heads=2, causal=causal, dtype=torch.float64)
    dense.load_state_dict(fast.state_dict())
    x = torch.randn(2, 120, 32, dtype=torch.float64, requires_grad=True)
    y = fast(x)
    assert_close(y, ref(x), 1e-10, "torch vs naive")
    assert (y - dense(x)).abs().max() > 1e-3, "the budget should make attention sparse here"
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref(x), x, g)[0], 1e-10, "dx")


def _projections(mixer, x):
    q, k, v = mixer._qkv(x)
    return q, k, v


@pytest.mark.parametrize("refresh", [1, 3, 8])
def test_decode_with_cached_mask(refresh):
    mixer = _mixer(refresh_interval=refresh)
    T, split = 60, 20
    x = torch.randn(2, T, 32, dtype=torch.float64)
    _, state = mixer.prefill(x[:, :split])
    q, k, v = _projections(mixer, x)
    searched = None
    for p in range(split, T):
        y_t, state = mixer.step(x[:, p], state)
        if searched is None or p - searched >= refresh:
            searched = p
            idx, cnt = naive_hip_mask(
                q[:, p : p + 1], k[:, : p + 1], mask_k=8, block_size_q=1, block_stride_q=1,
                sink_size=2, window=6,
            )  # fmt: skip
        o, _ = naive_block_sparse_attention(
            q[:, p : p + 1], k[:, : p + 1], v[:, : p + 1], idx, cnt, block_size_q=1, sink_size=2,
            window=6 + p - searched,
        )  # fmt: skip
        assert state.searched_at == searched
        assert_close(y_t, mixer.out_proj(o.flatten(1)), 1e-10, f"step p={p}")


def test_full_budget_decode_is_exact_for_any_refresh():
    mixer = _mixer(mask_k=256, refresh_interval=8)
    x = torch.randn(2, 50, 32, dtype=torch.float64)
    y = mixer(x)
    _, state = mixer.prefill(x[:, :10])
    for p in range(10, 50):
        y_t, state = mixer.step(x[:, p], state)
        assert_close(y_t, y[:, p], 1e-10, f"step p={p}")


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="block_size_k must be a power of two"):
        _mixer(block_size_k=3)
    with pytest.raises(ValueError, match="refresh_interval"):
        _mixer(refresh_interval=0)
    with pytest.raises(ValueError, match="mask_k must be a positive multiple"):
        _mixer(mask_k=1)
