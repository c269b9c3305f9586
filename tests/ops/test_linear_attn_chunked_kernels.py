"""The Triton chunked linear attention (``fused_chunk``: one program walks the chunks; ``chunk_parallel``:
states written per chunk, chunks in parallel) against the float64 reference: forward, final state and
every gradient (initial and final state included), causal and bidirectional, every feature map, awkward
shapes. Without a GPU the kernels run through Triton's interpreter at small shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from subq.ops.linear_attn import feature_dim, linear_attention, naive_linear_attention  # noqa: E402
from subq.ops.linear_attn.chunk_parallel import chunk_parallel_linear_attention  # noqa: E402
from subq.ops.linear_attn.fused_chunk import fused_chunk_linear_attention  # noqa: E402
from tests.conftest import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CPU_CASES = [
    # feature map, B, T, H, D, D_v
    ("taylor", 1, 1, 2, 4, 8),
    ("taylor", 2, 63, 2, 16, 20),
    ("taylor", 1, 100, 1, 5, 7),
    ("taylor", 1, 1000, 1, 4, 16),
    ("relu", 2, 63, 2, 5, 7),
    ("relu", 1, 100, 2, 32, 40),
    ("relu", 1, 100, 1, 70, 100),
    ("elu_plus_one", 1, 100, 2, 6, 9),
    ("identity", 1, 63, 1, 8, 16),
]

GPU_CASES = [
    (fm, B, T, H, D, Dv)
    for T in (1, 63, 100, 1000, 4096)
    for fm, B, H, D, Dv in [
        ("taylor", 2, 4, 16, 64),
        ("taylor", 1, 2, 12, 100),
        ("relu", 1, 4, 128, 128),
        ("relu", 2, 2, 60, 50),
        ("elu_plus_one", 1, 2, 64, 64),
    ]
]


def _ids(case):
    fm, B, T, H, D, Dv = case
    return f"{fm}-B{B}-T{T}-H{H}-D{D}-Dv{Dv}"


def _inputs(fm, B, T, H, D, Dv, dtype, with_state):
    q = torch.randn(B, T, H, D, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(B, T, H, D, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(B, T, H, Dv, device=DEVICE).to(dtype).requires_grad_()
    if not with_state:
        return q, k, v, None
    E = feature_dim(fm, D)
    S0 = torch.randn(B, H, E, Dv, device=DEVICE).requires_grad_()
    z0 = (torch.rand(B, H, E, device=DEVICE) + 1.0).requires_grad_()
    return q, k, v, (S0, z0)


FORMS = {"fused_chunk": fused_chunk_linear_attention, "chunk_parallel": chunk_parallel_linear_attention}


def _check(case, dtype, tol, causal, with_state, scale=None, form="fused_chunk"):
    fm, B, T, H, D, Dv = case
    q, k, v, state = _inputs(fm, B, T, H, D, Dv, dtype, with_state)
    leaves = [q, k, v, *(state or ())]
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    kw = dict(feature_map=fm, causal=causal, scale=scale, output_final_state=True)
    o, (S, z) = FORMS[form](q, k, v, initial_state=state, **kw)
    ref_state = tuple(ref_leaves[3:]) if with_state else None
    o_r, (S_r, z_r) = naive_linear_attention(*ref_leaves[:3], initial_state=ref_state, **kw)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert_close(o, o_r, tol, "o")
    assert_close(S, S_r, tol, "S_T")
    assert_close(z, z_r, tol, "z_T")
    do, dS, dz = torch.randn_like(o), torch.randn_like(S), torch.randn_like(z)
    grads = torch.autograd.grad((o * do).sum() + (S * dS).sum() + (z * dz).sum(), leaves)
    loss_r = (o_r * do.double()).sum() + (S_r * dS.double()).sum() + (z_r * dz.double()).sum()
    ref_grads = torch.autograd.grad(loss_r, ref_leaves)
    for name, g, g_r in zip(["dq", "dk", "dv", "dS0", "dz0"], grads, ref_grads, strict=False):
        assert_close(g, g_r, tol, name)


@pytest.mark.parametrize(
    "form, causal",
    [("fused_chunk", True), ("fused_chunk", False), ("chunk_parallel", True)],
    ids=["fused-causal", "fused-bidirectional", "parallel-causal"],
)
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids)
def test_chunked_kernels_match_reference_fp32(case, form, causal, one_thread):
    _check(case, torch.float32, 1e-3, causal, with_state=True, form=form)


# Without a state, T = 1 gives o = v (dq = dk = 0 exactly), and relu can give a zero normaliser
# (o / eps overflows float16): positive maps and T > 1 only
@pytest.mark.parametrize("case", CPU_CASES[1:3] + CPU_CASES[6:7], ids=_ids)
@pytest.mark.parametrize("form", FORMS)
def test_chunked_kernels_fp16_without_state(case, form, one_thread):
    _check(case, torch.float16, 1e-2, causal=True, with_state=False, scale=0.5, form=form)


def test_fused_chunk_unnormalized(one_thread):
    q, k, v, _ = _inputs("taylor", 1, 70, 2, 4, 16, torch.float32, with_state=False)
    o, _ = fused_chunk_linear_attention(q, k, v, feature_map="taylor", normalize=False)
    o_r, _ = naive_linear_attention(q.double(), k.double(), v.double(), feature_map="taylor", normalize=False)
    assert_close(o, o_r, 1e-4, "o (normalize=False)")
    (g,) = torch.autograd.grad(o.sum(), [q])
    (g_r,) = torch.autograd.grad(
        naive_linear_attention(q, k, v, feature_map="taylor", normalize=False)[0].sum(), [q]
    )
    assert_close(g, g_r, 1e-4, "dq (normalize=False)")


def test_dispatch_picks_triton_and_checks_sizes(one_thread):
    q, k, v, _ = _inputs("taylor", 1, 20, 1, 4, 8, torch.float32, with_state=False)
    a, _ = linear_attention(q, k, v, feature_map="taylor", mode="triton")
    b, _ = linear_attention(q, k, v, feature_map="taylor", mode="torch")
    assert_close(a, b, 1e-5, "triton vs torch")
    big = torch.randn(1, 4, 1, 17, device=DEVICE)
    with pytest.raises(ValueError, match="fused Taylor kernel supports feature dims up to 16, got D=17"):
        linear_attention(big, big, big, feature_map="taylor", mode="triton")
    wide = torch.randn(1, 4, 1, 129, device=DEVICE)
    with pytest.raises(ValueError, match="value head dims up to 128, got D_v=129"):
        linear_attention(wide[..., :8], wide[..., :8], wide, feature_map="relu", mode="triton")
    with pytest.raises(ValueError, match="named feature map, not a callable"):
        linear_attention(q, k, v, feature_map=torch.sigmoid, mode="triton")


@pytest.mark.gpu
def test_auto_falls_back_with_one_warning():
    q = torch.randn(1, 8, 1, 17, device="cuda")
    with pytest.warns(UserWarning, match="feature dims up to 16.*falling back"):
        o, _ = linear_attention(q, q, q, feature_map="taylor", mode="auto")
    o_r, _ = linear_attention(q, q, q, feature_map="taylor", mode="torch")
    assert_close(o, o_r, 1e-6, "fallback")


@pytest.mark.gpu
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=_ids)
def test_chunked_kernels_match_reference_gpu(case, dtype, form):
    _check(case, dtype, 1e-3 if dtype == torch.float32 else 1e-2, causal=True, with_state=True, form=form)


@pytest.mark.gpu
def test_bf16_million_tokens_normaliser_is_finite():
    T = 1 << 20
    q, k = (torch.randn(1, T, 2, 4, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(1, T, 2, 16, device="cuda", dtype=torch.bfloat16)
    o, (S, z) = fused_chunk_linear_attention(q, k, v, feature_map="taylor", output_final_state=True)
    o_r, (S_r, z_r) = linear_attention(
        q.float(), k.float(), v.float(), feature_map="taylor", mode="torch", output_final_state=True
    )
    assert_close(o, o_r, 1e-2, "o at T=2^20")
    assert_close(z, z_r, 1e-3, "z_T at T=2^20")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
def test_chunk_parallel_taylor_state_read_at_based_sizes(dtype, tol, one_thread):
    """BASED's ``f = 16, D_v = 64`` over several chunks: the output kernel reads the quadratic rows of
    every chunk's state in blocks of ``x~_a``."""
    case = ("taylor", 1, 130, 1, 16, 64)
    _check(case, dtype, tol, causal=True, with_state=dtype == torch.float32, form="chunk_parallel")
