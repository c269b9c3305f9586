"""Long convolution: the FFT and chunked forms against the tap-by-tap reference, forward and every
gradient, on awkward lengths; the decoding step; the conventions pinned against the Hyena and M2
reference formulas; bad input."""

from __future__ import annotations

import pytest
import torch

from subq.ops.long_conv import (
    chunk_long_conv,
    fft_long_conv,
    fft_size,
    long_conv,
    long_conv_step,
    naive_long_conv,
)
from tests.conftest import assert_close

C = 5
FORMS = {
    "fft": lambda u, h, bias, causal: fft_long_conv(u, h, bias, causal=causal),
    "chunk": lambda u, h, bias, causal: chunk_long_conv(u, h, bias, causal=causal),
    "chunk4": lambda u, h, bias, causal: chunk_long_conv(u, h, bias, causal=causal, chunk_size=4),
}
# (T, L): filters as long as the sequence, and shorter ones
SHAPES = [(1, 1), (7, 7), (7, 3), (63, 63), (63, 20), (100, 100), (100, 1), (1000, 1000), (1000, 333)]
SHAPE_IDS = [f"T{T}-L{L}" for T, L in SHAPES]


def inputs(T: int, L: int, causal: bool, dtype: torch.dtype, B: int = 2):
    u = torch.randn(B, T, C, dtype=dtype, requires_grad=True)
    h = (torch.randn(C, L) if causal else torch.randn(2, C, L)) / L**0.5
    h = h.to(dtype).requires_grad_()
    bias = torch.randn(C, dtype=dtype, requires_grad=True)
    return u, h, bias


