"""Hyena's fused input stage (short convolution, projection bias, first gate; channels first): the
reference against a restatement with ``F.conv1d``, the Triton kernels against the reference in forward
and in every gradient on awkward shapes, half-precision inputs with float32 parameters, bad input. On
CPU the kernels run in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.ops.gated_short_conv import gated_short_conv, naive_gated_short_conv
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [
    # B, d, T, k, order, biases
    (1, 3, 1, 3, 2, True),
    (2, 5, 7, 3, 2, False),
    (1, 9, 300, 4, 2, True),  # two channel blocks, the second partial; two backward time tiles
    (2, 4, 37, 2, 3, True),
    (1, 8, 513, 3, 4, True),  # a second forward time tile of one column
    (2, 6, 3, 8, 2, True),  # k > T
]
IDS = [f"B{B}-d{d}-T{T}-k{k}-N{N}-{'bias' if b else 'nobias'}" for B, d, T, k, N, b in CASES]


@pytest.fixture(params=["split", "fused"])
def backward_form(request, monkeypatch):
    """Both backward forms of the Triton kernels (``triton_conv.BACKWARD``)."""
    triton_conv = pytest.importorskip("subq.ops.gated_short_conv.triton_conv")
    monkeypatch.setattr(triton_conv, "BACKWARD", request.param)
    return request.param


def leaves(B, d, T, k, order, biases, dtype=torch.float32, param_dtype=None):
    C = (order + 1) * d
    pk = {"device": DEVICE, "dtype": param_dtype or dtype, "requires_grad": True}
    p = torch.randn(B, C, T, device=DEVICE, dtype=dtype, requires_grad=True)
    w = torch.randn(C, k, **pk)
    b = torch.randn(C, **pk) if biases else None
    b_in = torch.randn(C, **pk) if biases else None
    return p, w, b, b_in


def restated(p, w, b, b_in, order):
    """``F.conv1d`` over ``p + in_bias`` padded after the bias, in float64."""
    C, k = w.shape
    d = C // (order + 1)
    x = p.double() + (0 if b_in is None else b_in.double()[:, None])
    c = F.conv1d(F.pad(x, (k - 1, 0)), w.double()[:, None], None if b is None else b.double(), groups=C)
    return c[:, : (order - 1) * d], c[:, (order - 1) * d : order * d] * c[:, order * d :]


def outputs_and_grads(fn, tensors, order, g):
    xs, u = fn(*tensors, order=order)
    leaves_ = [t for t in tensors if t is not None]
    loss = (xs.double() * g[0]).sum() + (u.double() * g[1]).sum()
    return (xs, u, *torch.autograd.grad(loss, leaves_))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_conv1d(case):
    p, w, b, b_in = leaves(*case, dtype=torch.float64)
    order = case[4]
    for a, r, name in zip(
        naive_gated_short_conv(p, w, b, b_in, order=order), restated(p, w, b, b_in, order), "xu", strict=True
    ):
        assert_close(a, r, 1e-12, name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_matches_the_reference(case, backward_form, one_thread):
    """Forward and the gradients of ``p``, ``weight``, ``bias`` and ``in_bias``."""
    order = case[4]
    tensors = leaves(*case)
    ref_tensors = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    xs, u = naive_gated_short_conv(*ref_tensors, order=order)
    g = (torch.randn_like(xs), torch.randn_like(u))
    fast = outputs_and_grads(
        lambda *a, order: gated_short_conv(*a, order=order, mode="triton"), tensors, order, g
    )
    ref = outputs_and_grads(naive_gated_short_conv, ref_tensors, order, g)
    names = ["xs", "u", "dp", "dw", *(["db", "db_in"] if case[5] else [])]
    assert len(fast) == len(ref) == len(names)
    for name, a, r in zip(names, fast, ref, strict=True):
        assert_close(a, r, 1e-6, name)


def test_half_input_with_float32_parameters(backward_form, one_thread):
    """A half-precision projection with float32 parameters (autocast's case): computed in float32,
    stored in float16; the parameters' gradients in float32."""
    tensors = leaves(2, 8, 100, 3, 2, True, dtype=torch.float16, param_dtype=torch.float32)
    p, w, b, b_in = tensors
    xs, u = gated_short_conv(*tensors, order=2, mode="triton")
    assert xs.dtype == u.dtype == torch.float16
    ref = naive_gated_short_conv(p.double(), w.double(), b.double(), b_in.double(), order=2)
    assert_close(xs, ref[0], 1e-3, "xs")
    assert_close(u, ref[1], 1e-3, "u")
    (u.float().sum() + xs.float().sum()).backward()
    assert p.grad.dtype == torch.float16 and w.grad.dtype == b.grad.dtype == b_in.grad.dtype == torch.float32


def test_only_one_output_used(backward_form, one_thread):
    """The backward with one of the two outputs unused (its gradient None)."""
    p, w, b, b_in = leaves(1, 4, 20, 3, 2, True)
    _, u = gated_short_conv(p, w, b, b_in, mode="triton")
    (dp,) = torch.autograd.grad(u.sum(), [p])
    ref_p = p.detach().double().requires_grad_()
    _, u_ref = naive_gated_short_conv(ref_p, w.double(), b.double(), b_in.double())
    (dp_ref,) = torch.autograd.grad(u_ref.sum(), [ref_p])
    assert_close(dp, dp_ref, 1e-6, "dp")


@pytest.mark.parametrize(
    "shape,wshape,order,match",
    [
        ((1, 10, 8), (10, 3), 2, r"\(N \+ 1\) d"),
        ((1, 9, 8), (9, 1), 2, "kernel size"),
        ((1, 9, 8), (8, 3), 2, "weight must be"),
        ((1, 9, 8), (9, 3), 1, "order must be"),
        ((9, 8), (9, 3), 2, "p must be"),
        ((1, 9, 0), (9, 3), 2, "B, d, T >= 1"),
    ],
)
def test_bad_input(shape, wshape, order, match):
    with pytest.raises(ValueError, match=match):
        gated_short_conv(torch.randn(shape), torch.randn(wshape), order=order)


def test_bad_bias_and_mode():
    p, w = torch.randn(1, 9, 8), torch.randn(9, 3)
    with pytest.raises(ValueError, match="in_bias must be"):
        gated_short_conv(p, w, None, torch.randn(8))
    with pytest.raises(ValueError, match="mode must be"):
        gated_short_conv(p, w, mode="cuda")
