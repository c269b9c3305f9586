"""The Triton chunked SSD kernels (``fused_chunk``) against the float64 quadratic reference: forward,
final state and every gradient (x, dt, A, B, C, D, initial state), awkward shapes, state chaining.
Without a GPU the kernels run through Triton's interpreter at small shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from subq.ops.ssd import ssd  # noqa: E402
from subq.ops.ssd.fused_chunk import fused_chunk_ssd  # noqa: E402
from tests.conftest import assert_close  # noqa: E402
from tests.ops.test_ssd import DEVICE, _check, _inputs  # noqa: E402

CPU_CASES = [  # B, T, H, P, G, N, chunk
    (1, 1, 2, 4, 1, 4, 16),
    (2, 63, 2, 5, 1, 6, 16),
    (1, 100, 4, 40, 2, 20, 32),  # two blocks of P, two groups
    (1, 257, 1, 3, 1, 8, 64),
]
GPU_CASES = [
    (b, T, H, P, G, N, 64)
    for T in (1, 63, 100, 1000, 4096)
    for b, H, P, G, N in [(2, 4, 64, 1, 64), (1, 8, 60, 2, 100), (2, 2, 128, 1, 128)]
] + [  # enough scans that half precision takes the wider blocks of P on an H200: 64, then 32
    (4, 1000, 24, 64, 1, 64, 64),
    (2, 1000, 20, 64, 1, 64, 64),
]


@pytest.fixture(params=["walk", "parallel"])
def forward_form(request, monkeypatch):
    """Both forms of the kernels' forward (``fused_chunk.FORWARD``): one walk over the chunks, or the
    walk storing the states and one program per chunk for the outputs."""
    from subq.ops.ssd import fused_chunk

    monkeypatch.setattr(fused_chunk, "FORWARD", request.param)
    return request.param


def _ids(case):
    b, T, H, P, G, N, Q = case
    return f"B{b}-T{T}-H{H}-P{P}-G{G}-N{N}-Q{Q}"


@pytest.mark.interpret
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids)
def test_triton_fp32(case, forward_form, one_thread):
    *shape, Q = case
    _check(fused_chunk_ssd, shape, torch.float32, 1e-5, chunk_size=Q)


@pytest.mark.interpret
def test_triton_without_state_or_skip(one_thread):
    _check(fused_chunk_ssd, (1, 40, 2, 3, 2, 4), torch.float32, 1e-5, with_state=False, with_D=False,
           chunk_size=16)  # fmt: skip


@pytest.mark.interpret
@pytest.mark.parametrize("case", CPU_CASES[1:3], ids=_ids)
def test_triton_fp16(case, forward_form, one_thread):
    *shape, Q = case
    _check(fused_chunk_ssd, shape, torch.float16, 1e-2, chunk_size=Q)


@pytest.mark.interpret
def test_triton_two_halves_equal_the_whole(forward_form, one_thread):
    x, dt, A, B, C, D, h0 = _inputs(1, 70, 2, 3, 1, 5)
    kw = dict(D=D, output_final_state=True, chunk_size=16)
    y, hT = fused_chunk_ssd(x, dt, A, B, C, initial_state=h0, **kw)
    y1, h1 = fused_chunk_ssd(x[:, :29], dt[:, :29], A, B[:, :29], C[:, :29], initial_state=h0, **kw)
    y2, h2 = fused_chunk_ssd(x[:, 29:], dt[:, 29:], A, B[:, 29:], C[:, 29:], initial_state=h1, **kw)
    assert_close(torch.cat([y1, y2], 1), y, 1e-5, "y")
    assert_close(h2, hT, 1e-5, "final state")


@pytest.mark.interpret
def test_triton_reads_projection_slices_in_place(one_thread):
    """``x``, ``B``, ``C`` as slices of one ``[b, T, H P + 2 G N + 5]`` projection (time stride wider
    than a row) give the contiguous inputs' outputs and gradients, through to the projection."""
    b, T, H, P, G, N = 2, 37, 2, 4, 1, 8
    proj = torch.randn(b, T, H * P + 2 * G * N + 5, device=DEVICE, requires_grad=True)
    dt = torch.nn.functional.softplus(torch.randn(b, T, H, device=DEVICE)).requires_grad_()
    A = (-torch.rand(H, device=DEVICE) - 0.2).requires_grad_()

    def run(copy: bool):
        x = proj[..., : H * P].unflatten(-1, (H, P))
        B = proj[..., H * P : H * P + G * N].unflatten(-1, (G, N))
        C = proj[..., H * P + G * N : H * P + 2 * G * N].unflatten(-1, (G, N))
        assert x.stride(1) == B.stride(1) == proj.shape[-1]
        if copy:
            x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
        y, _ = fused_chunk_ssd(x, dt, A, B, C, chunk_size=16)
        return (y, *torch.autograd.grad((y * g).sum(), [proj, dt, A]))

    g = torch.randn(b, T, H, P, device=DEVICE)
    strided, copied = run(False), run(True)
    for name, a, r in zip(("y", "dproj", "ddt", "dA"), strided, copied, strict=True):
        assert_close(a, r, 1e-6, name)


