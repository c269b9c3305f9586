"""Hyena: the implicit filter and the operator against a restatement of the reference code, the three
long-convolution forms against each other, decoding past the filter length, gradients, bad arguments.

The generic mixer contract (shapes, causality, prefill + step, naive mode) runs in
``test_mixer_contract.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.func import functional_call

from subq.layers.hyena import Hyena, hyena_positional_features
from tests.conftest import assert_close


def make(d_model: int = 16, **kwargs) -> Hyena:
    kwargs = {"filter_order": 16, "max_seq_len": 64, **kwargs}
    return Hyena(d_model, dtype=torch.float64, **kwargs).eval()


def reference_filter(layer: Hyena, L: int, mlp=None) -> torch.Tensor:
    """``HyenaFilter.filter(L)`` restated: the ``l_max`` tables sliced to ``L``, ``[L, d (N - 1)]``."""
    l_max, bands = layer.max_seq_len, (layer.emb_dim - 1) // 2
    t = torch.linspace(0, 1, l_max, dtype=torch.float64)[:L, None]
    w = 2 * math.pi * torch.linspace(0, l_max - 1, l_max, dtype=torch.float64)[:L, None] / l_max
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)[None]
    z = torch.exp(-1j * f * w)
    z = torch.cat([t, z.real, z.imag], dim=-1)
    lin = layer.filter.mlp if mlp is None else mlp
    freq = layer.filter.freq
    h = lin[0](z)
    for i in (1, 2, 3):
        h = lin[i](torch.sin(freq * h))
    channels = layer.d_model * (layer.order - 1)
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, channels, dtype=torch.float64)
    return h * torch.exp(-t * deltas.abs())


def reference_forward(layer: Hyena, x: torch.Tensor) -> torch.Tensor:
    """``HyenaOperator.forward`` restated, channels first, with ``fftconv_ref``'s FFT (``T <= l_max``)."""
    T, d, N = x.shape[1], layer.d_model, layer.order
    u = rearrange(layer.in_proj(x), "b l d -> b d l")
    k = layer.short_filter_order
    w = layer.short_filter_weight[:, None]  # Conv1d's [(N+1)d, 1, k]
    uc = F.conv1d(u, w, layer.short_filter_bias, padding=k - 1, groups=u.shape[1])[..., :T]
    *xs, v = uc.split(d, dim=1)
    filters = rearrange(reference_filter(layer, T), "l (v o) -> o v l", o=N - 1)
    for o, x_i in enumerate(reversed(xs[1:])):
        v = v * x_i
        n = 2 * T
        k_f = torch.fft.rfft(filters[o], n=n) / n
        y = torch.fft.irfft(torch.fft.rfft(v, n=n) * k_f, n=n, norm="forward")[..., :T]
        v = y + v * layer.D[o][:, None]
    return layer.out_proj(rearrange(v * xs[0], "b d l -> b l d"))


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("emb_dim", [3, 5, 33])
def test_filter_matches_the_reference(order, emb_dim):
    layer = make(8, order=order, emb_dim=emb_dim, max_seq_len=50)
    for L in (1, 37, 50):
        expected = rearrange(reference_filter(layer, L), "l (v o) -> o v l", o=order - 1)
        assert_close(layer.long_filters(L), expected, 1e-12, f"L={L}")
    # any window of positions agrees with the whole: decoding evaluates one tap at a time
    assert_close(layer.long_filters(10, start=23), layer.long_filters(33)[..., 23:], 1e-12, "window")


def test_bidirectional_filter_uses_a_second_mlp_and_the_same_window():
    layer = make(8, order=3, causal=False, max_seq_len=40)
    h = layer.long_filters(40)  # [N-1, 2, d, L]
    assert h.shape == (2, 2, 8, 40)
    fwd = rearrange(reference_filter(layer, 40), "l (v o) -> o v l", o=2)
    rev = rearrange(reference_filter(layer, 40, layer.filter.mlp_rev), "l (v o) -> o v l", o=2)
    assert_close(h[:, 0], fwd, 1e-12, "forward taps")
    assert_close(h[:, 1], rev, 1e-12, "reverse taps")