def grads(y: torch.Tensor, g: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(y, leaves, g)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("T,L", SHAPES, ids=SHAPE_IDS)
def test_forms_match_naive_fp64(form, causal, T, L, one_thread):
    u, h, bias = inputs(T, L, causal, torch.float64)
    y_ref = naive_long_conv(u, h, bias, causal)
    y = FORMS[form](u, h, bias, causal)
    assert y.dtype == torch.float64
    assert_close(y, y_ref, 1e-12, "y")
    g = torch.randn_like(y)
    for name, a, b in zip(
        ("du", "dh", "dbias"), grads(y, g, u, h, bias), grads(y_ref, g, u, h, bias), strict=True
    ):
        assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("T,L", SHAPES, ids=SHAPE_IDS)
def test_forms_match_naive_fp32(form, causal, T, L, one_thread):
    u, h, bias = inputs(T, L, causal, torch.float32)
    u64, h64, b64 = (t.detach().double().requires_grad_() for t in (u, h, bias))
    y_ref = naive_long_conv(u64, h64, b64, causal)
    y = FORMS[form](u, h, bias, causal)
    assert y.dtype == torch.float32
    assert_close(y, y_ref, 1e-5, "y")
    g = torch.randn_like(y)
    ref_grads = grads(y_ref, g.double(), u64, h64, b64)
    for name, a, b in zip(("du", "dh", "dbias"), grads(y, g, u, h, bias), ref_grads, strict=True):
        assert_close(a, b, 1e-5, name)


@pytest.mark.parametrize("mode", ["fft", "chunk", "naive"])
def test_bf16_in_bf16_out(mode):
    u, h, bias = (t.detach() for t in inputs(100, 40, True, torch.float64))
    y_ref = naive_long_conv(u, h, bias)
    y = long_conv(u.bfloat16(), h.bfloat16(), bias.bfloat16(), mode=mode)
    assert y.dtype == torch.bfloat16
    assert_close(y, y_ref, 2e-2, "bf16")


@pytest.mark.parametrize("T", [1, 7, 63, 100])
def test_naive_is_the_definition(T):
    """A literal double loop over outputs and inputs, both directions."""
    L = max(1, T - 2)
    u = torch.randn(1, T, 3, dtype=torch.float64)
    h = torch.randn(2, 3, L, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    y, y_causal = torch.zeros_like(u), torch.zeros_like(u)
    for t in range(T):
        for s in range(T):
            if 0 <= t - s < L:
                y[:, t] += h[0, :, t - s] * u[:, s]
                y_causal[:, t] += h[0, :, t - s] * u[:, s]
            if 0 <= s - t - 1 < L:
                y[:, t] += h[1, :, s - t - 1] * u[:, s]
    assert_close(naive_long_conv(u, h, bias, causal=False), y + bias * u, 1e-14, "bidirectional")
    assert_close(naive_long_conv(u, h[0], bias), y_causal + bias * u, 1e-14, "causal")


def test_fft_matches_the_hyena_reference_formula():
    """Hyena's ``fftconv_ref``: filter spectrum divided by ``2T``, inverse with ``norm="forward"``."""
    T = 100
    u = torch.randn(2, C, T, dtype=torch.float64)  # the reference's channels-first layout
    k = torch.randn(C, T, dtype=torch.float64)
    D = torch.randn(C, dtype=torch.float64)
    n = 2 * T
    k_f = torch.fft.rfft(k, n=n) / n
    y_ref = torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n, norm="forward")[..., :T] + u * D[:, None]
    y = fft_long_conv(u.transpose(1, 2), k, D).transpose(1, 2)
    assert_close(y, y_ref, 1e-12, "hyena fftconv_ref")


def test_bidirectional_matches_the_m2_kernel():
    """M2's two-sided kernel: ``pad(k_fwd, (0, L)) + pad(k_rev.flip(-1), (L, 0))``, FFT size ``2L``."""
    T = 63
    u = torch.randn(2, T, C, dtype=torch.float64)
    k_fwd, k_rev = torch.randn(C, T, dtype=torch.float64), torch.randn(C, T, dtype=torch.float64)
    kernel = torch.nn.functional.pad(k_fwd, (0, T)) + torch.nn.functional.pad(k_rev.flip(-1), (T, 0))
    n = 2 * T
    u_f = torch.fft.rfft(u.transpose(1, 2), n=n)
    y_ref = torch.fft.irfft(u_f * torch.fft.rfft(kernel, n=n), n=n)[..., :T].transpose(1, 2)
    y = long_conv(u, torch.stack([k_fwd, k_rev]), causal=False)
    assert_close(y, y_ref, 1e-12, "m2 bidirectional")


@pytest.mark.parametrize("t", [0, 17, 62, 63, 99])
def test_chunk_is_bitwise_causal(t):
    u = torch.randn(2, 100, C, dtype=torch.float64)
    h = torch.randn(C, 100, dtype=torch.float64)
    u2 = u.clone()
    u2[:, t + 1 :] = torch.randn_like(u2[:, t + 1 :])
    for chunk_size in (1, 4, 64):
        y, y2 = chunk_long_conv(u, h, chunk_size=chunk_size), chunk_long_conv(u2, h, chunk_size=chunk_size)
        assert torch.equal(y[:, : t + 1], y2[:, : t + 1]), f"chunk_size={chunk_size}: output up to {t} moved"
        if t + 1 < 100:
            assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :])


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 1000])
def test_chunk_sizes(chunk_size):
    u, h, bias = (t.detach() for t in inputs(257, 200, True, torch.float64))
    y = chunk_long_conv(u, h, bias, chunk_size=chunk_size)
    assert_close(y, naive_long_conv(u, h, bias), 1e-12, f"chunk_size={chunk_size}")


def test_fft_size_is_the_least_5_smooth_size():
    def smooth(m: int) -> bool:
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 2000):
        m = fft_size(n)
        assert m >= n and smooth(m) and not any(smooth(k) for k in range(n, m)), n
    assert fft_size(2 * 1021) == 2048 and fft_size(1_000_001) == 1_012_500


@pytest.mark.parametrize("L", [1, 6, 30])
def test_step_matches_naive(L):
    T = 30
    u = torch.randn(2, T, C, dtype=torch.float64)
    h = torch.randn(C, L, dtype=torch.float64)
    bias = torch.randn(C, dtype=torch.float64)
    y_ref = naive_long_conv(u, h, bias)
    history = u.new_zeros(2, C, 0)
    ys = []
    for t in range(T):
        y_t, history = long_conv_step(u[:, t], history, h, bias, max_history=L - 1)
        assert history.shape == (2, C, min(t + 1, L - 1))
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y_ref, 1e-12, "step")


