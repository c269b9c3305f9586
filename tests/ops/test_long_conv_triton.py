"""The Triton Monarch-FFT long convolution against the tap-by-tap reference: forward and both
gradients, causal and bidirectional, padded lengths, strided inputs, the GPU plan (every DFT factor
16) run in the interpreter, causality to rounding, bad input. On CPU the kernels run in Triton's
interpreter, which computes ``tl.dot`` in float32 whatever ``precision`` says: these tests check the
algorithm; the ``gpu`` tests check the tensor-core precisions."""

from __future__ import annotations

import pytest
import torch

from subq.ops.long_conv import fft_long_conv, long_conv, naive_long_conv, triton_long_conv
from subq.ops.long_conv.triton_fft import fft_plan
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (B, T, C, L, min_factor): powers of two, a padded length, short filters, balanced plans
SHAPES = [
    (2, 16, 3, 16, 2),
    (1, 64, 3, 64, 2),
    (2, 100, 3, 100, 2),
    (1, 100, 2, 37, 2),
    (2, 256, 3, 256, 4),
    (1, 1024, 2, 1024, 4),
    (1, 1000, 2, 333, 4),
]
SHAPE_IDS = [f"B{B}-T{T}-C{C}-L{L}-f{f}" for B, T, C, L, f in SHAPES]


def interpreter_plan(min_factor: int) -> int:
    """``min_factor`` for a test of the algorithm: factors below 16 compile only in the interpreter
    (``tl.dot`` tiles are at least 16 on a GPU), so such tests skip on CUDA."""
    if DEVICE == "cuda" and min_factor < 16:
        pytest.skip("DFT factors below 16 run only in Triton's interpreter")
    return min_factor


def inputs(B: int, T: int, C: int, L: int, causal: bool = True, dtype=torch.float32):
    u = torch.randn(B, T, C, dtype=dtype, device=DEVICE, requires_grad=True)
    h = (torch.randn(C, L) if causal else torch.randn(2, C, L)) / L**0.5
    h = h.to(dtype=dtype, device=DEVICE).requires_grad_()
    return u, h


def check_against_naive(u, h, y, g, causal, tol, bias=None, reference=naive_long_conv):
    """``y`` and the gradients of ``(y * g).sum()`` against ``reference`` in float64."""
    leaves = (u, h) if bias is None else (u, h, bias)
    ref = [t.detach().double().requires_grad_() for t in leaves]
    y_ref = reference(ref[0], ref[1], None if bias is None else ref[2], causal=causal)
    assert y.dtype == u.dtype
    assert_close(y, y_ref, tol, "y")
    got = torch.autograd.grad(y, leaves, g.to(y.dtype))
    want = torch.autograd.grad(y_ref, ref, g.double())
    for name, a, b in zip(("du", "dh", "dbias"), got, want, strict=False):
        assert_close(a, b, tol, name)


@pytest.mark.parametrize("B,T,C,L,f", SHAPES, ids=SHAPE_IDS)
def test_matches_naive_fp32(B, T, C, L, f, one_thread):
    u, h = inputs(B, T, C, L)
    y = triton_long_conv(u, h, precision="ieee", min_factor=interpreter_plan(f))
    check_against_naive(u, h, y, torch.randn_like(y), True, 1e-4)


@pytest.mark.parametrize("T,L", [(60, 30), (256, 128), (60, 60), (100, 99)])
def test_bidirectional_and_bias(T, L, one_thread):
    """One circular convolution holds both halves: filters up to ``L = T`` (M2's), whose last reverse
    tap reaches no output."""
    u, h = inputs(2, T, 3, L, causal=False)
    bias = torch.randn(3, device=DEVICE, requires_grad=True)
    y = long_conv(u, h, bias, causal=False, mode="triton")  # default precision: exact in the interpreter
    check_against_naive(u, h, y, torch.randn_like(y), False, 1e-4, bias)


@pytest.mark.parametrize("B", [1, 2])
def test_causal_bias(B, one_thread):
    """The skip ``bias * u`` is a lag-0 tap, added to the filter's column pass in the kernel: its
    gradient (the filter gradient's lag 0) and the filter's; ``B = 1`` takes the backward whose two
    gradients share their launches."""
    u, h = inputs(B, 60, 3, 45)
    bias = torch.randn(3, device=DEVICE, requires_grad=True)
    y = long_conv(u, h, bias, causal=True, mode="triton")
    check_against_naive(u, h, y, torch.randn_like(y), True, 1e-4, bias)