@pytest.mark.interpret
@pytest.mark.parametrize("form", ["triton", "torch"])
def test_long_memory_gradients(form, one_thread):
    """Small steps (dt ~ U(0, 0.01)) keep ~1000 tokens in the state: ``dA`` and ``ddt`` sum over
    pairs far apart, where a difference of running sums would lose float32 precision."""
    x, dt, A, B, C, _, _ = _inputs(1, 1000, 1, 16, 1, 16)
    dt = torch.rand_like(dt) * 0.01
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C)]
    ref = [t.detach().double().requires_grad_() for t in leaves]
    y, _ = ssd(*leaves, chunk_size=64, mode=form)
    y_r, _ = ssd(*ref, mode="naive")
    assert_close(y, y_r, 1e-5, "y")
    dy = torch.randn_like(y_r)
    g = torch.autograd.grad((y * dy.float()).sum(), leaves)
    g_r = torch.autograd.grad((y_r * dy).sum(), ref)
    for name, a, b in zip(("x", "dt", "A", "B", "C"), g, g_r, strict=True):
        assert_close(a, b, 1e-5, f"d{name}")


@pytest.mark.interpret
def test_triton_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match=r"power of two in \[16, 128\]"):
        fused_chunk_ssd(*_inputs(1, 4, 1, 2, 1, 2)[:5], chunk_size=24)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        fused_chunk_ssd(*(t.double() for t in _inputs(1, 4, 1, 2, 1, 2)[:5]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=_ids)
def test_triton_gpu(case, dtype, tol, forward_form):
    *shape, Q = case
    _check(fused_chunk_ssd, shape, dtype, tol, chunk_size=Q)


@pytest.mark.gpu
def test_auto_uses_triton_on_cuda():
    x, dt, A, B, C, D, h0 = _inputs(1, 100, 2, 64, 1, 64)
    y, _ = ssd(x, dt, A, B, C, D=D)
    y_t, _ = fused_chunk_ssd(x, dt, A, B, C, D=D)
    assert torch.equal(y, y_t)


@pytest.mark.interpret
@pytest.mark.parametrize("shape", [(2, 37, 2, 4, 1, 8), (1, 70, 3, 5, 1, 6)])
def test_triton_reverse_scan_is_the_flipped_scan(shape, one_thread):
    """``reverse=True`` (kernels indexing time backwards, in place) against the float64 reference on
    flipped copies: outputs, final state and every gradient, through projection slices."""
    b, T, H, P, G, N = shape
    proj = torch.randn(b, T, H * P + 2 * G * N + 3, device=DEVICE, requires_grad=True)
    dt = torch.nn.functional.softplus(torch.randn(b, T, H, device=DEVICE)).requires_grad_()
    A = (-torch.rand(H, device=DEVICE) - 0.2).requires_grad_()
    h0 = torch.randn(b, H, P, N, device=DEVICE, requires_grad=True)
    g, gh = torch.randn(b, T, H, P, device=DEVICE), torch.randn(b, H, P, N, device=DEVICE)

    def run(reverse: bool, ref: bool):
        leaves = [proj, dt, A, h0]
        p, d, a, h = (t.double() for t in leaves) if ref else leaves
        x = p[..., : H * P].unflatten(-1, (H, P))
        B = p[..., H * P : H * P + G * N].unflatten(-1, (G, N))
        C = p[..., H * P + G * N : H * P + 2 * G * N].unflatten(-1, (G, N))
        kw = dict(initial_state=h, output_final_state=True)
        if ref:
            y, hT = ssd(x.flip(1), d.flip(1), a, B.flip(1), C.flip(1), mode="naive", **kw)
            y = y.flip(1)
        else:
            y, hT = ssd(x, d, a, B, C, chunk_size=16, mode="triton", reverse=reverse, **kw)
        loss = (y * g.to(y.dtype)).sum() + (hT * gh.to(hT.dtype)).sum()
        return (y, hT, *torch.autograd.grad(loss, leaves))

    out, ref = run(True, False), run(True, True)
    for name, a, r in zip(("y", "h_T", "dproj", "ddt", "dA", "dh0"), out, ref, strict=True):
        assert_close(a, r, 1e-5, name)
    fwd = run(False, False)
    assert (fwd[0] - out[0]).abs().max() > 1e-2  # the two directions differ on this input


@pytest.mark.parametrize("mode", ["torch", "naive"])
def test_reverse_in_pytorch_forms(mode):
    x, dt, A, B, C, D, h0 = _inputs(1, 40, 2, 3, 1, 4)
    y, h = ssd(x, dt, A, B, C, D=D, initial_state=h0, output_final_state=True, mode=mode, reverse=True,
               chunk_size=16)  # fmt: skip
    y_r, h_r = ssd(x.flip(1), dt.flip(1), A, B.flip(1), C.flip(1), D=D, initial_state=h0,
                   output_final_state=True, mode="naive")  # fmt: skip
    assert_close(y, y_r.flip(1), 1e-5, "y")
    assert_close(h, h_r, 1e-5, "h_T")


@pytest.mark.interpret
@pytest.mark.parametrize("in_place", [True, False], ids=["projection-slices", "separate-tensors"])
def test_bidirectional_launch_matches_two_scans(in_place, forward_form, one_thread):
    """``ssd_bidirectional`` (both scans in one launch; ``B``, ``C`` of the two directions read in
    place at their offset in the projection, or stacked when they are separate tensors) against the
    float64 reference of each direction: outputs and every gradient."""
    from subq.ops.ssd import ssd_bidirectional

    b, T, H, P, G, N = 2, 45, 2, 4, 1, 8
    GN = G * N
    proj = torch.randn(b, T, H * P + 4 * GN + 3, device=DEVICE, requires_grad=True)
    dts = torch.nn.functional.softplus(torch.randn(b, T, 2 * H, device=DEVICE)).requires_grad_()
    A = (-torch.rand(H, device=DEVICE) - 0.2).requires_grad_()
    g_f, g_b = torch.randn(b, T, H, P, device=DEVICE), torch.randn(b, T, H, P, device=DEVICE)

    def run(ref: bool):
        p, d, a = (t.double() for t in (proj, dts, A)) if ref else (proj, dts, A)
        x = p[..., : H * P].unflatten(-1, (H, P))
        Bf, Cf, Bb, Cb = (
            p[..., H * P + i * GN : H * P + (i + 1) * GN].unflatten(-1, (G, N)) for i in range(4)
        )
        if not (ref or in_place):
            Bf, Cf, Bb, Cb = (t.contiguous() for t in (Bf, Cf, Bb, Cb))
        dt_f, dt_b = d[..., :H], d[..., H:]
        if ref:
            y_f, _ = ssd(x, dt_f, a, Bf, Cf, mode="naive")
            y_b, _ = ssd(x.flip(1), dt_b.flip(1), a, Bb.flip(1), Cb.flip(1), mode="naive")
            y_b = y_b.flip(1)
        else:
            y_f, y_b = ssd_bidirectional(x, dt_f, dt_b, a, Bf, Cf, Bb, Cb, chunk_size=16, mode="triton")
        loss = (y_f * g_f.to(y_f.dtype)).sum() + (y_b * g_b.to(y_b.dtype)).sum()
        return (y_f, y_b, *torch.autograd.grad(loss, [proj, dts, A]))

    for name, a, r in zip(("y_f", "y_b", "dproj", "ddt", "dA"), run(False), run(True), strict=True):
        assert_close(a, r, 1e-5, name)


@pytest.mark.parametrize("mode", ["torch", "naive"])
def test_bidirectional_pytorch_forms(mode):
    from subq.ops.ssd import ssd_bidirectional

    x, dt, A, B, C, _, _ = _inputs(1, 30, 2, 3, 1, 4)
    y_f, y_b = ssd_bidirectional(x, dt, dt * 0.5, A, B, C, C, B, chunk_size=16, mode=mode)
    assert_close(y_f, ssd(x, dt, A, B, C, mode="naive")[0], 1e-5, "y_f")
    assert_close(y_b, ssd(x, dt * 0.5, A, C, B, mode="naive", reverse=True)[0], 1e-5, "y_b")