def test_step_keeps_everything_by_default_and_reads_only_the_taps_it_has():
    u = torch.randn(1, 4, C, dtype=torch.float64)
    h = torch.randn(C, 4, dtype=torch.float64)
    history = u[:, :3].transpose(1, 2)
    y, new_history = long_conv_step(u[:, 3], history, h)
    assert new_history.shape == (1, C, 4) and torch.equal(new_history[..., :3], history)
    assert_close(y, naive_long_conv(u, h)[:, 3], 1e-14, "full history")
    # a filter shorter than the history ignores the older inputs
    y2, _ = long_conv_step(u[:, 3], history, h[:, :2])
    assert_close(y2, naive_long_conv(u, h[:, :2])[:, 3], 1e-14, "short filter")


def test_dispatcher_modes():
    u, h, bias = (t.detach() for t in inputs(50, 50, False, torch.float64))
    y = naive_long_conv(u, h, bias, causal=False)
    for mode in ("auto", "fft", "chunk", "naive"):
        assert_close(long_conv(u, h, bias, causal=False, mode=mode), y, 1e-12, mode)
    modes = "auto, fft, chunk, naive, triton, triton_tf32, triton_fp16"
    with pytest.raises(ValueError, match=f"mode must be one of {modes}; got 'bogus'"):
        long_conv(u, h, mode="bogus")


def test_dispatcher_triton_modes_pick_the_precision(monkeypatch):
    import subq.ops.long_conv as lc

    seen = []

    def fake(u, h, bias, *, causal, precision):
        seen.append(precision)

    monkeypatch.setattr(lc, "triton_long_conv", fake)
    u, h = torch.randn(1, 8, 2), torch.randn(2, 8)
    for mode in ("triton", "triton_tf32", "triton_fp16"):
        long_conv(u, h, mode=mode)
    assert seen == ["tf32x3", "tf32", "fp16"]


@pytest.mark.parametrize("form", [naive_long_conv, fft_long_conv, chunk_long_conv])
def test_bad_input_raises_naming_sizes(form):
    u = torch.randn(2, 10, C)
    h = torch.randn(C, 10)
    with pytest.raises(ValueError, match=r"u must be 3-D \[B, T, C\], got shape \(10, 5\)"):
        form(u[0], h)
    with pytest.raises(TypeError, match="u must be floating point, got dtype torch.int64"):
        form(u.long(), h)
    with pytest.raises(ValueError, match=r"B, T, C >= 1, got shape \(2, 0, 5\)"):
        form(u[:, :0], h)
    with pytest.raises(ValueError, match=r"h must be \[C=5, L\], got shape \(4, 10\)"):
        form(u, h[:4])
    with pytest.raises(ValueError, match=r"L=11 exceeds the sequence length T=10"):
        form(u, torch.randn(C, 11))
    with pytest.raises(ValueError, match=r"h must have at least one tap"):
        form(u, h[:, :0])
    with pytest.raises(ValueError, match=r"h must match u's device and dtype .*float64"):
        form(u, h.double())
    with pytest.raises(ValueError, match=r"bias must be \[C=5\], got shape \(4,\)"):
        form(u, h, torch.randn(4))
    with pytest.raises(ValueError, match=r"h must be 3-D \[2, C, L\]"):
        form(u, h, causal=False)
    with pytest.raises(ValueError, match=r"h must be \[2, C=5, L\] for causal=False, got shape \(3, 5, 10\)"):
        form(u, torch.randn(3, C, 10), causal=False)
    with pytest.raises(ValueError, match=r"h must be 2-D \[C, L\]"):
        form(u, torch.randn(2, C, 10))
    with pytest.raises(TypeError, match="causal must be a bool"):
        form(u, h, causal="yes")


def test_bad_step_and_chunk_arguments():
    u_t, h = torch.randn(2, C), torch.randn(C, 4)
    with pytest.raises(ValueError, match=r"history must be \[B=2, C=5, S\], got shape \(2, 4, 3\)"):
        long_conv_step(u_t, torch.randn(2, 4, 3), h)
    with pytest.raises(ValueError, match="history must match u_t's device and dtype"):
        long_conv_step(u_t, torch.randn(2, C, 3, dtype=torch.float64), h)
    with pytest.raises(ValueError, match="max_history must be an int >= 0"):
        long_conv_step(u_t, torch.randn(2, C, 3), h, max_history=-1)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        chunk_long_conv(torch.randn(1, 4, C), h, chunk_size=0)
    with pytest.raises(ValueError, match="n must be a positive int"):
        fft_size(0)
