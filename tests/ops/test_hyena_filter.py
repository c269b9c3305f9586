"""Hyena's implicit filter: the reference against the layer's ``HyenaFilter`` (the same taps,
channels-first), the Triton kernels against the reference in forward and every parameter's gradient
(in Triton's interpreter on a CPU) on awkward sizes, half-precision output, bad input."""

from __future__ import annotations

import pytest
import torch

from subq.layers.hyena import HyenaFilter, hyena_positional_features
from subq.ops.hyena_filter import hyena_filter, naive_hyena_filter
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes every dot in float32. On a GPU the backward's own dots run in single TF32
# (the module docstring of ``triton_filter.py``): the weights' gradients agree to about 1e-3 there.
GRAD_TOL = 1e-5 if DEVICE == "cpu" else 5e-3


def _filter(C: int, E: int, Fw: int, max_seq_len: int, seed: int = 0) -> HyenaFilter:
    torch.manual_seed(seed)
    filt = HyenaFilter(C, emb_dim=E, filter_order=Fw, max_seq_len=max_seq_len, w=3.0, bidirectional=False)
    with torch.no_grad():  # frequencies apart, so that each one's gradient is checked
        filt.freq.copy_(torch.linspace(0.5, 4.0, Fw))
    return filt.to(DEVICE)


def _inputs(filt: HyenaFilter, L: int, start: int = 0):
    z, t = hyena_positional_features(
        torch.arange(start, start + L, device=DEVICE), filt.emb_dim, filt.max_seq_len
    )
    mlp = filt.mlp
    weights = (
        mlp[0].weight,
        mlp[0].bias,
        mlp[1].weight,
        mlp[1].bias,
        mlp[2].weight,
        mlp[2].bias,
        mlp[3].weight,
    )
    return z.float(), t[:, 0].float(), filt.freq, weights, filt.deltas


def test_reference_is_the_layers_filter_channels_first():
    """Channel ``c = i groups + o`` of ``HyenaFilter.forward`` is row ``(o, i)`` of the taps."""
    filt = _filter(C=12, E=5, Fw=16, max_seq_len=40)
    z, t, freq, weights, deltas = _inputs(filt, 33)
    with torch.no_grad():
        taps = naive_hyena_filter(z, t, freq, weights, deltas, groups=3)
        ref = filt(torch.arange(33, device=DEVICE))  # [L, C]
    assert taps.shape == (3, 4, 33)
    for o in range(3):
        for i in range(4):
            assert torch.equal(taps[o, i], ref[:, i * 3 + o])


@pytest.mark.parametrize(
    ("L", "E", "Fw", "C", "groups", "start"),
    [
        (1, 3, 16, 8, 1, 0),
        (100, 5, 24, 24, 2, 0),
        (300, 5, 16, 160, 1, 0),
        (70, 33, 64, 32, 4, 5),
        (90, 5, 64, 128, 1, 0),
    ],
    ids=["one-tap", "odd-width-groups", "channels-past-a-block", "wide-features-offset", "bench-widths"],
)
def test_triton_matches_reference(L, E, Fw, C, groups, start, one_thread):
    """Forward and the gradients of all seven weights and the frequencies against the float64
    reference: a single position, widths that are not powers of two, more channels than one block
    (128; the per-program partials of ``W_4``), more position blocks than backward programs (300
    positions: 5 blocks over 3 programs in the interpreter), features wider than 16, a start offset."""
    pytest.importorskip("triton")
    filt = _filter(C, E, Fw, max_seq_len=max(L + start, 2))
    z, t, freq, weights, deltas = _inputs(filt, L, start)
    params = [freq, *weights]
    out = hyena_filter(z, t, freq, weights, deltas, groups=groups, mode="triton")
    ref_params = [p.detach().double().requires_grad_() for p in params]
    ref = naive_hyena_filter(
        z.double(), t.double(), ref_params[0], tuple(ref_params[1:]), deltas.double(), groups=groups
    )
    assert out.dtype == torch.float32 and out.shape == (groups, C // groups, L)
    assert_close(out, ref, 1e-5, "taps")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, g)
    ref_grads = torch.autograd.grad(ref, ref_params, g.double())
    names = ["freq", "w1", "b1", "w2", "b2", "w3", "b3", "w4"]
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        assert got.dtype == torch.float32
        assert_close(got, want, GRAD_TOL, name)


def test_triton_half_output(one_thread):
    """The taps stored in float16 directly (the interpreter does not compute in bf16); the
    gradients take a float16 upstream gradient."""
    pytest.importorskip("triton")
    filt = _filter(C=16, E=5, Fw=16, max_seq_len=64)
    z, t, freq, weights, deltas = _inputs(filt, 64)
    out = hyena_filter(z, t, freq, weights, deltas, dtype=torch.float16, mode="triton")
    ref = naive_hyena_filter(z, t, freq, weights, deltas)
    assert out.dtype == torch.float16
    assert_close(out, ref, 2e-3, "fp16 taps")
    g = torch.randn_like(ref)
    (dw,) = torch.autograd.grad(out, weights[-1], g.half())
    (dw_ref,) = torch.autograd.grad(ref, weights[-1], g.half().float())
    assert_close(dw, dw_ref, max(2e-3, GRAD_TOL), "w4")


def test_auto_and_bad_input():
    filt = _filter(C=8, E=3, Fw=16, max_seq_len=16)
    z, t, freq, weights, deltas = _inputs(filt, 16)
    expected = "triton" if DEVICE == "cuda" else "torch"
    with torch.no_grad():
        assert torch.equal(
            hyena_filter(z, t, freq, weights, deltas),
            hyena_filter(z, t, freq, weights, deltas, mode=expected),
        )
    with pytest.raises(ValueError, match="mode must be one of"):
        hyena_filter(z, t, freq, weights, deltas, mode="cuda")
    with pytest.raises(ValueError, match="divisor of the 8 channels"):
        hyena_filter(z, t, freq, weights, deltas, groups=3)
    with pytest.raises(ValueError, match=r"w2 must have shape \(16, 16\)"):
        hyena_filter(z, t, freq, (weights[0], weights[1], weights[2][:8], *weights[3:]), deltas)
    with pytest.raises(ValueError, match=r"z must be \[L, E\]"):
        hyena_filter(z[None], t, freq, weights, deltas)
    wide = _filter(C=8, E=3, Fw=72, max_seq_len=16)
    z, t, freq, weights, deltas = _inputs(wide, 16)
    with pytest.raises(ValueError, match="width <= 64, got 72"):
        hyena_filter(z, t, freq, weights, deltas, mode="triton")
    with torch.no_grad():  # auto takes PyTorch for wide MLPs
        assert torch.equal(
            hyena_filter(z, t, freq, weights, deltas), naive_hyena_filter(z, t, freq, weights, deltas)
        )
