"""The split decode-time mask search (one launch per iteration) against the reference search."""

from __future__ import annotations

import pytest
import torch

from subq.ops.common.triton_compat import tl, triton
from subq.ops.hip import hierarchical_mask, naive_hip_mask
from subq.ops.hip.checks import candidate_ranges
from subq.ops.hip.decode_mask import decode_candidates, decode_mask_split, split_iterations
from subq.ops.hip.mask import _keep_best

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# B, T_k, H, H_kv, D, mask_k, block_size_k, block_stride_k, sink, window, children per program
CASES = [
    (1, 300, 2, 1, 16, 16, 2, 1, 4, 8, 32),  # N = 148 blocks, G = 8: 5 iterations
    (2, 517, 4, 2, 20, 24, 2, 1, 3, 9, 8),  # G = 12 (padded to 16 branches), odd sizes, GQA
    (1, 400, 2, 2, 16, 64, 4, 2, 5, 40, 64),  # strided sampling inside a block (2 of 4 keys)
    (1, 90, 2, 1, 16, 64, 2, 1, 4, 8, 32),  # N <= G: every candidate kept, no search
]


def _int_qk(B, T_k, H, H_kv, D):
    """Small integers: scores are exact in any summation order, so the masks must match exactly;
    many ties exercise the leftmost-first rule."""
    q = torch.randint(-2, 3, (B, 1, H, D)).float()
    k = torch.randint(-2, 3, (B, T_k, H_kv, D)).float()
    return q, k


@pytest.mark.interpret
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "B{}-T{}-H{}/{}-D{}-k{}-bk{}s{}-sink{}-W{}-CH{}".format(*c)
)
def test_split_decode_mask_equals_reference(case):
    B, T_k, H, H_kv, D, mask_k, bk, sk, sink, W, ch = case
    q, k = _int_qk(B, T_k, H, H_kv, D)
    geo = dict(block_size_k=bk, block_stride_k=sk, window=W)
    ref = naive_hip_mask(
        q, k, mask_k=mask_k, block_size_q=1, block_stride_q=1, sink_size=sink, causal=True, **geo
    )
    out = decode_mask_split(
        q.to(DEVICE),
        k.to(DEVICE),
        G=mask_k // bk,
        sink=sink,
        q_offset=T_k - 1,
        children_per_program=ch,
        **geo,
    )
    assert torch.equal(out[1].cpu(), ref[1]), "counts"
    assert torch.equal(out[0].cpu(), ref[0]), f"indices\n{out[0]}\n{ref[0]}"


@pytest.mark.interpret
def test_split_decode_mask_reads_a_view_of_a_longer_cache():
    q, cache = _int_qk(2, 400, 2, 1, 16)
    k = cache[:, :300]  # not contiguous for B = 2
    geo = dict(block_size_k=2, block_stride_k=1, window=8)
    ref = naive_hip_mask(q, k, mask_k=16, block_size_q=1, block_stride_q=1, sink_size=4, causal=True, **geo)
    out = decode_mask_split(q.to(DEVICE), k.to(DEVICE), G=8, sink=4, q_offset=299, **geo)
    assert torch.equal(out[0].cpu(), ref[0])


@pytest.mark.interpret
def test_split_decode_mask_reads_the_hugging_face_layout():
    q, k = _int_qk(2, 300, 4, 2, 16)
    hf = k.transpose(1, 2).contiguous().to(DEVICE)  # [B, H_kv, T, D], as a Hugging Face cache keeps it
    geo = dict(block_size_k=2, block_stride_k=1, window=8)
    ref = naive_hip_mask(q, k, mask_k=16, block_size_q=1, block_stride_q=1, sink_size=4, causal=True, **geo)
    out = decode_mask_split(q.to(DEVICE), hf.transpose(1, 2), G=8, sink=4, q_offset=299, **geo)
    assert torch.equal(out[0].cpu(), ref[0])


