"""KV offloading for HiP decoding (``subq/ops/hip/offload.py``) with host and device both the CPU:
decode equals the decode over the full cache, and the block pool counts hits, misses and evictions.

python -m pytest tests/ops/test_hip_offload.py -q
"""

from __future__ import annotations

import pytest
import torch

from subq.ops.hip import hierarchical_mask, hip_decode_attention
from subq.ops.hip.offload import OffloadedKVCache

pytestmark = pytest.mark.usefixtures("one_thread")

B, T, H, HKV, D = 2, 300, 4, 2, 8
HP = dict(block_size_k=2, sink_size=4)
WINDOW, MASK_K = 16, 16  # G = 8 blocks per query head, <= 16 per KV head


def _mask(q, k):
    return hierarchical_mask(
        q, k, mask_k=MASK_K, block_size_q=1, block_stride_q=1, window=WINDOW, mode="torch", **HP
    )


def _full(q, k, v, mask, window=WINDOW, mode="torch"):
    return hip_decode_attention(q, k, v, *mask, window=window, mode=mode, **HP)[0]


def _pages(mask):
    """The distinct (batch, KV head, block) triples a mask selects."""
    idx, cnt = mask[0][:, :, 0], mask[1][:, :, 0]
    return {
        (b, h // (H // HKV), int(idx[b, h, j]))
        for b in range(B)
        for h in range(H)
        for j in range(int(cnt[b, h]))
    }


def _setup(capacity=64, max_len=None):
    k, v = torch.randn(B, T, HKV, D), torch.randn(B, T, HKV, D)
    cache = OffloadedKVCache(k, v, device="cpu", capacity=capacity, recent=32, max_len=max_len, **HP)
    return k, v, cache


def test_decode_equals_full_cache_and_counts_hits_and_misses():
    k, v, cache = _setup()
    q = torch.randn(B, 1, H, D)
    mask = _mask(q, k)
    pages = _pages(mask)
    assert len(pages) > 2 * B * HKV  # the heads of a group select different blocks
    o = cache.decode(q, *mask, window=WINDOW, mode="torch")
    assert torch.equal(o, _full(q, k, v, mask))
    assert (cache.hits, cache.misses) == (0, len(pages))
    assert cache.fetched_bytes == 2 * len(pages) * 2 * D * 4
    o = cache.decode(q, *mask, window=WINDOW, mode="torch")  # cached mask: every block hits
    assert torch.equal(o, _full(q, k, v, mask))
    assert (cache.hits, cache.misses) == (len(pages), len(pages))


def test_append_widens_the_window_over_new_tokens():
    k, v, cache = _setup(max_len=T + 3)
    q = torch.randn(B, 1, H, D)
    mask = _mask(q, k)
    cache.decode(q, *mask, window=WINDOW, mode="torch")
    for step in range(1, 4):
        k_t, v_t = torch.randn(B, 1, HKV, D), torch.randn(B, 1, HKV, D)
        cache.append(k_t, v_t)
        k, v = torch.cat((k, k_t), 1), torch.cat((v, v_t), 1)
        q = torch.randn(B, 1, H, D)
        o = cache.decode(q, *mask, window=WINDOW + step, mode="torch")
        assert torch.equal(o, _full(q, k, v, mask, window=WINDOW + step))
    assert cache.misses == len(_pages(mask)) and cache.hits == 3 * cache.misses
    with pytest.raises(ValueError, match="the cache is full"):
        cache.append(k_t, v_t)


def test_lru_eviction_keeps_outputs_exact():
    q1, q2 = torch.randn(B, 1, H, D), torch.randn(B, 1, H, D)
    k, v, _ = _setup()
    m1, m2 = _mask(q1, k), _mask(q2, k)
    p1, p2 = _pages(m1), _pages(m2)
    capacity = max(len(p1), len(p2))  # what one step needs: the pool cannot hold both masks
    cache = OffloadedKVCache(k, v, device="cpu", capacity=capacity, recent=32, **HP)
    for q, m in ((q1, m1), (q2, m2), (q1, m1)):
        assert torch.equal(cache.decode(q, *m, window=WINDOW, mode="torch"), _full(q, k, v, m))
    # step 2 fills the free slots, then evicts blocks of p1 that p2 does not use (all equally old)
    evicted = len(p2 - p1) - (capacity - len(p1))
    assert evicted > 0
    assert cache.hits == len(p1 & p2) + len(p1) - evicted
    assert cache.misses == len(p1) + len(p2 - p1) + evicted
    assert int((cache.page_table >= 0).sum()) == capacity


@pytest.mark.interpret
def test_triton_decode_on_the_compact_cache_equals_full_cache():
    # the kernels run on the GPU when there is one (host memory stays the CPU), else in Triton's interpreter
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    k, v = torch.randn(B, T, HKV, D), torch.randn(B, T, HKV, D)
    cache = OffloadedKVCache(k, v, device=dev, capacity=64, recent=32, **HP)
    q = torch.randn(B, 1, H, D)
    mask = [m.to(dev) for m in _mask(q, k)]
    q = q.to(dev)
    o = cache.decode(q, *mask, window=WINDOW, mode="triton", num_splits=2)
    ref = hip_decode_attention(
        q, k.to(dev), v.to(dev), *mask, window=WINDOW, mode="triton", num_splits=2, **HP
    )[0]
    assert torch.allclose(o, ref, rtol=1e-6, atol=1e-6), (o - ref).abs().max()


def test_bad_arguments():
    k, v = torch.randn(1, 64, 1, 8), torch.randn(1, 64, 1, 8)
    with pytest.raises(ValueError, match="sink_size=3 must be a multiple of block_size_k=2"):
        OffloadedKVCache(k, v, device="cpu", block_size_k=2, sink_size=3)
    cache = OffloadedKVCache(k, v, device="cpu", capacity=2, recent=16, block_size_k=2, sink_size=4)
    q = torch.randn(1, 1, 1, 8)
    idx = torch.tensor([[[[4, 5, 6, -1]]]], dtype=torch.int32)
    cnt = torch.tensor([[[3]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="needs 3 blocks but the pool holds capacity=2"):
        cache.decode(q, idx, cnt, window=8)
    with pytest.raises(ValueError, match="window=32 must be at most recent=16"):
        cache.decode(q, idx, cnt, window=32)
    with pytest.raises(ValueError, match="selected blocks must lie between"):
        cache.decode(
            q,
            torch.tensor([[[[1, 2, 3, 30]]]], dtype=torch.int32),
            torch.tensor([[[4]]], dtype=torch.int32),
            window=8,
        )
