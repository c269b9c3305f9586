"""Combiner attention: the factorized matrix (rows are distributions over the whole support), the
blocked form against it (forward and every gradient at awkward T), special cases that reduce to full
softmax attention, causality, and restatements of the paper's JAX layers (google-research
``combiner/jax/model/layer.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from subq.ops.attention import naive_attention
from subq.ops.combiner import (
    VARIANTS,
    blocked_combiner_attention,
    combiner_attention,
    combiner_attention_matrix,
    combiner_plan,
    naive_combiner_attention,
)
from tests.conftest import assert_close

DIRECTIONS = pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
ALL_VARIANTS = pytest.mark.parametrize("variant", VARIANTS)


def _inputs(B, T, H, H_kv, D, dtype=torch.float64):
    q = torch.randn(B, T, H, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, T, H_kv, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, T, H_kv, D, dtype=dtype, requires_grad=True)
    return q, k, v


def _support(T: int, causal: bool) -> torch.Tensor:
    full = torch.ones(T, T, dtype=torch.bool)
    return full.tril() if causal else full


# ---- the plan and the matrix ---------------------------------------------------------------------

PLAN_CASES = [(1, 3), (2, 1), (5, 2), (17, 4), (63, 8), (100, 7), (100, 1), (37, 100)]


@ALL_VARIANTS
@DIRECTIONS
@pytest.mark.parametrize("T,block", PLAN_CASES, ids=[f"T{t}-bs{b}" for t, b in PLAN_CASES])
def test_plan_covers_the_support(variant, causal, T, block):
    """Direct set + used spans reach every position of the support and nothing else; every variant
    but the mixture (a union of two plans) reaches each position exactly once."""
    plan = combiner_plan(T, variant=variant, block_size=block, causal=causal)
    member = torch.zeros(len(plan.spans), T, dtype=torch.long)
    for r, span in enumerate(plan.spans):
        member[r, span] = 1
    cover = plan.direct.long() + plan.uses.long() @ member
    support = _support(T, causal)
    assert bool((cover[~support] == 0).all()), "a position outside the support is reached"
    if variant == "mixture":
        assert bool((cover[support] >= 1).all()), "a position of the support is not reached"
    else:
        assert bool((cover[support] == 1).all()), f"cover counts {cover[support].unique().tolist()}"


@ALL_VARIANTS
@DIRECTIONS
@pytest.mark.parametrize("T,block", [(1, None), (63, 8), (100, 7)], ids=["T1", "T63-bs8", "T100-bs7"])
def test_matrix_rows_are_distributions_over_the_whole_support(variant, causal, T, block):
    q, k, v = _inputs(2, T, 2, 2, 8)
    a = combiner_attention_matrix(q, k, v, variant=variant, block_size=block, causal=causal)
    support = _support(T, causal)
    assert a.shape == (2, 2, T, T)
    assert_close(a.sum(-1), torch.ones(2, 2, T, dtype=a.dtype), 1e-14, "row sums")
    assert bool((a[..., support] > 0).all()), "every query must reach every position of its support"
    assert bool((a[..., ~support] == 0).all()), "weight above the diagonal of a causal matrix"


# ---- blocked vs naive ----------------------------------------------------------------------------

CASES = [
    # B, T, H, H_kv, D, block
    (1, 1, 2, 2, 8, None),
    (2, 63, 2, 1, 16, 8),
    (2, 100, 3, 3, 8, 7),
    (1, 1000, 2, 2, 16, None),
]


def _case_id(case):
    B, T, H, H_kv, D, block = case
    return f"B{B}-T{T}-H{H}-Hkv{H_kv}-D{D}-bs{block}"


def _check_against_naive(variant, causal, case, dtype, tol, **kw):
    B, T, H, H_kv, D, block = case
    q, k, v = _inputs(B, T, H, H_kv, D, dtype)
    args = dict(variant=variant, block_size=block, causal=causal, **kw)
    o_ref, _ = naive_combiner_attention(q, k, v, **args)
    o, _ = blocked_combiner_attention(q, k, v, **args)
    assert o.dtype == dtype
    assert_close(o, o_ref, tol, "o")
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    grads_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    for name, g, g_ref in zip("qkv", grads, grads_ref, strict=True):
        assert_close(g, g_ref, tol, f"d{name}")


@ALL_VARIANTS
@DIRECTIONS
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_blocked_matches_naive_fp32(variant, causal, case, one_thread):
    _check_against_naive(variant, causal, case, torch.float32, 1e-5)


@ALL_VARIANTS
@DIRECTIONS
@pytest.mark.parametrize("case", CASES[1:3], ids=_case_id)
def test_blocked_matches_naive_fp64(variant, causal, case, one_thread):
    _check_against_naive(variant, causal, case, torch.float64, 1e-12)


@DIRECTIONS
def test_axial_summary_keys_from_a_function(causal):
    """A learned summary key (as the paper code's ``row_summary='proj'``): same in both forms,
    gradients reach the function's parameters."""
    weight = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)

    def key_fn(summaries):  # [B, T, H, D]
        return torch.tanh(summaries @ weight)

    q, k, v = _inputs(2, 45, 2, 2, 8)
    args = dict(variant="axial", block_size=7, causal=causal, row_summary_key=key_fn)
    o_ref, _ = naive_combiner_attention(q, k, v, **args)
    o, _ = blocked_combiner_attention(q, k, v, **args)
    assert_close(o, o_ref, 1e-12, "o")
    do = torch.randn_like(o)
    for name, g, g_ref in zip(
        ["q", "k", "v", "weight"],
        torch.autograd.grad(o, (q, k, v, weight), do),
        torch.autograd.grad(o_ref, (q, k, v, weight), do),
        strict=True,
    ):
        assert_close(g, g_ref, 1e-12, f"d{name}")


