"""Kernelized attention with RPE: the FFT forms against the explicit-Toeplitz reference, forward and the
gradients of q, k, v and the bias, on awkward lengths; the decoding step; what the features estimate
(softmax attention with the bias, for many features); the orientation of the offsets; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.kernel_rpe import (
    draw_random_features,
    fft_kernelized_rpe_attention,
    kernelized_rpe_attention,
    kernelized_rpe_attention_step,
    naive_kernelized_rpe_attention,
    prf_feature_map,
    rpe_toeplitz_filter,
    toeplitz_rpe_matrix,
)
from subq.ops.linear_attn import naive_linear_attention
from tests.conftest import assert_close, rel_rms

H, D, DV, M = 2, 8, 6, 8
LENGTHS = [1, 63, 100, 1000]
FORMS = ["fft", "chunk"]


def inputs(T: int, dtype: torch.dtype, B: int = 2):
    q, k = (torch.randn(B, T, H, D, dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, DV, dtype=dtype, requires_grad=True)
    rpe_bias = (0.5 * torch.randn(H, 2 * T - 1)).to(dtype).requires_grad_()
    return q, k, v, rpe_bias


def grads(o: torch.Tensor, g: torch.Tensor, leaves) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(o, leaves, g)


def fft_form(form, q, k, v, rpe_bias, W, causal, normalize_qk):
    return fft_kernelized_rpe_attention(
        q, k, v, rpe_bias, projection=W, causal=causal, normalize_qk=normalize_qk, toeplitz_form=form
    )[0]


@pytest.mark.parametrize("normalize_qk", [True, False], ids=["norm", "vanilla"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T", LENGTHS, ids=lambda T: f"T{T}")
def test_fft_matches_explicit_toeplitz_fp64(T, form, causal, normalize_qk, one_thread):
    q, k, v, b = inputs(T, torch.float64)
    W = draw_random_features(H, M, D, dtype=torch.float64)
    o = fft_form(form, q, k, v, b, W, causal, normalize_qk)
    ref = naive_kernelized_rpe_attention(q, k, v, b, projection=W, causal=causal, normalize_qk=normalize_qk)[
        0
    ]
    assert o.dtype == torch.float64
    assert_close(o, ref, 1e-8, "o")
    g = torch.randn_like(o)
    for name, a, e in zip(
        ("dq", "dk", "dv", "drpe_bias"), grads(o, g, (q, k, v, b)), grads(ref, g, (q, k, v, b)), strict=True
    ):
        assert_close(a, e, 1e-8, name)


@pytest.mark.parametrize("normalize_qk", [True, False], ids=["norm", "vanilla"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T", LENGTHS, ids=lambda T: f"T{T}")
def test_fft_fp32_matches_fp64_reference(T, form, causal, normalize_qk, one_thread):
    leaves64 = inputs(T, torch.float64)
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    W = draw_random_features(H, M, D, dtype=torch.float64)
    o = fft_form(form, *leaves32, W.float(), causal, normalize_qk)
    ref = naive_kernelized_rpe_attention(
        *leaves64[:3], leaves64[3], projection=W, causal=causal, normalize_qk=normalize_qk
    )[0]
    assert o.dtype == torch.float32
    assert_close(o, ref, 1e-3, "o")
    g = torch.randn_like(o)
    g32, g64 = grads(o, g, leaves32), grads(ref, g.double(), leaves64)
    for name, a, e in zip(("dq", "dk", "dv", "drpe_bias"), g32, g64, strict=True):
        if T == 1 and name != "dv":
            # one key gets weight w / (w + eps) whatever q, k and b are: these gradients are O(eps), a
            # cancellation that float32 resolves only to its rounding of the O(1) terms; bound the error
            # by 1e-3 of the gradient scale instead
            scale = g64[2].pow(2).mean().sqrt().item()
            err = (a.double() - e).pow(2).mean().sqrt().item()
            assert err <= 1e-3 * scale, f"{name}: rms error {err:.2e} > 1e-3 x gradient scale {scale:.2e}"
        else:
            assert_close(a, e, 1e-3, name)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_dispatcher_modes_agree(causal):
    q, k, v, b = (t.detach() for t in inputs(37, torch.float64))
    W = draw_random_features(H, M, D, dtype=torch.float64)
    outs = {
        mode: kernelized_rpe_attention(q, k, v, b, projection=W, causal=causal, mode=mode)[0]
        for mode in ("auto", "fft", "chunk", "naive")
    }
    for mode in ("auto", "fft", "chunk"):
        assert_close(outs[mode], outs["naive"], 1e-10, mode)


def test_causal_ignores_positive_offsets_and_their_gradient_is_zero():
    q, k, v, b = inputs(20, torch.float64)
    W = draw_random_features(H, M, D, dtype=torch.float64)
    o = fft_kernelized_rpe_attention(q, k, v, b, projection=W)[0]
    b2 = b.detach().clone()
    b2[:, 20:] = torch.randn(H, 19, dtype=torch.float64) * 5
    assert torch.equal(o, fft_kernelized_rpe_attention(q, k, v, b2, projection=W)[0])
    (db,) = torch.autograd.grad(o.sum(), [b])
    assert torch.equal(db[:, 20:], torch.zeros_like(db[:, 20:]))
    assert db[:, :20].abs().min() > 0


def test_chunk_form_is_bitwise_causal():
    q, k, v, b = (t.detach() for t in inputs(63, torch.float64))
    W = draw_random_features(H, M, D, dtype=torch.float64)
    t = 30
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, t + 1 :] = torch.randn_like(x[:, t + 1 :])
    o = fft_kernelized_rpe_attention(q, k, v, b, projection=W, toeplitz_form="chunk")[0]
    o2 = fft_kernelized_rpe_attention(q2, k2, v2, b, projection=W, toeplitz_form="chunk")[0]
    assert torch.equal(o[:, : t + 1], o2[:, : t + 1])
    assert not torch.allclose(o[:, t + 1 :], o2[:, t + 1 :])


@pytest.mark.parametrize("normalize_qk", [True, False], ids=["norm", "vanilla"])
def test_step_equals_forward(normalize_qk):
    T = 17
    q, k, v, b = (t.detach() for t in inputs(T, torch.float64))
    W = draw_random_features(H, M, D, dtype=torch.float64)
    o_ref, (phi_k, v_hist) = naive_kernelized_rpe_attention(
        q, k, v, b, projection=W, normalize_qk=normalize_qk, output_final_state=True
    )
    history = None
    for t in range(T):
        # the bias a sequence of t + 1 tokens sees: offsets -t .. t, centred on index T - 1 of b
        b_t = b[:, T - 1 - t : T + t]
        o_t, history = kernelized_rpe_attention_step(
            q[:, t], k[:, t], v[:, t], history, b_t, projection=W, normalize_qk=normalize_qk
        )
        assert_close(o_t, o_ref[:, t], 1e-12, f"step t={t}")
    assert_close(history[0], phi_k, 1e-14, "phi_k history")
    assert torch.equal(history[1], v_hist)


def test_final_state_is_the_feature_history_in_every_form():
    q, k, v, b = (t.detach() for t in inputs(9, torch.float32))
    W = draw_random_features(H, M, D)
    ref = naive_kernelized_rpe_attention(q, k, v, b, projection=W, output_final_state=True)[1]
    for mode in ("fft", "chunk"):
        hist = kernelized_rpe_attention(q, k, v, b, projection=W, output_final_state=True, mode=mode)[1]
        assert hist[0].shape == (2, 9, H, M) and hist[1].shape == (2, 9, H, DV)
        assert torch.equal(hist[0], ref[0]) and torch.equal(hist[1], ref[1])
    assert kernelized_rpe_attention(q, k, v, b, projection=W)[1] is None


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_bias_offsets_point_the_right_way(causal):
    """``b_{-1}`` (causal) or ``b_{+1}`` large: every query reads the previous (next) value."""
    T = 12
    q, k, v, _ = (t.detach() for t in inputs(T, torch.float64))
    b = torch.zeros(H, 2 * T - 1, dtype=torch.float64)
    b[:, T - 2 if causal else T] = 20.0  # index delta + T - 1
    W = draw_random_features(H, M, D, dtype=torch.float64)
    for mode in ("fft", "chunk", "naive"):
        o = kernelized_rpe_attention(q, k, v, b, projection=W, causal=causal, mode=mode)[0]
        expected = v[:, :-1] if causal else v[:, 1:]
        got = o[:, 1:] if causal else o[:, :-1]
        assert (got - expected).abs().max() < 1e-5, mode


@pytest.mark.parametrize("normalize_qk", [True, False], ids=["norm", "vanilla"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_many_features_approximate_softmax_attention_with_rpe(causal, normalize_qk):
    """With m = 16384 features the estimate is within a few percent of
    ``softmax_j(s(q_i, k_j) + b_{j-i}) v``, ``s = q^ . k^`` (normalised) or ``q . k / sqrt(D)``."""
    B, T, Dh = 1, 16, 4
    q, k, v = (torch.randn(B, T, H, Dh, dtype=torch.float64) for _ in range(3))
    b = torch.randn(H, 2 * T - 1, dtype=torch.float64)
    W = draw_random_features(H, 16384, Dh, seed=1, dtype=torch.float64)
    o = kernelized_rpe_attention(q, k, v, b, projection=W, causal=causal, normalize_qk=normalize_qk)[0]
    if normalize_qk:
        s = torch.einsum("bthd,bshd->bhts", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    else:
        s = torch.einsum("bthd,bshd->bhts", q, k) / Dh**0.5
    pos = torch.arange(T)
    s = s + b[:, pos[None, :] - pos[:, None] + T - 1]
    if causal:
        s = s.masked_fill(pos[None, :] > pos[:, None], -torch.inf)
    ref = torch.einsum("bhts,bshd->bthd", s.softmax(-1), v)
    err = rel_rms(o, ref)
    assert err < (0.05 if normalize_qk else 0.15), f"rel-RMS {err:.3f}"


@pytest.mark.parametrize("normalize_qk", [True, False], ids=["norm", "vanilla"])
def test_key_features_are_unbiased_for_the_kernel(normalize_qk):
    # the vanilla estimator's variance grows like exp(|x~ + y~|^2): keep the inputs short
    x, y = (0.5 * torch.randn(2, 5, H, D, dtype=torch.float64)).unbind(0)
    W = draw_random_features(H, 200_000, D, seed=3, dtype=torch.float64)
    est = (
        prf_feature_map(x, W, normalize_qk=normalize_qk) * prf_feature_map(y, W, normalize_qk=normalize_qk)
    ).sum(-1)
    if normalize_qk:
        exact = (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1).exp()
    else:
        exact = ((x * y).sum(-1) / D**0.5).exp()
    assert_close(est, exact, 0.05, "E[phi(x) . phi(y)]")


def test_query_features_are_rescaled_by_their_largest():
    x = 3 * torch.randn(4, 7, H, D, dtype=torch.float64)
    W = draw_random_features(H, M, D, dtype=torch.float64)
    phi_q = prf_feature_map(x, W, normalize_qk=False, is_query=True)
    phi_k = prf_feature_map(x, W, normalize_qk=False)
    assert torch.allclose(phi_q.amax(-1), torch.full_like(phi_q[..., 0], M**-0.5))
    assert_close(phi_q / phi_q.sum(-1, keepdim=True), phi_k / phi_k.sum(-1, keepdim=True), 1e-12, "direction")


def test_zero_bias_is_linear_attention_on_the_features():
    q, k, v, _ = (t.detach() for t in inputs(40, torch.float64))
    W = draw_random_features(H, M, D, dtype=torch.float64)
    zero = torch.zeros(H, 79, dtype=torch.float64)
    for causal in (True, False):
        o = fft_kernelized_rpe_attention(q, k, v, zero, projection=W, causal=causal)[0]
        phi_q = prf_feature_map(q, W, is_query=True)
        phi_k = prf_feature_map(k, W)
        ref = naive_linear_attention(phi_q, phi_k, v, feature_map="identity", causal=causal)[0]
        assert_close(o, ref, 1e-12, f"causal={causal}")


def test_toeplitz_filter_matches_matrix():
    T = 6
    b = torch.randn(H, 2 * T - 1, dtype=torch.float64)
    for causal in (True, False):
        C = toeplitz_rpe_matrix(b, causal)  # [H, T, T]
        h = rpe_toeplitz_filter(b, causal)
        fwd, rev = (h, None) if causal else (h[0], h[1])
        for i in range(T):
            for j in range(T):
                lag = i - j
                want = fwd[:, lag] if lag >= 0 else (rev[:, -lag - 1] if rev is not None else 0.0 * fwd[:, 0])
                assert torch.allclose(C[:, i, j], want), (causal, i, j)


def test_random_features_are_seeded():
    a = draw_random_features(H, M, D, seed=5)
    assert torch.equal(a, draw_random_features(H, M, D, seed=5))
    assert not torch.equal(a, draw_random_features(H, M, D, seed=6))
    assert torch.equal(draw_random_features(H, M, D, seed=5, dtype=torch.float64).float(), a)
    assert a.shape == (H, M, D)


def test_bf16_in_bf16_out():
    q, k, v, b = (t.detach() for t in inputs(50, torch.float64))
    W = draw_random_features(H, M, D, dtype=torch.float64)
    ref = naive_kernelized_rpe_attention(q, k, v, b, projection=W)[0]
    o = fft_kernelized_rpe_attention(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), b.bfloat16(), projection=W.bfloat16()
    )[0]
    assert o.dtype == torch.bfloat16
    assert_close(o, ref, 5e-2, "bf16")


def test_bad_input_raises_naming_sizes():
    q, k, v, b = (t.detach() for t in inputs(10, torch.float32))
    W = draw_random_features(H, M, D)
    with pytest.raises(ValueError, match=r"rpe_bias must be \[H, 2T - 1\] = \[2, 19\].*\(2, 10\)"):
        fft_kernelized_rpe_attention(q, k, v, b[:, :10], projection=W)
    with pytest.raises(ValueError, match=r"projection must be \[H=2, m, D=8\].*\(2, 8, 4\)"):
        fft_kernelized_rpe_attention(q, k, v, b, projection=W[..., :4])
    with pytest.raises(ValueError, match="eps must be a float >= 0"):
        naive_kernelized_rpe_attention(q, k, v, b, projection=W, eps=-1.0)
    with pytest.raises(ValueError, match="toeplitz_form must be one of fft, chunk"):
        fft_kernelized_rpe_attention(q, k, v, b, projection=W, toeplitz_form="direct")
    with pytest.raises(ValueError, match="mode must be one of auto, fft, chunk, naive"):
        kernelized_rpe_attention(q, k, v, b, projection=W, mode="triton")
    with pytest.raises(ValueError, match="4-D"):
        naive_kernelized_rpe_attention(q[0], k, v, b, projection=W)
    with pytest.raises(ValueError, match=r"rpe_bias must be \[H, 2S \+ 1\] = \[2, 1\] at position S=0"):
        kernelized_rpe_attention_step(q[:, 0], k[:, 0], v[:, 0], None, b, projection=W)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        draw_random_features(H, 0, D)
