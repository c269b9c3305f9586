"""Exact and almost-linear LoRA gradients: closed form vs autograd, the Taylor feature map, the chained
low-rank products vs the closed form on the same approximate softmax, no ``[T, T]`` matrix, FLOP counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from subq.peft.fast_lora_grad import (
    LoRAFactors,
    autograd_lora_grad,
    exact_lora_grad,
    fast_lora_grad,
    lora_grad_flops,
    taylor_exp_features,
    taylor_feature_dim,
)
from tests.conftest import assert_close

DT = torch.float64
ADAPTED = [("q",), ("k",), ("v",), ("q", "v"), ("k", "v"), ("q", "k", "v")]
ADAPTED_IDS = ["-".join(a) for a in ADAPTED]

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(B=2, T=37, d=5, d_k=3, d_v=6, r=2, adapted=("q", "k", "v"), weight_scale=0.3):
    """Awkward sizes: ``d != d_k != d_v``, ``T`` prime, rank 2, a batch of two."""
    x = torch.randn(B, T, d, dtype=DT)
    y = torch.randn(B, T, d_v, dtype=DT)
    w_q = torch.randn(d, d_k, dtype=DT) * weight_scale
    w_k = torch.randn(d, d_k, dtype=DT) * weight_scale
    w_v = torch.randn(d, d_v, dtype=DT)
    out = {"q": d_k, "k": d_k, "v": d_v}
    adapters = {
        n: LoRAFactors(torch.randn(d, r, dtype=DT), torch.randn(r, out[n], dtype=DT) * 0.2) for n in adapted
    }
    return x, y, w_q, w_k, w_v, adapters


def _assert_grads_close(actual, expected, tol, what):
    assert list(actual) == list(expected), f"{what}: names {list(actual)} != {list(expected)}"
    for name in expected:
        assert_close(actual[name].a, expected[name].a, tol, f"{what} dL/dA_{name}")
        assert_close(actual[name].b, expected[name].b, tol, f"{what} dL/dB_{name}")


@pytest.mark.parametrize("block_size", [None, 8], ids=["one-block", "block8"])
@pytest.mark.parametrize("adapted", ADAPTED, ids=ADAPTED_IDS)
def test_closed_form_matches_autograd(adapted, block_size):
    args = _problem(adapted=adapted)
    expected = autograd_lora_grad(*args, alpha=4.0, scale=0.7)
    actual = exact_lora_grad(*args, alpha=4.0, scale=0.7, block_size=block_size)
    _assert_grads_close(actual, expected, 1e-12, "closed form vs autograd")


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "full"])
@pytest.mark.parametrize("d,degree", [(1, 5), (3, 0), (3, 1), (3, 5), (4, 6)], ids=lambda v: str(v))
def test_taylor_features_give_the_taylor_polynomial(d, degree, symmetric):
    x, y = torch.randn(7, d, dtype=DT), torch.randn(5, d, dtype=DT)
    u, v = (taylor_exp_features(t, degree, symmetric=symmetric) for t in (x, y))
    k1 = taylor_feature_dim(d, degree, symmetric=symmetric)
    assert u.shape == (7, k1) and v.shape == (5, k1)
    dots = x @ y.T
    expected = sum(dots**j / math.factorial(j) for j in range(degree + 1))
    assert_close(u @ v.T, expected * torch.ones_like(dots), 1e-13, "<U(x), U(y)>")


def test_symmetric_features_are_the_monomials_and_nest_by_degree():
    assert taylor_feature_dim(4, 8) == math.comb(12, 8) == 495
    assert taylor_feature_dim(4, 8, symmetric=False) == (4**9 - 1) // 3
    x = torch.randn(3, 4, dtype=DT)
    high, low = taylor_exp_features(x, 6), taylor_exp_features(x, 4)
    assert torch.equal(high[:, : low.shape[1]], low), "degree-4 map is the first columns of the degree-6 map"
    # the degree-2 block is x_i x_j / sqrt(a!): x_0^2 / sqrt(2) first, then x_0 x_1
    quad = low[:, 1 + 4 : 1 + 4 + 10]
    assert_close(quad[:, 0], x[:, 0] ** 2 / math.sqrt(2), 1e-15, "x_0^2 / sqrt(2)")
    assert_close(quad[:, 1], x[:, 0] * x[:, 1], 1e-15, "x_0 x_1")


def _closed_form_from_probs(s, x, y, w_q, w_k, w_v, adapters, alpha, scale):
    """The paper's Lemma 3.1/3.2 with a given row-stochastic ``s`` `[B, T, T]`, all at once."""
    adapted = {n: w for n, w in (("q", w_q), ("k", w_k), ("v", w_v))}
    for n, f in adapters.items():
        adapted[n] = adapted[n] + alpha / f.a.shape[0] * f.b @ f.a
    q, k, v = (x @ adapted[n] for n in "qkv")
    c = s @ v - y
    sg = s * (c @ v.mT)
    p = sg - sg.sum(-1, keepdim=True) * s
    gw = {
        "q": scale * (x.mT @ p @ k).sum(0),
        "k": scale * (x.mT @ p.mT @ q).sum(0),
        "v": (x.mT @ s.mT @ c).sum(0),
    }
    out = {}
    for n in "qkv":
        if n in adapters:
            f, sc = adapters[n], alpha / adapters[n].a.shape[0]
            out[n] = (sc * f.b.mT @ gw[n], sc * gw[n] @ f.a.mT)
    return out


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "full"])
@pytest.mark.parametrize("adapted", ADAPTED, ids=ADAPTED_IDS)
def test_low_rank_chain_equals_closed_form_on_the_approximate_softmax(adapted, symmetric):
    """Steps 2-4 are exact algebra: on ``S~ = D~^{-1} U1 V1^T`` they give the closed form's gradient,
    whatever the Taylor error (large here: weights at scale 1, degree 2)."""
    x, y, w_q, w_k, w_v, adapters = _problem(adapted=adapted, weight_scale=1.0)
    alpha, scale, degree = 4.0, 0.5, 2
    qk = {n: x @ w for n, w in (("q", w_q), ("k", w_k))}
    for n in ("q", "k"):
        if n in adapters:
            f = adapters[n]
            qk[n] = qk[n] + alpha / f.a.shape[0] * x @ f.b @ f.a
    u1 = taylor_exp_features(math.sqrt(scale) * qk["q"], degree, symmetric=symmetric)
    v1 = taylor_exp_features(math.sqrt(scale) * qk["k"], degree, symmetric=symmetric)
    weights = u1 @ v1.mT
    assert (weights > 0).all(), "even degree: every approximate weight is positive"
    s_approx = weights / weights.sum(-1, keepdim=True)
    expected = _closed_form_from_probs(s_approx, x, y, w_q, w_k, w_v, adapters, alpha, scale)
    for block_size in (None, 10):
        actual = fast_lora_grad(
            x,
            y,
            w_q,
            w_k,
            w_v,
            adapters,
            alpha=alpha,
            scale=scale,
            degree=degree,
            symmetric=symmetric,
            block_size=block_size,
        )
        _assert_grads_close(actual, {n: type(actual[n])(*e) for n, e in expected.items()}, 1e-11, "chain")
    exact = exact_lora_grad(x, y, w_q, w_k, w_v, adapters, alpha=alpha, scale=scale)
    gap = max((actual[n].a - exact[n].a).abs().max().item() / exact[n].a.abs().max().item() for n in exact)
    assert gap > 1e-3, f"the test needs a visible Taylor error to mean anything, got {gap:.1e}"


