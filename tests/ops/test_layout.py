"""The layout copies of ``subq.ops.common.layout`` (Triton kernel on CUDA or in the interpreter)."""

from __future__ import annotations

import pytest
import torch

from subq.ops.common.layout import (
    channels_first,
    channels_last,
    project_from_channels_first,
    project_to_channels_first,
    to_channels_first,
    to_channels_last,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 70, 3), (3, 5, 130), (1, 129, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_first_and_back(shape, dtype):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    y = channels_first(x, kernel=True)
    assert y.shape == x.shape and (y.shape[1] == 1 or y.stride(1) == 1)
    assert torch.equal(y, x)
    z = channels_last(y, kernel=True)
    assert z.is_contiguous() and torch.equal(z, x)


def test_strided_sources():
    base = torch.randn(2, 40, 3 * 24, device=DEVICE)
    x = base[..., 24:48]  # a token-major slice: unit stride in C, not contiguous
    y = channels_first(x, kernel=True)
    assert y.stride(1) == 1 and torch.equal(y, x)
    cf = torch.randn(2, 3 * 24, 40, device=DEVICE).transpose(1, 2)[..., 24:48]  # channels-first slice
    assert channels_first(cf) is cf
    z = channels_last(cf, kernel=True)
    assert z.is_contiguous() and torch.equal(z, cf)
    odd = torch.randn(40, 24, 2, device=DEVICE).permute(2, 0, 1)  # no unit stride in T or C
    assert torch.equal(channels_first(odd, kernel=True), odd) and torch.equal(
        channels_last(odd, kernel=True), odd
    )


def test_already_in_layout_is_returned():
    x = torch.randn(2, 8, 4, device=DEVICE)
    assert channels_last(x) is x
    y = channels_first(x)
    assert channels_first(y) is y


def test_autograd():
    x = torch.randn(2, 33, 20, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 33, 20, device=DEVICE)
    y = to_channels_first(x)
    assert y.stride(1) == 1
    (y * w).sum().backward()
    assert x.grad.is_contiguous() and torch.equal(x.grad, w)


def test_to_channels_last_autograd():
    x = torch.randn(2, 20, 33, device=DEVICE).transpose(1, 2).requires_grad_()  # [2, 33, 20], unit T
    w = torch.randn(2, 33, 20, device=DEVICE)
    y = to_channels_last(x)
    assert y.is_contiguous() and torch.equal(y, x)
    (y * w).sum().backward()
    assert x.grad.stride(1) == 1 and torch.equal(x.grad, w)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_cpu_tensors_take_pytorch_copies_by_default(monkeypatch):
    """Without ``kernel=True`` CPU tensors never go through the interpreted kernel."""
    import subq.ops.common.layout as layout

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton copy ran on a CPU tensor")

    monkeypatch.setattr(layout, "_copy", refuse)
    x = torch.randn(2, 30, 12)
    assert torch.equal(channels_first(x), x) and torch.equal(channels_last(channels_first(x)), x)


@pytest.mark.parametrize("B", [1, 3])
def test_projections_between_layouts(B):
    """``project_to_channels_first`` and ``project_from_channels_first`` against ``einsum``, their
    gradients by ``gradcheck``, and the layouts they return (contiguous ``[B, E, T]``; contiguous
    ``[B, T, e]`` with a channels-first gradient)."""
    x = torch.randn(B, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    y = project_to_channels_first(x, w)
    assert y.shape == (B, 9, 7) and y.is_contiguous()
    assert torch.allclose(y, torch.einsum("ed,btd->bet", w, x))
    torch.autograd.gradcheck(project_to_channels_first, (x, w))
    z = torch.randn(B, 5, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    out = project_from_channels_first(z, w, bias)
    assert out.shape == (B, 7, 9) and out.is_contiguous()
    assert torch.allclose(out, torch.einsum("ed,bdt->bte", w, z) + bias)
    (dz,) = torch.autograd.grad(out.sum(), [z])
    assert dz.is_contiguous()
    torch.autograd.gradcheck(project_from_channels_first, (z, w, bias))
    torch.autograd.gradcheck(project_from_channels_first, (z, w, None))


def test_projection_bad_input():
    with pytest.raises(ValueError, match="weight"):
        project_to_channels_first(torch.randn(1, 4, 5), torch.randn(9, 4))
    with pytest.raises(ValueError, match="dtype"):
        project_from_channels_first(torch.randn(1, 5, 4), torch.randn(9, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must be"):
        project_from_channels_first(torch.randn(1, 5, 4), torch.randn(9, 5), torch.randn(8))