@pytest.mark.parametrize("T_k", [1, 5, 64, 65, 300, 1025])
@pytest.mark.parametrize("bk, sink, window", [(2, 4, 8), (4, 3, 1), (2, 0, 256)])
def test_decode_candidates_match_candidate_ranges(T_k, bk, sink, window):
    lo, n_left, _, n_right = candidate_ranges(
        1, T_k, T_k - 1, block_size_q=1, block_size_k=bk, sink_size=sink, window=window, causal=True
    )
    # causal: nothing right of the window (n_right is 0, or -1 when the sinks cover the whole cache)
    assert n_right.item() <= 0
    got = decode_candidates(T_k, T_k - 1, block_size_k=bk, sink_size=sink, window=window)
    assert got == (lo.item(), n_left.item() + n_right.item())


@pytest.mark.interpret
@pytest.mark.parametrize("T_k", [1, 3, 12])
def test_split_decode_mask_short_caches(T_k):
    q, k = _int_qk(1, T_k, 2, 1, 16)
    geo = dict(block_size_k=2, block_stride_k=1, window=2)
    ref = naive_hip_mask(q, k, mask_k=4, block_size_q=1, block_stride_q=1, sink_size=4, causal=True, **geo)
    out = decode_mask_split(q.to(DEVICE), k.to(DEVICE), G=2, sink=4, q_offset=T_k - 1, **geo)
    assert torch.equal(out[1].cpu(), ref[1]) and torch.equal(out[0].cpu(), ref[0]), (out, ref)


@pytest.mark.parametrize(
    "N, G, want", [(9, 8, 1), (16, 8, 1), (17, 8, 2), (32, 8, 2), (33, 8, 3), (65536, 256, 8)]
)
def test_split_iterations(N, G, want):
    assert split_iterations(N, G) == want


@pytest.mark.interpret
def test_hierarchical_mask_split_mode():
    q, k = _int_qk(1, 300, 2, 1, 16)
    kw = dict(mask_k=16, block_size_q=1, block_stride_q=1, block_size_k=2, sink_size=4, window=8)
    ref = naive_hip_mask(q, k, **kw)
    out = hierarchical_mask(q.to(DEVICE), k.to(DEVICE), mode="triton_split", **kw)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
    with pytest.raises(ValueError, match="one causal query per sequence with block_size_q=1"):
        hierarchical_mask(q.to(DEVICE), k.to(DEVICE), mode="triton_split", causal=False, **kw)
    q2 = torch.randn(1, 2, 2, 16)
    with pytest.raises(ValueError, match="one causal query per sequence"):
        hierarchical_mask(q2.to(DEVICE), k.to(DEVICE), mode="triton_split", **kw)


@triton.jit
def _keep_best_kernel(u_ptr, keep_ptr, slot_ptr, N: tl.constexpr, G: tl.constexpr):
    o = tl.arange(0, N)
    keep, slot = _keep_best(tl.load(u_ptr + o), G, 2)
    tl.store(keep_ptr + o, keep.to(tl.int32))
    tl.store(slot_ptr + o, slot)


@pytest.mark.interpret
@pytest.mark.parametrize("n", [512, 32768], ids=["one_packed_scan", "two_scans"])
def test_keep_best_keeps_the_g_largest_ties_leftmost_in_position_order(n):
    """The selection on its own, at a size with one packed scan and at one that needs two, with many
    ties (keys from a small range) and with distinct keys (the radix select stops early)."""
    g = torch.Generator().manual_seed(n)
    for high in (40, 2**32):
        u = torch.randint(0, high, (n,), generator=g, dtype=torch.int64)
        keep, slot = (
            torch.empty(n, dtype=torch.int32, device=DEVICE),
            torch.empty(n, dtype=torch.int32, device=DEVICE),
        )
        _keep_best_kernel[(1,)](u.to(torch.uint32).to(DEVICE), keep, slot, N=n, G=n // 2)
        order = sorted(range(n), key=lambda i: (-int(u[i]), i))  # largest first, ties leftmost
        want = torch.zeros(n, dtype=torch.bool)
        want[order[: n // 2]] = True
        assert torch.equal(keep.cpu().bool(), want)
        assert torch.equal(slot.cpu()[want], torch.arange(n // 2, dtype=torch.int32))