def test_bias_gradient_without_the_filters(one_thread):
    """Only ``u`` and ``bias`` need gradients (a frozen filter)."""
    u, h = inputs(1, 60, 3, 45)
    h = h.detach()
    bias = torch.randn(3, device=DEVICE, requires_grad=True)
    y = long_conv(u, h, bias, causal=True, mode="triton")
    g = torch.randn_like(y)
    du, db = torch.autograd.grad(y, [u, bias], g)
    ref = [t.detach().double().requires_grad_() for t in (u, bias)]
    du_ref, db_ref = torch.autograd.grad(naive_long_conv(ref[0], h.double(), ref[1]), ref, g.double())
    assert_close(du, du_ref, 1e-4, "du")
    assert_close(db, db_ref, 1e-4, "dbias")


def test_gpu_plan_in_interpreter(one_thread):
    """The plan CUDA runs at T = 65536 (``min_factor`` 16): FFT size 2^17, columns 256 (two blocks of
    output rows, four chunks of the 128-term sums), rows 16 x 32. The error is float32 rounding."""
    assert fft_plan(65536, 16) == (256, 16, 32)
    u, h = inputs(1, 65536, 1, 65536)
    y = triton_long_conv(u, h, precision="ieee", min_factor=16)
    check_against_naive(u, h, y, torch.randn_like(y), True, 1e-5, reference=fft_long_conv)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
def test_rounded_precisions_in_interpreter(precision, one_thread):
    """The interpreter rounds float16 operands as the GPU does, and ``tf32`` rounds its operands in the
    kernel (to nearest) before the tensor cores' truncation, so these errors are the GPU's: 7.3e-4 for
    the GPU plan at T = 4096, ``(32, 16, 16)`` (6 rounded matmul stages on the path through ``u``)."""
    u, h = inputs(1, 4096, 1, 4096)
    y = triton_long_conv(u, h, precision=precision, min_factor=16)
    check_against_naive(u, h, y, torch.randn_like(y), True, 1e-3)


def test_strided_inputs_channels_first(one_thread):
    """``u`` as the ``[B, T, C]`` view of channels-first storage (the benchmark's layout): ``y`` comes
    back in the same layout (unit stride in time, as the kernels write best)."""
    u_bct = torch.randn(2, 3, 128, device=DEVICE, requires_grad=True)
    h = (torch.randn(3, 128, device=DEVICE) / 128**0.5).requires_grad_()
    u = u_bct.transpose(1, 2)
    y = triton_long_conv(u, h, precision="ieee", min_factor=interpreter_plan(4))
    assert y.stride() == u.stride()
    check_against_naive(u, h, y, torch.randn(2, 3, 128, device=DEVICE).transpose(1, 2), True, 1e-5)


