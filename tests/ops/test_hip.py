"""HiP attention: the mask search (reference properties, recall, Triton kernel), block-sparse
attention (gather form and Triton forward/backward vs the dense reference), decode."""

from __future__ import annotations

import pytest
import torch

from subq.ops.attention import naive_attention
from subq.ops.hip import (
    attention_mass_recall,
    block_sparse_attention,
    hierarchical_mask,
    hip_attention,
    hip_decode_attention,
    hip_token_mask,
    naive_block_sparse_attention,
    naive_hip_attention,
    naive_hip_mask,
    topk_oracle_mask,
)
from subq.ops.hip.checks import candidate_ranges
from subq.ops.hip.naive import kv_rows
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
# Triton forms: on the GPU when there is one, else through the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(B, T, H, H_kv, D, dtype=torch.float64, T_k=None):
    T_k = T if T_k is None else T_k
    q = torch.randn(B, T, H, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, T_k, H_kv, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, T_k, H_kv, D, dtype=dtype, requires_grad=True)
    return q, k, v


GEO = dict(block_size_q=8, block_size_k=2, sink_size=4, window=8)
MASK_CASES = [
    # T, mask_k, block_size_q, block_stride_q, block_size_k, block_stride_k, sink, window
    (100, 8, 8, 2, 2, 1, 4, 8),
    (63, 4, 4, 1, 1, 1, 0, 1),
    (200, 16, 16, 4, 4, 2, 5, 12),
    (37, 8, 8, 8, 2, 2, 3, 64),
]


def _mask_kw(case, causal):
    T, mk, bq, sq, bk, sk, sink, W = case
    return dict(
        mask_k=mk, block_size_q=bq, block_stride_q=sq, block_size_k=bk, block_stride_k=sk,
        sink_size=sink, window=W, causal=causal,
    )  # fmt: skip


def _mask_id(case):
    return "T{}-k{}-bq{}s{}-bk{}s{}-sink{}-W{}".format(*case)


