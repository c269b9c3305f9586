"""The BASED hybrid preset and its matched attention baseline: layer pattern, sizes, decoding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from subq.models import LanguageModel, LMConfig, count_params
from subq.models.based import (
    BASED_SIZES,
    WINDOW,
    attention_config,
    based_config,
    based_layer_pattern,
)
from tests.conftest import rel_rms


def state_numel(state) -> int:
    """Elements held by a decoding state: tensors, tuples/lists of them, dataclasses (KV caches)."""
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, (tuple, list)):
        return sum(state_numel(s) for s in state)
    if dataclasses.is_dataclass(state):
        return sum(state_numel(getattr(state, f.name)) for f in dataclasses.fields(state))
    return 0


def test_360m_is_the_released_pattern():
    cfg = based_config("360m")
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (1024, 27, 50304)
    names = [m.name for m in cfg.mixers]
    assert [i for i, n in enumerate(names) if n == "based"] == [1, 6, 11, 16, 21]
    assert [i for i, n in enumerate(names) if n == "sliding_window"] == [2, 7, 12, 17, 22]
    assert names.count("base_conv") == 17
    la, sw, conv = cfg.mixers[1].kwargs, cfg.mixers[2].kwargs, cfg.mixers[0].kwargs
    assert la == {"feature_dim": 16, "num_heads": 16}
    assert sw == {"num_heads": 16, "window": 129, "rotary": True}
    assert conv == {"kernel_size": 3, "expand": 4}
    assert cfg.channel_mixer.name == "glu" and cfg.channel_mixer.kwargs == {"expand": 2.0, "bias": False}
    assert (cfg.norm, cfg.pos_emb) == ("rmsnorm", "none")


def test_window_is_itself_plus_128_previous_tokens():
    from subq.layers.attention import SlidingWindowAttention

    assert WINDOW == 129
    m = SlidingWindowAttention(8, num_heads=1, window=WINDOW, dtype=torch.float64)
    x = torch.randn(1, 200, 8, dtype=torch.float64)
    t = 150
    for s, sees in [(t - 128, True), (t - 129, False)]:
        x2 = x.clone()
        x2[:, s] += 1.0
        assert (m(x2)[:, t] != m(x)[:, t]).any() == sees, f"query {t} vs key {s}"


@pytest.mark.parametrize("n_layers", [1, 4, 5, 7, 13, 27])
def test_layer_pattern_keeps_the_period(n_layers):
    names = based_layer_pattern(n_layers)
    full = 5 * (n_layers // 5)
    for i, n in enumerate(names):
        expected = {1: "based", 2: "sliding_window"}.get(i % 5, "base_conv") if i < full else "base_conv"
        assert n == expected, f"layer {i} of {n_layers}"


@pytest.mark.parametrize("size", list(BASED_SIZES))
def test_every_size_builds_and_matches_its_attention_baseline(size):
    based, attn = based_config(size), attention_config(size)
    assert based.n_layers == BASED_SIZES[size]["n_layers"] and attn.d_model == based.d_model
    assert {m.name for m in attn.mixers} == {"attention"} and attn.mixers[0].kwargs["rotary"]
    assert attn.channel_mixer == based.channel_mixer and attn.norm == based.norm
    p_based = count_params(LanguageModel(based, device="meta"))
    p_attn = count_params(LanguageModel(attn, device="meta"))
    assert abs(p_attn - p_based) / p_based <= 0.05, f"{size}: attention {p_attn:,} vs BASED {p_based:,}"


def test_presets_by_name():
    assert LMConfig.from_preset("based-tiny", vocab_size=97) == based_config("tiny", vocab_size=97)
    assert LMConfig.from_preset("based-attn-small") == attention_config("small")
    assert LanguageModel.from_preset("based-tiny", vocab_size=97).cfg.n_layers == 5
    with pytest.raises(KeyError, match="valid presets: based-tiny, based-small"):
        LMConfig.from_preset("based-1b")
    with pytest.raises(KeyError, match="valid sizes: tiny, small, 125m, 360m"):
        based_config("huge")


def test_overrides():
    cfg = based_config("tiny", vocab_size=97, n_layers=10, init_std=0.01)
    assert [m.name for m in cfg.mixers].count("based") == 2 and cfg.init_std == 0.01
    assert attention_config("tiny", vocab_size=97, n_layers=3).n_layers == 3


def test_tiny_forward(one_thread):
    model = LanguageModel(based_config("tiny", vocab_size=97))
    ids = torch.randint(97, (2, 33))
    logits = model(ids)
    assert logits.shape == (2, 33, 97) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("prompt_len", [7, 140], ids=lambda p: f"prompt{p}")
def test_generate_matches_parallel_forward(prompt_len, one_thread):
    """Greedy decoding through prefill/step equals the parallel forward at every generated position;
    with 30 new tokens both prompts take the sliding-window ring buffer past its capacity."""
    model = LanguageModel(based_config("tiny", vocab_size=97), dtype=torch.float64).eval()
    assert model.can_decode
    n_new = 30 if prompt_len > WINDOW else WINDOW - prompt_len + 10
    ids = torch.randint(97, (2, prompt_len))
    out = model.generate(ids, n_new)
    assert out.shape == (2, prompt_len + n_new) and torch.equal(out[:, :prompt_len], ids)
    with torch.no_grad():
        ref = model(out)  # [B, T, V]
        assert torch.equal(out[:, prompt_len:], ref[:, prompt_len - 1 : -1].argmax(-1)), "greedy tokens"
        logits, states = model.prefill(ids)
        err = rel_rms(logits, ref[:, :prompt_len])
        assert err <= 1e-6, f"prefill logits: rel-RMS {err:.2e}"
        for i in range(n_new - 1):
            pos = prompt_len + i
            step_logits, states = model.step(out[:, pos], states, pos)
            err = rel_rms(step_logits, ref[:, pos])
            assert err <= 1e-6, f"step at position {pos}: rel-RMS {err:.2e}"


def test_decoding_state_does_not_grow(one_thread):
    model = LanguageModel(based_config("tiny", vocab_size=97), dtype=torch.float64).eval()
    B = 3
    with torch.no_grad():
        _, states = model.prefill(torch.randint(97, (B, 5)))
        after_prefill = state_numel(states)
        # ring buffers are allocated full-size: the state is already at its final size
        assert after_prefill == B * model.state_size(10**6)
        tok = torch.randint(97, (B,))
        for pos in range(5, 5 + 2 * WINDOW):
            _, states = model.step(tok, states, pos)
            assert state_numel(states) == after_prefill, f"state grew at position {pos}"