def test_fast_converges_to_exact_as_the_degree_grows():
    args = _problem(weight_scale=0.3)
    exact = exact_lora_grad(*args, alpha=4.0, scale=0.7)

    def error(degree):
        approx = fast_lora_grad(*args, alpha=4.0, scale=0.7, degree=degree)
        num = max((approx[n].a - exact[n].a).abs().max().item() for n in exact)
        return num / max(exact[n].a.abs().max().item() for n in exact)

    errors = [error(g) for g in (0, 2, 4, 8, 16, 24)]
    assert all(b < a for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-9, errors


class _LargestSquare(TorchFunctionMode):
    """Records, over every torch call's tensor outputs, the shapes with two dimensions equal to ``T``."""

    def __init__(self, T):
        super().__init__()
        self.T, self.square = T, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and sum(s == self.T for s in t.shape) >= 2:
                self.square.append((getattr(func, "__name__", str(func)), tuple(t.shape)))
        return out


def test_fast_never_forms_a_T_by_T_matrix():
    args = _problem(B=1, T=211, adapted=("q", "k", "v"))
    with _LargestSquare(211) as exact_mode:
        exact_lora_grad(*args)
    assert exact_mode.square, "the detector sees the exact gradient's [T, T] softmax"
    with _LargestSquare(211) as fast_mode:
        fast_lora_grad(*args, degree=4)
    assert not fast_mode.square, fast_mode.square


@pytest.mark.parametrize(
    "degree,symmetric", [(None, True), (2, True), (3, True), (3, False)], ids=["exact", "g2", "g3", "g3-full"]
)
@pytest.mark.parametrize("adapted", ADAPTED, ids=ADAPTED_IDS)
def test_flop_count_matches_the_flop_counter(adapted, degree, symmetric):
    B, T, d, d_k, d_v, r = 2, 37, 5, 3, 6, 2
    args = _problem(B, T, d, d_k, d_v, r, adapted=adapted)
    counter = FlopCounterMode(display=False)
    with counter:
        if degree is None:
            exact_lora_grad(*args, block_size=8)
        else:
            fast_lora_grad(*args, degree=degree, symmetric=symmetric, block_size=10)
    expected = lora_grad_flops(T, d, d_k, d_v, r, adapted, degree=degree, symmetric=symmetric, batch=B)
    assert counter.get_total_flops() == expected


def test_flops_scale_quadratically_exact_and_linearly_approximate():
    exact = [lora_grad_flops(T, 4, 4, 4, 2, ("q", "v")) for T in (1024, 2048)]
    fast = [lora_grad_flops(T, 4, 4, 4, 2, ("q", "v"), degree=8) for T in (1024, 2048)]
    assert 3.9 < exact[1] / exact[0] < 4.0 and 1.9 < fast[1] / fast[0] <= 2.0


@pytest.mark.parametrize(
    "change,match",
    [
        ({"x": torch.zeros(4, 5)}, r"x must be \[B, T, d\], got shape \(4, 5\)"),
        ({"w_k": torch.zeros(5, 4)}, r"w_q and w_k must have the same d_k, got 3 and 4"),
        ({"w_v": torch.zeros(4, 6)}, r"w_v must be \[d=5, d_out\], got shape \(4, 6\)"),
        ({"y": torch.zeros(2, 37, 5)}, r"y must be \[B=2, T=37, d_v=6\], got shape \(2, 37, 5\)"),
        ({"adapters": {}}, r"adapters is empty"),
        ({"adapters": {"o": None}}, r"adapter name 'o' is not one of"),
        (
            {"adapters": {"q": LoRAFactors(torch.zeros(5, 2), torch.zeros(3, 3))}},
            r"adapter 'q': b must be \[d=5, r\] and a \[r, d_out=3\], got b \(5, 2\) and a \(3, 3\)",
        ),
    ],
    ids=["x-2d", "dk", "wv-rows", "y", "empty", "name", "rank"],
)
def test_bad_inputs_name_the_argument(change, match):
    x, y, w_q, w_k, w_v, adapters = _problem()
    kw = {"x": x, "y": y, "w_q": w_q, "w_k": w_k, "w_v": w_v, "adapters": adapters, **change}
    for fn in (exact_lora_grad, lambda **k: fast_lora_grad(**k, degree=2), autograd_lora_grad):
        with pytest.raises(ValueError, match=match):
            fn(**kw)


def test_negative_degree_and_bad_flop_names_raise():
    with pytest.raises(ValueError, match="degree must be >= 0, got -1"):
        taylor_exp_features(torch.zeros(2, 3), -1)
    with pytest.raises(
        ValueError, match=r"adapted must be a non-empty subset of \('q', 'k', 'v'\), got \['o'\]"
    ):
        lora_grad_flops(8, 2, 2, 2, 1, ("o",))
