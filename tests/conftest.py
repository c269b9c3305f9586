"""Shared test helpers: seeding, relative-RMS comparison, device markers."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # without a GPU the Triton kernels run through Triton's interpreter (set before any kernel is defined)
    os.environ.setdefault("TRITON_INTERPRET", "1")


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (0 when both are zero)."""
    a, e = actual.double(), expected.double()
    denom = e.pow(2).mean().sqrt().item()
    num = (a - e).pow(2).mean().sqrt().item()
    return num / denom if denom > 0 else num


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Relative-RMS bound; prints the max abs difference on failure. NaN never passes."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in result"
    err = rel_rms(actual, expected)
    diff = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol, f"{what}: rel-RMS {err:.3e} > {tol:.1e} (max abs diff {diff:.3e})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small CPU problems are fastest unsplit), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