# ---- special cases and properties ----------------------------------------------------------------

FULL_CASES = [("fixed", 1), ("fixed", 64), ("axial", 1), ("axial", 64), ("mixture", 1), ("mixture", 64)]


@DIRECTIONS
@pytest.mark.parametrize("variant,block", FULL_CASES, ids=[f"{v}-bs{b}" for v, b in FULL_CASES])
def test_degenerate_blocks_are_full_attention(variant, block, causal):
    """Spans of one token (block 1) or a single block: the factorization is exact softmax attention."""
    q, k, v = _inputs(2, 50, 2, 2, 8)
    o, _ = blocked_combiner_attention(q, k, v, variant=variant, block_size=block, causal=causal)
    assert_close(o, naive_attention(q, k, v, causal=causal)[0], 1e-12, f"{variant} block {block}")


@DIRECTIONS
def test_logsparse_up_to_two_tokens_is_full_attention(causal):
    q, k, v = _inputs(2, 2, 2, 2, 8)
    o, _ = blocked_combiner_attention(q, k, v, variant="logsparse", causal=causal)
    assert_close(o, naive_attention(q, k, v, causal=causal)[0], 1e-12, "logsparse T=2")


@ALL_VARIANTS
@pytest.mark.parametrize("t", [0, 17, 62, 98])
def test_future_tokens_leave_the_past_unchanged(variant, t):
    q, k, v = (x.detach() for x in _inputs(2, 100, 2, 2, 8))
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, t + 1 :] = torch.randn_like(x[:, t + 1 :])
    o, _ = blocked_combiner_attention(q, k, v, variant=variant, block_size=7)
    o2, _ = blocked_combiner_attention(q2, k2, v2, variant=variant, block_size=7)
    assert torch.equal(o[:, : t + 1], o2[:, : t + 1]), f"output up to t={t} changed"
    assert not torch.allclose(o[:, t + 1 :], o2[:, t + 1 :])


def test_dispatch_and_low_precision():
    q, k, v = _inputs(1, 30, 2, 2, 8)
    for mode, fn in (("torch", blocked_combiner_attention), ("naive", naive_combiner_attention)):
        assert torch.equal(combiner_attention(q, k, v, mode=mode)[0], fn(q, k, v)[0])
    qb, kb, vb = (x.detach().bfloat16() for x in (q, k, v))
    o, _ = combiner_attention(qb, kb, vb, variant="mixture", block_size=4)
    assert o.dtype == torch.bfloat16
    assert_close(o, naive_combiner_attention(q, k, v, variant="mixture", block_size=4)[0], 2e-2, "bf16")


