"""The ``performer`` and ``kernelized_rpe`` mixers beyond the shared contract: argument validation, the
fixed random features (seeded buffer, redraw on request), the bias layout and its clipping, the two
Toeplitz forms, and the relation between the two mixers."""

from __future__ import annotations

import pytest
import torch

import subq
from subq.layers.kernelized_rpe import KernelizedRPE, Performer
from subq.ops.kernel_rpe import naive_kernelized_rpe_attention
from tests.conftest import assert_close

D_MODEL = 32


def x_of(T: int, B: int = 2, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(B, T, D_MODEL, dtype=dtype)


@pytest.mark.parametrize("cls", [Performer, KernelizedRPE], ids=["performer", "kernelized_rpe"])
@pytest.mark.parametrize("m", [0, -3, 2.5, "8", True], ids=["zero", "negative", "float", "str", "bool"])
def test_num_features_must_be_a_positive_int(cls, m):
    with pytest.raises(ValueError, match="num_features .* must be an int >= 1"):
        cls(D_MODEL, num_heads=2, num_features=m)


@pytest.mark.parametrize("cls", [Performer, KernelizedRPE], ids=["performer", "kernelized_rpe"])
def test_other_arguments_validated(cls):
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        cls(D_MODEL, num_heads=3)
    with pytest.raises(ValueError, match="eps must be a float >= 0"):
        cls(D_MODEL, eps=-1e-6)
    with pytest.raises(TypeError, match="rpe_normalize must be a bool"):
        cls(D_MODEL, rpe_normalize=1)
    with pytest.raises(TypeError, match="feature_seed must be an int"):
        cls(D_MODEL, feature_seed=0.5)


def test_kernelized_rpe_arguments_validated():
    with pytest.raises(ValueError, match="max_seq_len must be an int >= 1"):
        KernelizedRPE(D_MODEL, max_seq_len=0)
    with pytest.raises(ValueError, match="toeplitz_form must be one of fft, chunk"):
        KernelizedRPE(D_MODEL, toeplitz_form="direct")


def test_registered_with_the_papers_defaults():
    assert subq.get_mixer("performer") is Performer
    assert subq.get_mixer("kernelized_rpe") is KernelizedRPE
    assert KernelizedRPE(D_MODEL).rpe_normalize is True
    assert Performer(D_MODEL).rpe_normalize is False


@pytest.mark.parametrize("cls", [Performer, KernelizedRPE], ids=["performer", "kernelized_rpe"])
def test_random_features_are_a_fixed_seeded_buffer(cls):
    a = cls(D_MODEL, num_heads=2, num_features=16, dtype=torch.float64)
    assert "projection" in dict(a.named_buffers()) and "projection" in a.state_dict()
    assert "projection" not in dict(a.named_parameters())
    assert a.projection.shape == (2, 16, 16)
    b = cls(D_MODEL, num_heads=2, num_features=16, dtype=torch.float64)
    assert torch.equal(a.projection, b.projection)
    other_layer = cls(D_MODEL, num_heads=2, num_features=16, layer_idx=3, dtype=torch.float64)
    assert not torch.equal(a.projection, other_layer.projection)
    assert torch.equal(
        other_layer.projection, cls(D_MODEL, num_heads=2, num_features=16, feature_seed=3).projection.double()
    )
    # forward passes never redraw: the function stays the same
    x = x_of(10)
    a.eval()
    y = a(x)
    a.train()
    a(x)
    assert torch.equal(a.eval()(x), y)
    a.redraw_features(seed=123)
    assert not torch.allclose(a(x), y)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_bias_layout_and_clipping(causal):
    n = 8
    mixer = KernelizedRPE(D_MODEL, num_heads=2, max_seq_len=n, causal=causal, dtype=torch.float64)
    assert mixer.rpe_bias.shape == (2, n if causal else 2 * n - 1)
    with torch.no_grad():
        mixer.rpe_bias.copy_(torch.randn_like(mixer.rpe_bias))
    T = 20
    b = mixer.bias_for_length(T)  # [H, 2T - 1], index delta + T - 1
    for delta in range(-(T - 1), T):
        if causal and delta > 0:
            continue
        clipped = max(-(n - 1), min(delta, 0 if causal else n - 1))
        assert torch.equal(b[:, delta + T - 1], mixer.rpe_bias[:, clipped + n - 1]), delta


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_longer_than_max_seq_len_matches_the_reference(causal):
    mixer = KernelizedRPE(
        D_MODEL, num_heads=2, num_features=8, max_seq_len=8, causal=causal, dtype=torch.float64
    )
    with torch.no_grad():
        mixer.rpe_bias.copy_(torch.randn_like(mixer.rpe_bias))
    naive = KernelizedRPE(
        D_MODEL, num_heads=2, num_features=8, max_seq_len=8, causal=causal, mode="naive", dtype=torch.float64
    )
    naive.load_state_dict(mixer.state_dict())
    x = x_of(30)
    assert_close(mixer(x), naive(x), 1e-10, "T=30 > max_seq_len=8")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_toeplitz_forms_agree(causal):
    chunk = KernelizedRPE(D_MODEL, num_heads=2, num_features=8, causal=causal, dtype=torch.float64)
    with torch.no_grad():
        chunk.rpe_bias.copy_(torch.randn_like(chunk.rpe_bias))
    fft = KernelizedRPE(
        D_MODEL, num_heads=2, num_features=8, causal=causal, toeplitz_form="fft", dtype=torch.float64
    )
    fft.load_state_dict(chunk.state_dict())
    x = x_of(77)
    assert_close(fft(x), chunk(x), 1e-12, "fft vs chunk")


def test_forward_is_the_op_on_the_projections():
    mixer = KernelizedRPE(D_MODEL, num_heads=2, num_features=8, dtype=torch.float64)
    with torch.no_grad():
        mixer.rpe_bias.copy_(torch.randn_like(mixer.rpe_bias))
    x = x_of(12)
    q, k, v = mixer.qkv_proj(x).view(2, 12, 3, 2, 16).unbind(2)
    bias = mixer.rpe_bias[:, -12:]  # offsets -11 .. 0
    full = torch.cat([bias, torch.zeros(2, 11, dtype=torch.float64)], dim=1)  # positive offsets unused
    o = naive_kernelized_rpe_attention(q, k, v, full, projection=mixer.projection)[0]
    assert_close(mixer(x), mixer.out_proj(o.flatten(2)), 1e-12, "layer vs op")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_zero_bias_equals_normalised_performer(causal):
    """``kernelized_rpe`` starts from a zero bias, where it is the normalised-PRF ``performer``."""
    rpe = KernelizedRPE(D_MODEL, num_heads=2, num_features=16, causal=causal, dtype=torch.float64)
    perf = Performer(
        D_MODEL, num_heads=2, num_features=16, rpe_normalize=True, causal=causal, dtype=torch.float64
    )
    perf.load_state_dict({k: v for k, v in rpe.state_dict().items() if k != "rpe_bias"})
    x = x_of(50)
    assert_close(rpe(x), perf(x), 1e-12, "zero bias")
    with torch.no_grad():
        rpe.rpe_bias.normal_()
    assert not torch.allclose(rpe(x), perf(x))


def test_state_sizes():
    perf = Performer(D_MODEL, num_heads=2, num_features=16)
    assert perf.state_size(1) == perf.state_size(4096) == 2 * (16 * 16 + 16)
    rpe = KernelizedRPE(D_MODEL, num_heads=2, num_features=16)
    assert rpe.state_size(100) == 2 * 100 * (16 + 16)
    state = rpe.init_state(3)
    _, state = rpe.step(torch.randn(3, D_MODEL), state)
    _, state = rpe.step(torch.randn(3, D_MODEL), state)
    assert state.phi_k.shape == (3, 2, 2, 16) and state.v.shape == (3, 2, 2, 16)
    assert state.phi_k.numel() + state.v.numel() == 3 * rpe.state_size(2)


def test_bf16_decode_runs_in_float32_state():
    rpe = KernelizedRPE(D_MODEL, num_heads=2, num_features=16, dtype=torch.bfloat16)
    y, state = rpe.prefill(x_of(5, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.phi_k.dtype == torch.float32
    y_t, state = rpe.step(torch.randn(2, D_MODEL, dtype=torch.bfloat16), state)
    assert y_t.dtype == torch.bfloat16 and state.phi_k.shape[1] == 6


@pytest.mark.parametrize("cls", [Performer, KernelizedRPE], ids=["performer", "kernelized_rpe"])
def test_gradients_reach_every_parameter(cls):
    mixer = cls(D_MODEL, num_heads=2, num_features=8, dtype=torch.float64)
    mixer(x_of(20)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_performer_stores_features_in_bf16_and_tracks_float32(causal):
    ref = Performer(D_MODEL, num_heads=2, num_features=16, causal=causal, dtype=torch.float32)
    low = Performer(D_MODEL, num_heads=2, num_features=16, causal=causal, dtype=torch.bfloat16)
    low.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    ref.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in ref.state_dict().items()})
    x = x_of(40, dtype=torch.bfloat16)
    want, got = ref(x.float()), low(x)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).norm() / want.norm() < 3e-2
