"""SSD (Mamba-2): the recurrent reference against the quadratic one, the chunked PyTorch form and the
Triton kernels against the float64 quadratic reference in forward, final state and every gradient
(x, dt, A, B, C, D, initial state), awkward lengths and chunk sizes, state chaining, and the input
checks. Without a GPU the kernels run through Triton's interpreter at small shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from subq.ops.ssd import chunk_ssd, naive_recurrent_ssd, naive_ssd, ssd, ssd_step
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


def _inputs(b, T, H, P, G, N, dtype=torch.float32, device=DEVICE):
    """Leaves ``(x, dt, A, B, C, D, h0)``; ``dt ~ softplus(N(0, 1))`` and ``A in [-1.2, -0.2]`` decay
    strongly enough inside a chunk to test the masks (Mamba-2's initial dt of 1e-3..0.1 barely would)."""
    x = torch.randn(b, T, H, P, device=device)
    dt = F.softplus(torch.randn(b, T, H, device=device))
    A = -torch.rand(H, device=device) - 0.2
    B = torch.randn(b, T, G, N, device=device)
    C = torch.randn(b, T, G, N, device=device)
    D = torch.randn(H, device=device)
    h0 = torch.randn(b, H, P, N, device=device)
    # x, dt, B, C in the tested dtype; A, D and the state are float32 parameters (all float64 in float64)
    return [
        t.to(dtype) if dtype == torch.float64 or i in (0, 1, 3, 4) else t
        for i, t in enumerate((x, dt, A, B, C, D, h0))
    ]


def _check(fn, shape, dtype, tol, *, with_state=True, with_D=True, **kw):
    leaves = [t.requires_grad_() for t in _inputs(*shape, dtype=dtype)]
    ref = [t.detach().double().requires_grad_() for t in leaves]

    def call(f, ls, **extra):
        x, dt, A, B, C, D, h0 = ls
        return f(
            x, dt, A, B, C, D=D if with_D else None, initial_state=h0 if with_state else None,
            output_final_state=True, **extra,
        )  # fmt: skip

    y, hT = call(fn, leaves, **kw)
    y_r, hT_r = call(naive_ssd, ref)
    assert y.dtype == dtype
    assert_close(y, y_r, tol, "y")
    assert_close(hT, hT_r, tol, "final state")
    dy, dh = torch.randn_like(y_r), torch.randn_like(hT_r)
    used = [i for i in range(7) if (with_D or i != 5) and (with_state or i != 6)]
    g = torch.autograd.grad(
        (y * dy.to(y.dtype)).sum() + (hT * dh.to(hT.dtype)).sum(), [leaves[i] for i in used]
    )
    g_r = torch.autograd.grad((y_r * dy).sum() + (hT_r * dh).sum(), [ref[i] for i in used])
    for i, a, b in zip(used, g, g_r, strict=True):
        assert_close(a, b, tol, f"d{NAMES[i]}")


# ---- references -----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 100])
def test_recurrent_equals_quadratic(T, one_thread):
    ls = [t.double() for t in _inputs(2, T, 4, 3, 2, 5)]
    x, dt, A, B, C, D, h0 = ls
    y, hT = naive_ssd(x, dt, A, B, C, D=D, initial_state=h0, output_final_state=True)
    y2, hT2 = naive_recurrent_ssd(x, dt, A, B, C, D=D, initial_state=h0, output_final_state=True)
    assert_close(y2, y, 1e-12, "y")
    assert_close(hT2, hT, 1e-12, "final state")


def test_one_head_by_hand():
    """T=2, one channel, one state dim: ``y_0 = dt_0 x_0 B_0 C_0``,
    ``y_1 = (e^{a_1} dt_0 x_0 B_0 + dt_1 x_1 B_1) C_1``."""
    x = torch.tensor([2.0, -1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    dt = torch.tensor([0.5, 0.25], dtype=torch.float64).reshape(1, 2, 1)
    A = torch.tensor([-2.0], dtype=torch.float64)
    B = torch.tensor([3.0, 1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    C = torch.tensor([1.0, 4.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    y, _ = naive_ssd(x, dt, A, B, C)
    h0 = 0.5 * 2.0 * 3.0
    expected = torch.tensor([h0 * 1.0, (math.exp(-0.5) * h0 + 0.25 * -1.0 * 1.0) * 4.0], dtype=torch.float64)
    assert_close(y.flatten(), expected, 1e-14, "y")


def test_step_matches_recurrence():
    x, dt, A, B, C, D, h0 = (t.double() for t in _inputs(2, 3, 4, 3, 2, 5))
    y, hT = naive_ssd(x, dt, A, B, C, D=D, initial_state=h0, output_final_state=True)
    state = h0
    for t in range(3):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D=D)
        assert_close(y_t, y[:, t], 1e-12, f"y_{t}")
    assert_close(state, hT, 1e-12, "state")


# ---- chunked PyTorch ------------------------------------------------------------------------------


@pytest.mark.parametrize("T,chunk_size", [(1, 64), (63, 16), (100, 64), (100, 37), (257, 64), (257, 256)])
def test_chunk_fp64(T, chunk_size, one_thread):
    _check(chunk_ssd, (2, T, 4, 6, 2, 5), torch.float64, 1e-12, chunk_size=chunk_size)


@pytest.mark.parametrize("T,chunk_size", [(1, 16), (63, 16), (100, 32), (257, 64)])
def test_chunk_fp32(T, chunk_size, one_thread):
    _check(chunk_ssd, (1, T, 2, 8, 1, 4), torch.float32, 1e-4, chunk_size=chunk_size)


def test_chunk_without_state_or_skip(one_thread):
    _check(
        chunk_ssd, (1, 40, 2, 3, 2, 4), torch.float64, 1e-12, with_state=False, with_D=False, chunk_size=16
    )


@pytest.mark.parametrize("form", ["torch", "naive"])
def test_two_halves_equal_the_whole(form, one_thread):
    x, dt, A, B, C, D, h0 = (t.double() for t in _inputs(2, 70, 4, 3, 2, 5))
    y, hT = ssd(x, dt, A, B, C, D=D, initial_state=h0, output_final_state=True, mode=form, chunk_size=16)
    y1, h1 = ssd(*(t[:, :29] for t in (x, dt)), A, B[:, :29], C[:, :29], D=D, initial_state=h0,
                 output_final_state=True, mode=form, chunk_size=16)  # fmt: skip
    y2, h2 = ssd(*(t[:, 29:] for t in (x, dt)), A, B[:, 29:], C[:, 29:], D=D, initial_state=h1,
                 output_final_state=True, mode=form, chunk_size=16)  # fmt: skip
    assert_close(torch.cat([y1, y2], 1), y, 1e-12, "y")
    assert_close(h2, hT, 1e-12, "final state")


def test_long_sequence_strong_decay_stays_finite(one_thread):
    """Decays that underflow across the sequence (sum a ~ -1e3) must give zeros, not NaN."""
    x, dt, A, B, C, D, h0 = _inputs(1, 300, 2, 4, 1, 4)
    y, hT = chunk_ssd(x, dt * 10, A, B, C, initial_state=h0, output_final_state=True, chunk_size=64)
    y_r, hT_r = naive_ssd(x.double(), dt.double() * 10, A.double(), B.double(), C.double(),
                          initial_state=h0.double(), output_final_state=True)  # fmt: skip
    assert_close(y, y_r, 1e-4, "y")
    assert_close(hT, hT_r, 1e-4, "final state")


# ---- dispatch and input checks --------------------------------------------------------------------


def test_dispatch_modes():
    x, dt, A, B, C, D, h0 = (t.double() for t in _inputs(1, 10, 2, 3, 1, 4, device="cpu"))
    y_n, _ = ssd(x, dt, A, B, C, mode="naive")
    y_a, _ = ssd(x, dt, A, B, C, mode="auto")
    assert_close(y_a, y_n, 1e-12, "auto on CPU")
    with pytest.raises(ValueError, match="mode must be one of"):
        ssd(x, dt, A, B, C, mode="fastest")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(dt=torch.rand(1, 9, 2)), r"dt must be \[B, T, H\] = \(1, 10, 2\)"),
        (dict(A=torch.rand(3)), r"A must be \[H\] = \(2,\)"),
        (dict(B=torch.rand(1, 10, 1, 5)), "B and C must both be"),
        (dict(B=torch.rand(1, 10, 3, 4), C=torch.rand(1, 10, 3, 4)), "multiple of groups G=3"),
        (dict(D=torch.rand(2, 1)), "D must be 1-D"),
        (
            dict(initial_state=torch.rand(1, 2, 3, 5)),
            r"initial_state must be \[B, H, P, N\] = \(1, 2, 3, 4\)",
        ),
        (dict(x=torch.rand(1, 10, 2)), "x must be 4-D"),
    ],
)
def test_bad_inputs_raise(change, match):
    args = dict(zip(("x", "dt", "A", "B", "C"), _inputs(1, 10, 2, 3, 1, 4, device="cpu")[:5], strict=True))
    kw = {k: change.pop(k) for k in ("D", "initial_state") if k in change}
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        chunk_ssd(**args, **kw)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk_ssd(*_inputs(1, 4, 1, 2, 1, 2, device="cpu")[:5], chunk_size=0)
