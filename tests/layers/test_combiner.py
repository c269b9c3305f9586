"""The ``combiner`` mixer: every variant decodes exactly (prefill + step == forward), the naive mode
agrees with the blocked one in forward and every parameter gradient, the state keeps the span
abstractions it documents, and bad arguments name themselves."""

from __future__ import annotations

import pytest
import torch

from subq.layers import MixerConfig, get_mixer
from subq.layers.combiner import Combiner
from tests.conftest import assert_close

D_MODEL = 32
CONFIGS = [
    ("fixed", "proj"),
    ("logsparse", "proj"),
    ("axial", "proj"),
    ("axial", "max"),
    ("mixture", "proj"),
]
CONFIG_IDS = [f"{v}-{r}" if v == "axial" else v for v, r in CONFIGS]


def make(variant, row_summary="proj", **kw) -> Combiner:
    kw = {"num_heads": 2, "block_size": 7, "dtype": torch.float64, **kw}
    return Combiner(D_MODEL, variant=variant, row_summary=row_summary, **kw).eval()


@pytest.mark.parametrize("variant,row_summary", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("rotary", [False, True], ids=["norope", "rope"])
@pytest.mark.parametrize("split", [1, 13, 40], ids=lambda s: f"prefill{s}")
def test_prefill_then_step_equals_forward(variant, row_summary, rotary, split, one_thread):
    mixer = make(variant, row_summary, rotary=rotary)
    x = torch.randn(2, 45, D_MODEL, dtype=torch.float64)
    y = mixer(x)
    y_pre, state = mixer.prefill(x[:, :split])
    assert_close(y_pre, y[:, :split], 1e-10, "prefill")
    for t in range(split, x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        assert_close(y_t, y[:, t], 1e-10, f"step t={t}")


@pytest.mark.parametrize("variant,row_summary", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_naive_mode_agrees_with_blocked(variant, row_summary, causal, one_thread):
    fast = make(variant, row_summary, causal=causal)
    ref = make(variant, row_summary, causal=causal, mode="naive")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 50, D_MODEL, dtype=torch.float64, requires_grad=True)
    y_fast, y_ref = fast(x), ref(x)
    assert_close(y_fast, y_ref, 1e-10, "forward")
    g = torch.randn_like(y_fast)
    grads_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    names = ["x", *(n for n, _ in fast.named_parameters())]
    for name, a, b in zip(names, grads_fast, grads_ref, strict=True):
        assert_close(a, b, 1e-10, f"d{name}")


@pytest.mark.parametrize("variant,row_summary", CONFIGS, ids=CONFIG_IDS)
def test_future_tokens_leave_the_past_unchanged(variant, row_summary):
    mixer = make(variant, row_summary)
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 23:] = torch.randn_like(x2[:, 23:])
    assert torch.equal(mixer(x)[:, :23], mixer(x2)[:, :23])


@pytest.mark.parametrize("L", [1, 6, 7, 8, 31, 64])
def test_state_holds_the_finished_span_abstractions(L):
    """The state after ``L`` tokens keeps what ``state_size`` counts: one abstraction per finished
    segment (fixed), per finished level (logsparse), per finished row's column (axial), per finished
    row's left/right part (mixture)."""
    x = torch.randn(1, L, D_MODEL, dtype=torch.float64)
    s, H, D = 7, 2, D_MODEL // 2
    _, fixed = make("fixed").prefill(x)
    assert fixed.span_k.shape == fixed.span_v.shape == (1, H, L // s, D) and fixed.length == L
    _, logsparse = make("logsparse").prefill(x)
    assert len(logsparse.level_k) == len(logsparse.level_v) == max(L.bit_length() - 1, 0)
    _, axial = make("axial").prefill(x)
    assert axial.sum_k.shape == axial.sum_v.shape == (1, H, L // s, s, D)
    _, mixture = make("mixture").prefill(x)
    assert mixture.left_k.shape == mixture.right_v.shape == (1, H, L // s, s, D)


@pytest.mark.parametrize("variant,row_summary", CONFIGS, ids=CONFIG_IDS)
def test_state_size_grows_monotonically(variant, row_summary):
    mixer = make(variant, row_summary)
    sizes = [mixer.state_size(L) for L in range(1, 200)]
    assert all(isinstance(s, int) and s > 0 for s in sizes)
    assert sizes == sorted(sizes)


def test_fixed_state_is_sublinear():
    """``2 d (L // s + min(L, s)) + d``: at ``s = sqrt(L)`` about ``4 d sqrt(L)`` vs attention's ``2 d L``."""
    mixer = Combiner(D_MODEL, variant="fixed", block_size=64)
    assert mixer.state_size(4096) == 2 * D_MODEL * (64 + 64) + D_MODEL
    assert mixer.state_size(4096) < get_mixer("attention")(D_MODEL).state_size(4096) / 10


def test_config_and_defaults():
    mixer = MixerConfig(name="combiner", variant="mixture", block_size=16, num_heads=4).build(D_MODEL)
    assert (mixer.variant, mixer.block_size, mixer.num_heads) == ("mixture", 16, 4)
    default = Combiner(D_MODEL)
    assert (default.variant, default.block_size, default.row_summary) == ("axial", 128, "proj")
    assert hasattr(default, "summary_key") and not hasattr(Combiner(D_MODEL, variant="fixed"), "summary_key")


def test_bad_arguments_name_themselves():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"block_size .*got {bad!r}"):
            Combiner(D_MODEL, block_size=bad)
    with pytest.raises(ValueError, match=r"variant must be one of .*'routing'"):
        Combiner(D_MODEL, variant="routing")
    with pytest.raises(ValueError, match=r"row_summary must be one of .*'mean'"):
        Combiner(D_MODEL, row_summary="mean")
    with pytest.raises(ValueError, match="divisible by num_heads=5"):
        Combiner(D_MODEL, num_heads=5)
    with pytest.raises(RuntimeError, match="needs a causal mixer"):
        Combiner(D_MODEL, causal=False).init_state(1)