def test_bad_arguments():
    q, k, v = _inputs(1, 8, 2, 2, 8)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"block_size .*got {bad!r}"):
            blocked_combiner_attention(q, k, v, variant="fixed", block_size=bad)
        with pytest.raises(ValueError, match="block_size"):
            naive_combiner_attention(q, k, v, variant="axial", block_size=bad)
    with pytest.raises(ValueError, match=r"variant must be one of .*'routing'"):
        blocked_combiner_attention(q, k, v, variant="routing")
    with pytest.raises(ValueError, match="row_summary_key applies to variant='axial' only"):
        combiner_attention(q, k, v, variant="fixed", row_summary_key=lambda s: s)
    with pytest.raises(ValueError, match=r"row_summary_key must return keys of shape \(1, 8, 2, 8\)"):
        blocked_combiner_attention(q, k, v, variant="axial", block_size=3, row_summary_key=lambda s: s[:, :4])
    with pytest.raises(ValueError, match="mode must be one of"):
        combiner_attention(q, k, v, mode="triton")
    with pytest.raises(ValueError, match="lengths differ"):
        blocked_combiner_attention(q, k[:, :5], v[:, :5])


# ---- restatements of the paper's JAX layers (causal, T a multiple of the block) -----------------
# Inputs follow the code: the query arrives already divided by sqrt(D) (``get_qkv``); flax's
# ``dot_product_attention`` divides its query by sqrt(D) again; masks are additive -1e9 / -1e10.


def _dot_product_attention(query, key, value):  # flax: [..., q, H, D] x [..., k, H, D]
    w = torch.softmax(torch.einsum("...qhd,...khd->...hqk", query / math.sqrt(query.shape[-1]), key), -1)
    return torch.einsum("...hqk,...khd->...qhd", w, value)


def _jax_sqrtn(query, key, value, seg):
    """``_SelfAttSqrtn``."""
    B, T, H, D = query.shape
    n = T // seg
    cur_query = query.reshape(-1, seg, H, D)
    merged_query = cur_query.amax(1, keepdim=True) * math.sqrt(D)
    cur_key, cur_value = key.reshape(cur_query.shape), value.reshape(cur_query.shape)
    span_val = _dot_product_attention(merged_query, cur_key, cur_value).reshape(B, n, H, D)
    span_key = cur_key.amax(1).reshape(B, n, H, D)
    local_bias = torch.where(torch.ones(seg, seg, dtype=torch.bool).tril(), 0.0, -1e10)[:, None, :]
    local_logits = torch.einsum("...qhd,...khd->...qhk", cur_query, cur_key) + local_bias
    local_logits = local_logits.reshape(B, T, H, seg)
    seg_of = torch.arange(T) // seg
    prev_bias = torch.where(seg_of[:, None] > torch.arange(n)[None, :], 0.0, -1e10)[:, None, :]
    prev_logits = torch.einsum("...qhd,...khd->...qhk", query, span_key) + prev_bias
    attn = torch.softmax(torch.cat([local_logits, prev_logits], -1), -1)
    local_att, prev_att = attn.split([seg, n], -1)
    local_merged = torch.einsum("...qhk,...khd->...qhd", local_att.reshape(B * n, seg, H, seg), cur_value)
    prev_merged = torch.einsum("...qhk,...khd->...qhd", prev_att, span_val)
    return local_merged.reshape(prev_merged.shape) + prev_merged