@pytest.mark.parametrize(
    "T,f,precision",
    [(100, 2, "ieee"), (4096, 16, "ieee"), (100, 2, "fp16")],
    ids=["T100-f2", "T4096-f16", "T100-f2-fp16"],
)
def test_every_output_is_written(T, f, precision, monkeypatch, one_thread):
    """Spectra (with ``fp16``'s scales), row outputs, ``y`` and the gradients allocated NaN-filled: an
    element a kernel fails to write (a Nyquist row, a block of rows or columns, a scale) reaches the
    outputs as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        return empty(*args, **kwargs).fill_(float("nan"))

    def nan_empty_like(*args, **kwargs):
        return empty_like(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    u, h = inputs(1, T, 2, T)
    y = triton_long_conv(u, h, precision=precision, min_factor=interpreter_plan(f))
    tol = 1e-5 if precision == "ieee" else 2e-3
    check_against_naive(u, h, y, torch.randn_like(y), True, tol, reference=fft_long_conv)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("groups", ["default", "swapped"])
def test_fp16_spectra_with_scales(causal, groups, one_thread):
    """``fp16`` keeps the spectra between kernels in float16 with a power-of-two scale per row and group
    of columns. The default plan at ``T = 100`` (rows ``8 x 8``) reads the column pass's scales one
    per block row (64 columns each) and the rows' in the inverse per column (8 each, 64 columns per
    program); ``swapped`` launches 4 and 8 columns per program, so that the rows kernel gathers per
    column and the inverse reads one scale per block row. The interpreter rounds float16 operands as
    the GPU does."""
    from subq.ops.long_conv import triton_fft as tf

    u, h = inputs(2, 100, 3, 100 if causal else 60, causal=causal)
    plan = tf._plan(100, u.device, "fp16", interpreter_plan(2))
    assert (plan.R1, plan.R2, plan.fwd["BN"], plan.inv["BN"]) == (8, 8, 64, 64)
    fwd, inv = dict(plan.fwd), dict(plan.inv)
    try:
        if groups == "swapped":
            plan.set_forward(dict(fwd, BN=4))
            plan.inv = dict(inv, BN=8)
        y = triton_long_conv(u, h, causal=causal, precision="fp16", min_factor=2)
        check_against_naive(u, h, y, torch.randn_like(y), causal, 1.5e-3)
    finally:
        plan.set_forward(fwd)
        plan.inv = inv


def test_token_major_inputs_keep_their_layout(one_thread):
    """A contiguous ``[B, T, C]`` ``u`` (a layer's activations) is staged channels-first for the kernels;
    ``y`` and ``du`` come back contiguous, as ``u`` and ``dy``."""
    u, h = inputs(2, 96, 3, 96)
    y = triton_long_conv(u, h, precision="ieee", min_factor=interpreter_plan(4))
    assert y.is_contiguous()
    g = torch.randn_like(y)
    check_against_naive(u, h, y, g, True, 1e-5)
    (du,) = torch.autograd.grad(
        triton_long_conv(u, h, precision="ieee", min_factor=interpreter_plan(4)), u, g
    )
    assert du.is_contiguous()


@pytest.mark.parametrize("precision", ["ieee", "fp16"])
def test_one_launch_backward_equals_the_separate_ones(precision, one_thread):
    """With ``B = 1`` and both gradients asked for, the backward runs ``du``'s and ``dh``'s products in
    one launch and their inverses in another; each gradient alone takes its own launches. Same
    operations in the same order: the gradients are equal bit for bit."""
    u, h = (t.detach() for t in inputs(1, 100, 3, 37))
    g = torch.randn(1, 100, 3, device=DEVICE)

    def grads(need_u: bool, need_h: bool):
        uu, hh = u.clone().requires_grad_(need_u), h.clone().requires_grad_(need_h)
        y = triton_long_conv(uu, hh, precision=precision, min_factor=interpreter_plan(2))
        return torch.autograd.grad(y, [t for t in (uu, hh) if t.requires_grad], g)

    du, dh = grads(True, True)
    assert torch.equal(du, grads(True, False)[0])
    assert torch.equal(dh, grads(False, True)[0])


def test_fp16_products_take_float16_planes(one_thread):
    """Float32 planes (a column pass with ``half=False``, as the bidirectional filter's halves before
    their sum) are refused by an ``fp16`` product: its kernel reads float16 planes with scales."""
    from subq.ops.long_conv import triton_fft as tf

    plan = tf._plan(100, torch.device(DEVICE), "fp16", interpreter_plan(2))
    u = torch.randn(1, 3, 100, device=DEVICE).transpose(1, 2)
    z = plan.spectrum(u, 1, 3, 100, tf._btc_strides(u), half=False)
    assert z.planes.dtype == torch.float32
    with pytest.raises(ValueError, match="fp16 products take float16 planes"):
        plan.product(z, z, 3, 3, (3, 1, 0), (0, 1, 0), 1, False)


def test_half_inputs_with_bias(one_thread):
    """Half-precision ``u``, ``h`` and ``bias``: one column launch for both signals, the bias added to
    the filter's column pass in float32."""
    u, h = (t.detach() for t in inputs(1, 128, 2, 100, dtype=torch.float64))
    bias = torch.randn(2, dtype=torch.float64, device=DEVICE)
    y = triton_long_conv(u.half(), h.half(), bias.half(), min_factor=interpreter_plan(4))
    assert y.dtype == torch.float16
    assert_close(y, naive_long_conv(u, h.half().double(), bias.half().double()), 2e-3, "fp16")


def test_half_inputs_out_in_their_dtype(one_thread):
    u, h = (t.detach() for t in inputs(1, 128, 2, 128, dtype=torch.float64))
    y = triton_long_conv(u.half(), h.half(), min_factor=interpreter_plan(4))
    assert y.dtype == torch.float16
    assert_close(y, naive_long_conv(u, h), 2e-3, "fp16")


@pytest.mark.parametrize("t", [0, 37, 99])
def test_causal_to_rounding(t, one_thread):
    """Output ``t`` moves by rounding only (float32, relative ~1e-7) when inputs after ``t`` change."""
    u, h = (x.detach() for x in inputs(1, 100, 2, 100))
    u2 = u.clone()
    u2[:, t + 1 :] = 100 * torch.randn_like(u2[:, t + 1 :])
    y, y2 = triton_long_conv(u, h), triton_long_conv(u2, h)
    scale = y2.abs().max()
    assert (y[:, : t + 1] - y2[:, : t + 1]).abs().max() <= 1e-5 * scale
    if t + 1 < 100:
        assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :])