@pytest.mark.parametrize("case", MASK_CASES, ids=_mask_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_mask_properties(case, causal):
    T = case[0]
    kw = _mask_kw(case, causal)
    q, k, _ = _qkv(2, T, 4, 2, 16)
    indices, counts = naive_hip_mask(q, k, **kw)
    G = kw["mask_k"] // kw["block_size_k"]
    n_qb = -(-T // kw["block_size_q"])
    assert indices.shape == (2, 4, n_qb, G) and counts.shape == (2, 4, n_qb)
    assert (counts <= G).all() and (counts >= 0).all()
    lo, n_left, rs, n_right = candidate_ranges(
        T, T, 0, block_size_q=kw["block_size_q"], block_size_k=kw["block_size_k"],
        sink_size=kw["sink_size"], window=kw["window"], causal=causal,
    )  # fmt: skip
    for n in range(n_qb):
        cand = set(range(int(lo[n]), int(lo[n] + n_left[n]))) | set(
            range(int(rs[n]), int(rs[n] + n_right[n]))
        )
        for b in range(2):
            for h in range(4):
                c = int(counts[b, h, n])
                sel = indices[b, h, n, :c].tolist()
                assert c == min(G, len(cand))
                assert sel == sorted(set(sel)), "indices must be unique and ascending"
                assert set(sel) <= cand
                assert (indices[b, h, n, c:] == -1).all()
    allowed = hip_token_mask(indices, counts, T, T, causal=causal, **{x: kw[x] for x in GEO})
    pos = torch.arange(T)
    delta = pos[:, None] - pos[None]
    if causal:
        assert not (allowed & (delta < 0)).any(), "a future key is attended"
        assert allowed[..., (delta >= 0) & (delta < kw["window"])].all(), "window not attended"
    else:
        assert allowed[..., delta.abs() <= kw["window"]].all(), "window not attended"
    sinks = (pos[None] < kw["sink_size"]).expand(T, T) & ((delta >= 0) if causal else True)
    assert allowed[..., sinks].all(), "sink not attended"
    # at most sink + window(s) + G blocks per query
    per_query = allowed.sum(-1)
    bound = kw["sink_size"] + (1 if causal else 2) * kw["window"] + 1 + G * kw["block_size_k"]
    assert per_query.max() <= bound


def test_full_budget_is_dense_attention():
    for causal in (True, False):
        q, k, v = _qkv(2, 70, 4, 2, 12)
        o, _ = naive_hip_attention(q, k, v, mask_k=128, causal=causal, **GEO)
        assert_close(o, naive_attention(q, k, v, causal=causal)[0], 1e-12, f"naive causal={causal}")
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
            v.repeat_interleave(2, 2).transpose(1, 2), is_causal=causal,
        ).transpose(1, 2)  # fmt: skip
        assert_close(o, sdpa, 1e-12, "vs SDPA")


def _structured(T, D=16, H=2, seed=0):
    """Keys vary smoothly along the sequence (a few low frequencies); every query block looks for
    one random position: the attention locality HiP's search relies on."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(T, dtype=torch.float64)
    freqs = torch.rand(D, generator=g, dtype=torch.float64) * 0.05
    phase = torch.rand(D, generator=g, dtype=torch.float64) * 6.28
    k = torch.cos(pos[:, None] * freqs + phase)[None, :, None].expand(1, T, H, D).clone()
    target = torch.randint(0, T, (T // 16 + 1, H), generator=g)
    q = torch.empty(1, T, H, D, dtype=torch.float64)
    for h in range(H):
        q[0, :, h] = 4.0 * k[0, target[torch.arange(T) // 16, h], h]
    q += 0.05 * torch.randn(q.shape, generator=g, dtype=torch.float64)
    return q, k


def test_structured_recall_of_the_topk_oracle():
    T, mask_k = 512, 32
    q, k = _structured(T)
    kw = dict(block_size_q=16, block_size_k=2, sink_size=4, window=16)
    indices, counts = naive_hip_mask(q, k, mask_k=mask_k, block_stride_q=2, **kw)
    est = hip_token_mask(indices, counts, T, T, **kw)
    oracle = topk_oracle_mask(q, k, mask_k)
    late = torch.arange(T) >= 4 * (kw["sink_size"] + kw["window"] + mask_k)  # where selection matters
    recall = (est & oracle)[..., late, :].sum() / oracle[..., late, :].sum()
    # the same budget spent on random blocks
    rnd = torch.randint_like(indices, 0, T // 2).sort(-1).values
    base = hip_token_mask(rnd, counts, T, T, **kw)
    base_recall = (base & oracle)[..., late, :].sum() / oracle[..., late, :].sum()
    assert recall >= 0.8, f"recall {recall:.3f}"
    assert recall > base_recall + 0.3, f"recall {recall:.3f} vs random blocks {base_recall:.3f}"
    mass = attention_mass_recall(q, k, est, oracle)[..., late]
    assert mass.mean() >= 0.8, f"mass recall {mass.mean():.3f}"


@pytest.mark.parametrize("case", MASK_CASES[:2] + MASK_CASES[3:], ids=_mask_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_torch_gather_attention_matches_naive(case, causal):
    kw = _mask_kw(case, causal)
    q, k, v = _qkv(2, case[0], 4, 2, 12)
    indices, counts = naive_hip_mask(q, k, **kw)
    geo = {x: kw[x] for x in GEO}
    o_ref, _ = naive_block_sparse_attention(q, k, v, indices, counts, causal=causal, **geo)
    o, _ = block_sparse_attention(q, k, v, indices, counts, causal=causal, mode="torch", **geo)
    assert_close(o, o_ref, 1e-12, "o")
    do = torch.randn_like(o)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do), strict=False
    ):
        assert_close(a, b, 1e-12, f"d{name}")


def _int_qk(B, T, H, H_kv, D, dtype):
    """Small-integer q and k: dot products are exact in fp16 and fp32, so equal scores tie exactly
    and the kernel must break ties as the reference does."""
    q = torch.randint(-2, 3, (B, T, H, D)).to(dtype)
    k = torch.randint(-2, 3, (B, T, H_kv, D)).to(dtype)
    return q, k


TRITON_MASK_CASES = [
    # T, mask_k, bq, sq, bk, sk, sink, window
    (80, 8, 16, 2, 2, 1, 4, 8),
    (70, 12, 16, 4, 4, 2, 3, 5),
    (1, 8, 1, 1, 2, 1, 4, 8),
    # several scoring chunks per iteration (2G = 128 children, 64 per chunk) and 3-4 iterations
    (520, 128, 16, 2, 2, 1, 4, 8),
    # [CH * KS] = [4 * 32] key tiles: 8 chunks of 4 children; branches of 1-2 blocks reuse scores
    (400, 128, 32, 4, 32, 1, 5, 40),
]


@pytest.mark.interpret
@pytest.mark.parametrize("case", TRITON_MASK_CASES, ids=_mask_id)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_mask_equals_reference(case, causal, dtype):
    T = case[0]
    kw = _mask_kw(case, causal)
    T_k = 60 if T == 1 else T
    q, k = _int_qk(1, T, 2, 1, 16, dtype)
    if T == 1:
        k = torch.randint(-2, 3, (1, T_k, 1, 16)).to(dtype)
        if not causal:
            pytest.skip("one query: decoding is causal")
    ref = naive_hip_mask(q, k, **kw)
    out = [x.cpu() for x in hierarchical_mask(q.to(DEVICE), k.to(DEVICE), mode="triton", **kw)]
    assert torch.equal(out[1], ref[1]), "counts"
    assert torch.equal(out[0], ref[0]), f"indices\n{out[0]}\n{ref[0]}"


@pytest.mark.interpret
@pytest.mark.parametrize("children, warps", [(4, 2), (256, 8)])
def test_triton_mask_tuning_overrides_keep_the_mask(children, warps):
    from subq.ops.hip.mask import _hip_mask_triton

    case = (520, 128, 16, 2, 2, 1, 4, 8)  # several chunks per iteration by default (64 children)
    kw = _mask_kw(case, True)
    q, k = _int_qk(1, case[0], 2, 1, 16, torch.float32)
    ref = naive_hip_mask(q, k, **kw)
    geo = {n: kw[n] for n in ("block_size_q", "block_stride_q", "block_size_k", "block_stride_k", "window")}
    out = _hip_mask_triton(
        q.to(DEVICE), k.to(DEVICE), G=kw["mask_k"] // kw["block_size_k"], sink=kw["sink_size"], causal=True,
        q_offset=0, children_per_product=children, num_warps=warps, **geo,
    )  # fmt: skip
    assert torch.equal(out[1].cpu(), ref[1]) and torch.equal(out[0].cpu(), ref[0])


TRITON_ATTN_CASES = [
    # B, T, H, H_kv, D, mask_k, bk, sink, window
    (1, 70, 2, 1, 20, 8, 2, 3, 5),
    (2, 33, 2, 2, 16, 4, 4, 0, 1),
    (1, 40, 2, 1, 128, 8, 2, 3, 5),  # D = 128: 64-key chunks forward, 32 backward
]


@pytest.mark.interpret
@pytest.mark.parametrize(
    "case", TRITON_ATTN_CASES, ids=lambda c: "B{}-T{}-H{}-Hkv{}-D{}-k{}-bk{}-sink{}-W{}".format(*c)
)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_attention_forward_backward(case, causal, dtype):
    B, T, H, H_kv, D, mk, bk, sink, W = case
    geo = dict(block_size_q=16, block_size_k=bk, sink_size=sink, window=W, causal=causal)
    q, k, v = _qkv(B, T, H, H_kv, D, dtype=torch.float32)
    indices, counts = naive_hip_mask(q, k, mask_k=mk, block_stride_q=2, **geo)
    qd, kd, vd = (x.detach().to(DEVICE, dtype).requires_grad_() for x in (q, k, v))
    indices, counts = indices.to(DEVICE), counts.to(DEVICE)
    o_ref, _ = naive_block_sparse_attention(*(x.double() for x in (qd, kd, vd)), indices, counts, **geo)
    o, _ = block_sparse_attention(qd, kd, vd, indices, counts, mode="triton", **geo)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert_close(o, o_ref, tol, "o")
    do = torch.randn_like(o_ref)
    grads = torch.autograd.grad(o, (qd, kd, vd), do.to(dtype))
    grads_ref = torch.autograd.grad(o_ref, (qd, kd, vd), do)
    for name, a, b in zip("qkv", grads, grads_ref, strict=False):
        assert_close(a, b, tol * 2, f"d{name}")


@pytest.mark.interpret
def test_triton_full_budget_equals_dense():
    q, k, v = (x.detach().to(DEVICE).requires_grad_() for x in _qkv(1, 48, 2, 1, 16, dtype=torch.float32))
    o, _ = hip_attention(q, k, v, mask_k=64, block_size_q=16, sink_size=2, window=4, mode="triton")
    o_ref, _ = naive_attention(q, k, v)
    assert_close(o, o_ref, 1e-5, "o")
    do = torch.randn_like(o)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(o, (q, k, v), do), torch.autograd.grad(o_ref, (q, k, v), do), strict=False
    ):
        assert_close(a, b, 1e-5, f"d{name}")


@pytest.mark.parametrize("mode", ["torch", pytest.param("triton", marks=pytest.mark.interpret)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("splits", [1, 3, 7, None])
@pytest.mark.parametrize("layout", ["slice", "hf_cache"])
def test_decode_matches_reference(mode, dtype, splits, layout):
    B, T, H, H_kv, D = 2, 90, 4, 2, 20
    if layout == "slice":  # a view into a longer [B, T, H_kv, D] cache

        def view(cache):
            return cache[:, :T]

        shape = (B, 120, H_kv, D)
    else:  # Hugging Face's [B, H_kv, T_max, D] cache, sliced and transposed: read in place

        def view(cache):
            return cache[:, :, :T].transpose(1, 2)

        shape = (B, H_kv, 120, D)
    cache_k, cache_v = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    k, v = view(cache_k), view(cache_v)
    q = torch.randn(B, 1, H, D, dtype=dtype)
    geo = dict(block_size_k=2, sink_size=3)
    indices, counts = naive_hip_mask(q, k, mask_k=8, block_size_q=1, block_stride_q=1, window=6, **geo)
    # the mask came from an earlier search with window 6; the step widens it to cover newer tokens
    o_ref, _ = naive_block_sparse_attention(
        q.double(), k.double(), v.double(), indices, counts, block_size_q=1, window=9, **geo
    )
    dev = DEVICE if mode == "triton" else "cpu"
    k, v = view(cache_k.to(dev)), view(cache_v.to(dev))  # the layout on the device too
    q, indices, counts = (x.to(dev) for x in (q, indices, counts))
    # twice: the Triton kernel's last split of a head merges and resets the head's ticket for the next call
    for call in range(2):
        o, _ = hip_decode_attention(q, k, v, indices, counts, window=9, mode=mode, num_splits=splits, **geo)
        assert_close(o.cpu(), o_ref, 1e-5 if dtype == torch.float32 else 2e-3, f"o (call {call})")


def test_bad_arguments_raise():
    q, k, v = _qkv(1, 40, 2, 1, 8)
    with pytest.raises(ValueError, match="mask_k must be a positive multiple of block_size_k=4"):
        naive_hip_mask(q, k, mask_k=2, block_size_k=4)
    with pytest.raises(ValueError, match="block_size_q must be a power of two, got 24"):
        naive_hip_mask(q, k, block_size_q=24)
    with pytest.raises(ValueError, match="block_stride_q must be a power of two <= its block size 8"):
        naive_hip_mask(q, k, block_size_q=8, block_stride_q=16)
    with pytest.raises(ValueError, match="window must be a positive int"):
        hip_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        hip_attention(
            q, torch.randn(1, 40, 3, 8, dtype=torch.float64), torch.randn(1, 40, 3, 8, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="indices must be"):
        block_sparse_attention(
            q, k, v, torch.zeros(1, 2, 3, 4, dtype=torch.int32), torch.zeros(1, 2, 3, dtype=torch.int32)
        )
    with pytest.raises(ValueError, match="block_size_q >= 16"):
        idx, cnt = naive_hip_mask(
            q, k, block_size_q=8, mask_k=8, **{x: GEO[x] for x in ("sink_size", "window")}
        )
        block_sparse_attention(q.float(), k.float(), v.float(), idx, cnt, block_size_q=8, mode="triton")


@pytest.mark.parametrize("layout", ["contiguous", "hf_cache", "slice"])
@pytest.mark.parametrize("grad", [False, True])
def test_kv_rows_reads_each_heads_own_kv_head_in_any_layout(layout, grad):
    B, T, H, H_kv, D = 2, 37, 6, 3, 8
    base = torch.randn(B, T, H_kv, D, dtype=torch.float64)
    if layout == "hf_cache":  # [B, H_kv, T, D] storage seen as [B, T, H_kv, D]
        x = base.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "slice":  # the first T positions of a longer cache
        x = torch.cat([base, torch.randn(B, 5, H_kv, D, dtype=torch.float64)], 1)[:, :T]
    else:
        x = base.clone()
    x.requires_grad_(grad)
    pos = torch.randint(-3, T + 3, (B, H, 4, 5))  # out of range positions are clamped
    rows = kv_rows(x, pos)
    expected = base.repeat_interleave(H // H_kv, 2).transpose(1, 2)  # [B, H, T, D]
    idx = pos.clamp(0, T - 1).flatten(2)[..., None].expand(-1, -1, -1, D)
    assert torch.equal(rows.detach(), torch.gather(expected, 2, idx).view(*pos.shape, D))
    if grad:
        (rows * 2).sum().backward()
        counts = torch.zeros(B, T, H_kv, dtype=torch.float64)
        h_kv = (torch.arange(H) // (H // H_kv))[None, :, None, None].expand_as(pos)
        b_idx = torch.arange(B)[:, None, None, None].expand_as(pos)
        ones = torch.ones(pos.shape, dtype=torch.float64)
        counts.index_put_((b_idx, pos.clamp(0, T - 1), h_kv), ones, accumulate=True)
        assert torch.equal(x.grad, 2 * counts[..., None].expand(-1, -1, -1, D))
