"""Linear attention: quadratic and recurrent references and the chunked form agree (forward and every
gradient, initial state included); state chaining; bf16 at long T; bad input."""

from __future__ import annotations

import pytest
import torch

from subq.ops.linear_attn import (
    FEATURE_MAPS,
    chunk_linear_attention,
    feature_dim,
    linear_attention,
    linear_attention_step,
    naive_linear_attention,
    naive_recurrent_linear_attention,
    taylor_feature_map,
)
from tests.conftest import assert_close

CASES = [
    # B, T, H, D, D_v, chunk
    (1, 1, 2, 4, 8, 64),
    (2, 63, 2, 4, 60, 16),
    (2, 100, 3, 5, 7, 64),
    (1, 1000, 1, 4, 6, 64),
]


def _ids(case):
    B, T, H, D, Dv, C = case
    return f"B{B}-T{T}-H{H}-D{D}-Dv{Dv}-C{C}"


def _inputs(B, T, H, D, Dv, fm, dtype=torch.float64, with_state=True):
    q = torch.randn(B, T, H, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, T, H, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, T, H, Dv, dtype=dtype, requires_grad=True)
    if not with_state:
        return q, k, v, None
    E = feature_dim(fm, D)
    # a positive z_0 keeps the normaliser away from zero for every map
    S0 = torch.randn(B, H, E, Dv, dtype=dtype, requires_grad=True)
    z0 = (torch.rand(B, H, E, dtype=dtype) + 1.0).requires_grad_()
    return q, k, v, (S0, z0)