def test_fft_plan():
    assert fft_plan(1_048_576) == (512, 64, 64)  # N = 2^21: columns 512, rows 4096
    assert fft_plan(262_144) == (512, 32, 32)
    assert fft_plan(65_536) == (256, 16, 32)  # N = 2^17: rows of 512
    assert fft_plan(100, 16) == (32, 16, 16)  # padded to 4096: N = 8192, the least GPU plan
    assert fft_plan(100, 2) == (4, 8, 8)  # N = 256
    for f in (2, 4, 16):
        for T in (1, 7, 100, 5000, 1 << 20, 1 << 22):
            N1, R1, R2 = fft_plan(T, f)
            assert N1 * R1 * R2 >= 2 * T and R1 * R2 <= 4096 and min(N1 // 2, R1, R2) >= f
    with pytest.raises(ValueError, match="min_factor must be a power of two >= 2, got 12"):
        fft_plan(100, 12)


def test_bad_input():
    u, h = (t.detach() for t in inputs(1, 16, 2, 16))
    with pytest.raises(ValueError, match="precision must be one of tf32x3, tf32, fp16, ieee; got 'fp8'"):
        triton_long_conv(u, h, precision="fp8")
    with pytest.raises(TypeError, match="computes in float32; got float64"):
        triton_long_conv(u.double(), h.double())
    with pytest.raises(ValueError, match=r"L=17 exceeds the sequence length T=16"):
        triton_long_conv(u, torch.randn(2, 17, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "precision,tol", [("tf32x3", 1e-5), ("tf32", 1.5e-3), ("fp16", 1.5e-3), ("ieee", 1e-5)]
)
@pytest.mark.parametrize("T", [1000, 8192, 65536])
def test_gpu_precisions(precision, tol, T):
    """The tensor-core precisions on CUDA, forward and gradients, 128 channels as the benchmark; the
    reference is the float64 FFT form (pinned to naive at 1e-12 in ``test_long_conv.py``)."""
    u, h = inputs(1, T, 128, T)
    y = triton_long_conv(u, h, precision=precision)
    check_against_naive(u, h, y, torch.randn_like(y), True, tol, reference=fft_long_conv)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("tf32x3", 1e-5), ("fp16", 1.5e-3)])
@pytest.mark.parametrize("T", [1000, 4096])
def test_gpu_bidirectional(precision, tol, T):
    """The two-sided convolution with filters as long as the input (M2's), forward and gradients, on
    CUDA against the float64 FFT form."""
    u, h = inputs(2, T, 64, T, causal=False)
    y = triton_long_conv(u, h, causal=False, precision=precision)
    check_against_naive(u, h, y, torch.randn_like(y), False, tol, reference=fft_long_conv)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("tf32x3", 1e-5), ("tf32", 1e-3), ("fp16", 1e-3)])
def test_gpu_error_at_one_million(precision, tol):
    """The issue's bound, relative RMS <= 1e-3 at T = 2^20 (forward and gradients), for the fast
    precisions; the default is float32-exact. Channels-first ``u``, as the benchmark."""
    T, C = 1 << 20, 8
    u = torch.randn(1, C, T, device="cuda").transpose(1, 2).requires_grad_()
    h = (torch.randn(C, T, device="cuda") / T**0.5).requires_grad_()
    y = triton_long_conv(u, h, precision=precision)
    g = torch.randn(1, C, T, device="cuda").transpose(1, 2)
    check_against_naive(u, h, y, g, True, tol, reference=fft_long_conv)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
def test_gpu_repeated_calls_take_the_compiled_launch(precision):
    """The first call of a shape launches through Triton's JIT path, later ones through the compiled
    kernels (``FastLaunch``): the same outputs and gradients bit for bit, also for inputs at an
    address off the 16-byte grid (another specialization) and after another length in between."""
    T, C = 8192, 16

    def run(u, h, g):
        u, h = u.detach().requires_grad_(), h.detach().requires_grad_()
        y = triton_long_conv(u, h, precision=precision)
        y.backward(g)
        return y, u.grad, h.grad

    base = torch.randn(1, C, T + 1, device="cuda")
    aligned, shifted = base[..., :T].transpose(1, 2), base[..., 1:].transpose(1, 2)
    h = torch.randn(C, T, device="cuda") / T**0.5
    g = torch.randn(1, T, C, device="cuda")
    for u in (aligned, shifted):
        first = run(u, h, g)
        other = torch.randn(1, 2 * T, C, device="cuda")
        run(other, torch.randn(C, 2 * T, device="cuda"), torch.randn_like(other))
        for _ in range(2):
            for a, b in zip(first, run(u, h, g), strict=True):
                assert torch.equal(a, b)
    fresh = run(shifted.clone(), h, g)  # a new allocation: 16-byte aligned again
    for a, b in zip(run(shifted, h, g), fresh, strict=True):
        assert_close(a, b, 1e-6)
