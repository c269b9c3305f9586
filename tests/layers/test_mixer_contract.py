"""The contract every registered sequence mixer must meet (DESIGN.md s.3).

Parametrized over ``list_mixers()``: a mixer added later is checked here without new test code.
"""

from __future__ import annotations

import pytest
import torch

import subq
from subq.layers.base import Mixer
from tests.conftest import assert_close

MIXERS = subq.list_mixers()
D_MODEL = 32


def make(name: str, *, causal: bool | None = None, mode: str = "auto", dtype=torch.float64, **extra) -> Mixer:
    """A small instance; ``causal=None`` is causal unless the mixer is bidirectional only."""
    cls = subq.get_mixer(name)
    causal = cls.supports_causal if causal is None else causal
    kwargs = {**cls.example_kwargs, **extra}
    return cls(D_MODEL, causal=causal, mode=mode, dtype=dtype, **kwargs).eval()


def directions(name: str) -> list[bool]:
    cls = subq.get_mixer(name)
    return [c for c in (True, False) if (cls.supports_causal if c else cls.supports_bidirectional)]


CAUSAL_MIXERS = [n for n in MIXERS if subq.get_mixer(n).supports_causal]


def test_registry_lists_both_foundation_mixers():
    assert {"attention", "sliding_window"} <= set(MIXERS)


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: .*attention"):
        subq.get_mixer("no_such_mixer")


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"]
)
@pytest.mark.parametrize("T", [1, 63, 100])
def test_shape_and_dtype_preserved(name, dtype, T):
    for causal in directions(name):
        mixer = make(name, causal=causal, dtype=dtype)
        x = torch.randn(2, T, D_MODEL, dtype=dtype)
        y = mixer(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", CAUSAL_MIXERS)
@pytest.mark.parametrize("t", [0, 17, 62])
def test_causality(name, t):
    mixer = make(name)
    x = torch.randn(2, 63, D_MODEL, dtype=torch.float64)
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
    y, y2 = mixer(x), mixer(x2)
    assert torch.equal(y[:, : t + 1], y2[:, : t + 1]), f"{name}: output up to t={t} changed"
    if t + 1 < x.shape[1]:
        assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :]), "perturbation had no effect at all"


@pytest.mark.parametrize("name", [n for n in MIXERS if subq.get_mixer(n).supports_bidirectional])
def test_bidirectional_sees_the_future(name):
    mixer = make(name, causal=False)
    x = torch.randn(1, 20, D_MODEL, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 11] += 1.0
    assert not torch.allclose(mixer(x)[:, 10], mixer(x2)[:, 10])


DECODERS = [n for n in MIXERS if subq.get_mixer(n).supports_decode]
# decode cases: every decoder as is, plus those with a rotary option with rotary on
DECODE_CASES = [(n, False) for n in DECODERS] + [
    (n, True) for n in DECODERS if "rotary" in subq.layers.config._accepted_kwargs(subq.get_mixer(n))
]
DECODE_IDS = [f"{n}-{'rope' if r else 'norope'}" for n, r in DECODE_CASES]


@pytest.mark.parametrize("name,rotary", DECODE_CASES, ids=DECODE_IDS)
@pytest.mark.parametrize("split", [1, 5, 40], ids=lambda s: f"prefill{s}")
def test_prefill_then_step_equals_forward(name, split, rotary):
    extra = {"rotary": True} if rotary else {}
    mixer = make(name, **extra)
    T = 45
    x = torch.randn(3, T, D_MODEL, dtype=torch.float64)
    y = mixer(x)
    y_pre, state = mixer.prefill(x[:, :split])
    assert_close(y_pre, y[:, :split], 1e-10, "prefill")
    for t in range(split, T):
        y_t, state = mixer.step(x[:, t], state)
        assert_close(y_t, y[:, t], 1e-10, f"step t={t}")


@pytest.mark.parametrize("name", DECODERS)
def test_step_from_empty_state(name):
    mixer = make(name)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    state = mixer.init_state(2, dtype=torch.float64)
    outs = []
    for t in range(9):
        y_t, state = mixer.step(x[:, t], state)
        outs.append(y_t)
    assert_close(torch.stack(outs, 1), mixer(x), 1e-10, "step-only decode")


@pytest.mark.parametrize("name", MIXERS)
def test_state_size(name):
    mixer = make(name)
    sizes = [mixer.state_size(L) for L in (1, 16, 256, 4096)]
    for s in sizes:
        assert isinstance(s, int) and s > 0
    assert sizes == sorted(sizes), f"state size must not shrink with L: {sizes}"


@pytest.mark.parametrize("name", MIXERS)
def test_naive_mode_agrees_with_default(name):
    for causal in directions(name):
        fast, ref = make(name, causal=causal), make(name, causal=causal, mode="naive")
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 100, D_MODEL, dtype=torch.float64, requires_grad=True)
        y_fast, y_ref = fast(x), ref(x)
        assert_close(y_fast, y_ref, 1e-10, f"forward causal={causal}")
        g = torch.randn_like(y_fast)
        gx_fast, *gp_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], g)
        gx_ref, *gp_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
        assert_close(gx_fast, gx_ref, 1e-10, "dx")
        for (pname, _), a, b in zip(fast.named_parameters(), gp_fast, gp_ref, strict=True):
            assert_close(a, b, 1e-10, f"d{pname}")


@pytest.mark.parametrize("name", MIXERS)
def test_bad_input_raises_naming_sizes(name):
    mixer = make(name, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"3-D .*\(2, 32\)"):
        mixer(torch.randn(2, D_MODEL))
    with pytest.raises(ValueError, match=rf"d_model={D_MODEL}, got 16"):
        mixer(torch.randn(2, 5, 16))
    with pytest.raises(TypeError, match="floating-point.*int64"):
        mixer(torch.zeros(2, 5, D_MODEL, dtype=torch.int64))
    with pytest.raises(ValueError, match="T=0"):
        mixer(torch.randn(2, 0, D_MODEL))
    if mixer.supports_decode:
        state = mixer.init_state(2)
        with pytest.raises(ValueError, match=r"2-D .*\(2, 1, 32\)"):
            mixer.step(torch.randn(2, 1, D_MODEL), state)


@pytest.mark.parametrize("name", MIXERS)
def test_mode_validation(name):
    with pytest.raises(ValueError, match="mode must be one of"):
        make(name, mode="fastest")
    if not subq.get_mixer(name).supports_causal:
        with pytest.raises(ValueError, match="bidirectional only"):
            make(name, causal=True)
    cls = subq.get_mixer(name)
    if "triton" in cls.modes and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="mode='triton' needs CUDA"):
            make(name, mode="triton")(torch.randn(1, 4, D_MODEL, dtype=torch.float64))
    elif "triton" not in cls.modes:
        with pytest.raises(ValueError, match="has no 'triton' form"):
            make(name, mode="triton")