def _jax_logn(query, key, value):
    """``_SelfAttLogn`` (``log_len = ceil(log2(max_len - 1))``)."""
    B, T, H, D = query.shape
    log_len = math.ceil(math.log2(T - 1))
    joint_logits, list_vals = [], []
    for lv in range(log_len):
        ctx = 2**lv
        last_pos = T - T % ctx
        if lv == 0:
            span_key = key.reshape(-1, 1, H, D)
            span_val = value.reshape(span_key.shape)
            joint_logits.append((query * key).sum(-1, keepdim=True))
        else:
            left_query = query[:, :last_pos].reshape(-1, ctx, H, D)
            span_query = left_query.amax(1, keepdim=True)
            left_key = key[:, :last_pos].reshape(left_query.shape)
            left_val = value[:, :last_pos].reshape(left_query.shape)
            span_val = _dot_product_attention(span_query * math.sqrt(D), left_key, left_val)
            span_key = left_key.amax(1, keepdim=True)
        rolled_q = torch.roll(query, -ctx, 1)[:, :last_pos].reshape(-1, ctx, H, D)
        rolled_mask = torch.cat(
            [(torch.arange(T - ctx) // ctx) % 2, torch.ones(last_pos + ctx - T, dtype=torch.long)]
        )
        rolled_logits = torch.einsum("...qhd,...khd->...qhk", rolled_q, span_key)
        rolled_logits = rolled_logits.reshape(B, -1, H, 1) + rolled_mask.reshape(1, -1, 1, 1) * -1e9
        orig_logits = torch.nn.functional.pad(rolled_logits, (0, 0, 0, 0, 0, T - last_pos), value=-1e9)
        joint_logits.append(torch.roll(orig_logits, ctx, 1))
        list_vals.append(span_val)
    local_weights = torch.softmax(torch.cat(joint_logits, -1), -1).split(1, -1)
    joint_merged = local_weights[0] * value
    for lv in range(log_len):
        ctx = 2**lv
        last_pos, num_ctx = T - T % ctx, T // ctx
        rolled_w = torch.roll(local_weights[lv + 1], -ctx, 1)[:, :last_pos].reshape(B * num_ctx, ctx, H, 1)
        rolled_v = (rolled_w * list_vals[lv]).reshape(B, -1, H, D)
        rolled_v = torch.nn.functional.pad(rolled_v, (0, 0, 0, 0, 0, T - last_pos))
        joint_merged = joint_merged + torch.roll(rolled_v, ctx, 1)
    return joint_merged


def _jax_axial_rowmajor(query, key, value, seg, key_row_fn):
    """``_SelfAttAxialRowmajor`` with its summary-key projection replaced by ``key_row_fn``."""
    B, T, H, D = query.shape
    n = T // seg
    q, k, v = (x.reshape(B, n, seg, H, D) for x in (query, key, value))
    local_logits = torch.einsum("...qhd,...khd->...qhk", q, k)
    row_attn_out = torch.einsum("...qhk,...khd->...qhd", torch.softmax(local_logits, -1), v)
    key_row = key_row_fn(row_attn_out)
    cols = torch.arange(seg)
    local_logits = local_logits + ((cols[:, None] < cols[None, :]) * -1e10)[:, None, :]
    rows = torch.arange(n)
    global_mask = ((rows[:, None] <= rows[None, :]) * -1e10)[:, None, None, :]
    global_logits = torch.einsum("bqlhd,bklhd->bqlhk", q, key_row) + global_mask
    local_att, global_att = torch.softmax(torch.cat([local_logits, global_logits], -1), -1).split(
        [seg, n], -1
    )
    local_merged = torch.einsum("bsqhk,bskhd->bsqhd", local_att, v)
    global_merged = torch.einsum("bqlhv,bvlhd->bqlhd", global_att, row_attn_out)
    return (local_merged + global_merged).reshape(B, T, H, D)


def _shift_right(x, axis):
    return torch.cat([torch.zeros_like(x.narrow(axis, 0, 1)), x.narrow(axis, 0, x.shape[axis] - 1)], axis)


def _shift_left(x, axis):
    return torch.cat([x.narrow(axis, 1, x.shape[axis] - 1), torch.zeros_like(x.narrow(axis, 0, 1))], axis)


def _cummax(x, axis, reverse=False):
    if reverse:
        return torch.cummax(x.flip(axis), axis).values.flip(axis)
    return torch.cummax(x, axis).values


def _jax_axial_mixture(query, key, value, seg):
    """``_AxialMixtureAtt`` (jax.lax.cummax)."""
    B, T, H, D = query.shape
    n, m = T // seg, seg
    cq, ck, cv = (x.reshape(B, n, m, H, D) for x in (query, key, value))
    col_logit, col_attn = "BSUNK,BTUNK->BUNST", "BUNST,BTUNK->BSUNK"
    row_logit, row_attn = "BUSNK,BUTNK->BUNST", "BUNST,BUTNK->BUSNK"

    def bias(allowed):
        return torch.where(allowed, 0.0, -1e10)

    rows, cols = torch.arange(n), torch.arange(m)
    col_strict_bias = bias(rows[:, None] > rows[None, :])  # [S, T]
    row_bias = bias(cols[:, None] >= cols[None, :])
    col_logits = torch.einsum(col_logit, cq, ck) + col_strict_bias
    row_logits = torch.einsum(row_logit, cq, ck) + row_bias

    col_up2down_key = _shift_right(_cummax(ck, 1), 1)
    w = torch.softmax(torch.einsum(col_logit, _cummax(cq, 1), ck) + bias(rows[:, None] >= rows[None, :]), -1)
    col_up2down_summary = _shift_right(torch.einsum(col_attn, w, cv), 1)
    row_without_myself = bias(cols[:, None] != cols[None, :])
    all_maskout = torch.full((m, m), -1e10)
    prev_bias = torch.stack([all_maskout] + [row_without_myself] * (n - 1))[:, None]  # [U, 1, S, T]
    previous_row_logits = torch.einsum(row_logit, cq, col_up2down_key) + prev_bias

    row_l2r_key = _shift_right(_cummax(ck, 2), 2)
    w = torch.softmax(torch.einsum(row_logit, _cummax(cq, 2), ck) + row_bias, -1)
    row_l2r_summary = _shift_right(torch.einsum(row_attn, w, cv), 2)
    col_maskout = torch.full((n, n), -1e10)
    top_left_bias = torch.stack([col_maskout] + [col_strict_bias] * (m - 1))[:, None]  # [U, 1, S, T]
    top_left_col_logits = torch.einsum(col_logit, cq, row_l2r_key) + top_left_bias

    row_r2l_key = _shift_left(_cummax(ck, 2, reverse=True), 2)
    w = torch.softmax(
        torch.einsum(row_logit, _cummax(cq, 2, reverse=True), ck) + bias(cols[:, None] <= cols[None, :]), -1
    )
    row_r2l_summary = _shift_left(torch.einsum(row_attn, w, cv), 2)
    top_right_bias = torch.stack([col_strict_bias] * (m - 1) + [col_maskout])[:, None]
    top_right_col_logits = torch.einsum(col_logit, cq, row_r2l_key) + top_right_bias

    def to_rows(x):  # [B, U, N, S, T] column layout -> [B, S, N, U, T]
        return x.permute(0, 3, 2, 1, 4)

    joint = torch.cat(
        [
            to_rows(col_logits),
            row_logits,
            previous_row_logits,
            to_rows(top_left_col_logits),
            to_rows(top_right_col_logits),
        ],
        -1,
    )
    col_att, row_att, prev_att, tl_att, tr_att = torch.softmax(joint, -1).split([n, m, m, n, n], -1)
    merged = (
        torch.einsum(col_attn, to_rows(col_att), cv)
        + torch.einsum(row_attn, row_att, cv)
        + torch.einsum(row_attn, prev_att, col_up2down_summary)
        + torch.einsum(col_attn, to_rows(tl_att), row_l2r_summary)
        + torch.einsum(col_attn, to_rows(tr_att), row_r2l_summary)
    )
    return merged.reshape(B, T, H, D)


@pytest.mark.parametrize("T", [48, 64])
def test_fixed_matches_the_paper_code(T):
    q, k, v = _inputs(2, T, 2, 2, 8)
    ref = _jax_sqrtn(q * 8**-0.5, k, v, seg=8)
    assert_close(blocked_combiner_attention(q, k, v, variant="fixed", block_size=8)[0], ref, 1e-12, "fixed")


@pytest.mark.parametrize("T", [48, 64, 100])
def test_logsparse_matches_the_paper_code(T):
    q, k, v = _inputs(2, T, 2, 2, 8)
    ref = _jax_logn(q * 8**-0.5, k, v)
    assert_close(blocked_combiner_attention(q, k, v, variant="logsparse")[0], ref, 1e-12, "logsparse")


def test_logsparse_paper_code_drops_the_top_level_when_t_minus_one_is_a_power_of_two():
    """``log_2_ceil(max_len - 1)`` levels: at T = 2^k + 1 the last position loses its span [0, 2^k);
    subq keeps it (rows stay full distributions), so only that position differs."""
    q, k, v = _inputs(1, 33, 2, 2, 8)
    ref = _jax_logn(q * 8**-0.5, k, v)
    o, _ = blocked_combiner_attention(q, k, v, variant="logsparse")
    assert_close(o[:, :32], ref[:, :32], 1e-12, "positions 0..31")
    assert not torch.allclose(o[:, 32], ref[:, 32])


def test_axial_matches_the_paper_code():
    q, k, v = _inputs(2, 56, 2, 2, 8)
    weight = torch.randn(8, 8, dtype=torch.float64)
    ref = _jax_axial_rowmajor(q * 8**-0.5, k, v, 8, lambda s: torch.tanh(s @ weight))
    o, _ = blocked_combiner_attention(
        q, k, v, variant="axial", block_size=8, row_summary_key=lambda s: torch.tanh(s @ weight)
    )
    assert_close(o, ref, 1e-12, "axial")


@pytest.mark.parametrize("T,m", [(48, 8), (49, 7), (30, 10)])
def test_mixture_matches_the_paper_code(T, m):
    q, k, v = _inputs(2, T, 2, 2, 8)
    ref = _jax_axial_mixture(q * 8**-0.5, k, v, m)
    assert_close(
        blocked_combiner_attention(q, k, v, variant="mixture", block_size=m)[0], ref, 1e-12, "mixture"
    )