def test_positional_features():
    z, t = hyena_positional_features(torch.arange(5), emb_dim=5, max_seq_len=5)
    assert z.shape == (5, 5) and t.shape == (5, 1)
    assert_close(t[:, 0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), 1e-15, "t")
    w = 2 * math.pi * torch.arange(5, dtype=torch.float64) / 5
    assert_close(z[:, 2], torch.cos(w), 1e-15, "band f=1, real")
    assert_close(z[:, 4], -torch.sin(w), 1e-15, "band f=1, imaginary")


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("T", [1, 7, 50])
def test_forward_matches_the_reference(order, T):
    layer = make(12, order=order, emb_dim=5, max_seq_len=50)
    x = torch.randn(2, T, 12, dtype=torch.float64)
    expected = reference_forward(layer, x)
    for form in ("chunk", "fft"):
        layer.long_conv_form = form
        assert_close(layer(x), expected, 1e-10, form)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("T", [1, 63, 100], ids=lambda T: f"T{T}")
def test_forms_agree_forward_and_gradients(causal, T, one_thread):
    """chunk (default), fft and naive; ``T = 100`` exceeds ``max_seq_len = 64`` (a 64-tap filter)."""
    layers = {form: make(order=3, causal=causal, long_conv_form=form) for form in ("chunk", "fft")}
    layers["naive"] = make(order=3, causal=causal, mode="naive")
    state = layers["naive"].state_dict()
    for layer in layers.values():
        layer.load_state_dict(state)
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, T, 16, dtype=torch.float64)
    results = {}
    for form, layer in layers.items():
        y = layer(x)
        results[form] = (y, *torch.autograd.grad(y, [x, *layer.parameters()], g))
    names = ["y", "dx", *(f"d{n}" for n, _ in layers["naive"].named_parameters())]
    for form in ("chunk", "fft"):
        for name, a, b in zip(names, results[form], results["naive"], strict=True):
            assert_close(a, b, 1e-10, f"{form} {name}")


