"""BaseConv (``base_conv``): layout of the released layer, locality, decoding, argument checks.

The generic contract (shapes, causality, prefill/step vs forward, naive vs torch with gradients)
is in ``test_mixer_contract.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import subq
from subq.layers.base_conv import BaseConv
from tests.conftest import assert_close


def released_base_conv_forward(m: BaseConv, u: torch.Tensor) -> torch.Tensor:
    """The released PyTorch path: ``nn.Conv1d(padding=k-1)`` on ``[B, C, T]``, keep the first ``T``."""
    conv = nn.Conv1d(
        m.d_inner,
        m.d_inner,
        m.kernel_size,
        groups=m.d_inner,
        padding=m.kernel_size - 1,
        bias=m.conv_bias is not None,
        dtype=u.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(m.conv_weight[:, None, :])
        if m.conv_bias is not None:
            conv.bias.copy_(m.conv_bias)
    T = u.shape[1]
    u = m.in_proj(u)
    u1, u2 = torch.split(u, m.d_inner, dim=-1)
    u_conv = conv(u1.transpose(1, 2))[..., :T].transpose(1, 2)
    return m.out_proj(F.silu(u_conv) * u2)


def test_registered_and_shaped_like_the_released_layer():
    assert subq.get_mixer("base_conv") is BaseConv
    m = BaseConv(16)
    assert m.d_inner == 32 and m.kernel_size == 3
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "in_proj.weight": (64, 16),
        "in_proj.bias": (64,),
        "conv_weight": (32, 3),
        "out_proj.weight": (16, 32),
        "out_proj.bias": (16,),
    }
    assert not m.supports_bidirectional and m.supports_decode


@pytest.mark.parametrize("k,expand,conv_bias", [(3, 4, False), (2, 2, True), (8, 4, True), (4, 3, False)])
def test_matches_released_conv1d_path(k, expand, conv_bias, one_thread):
    m = BaseConv(16, kernel_size=k, expand=expand, conv_bias=conv_bias, dtype=torch.float64)
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    assert_close(m(x), released_base_conv_forward(m, x), 1e-12, f"k={k} expand={expand}")


def test_receptive_field_is_exactly_k_tokens():
    m = BaseConv(8, kernel_size=4, dtype=torch.float64)
    x = torch.randn(1, 20, 8, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 10] += 1.0
    changed = (m(x2) - y).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13]


@pytest.mark.parametrize("k", [2, 3, 8])
def test_decode_state_is_constant_and_matches_state_size(k):
    m = BaseConv(8, kernel_size=k, conv_bias=True, dtype=torch.float64)
    x = torch.randn(3, 30, 8, dtype=torch.float64)
    y = m(x)
    y_pre, state = m.prefill(x[:, :2])  # a prompt shorter than the kernel
    assert state.shape == (3, m.d_inner, k)
    assert state.numel() == 3 * m.state_size(2) == 3 * m.state_size(10**6)
    for t in range(2, 30):
        y_t, state = m.step(x[:, t], state)
        assert state.shape == (3, m.d_inner, k)
        assert_close(y_t, y[:, t], 1e-12, f"step t={t}")


def test_bf16_decode_close_to_forward():
    m = BaseConv(32, dtype=torch.bfloat16)
    x = torch.randn(2, 12, 32, dtype=torch.bfloat16)
    y = m(x)
    _, state = m.prefill(x[:, :4])
    assert state.dtype == torch.bfloat16
    ys = []
    for t in range(4, 12):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y[:, 4:], 2e-2, "bf16 step")


def test_bad_arguments():
    with pytest.raises(ValueError, match="causal only"):
        BaseConv(16, causal=False)
    with pytest.raises(ValueError, match=r"kernel_size must be an int in \[2, 8\], got 1"):
        BaseConv(16, kernel_size=1)
    with pytest.raises(ValueError, match=r"kernel_size must be an int in \[2, 8\], got 9"):
        BaseConv(16, kernel_size=9)
    with pytest.raises(ValueError, match="expand must be a positive int with expand \\* d_model even"):
        BaseConv(15, expand=3)
    with pytest.raises(ValueError, match="expand must be a positive int"):
        BaseConv(16, expand=0)
    with pytest.raises(ValueError, match="has no 'triton' form"):
        BaseConv(16, mode="triton")