def _check_against(fn_a, fn_b, inputs, tol, what):
    """Forward, final state and the gradients of every input (initial state included)."""
    leaves = [x for x in (*inputs[:3], *(inputs[3] or ())) if x is not None]
    (o_a, (S_a, z_a)), (o_b, (S_b, z_b)) = fn_a(), fn_b()
    assert_close(o_a, o_b, tol, f"{what}: o")
    assert_close(S_a, S_b, tol, f"{what}: S_T")
    assert_close(z_a, z_b, tol, f"{what}: z_T")
    do, dS, dz = torch.randn_like(o_a), torch.randn_like(S_a), torch.randn_like(z_a)
    g_a = torch.autograd.grad((o_a * do).sum() + (S_a * dS).sum() + (z_a * dz).sum(), leaves)
    g_b = torch.autograd.grad((o_b * do).sum() + (S_b * dS).sum() + (z_b * dz).sum(), leaves)
    for name, a, b in zip(["dq", "dk", "dv", "dS0", "dz0"], g_a, g_b, strict=False):
        assert_close(a, b, tol, f"{what}: {name}")


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("fm", list(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_forms_agree(case, fm, causal):
    B, T, H, D, Dv, C = case
    inputs = _inputs(B, T, H, D, Dv, fm)
    # identity features can put phi(q).z near zero: compare it unnormalised
    kw = dict(
        feature_map=fm,
        causal=causal,
        normalize=fm != "identity",
        initial_state=inputs[3],
        output_final_state=True,
    )
    q, k, v = inputs[:3]

    def naive():
        return naive_linear_attention(q, k, v, **kw)

    def chunk():
        return chunk_linear_attention(q, k, v, chunk_size=C, **kw)

    _check_against(chunk, naive, inputs, 1e-10, "chunk vs naive")
    if T <= 100:

        def recurrent():
            return naive_recurrent_linear_attention(q, k, v, **kw)

        _check_against(recurrent, naive, inputs, 1e-10, "recurrent vs naive")


@pytest.mark.parametrize("normalize", [True, False])
def test_no_initial_state_equals_zero_state(normalize):
    q, k, v, (S0, z0) = _inputs(2, 37, 2, 4, 6, "relu")
    a, _ = chunk_linear_attention(q, k, v, feature_map="relu", normalize=normalize, chunk_size=8)
    b, _ = naive_linear_attention(
        q, k, v, feature_map="relu", normalize=normalize, initial_state=(S0 * 0, z0 * 0)
    )
    assert_close(a, b, 1e-12, "zero initial state")


@pytest.mark.parametrize("form", ["naive", "recurrent", "chunk"])
@pytest.mark.parametrize("split", [1, 40, 99])
def test_state_chaining(form, split):
    fn = {
        "naive": naive_linear_attention,
        "recurrent": naive_recurrent_linear_attention,
        "chunk": chunk_linear_attention,
    }[form]
    q, k, v, _ = _inputs(2, 100, 2, 4, 5, "taylor", with_state=False)
    kw = dict(feature_map="taylor", output_final_state=True)
    o, (S, z) = fn(q, k, v, **kw)
    o1, state = fn(q[:, :split], k[:, :split], v[:, :split], **kw)
    o2, (S2, z2) = fn(q[:, split:], k[:, split:], v[:, split:], initial_state=state, **kw)
    assert_close(torch.cat([o1, o2], 1), o, 1e-12, "chained o")
    assert_close(S2, S, 1e-12, "chained S")
    assert_close(z2, z, 1e-12, "chained z")


def test_taylor_map_is_bases_kernel():
    """phi(q).phi(k) = 1 + q.k/sqrt(f) + (q.k)^2/(2f), E = 1 + f + f^2 (BASED TaylorExp)."""
    f = 16
    q, k = torch.randn(10, f, dtype=torch.float64), torch.randn(10, f, dtype=torch.float64)
    pq, pk = taylor_feature_map(q), taylor_feature_map(k)
    assert pq.shape == (10, 1 + f + f * f)
    s = (q * k).sum(-1) / f**0.5
    assert_close((pq * pk).sum(-1), 1 + s + s**2 / 2, 1e-14, "Taylor kernel")


def test_scale_multiplies_q_before_the_map():
    q, k, v, _ = _inputs(1, 20, 2, 4, 3, "taylor", with_state=False)
    a, _ = chunk_linear_attention(q, k, v, feature_map="taylor", scale=0.3)
    b, _ = naive_linear_attention(q * 0.3, k, v, feature_map="taylor")
    assert_close(a, b, 1e-12, "scale")
    c, _ = naive_linear_attention(q, k, v, feature_map="taylor")
    assert (a - c).abs().max() > 1e-3, "scale had no effect"


def test_bf16_long_sequence_normaliser_does_not_overflow():
    """The normaliser phi(q).z_t grows linearly in t: in bf16 it would lose all precision; the chunk
    form accumulates in float32."""
    T = 65536
    q = torch.randn(1, T, 1, 4).bfloat16()
    k = torch.randn(1, T, 1, 4).bfloat16()
    v = torch.randn(1, T, 1, 4).bfloat16()
    o, (S, z) = chunk_linear_attention(q, k, v, feature_map="taylor", output_final_state=True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.isfinite(o).all()
    o32, _ = chunk_linear_attention(q.float(), k.float(), v.float(), feature_map="taylor")
    assert_close(o, o32, 1e-2, "bf16 vs fp32 inputs")
    assert z[0, 0, 0].item() == T, "the constant feature counts the tokens exactly"


def test_chunk_size_does_not_matter():
    q, k, v, _ = _inputs(2, 50, 2, 4, 5, "elu_plus_one", with_state=False)
    ref, _ = chunk_linear_attention(q, k, v, feature_map="elu_plus_one", chunk_size=64)
    for C in (1, 7, 50):
        o, _ = chunk_linear_attention(q, k, v, feature_map="elu_plus_one", chunk_size=C)
        assert_close(o, ref, 1e-12, f"chunk_size={C}")


def test_dispatch_modes():
    q, k, v, _ = _inputs(1, 9, 2, 4, 3, "relu", with_state=False)
    a, _ = linear_attention(q, k, v, feature_map="relu", mode="auto")
    b, _ = linear_attention(q, k, v, feature_map="relu", mode="naive")
    assert_close(a, b, 1e-12, "auto vs naive")
    with pytest.raises(ValueError, match="Triton kernels take float32, float16 or bfloat16, not float64"):
        linear_attention(q, k, v, mode="triton")
    with pytest.raises(ValueError, match="mode must be one of"):
        linear_attention(q, k, v, mode="fast")


def test_bad_arguments():
    q, k, v, _ = _inputs(2, 8, 2, 4, 3, "relu", with_state=False)
    with pytest.raises(ValueError, match=r"q must be 4-D .*\(8, 2, 4\)"):
        linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match="q and k lengths differ"):
        linear_attention(q, k[:, :5], v[:, :5])
    with pytest.raises(ValueError, match="H=2, k and v H_kv=1"):
        linear_attention(q, k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="feature_map must be one of .*taylor.*got 'softmax'"):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(ValueError, match=r"S \[B, H, E, D_v\] = \(2, 2, 21, 3\).*got S \(2, 2, 4, 3\)"):
        bad = (torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4))
        linear_attention(q, k, v, feature_map="taylor", initial_state=bad)
    with pytest.raises(TypeError, match="initial_state must be a pair"):
        linear_attention(q, k, v, initial_state=torch.zeros(2, 2, 4, 3))
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        chunk_linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="eps must be a float >= 0"):
        linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(TypeError, match="q must be floating point"):
        linear_attention(q.long(), k, v)


@pytest.mark.parametrize("fm", ["taylor", "relu"])
def test_step_forms_agree(fm, one_thread):
    """``linear_attention_step``: the PyTorch form returns a new state, the fused kernel (Triton's
    interpreter on CPU) updates the state in place; both equal the recurrent reference."""
    pytest.importorskip("triton")
    B, H, D, Dv = 2, 3, 4, 5
    q, k, v, (S0, z0) = _inputs(B, 1, H, D, Dv, fm, dtype=torch.float32)
    # the kernel runs on the GPU when there is one, through the interpreter otherwise
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, S0, z0 = (x.detach().to(device) for x in (q, k, v, S0, z0))
    o_ref, (S_ref, z_ref) = naive_recurrent_linear_attention(
        q, k, v, feature_map=fm, initial_state=(S0, z0), output_final_state=True
    )
    o_t, (S_t, z_t) = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], (S0, z0), feature_map=fm, mode="torch")
    assert S_t is not S0
    state = (S0.clone(), z0.clone())
    o_f, (S_f, z_f) = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state, feature_map=fm, mode="triton")
    assert S_f is state[0] and z_f is state[1]
    for name, a, b in [
        ("o torch", o_t, o_ref[:, 0]),
        ("o triton", o_f, o_ref[:, 0]),
        ("S torch", S_t, S_ref),
        ("S triton", S_f, S_ref),
        ("z triton", z_f, z_ref),
    ]:
        assert_close(a, b, 1e-5, name)