@pytest.mark.parametrize(
    "form,short,causal,tol",
    [
        ("triton", "torch", True, 1e-4),
        ("triton_fp16", "torch", False, 3e-3),
        ("triton", "triton", True, 1e-4),
    ],
    ids=["triton-causal", "fp16-bidir", "triton-short-conv"],
)
def test_triton_forms_match_the_reference(form, short, causal, tol, one_thread):
    """The Triton FFT convolution (and the Triton short convolution) inside the layer (float32; on a
    CPU the kernels run in Triton's interpreter), forward and gradients against the naive layer (the
    filters in PyTorch in both: ``test_triton_filter_matches_the_reference`` covers the fused ones). The
    layer's activations are token-major, so this also covers the copy to channels-first storage and
    back, and the short convolution in place on the projection."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"filter_order": 16, "max_seq_len": 64, "order": 2, "causal": causal, "device": device}
    fast = Hyena(16, long_conv_form=form, short_conv_mode=short, filter_mode="torch", **kw).eval()
    naive = Hyena(16, mode="naive", **kw).eval()
    fast.load_state_dict(naive.state_dict())
    x = torch.randn(2, 50, 16, device=device, requires_grad=True)
    g = torch.randn(2, 50, 16, device=device)
    names = ["y", "dx", *(f"d{n}" for n, _ in naive.named_parameters())]

    def outputs_and_grads(m: Hyena):
        y = m(x)
        return (y, *torch.autograd.grad(y, [x, *m.parameters()], g))

    for name, a, b in zip(names, outputs_and_grads(fast), outputs_and_grads(naive), strict=True):
        assert_close(a, b, tol, f"{form} {name}")


@pytest.mark.parametrize(
    "order,causal,split", [(2, True, 1), (3, True, 20), (2, False, None), (3, False, None)]
)
def test_channels_first_path_matches_the_token_major_one(order, causal, split, one_thread):
    """``short_conv_mode="triton"`` keeps the activations channels first, with the fused input stage
    (:mod:`subq.ops.gated_short_conv`) and the channels-first projections: against the token-major
    PyTorch path, float64 parameters and inputs (the kernel computes in float32), the output, every
    gradient, and decoding after a prefill."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"order": order, "causal": causal, "long_conv_form": "fft", "max_seq_len": 24, "device": device}
    cf, tm = make(short_conv_mode="triton", **kw), make(short_conv_mode="torch", **kw)
    tm.load_state_dict(cf.state_dict())
    x = torch.randn(2, 30, 16, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 30, 16, dtype=torch.float64, device=device)
    names = ["y", "dx", *(f"d{n}" for n, _ in cf.named_parameters())]
    results = []
    for m in (cf, tm):
        y = m(x)
        results.append((y, *torch.autograd.grad(y, [x, *m.parameters()], g)))
    for name, a, b in zip(names, *results, strict=True):
        assert_close(a, b, 1e-6, name)
    if causal:
        with torch.no_grad():
            y_pre, state = cf.prefill(x[:, :split])
            assert_close(y_pre, results[0][0][:, :split], 1e-6, "prefill")
            for t in range(split, 30):
                y_t, state = cf.step(x[:, t], state)
                assert_close(y_t, results[0][0][:, t], 1e-6, f"step t={t}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_triton_filter_matches_the_reference(causal, one_thread):
    """The fused Triton filter (``filter_mode="triton"``; the interpreter on a CPU) inside the layer,
    order 3 (two filters interleaved in the MLP's channels), forward and every gradient against the
    naive layer in float32; then decoding with it: a new tap per step."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"filter_order": 16, "max_seq_len": 40, "order": 3, "causal": causal, "device": device}
    fast = Hyena(16, filter_mode="triton", **kw).eval()
    naive = Hyena(16, mode="naive", **kw).eval()
    fast.load_state_dict(naive.state_dict())
    x = torch.randn(2, 50, 16, device=device, requires_grad=True)
    g = torch.randn(2, 50, 16, device=device)
    names = ["y", "dx", *(f"d{n}" for n, _ in naive.named_parameters())]
    results = []
    for m in (fast, naive):
        y = m(x)
        results.append((y, *torch.autograd.grad(y, [x, *m.parameters()], g)))
    # on a GPU the filter's backward dots run in single TF32 (subq/ops/hyena_filter/triton_filter.py)
    filter_tol = 1e-5 if device == "cpu" else 5e-3
    for name, a, b in zip(names, *results, strict=True):
        assert_close(a, b, filter_tol if name.startswith("dfilter.") else 1e-5, name)
    if causal:
        with torch.no_grad():
            y_pre, state = fast.prefill(x[:, :30])
            for t in range(30, 45):
                y_t, state = fast.step(x[:, t], state)
                assert_close(y_t, results[0][0][:, t], 1e-5, f"step t={t}")
        assert state.filters.shape == (2, 16, 40)


@pytest.mark.parametrize("form", ["chunk", "fft"])
def test_causal_past_the_filter_length(form):
    layer = make(order=3, max_seq_len=16, long_conv_form=form)
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 25:] = torch.randn_like(x2[:, 25:])
    y, y2 = layer(x), layer(x2)
    if form == "chunk":
        assert torch.equal(y[:, :25], y2[:, :25]), "the chunked form must be bitwise causal"
    else:
        assert_close(y[:, :25], y2[:, :25], 1e-14, "fft: causal up to rounding")
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_receptive_field_is_capped_by_max_seq_len():
    """Input ``s`` reaches the gates at ``s .. s + k - 1`` and the long convolution ``max_seq_len - 1``
    further: order 2, ``k = 3``, ``max_seq_len = 8`` -> outputs from ``t = 10`` on never see input 0."""
    layer = make(order=2, max_seq_len=8)
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0] += 1.0
    y, y2 = layer(x), layer(x2)
    assert not torch.allclose(y[:, 9], y2[:, 9])
    assert torch.equal(y[:, 10:], y2[:, 10:])


@pytest.mark.parametrize("split", [1, 9, 20], ids=lambda s: f"prefill{s}")
def test_decode_past_the_filter_length(split):
    layer = make(order=3, max_seq_len=10)
    x = torch.randn(3, 30, 16, dtype=torch.float64)
    y = layer(x)
    y_pre, state = layer.prefill(x[:, :split])
    assert_close(y_pre, y[:, :split], 1e-10, "prefill")
    for t in range(split, 30):
        y_t, state = layer.step(x[:, t], state)
        assert_close(y_t, y[:, t], 1e-10, f"step t={t}")
        seen = t + 1
        assert state.history.shape == (3, 2, 16, min(seen, 9))
        assert state.filters.shape == (2, 16, min(seen, 10))


@pytest.mark.parametrize("L", [1, 5, 9, 10, 50])
def test_state_size_counts_the_per_sequence_state(L):
    layer = make(order=3, max_seq_len=10)
    _, state = layer.prefill(torch.randn(3, L, 16, dtype=torch.float64))
    per_sequence = (state.conv.numel() + state.history.numel()) // 3
    assert layer.state_size(L) == per_sequence == 4 * 16 * 3 + 2 * 16 * min(L, 9)


def test_bidirectional_sees_both_sides_and_does_not_decode():
    layer = make(order=2, causal=False, max_seq_len=32)
    x = torch.randn(1, 40, 16, dtype=torch.float64)
    y = layer(x)
    assert y.shape == x.shape
    for s in (5, 30):
        x2 = x.clone()
        x2[:, s] += 1.0
        assert not torch.allclose(layer(x2)[:, 20], y[:, 20]), f"output 20 does not see input {s}"
    with pytest.raises(RuntimeError, match="needs a causal mixer"):
        layer.prefill(x)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_gradcheck_tiny(causal):
    layer = Hyena(4, filter_order=4, max_seq_len=4, causal=causal, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_hyena_dna_settings_and_parameter_count():
    layer = Hyena(128, emb_dim=5, w=10.0, max_seq_len=1026)
    assert torch.equal(layer.filter.freq, torch.full((64,), 10.0))
    d, F_ = 128, 64
    expected = (
        (d * 3 * d + 3 * d)  # in_proj
        + (3 * d * 3 + 3 * d)  # short filter
        + F_  # shared Sin frequency
        + (5 * F_ + F_ + 2 * (F_ * F_ + F_) + F_ * d)  # filter MLP
        + d  # D
        + (d * d + d)  # out_proj
    )
    assert sum(p.numel() for p in layer.parameters()) == expected
    assert layer(torch.randn(2, 20, 128)).shape == (2, 20, 128)


def test_dropout_only_in_training():
    layer = make(order=2, dropout=0.5)
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    reference = make(order=2)
    reference.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), reference(x))
    layer.train()
    assert not torch.allclose(layer(x), reference(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"order": 1}, "order must be an int >= 2, got 1"),
        ({"filter_order": 0}, "filter_order must be a positive int, got 0"),
        ({"emb_dim": 4}, "emb_dim must be an odd int >= 3"),
        ({"emb_dim": 1}, "emb_dim must be an odd int >= 3"),
        ({"short_filter_order": 1}, r"short_filter_order must be an int in \[2, 8\], got 1"),
        ({"max_seq_len": 1}, "max_seq_len must be an int >= 2, got 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"long_conv_form": "cufft"}, "long_conv_form must be one of"),
        ({"filter_mode": "cuda"}, "filter_mode must be one of"),
        ({"mode": "triton"}, "hyena has no 'triton' form"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hyena(16, **kwargs)
