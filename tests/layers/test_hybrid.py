"""The ``hybrid`` mixer: Zoology's per-layer pattern (layer ``i`` is ``mixers[i % n]``), its state,
decoding and init inside a model, and its configs (validation, YAML/JSON round trip)."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import subq
from subq.layers.base import Mixer
from subq.layers.config import MixerConfig
from subq.layers.registry import MIXERS
from subq.models import LanguageModel, LMConfig
from subq.train.config import TrainConfig, dump_config, load_config
from tests.conftest import assert_close

WINDOW = {"name": "sliding_window", "window": 3}
BASED = {"name": "based", "feature_dim": 4, "num_heads": 2}
Hybrid = subq.get_mixer("hybrid")


def lm_config(mixer, n_layers: int = 3) -> LMConfig:
    return LMConfig(vocab_size=53, d_model=16, n_layers=n_layers, mixer=mixer, channel_mixer="none")


@pytest.mark.parametrize(
    "layer_idx,selected",
    [(None, "sliding_window"), (0, "sliding_window"), (1, "based"), (4, "sliding_window"), (5, "based")],
)
def test_layer_index_selects_the_sub_mixer(layer_idx, selected):
    mixer = Hybrid(16, mixers=[WINDOW, BASED], layer_idx=layer_idx)
    assert mixer.mixer.name == selected
    assert mixer.mixer.layer_idx == layer_idx
    assert [name for name, _ in mixer.named_children()] == ["mixer"], "only the selected sub-mixer is built"


def test_model_equals_the_layer_list_it_stands_for():
    """Same seed, same parameters in the same order: a hybrid LM is the LM whose mixer list cycles
    the same pattern (``LMConfig(mixer=[...])``), output projections' init scaling included."""
    torch.manual_seed(0)
    hybrid = LanguageModel(lm_config({"name": "hybrid", "mixers": [WINDOW, BASED]}), dtype=torch.float64)
    torch.manual_seed(0)
    stack = LanguageModel(lm_config([WINDOW, BASED]), dtype=torch.float64)
    h_params = {n.replace(".mixer.mixer.", ".mixer."): p for n, p in hybrid.named_parameters()}
    s_params = dict(stack.named_parameters())
    assert h_params.keys() == s_params.keys()
    for name, p in s_params.items():
        assert torch.equal(h_params[name], p), name
    ids = torch.randint(53, (2, 21))
    assert torch.equal(hybrid.eval()(ids), stack.eval()(ids))


def test_state_size_is_the_selected_sub_mixers():
    layers = [Hybrid(16, mixers=[WINDOW, BASED], layer_idx=i) for i in range(2)]
    E = 1 + 4 + 4**2
    assert layers[0].state_size(100) == 2 * 3 * 16  # sliding window: 2 * window * d
    assert layers[1].state_size(100) == 2 * (E * 8 + E)  # based: H * (E * D + E)
    model = LanguageModel(lm_config({"name": "hybrid", "mixers": [WINDOW, BASED]}, n_layers=2))
    assert model.state_size(100) == 2 * 3 * 16 + 2 * (E * 8 + E)


@pytest.mark.parametrize("layer_idx", [0, 1])
def test_prefill_then_step_equals_forward_per_layer(layer_idx):
    mixer = Hybrid(16, mixers=[WINDOW, BASED], layer_idx=layer_idx, dtype=torch.float64).eval()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    y = mixer(x)
    y_pre, state = mixer.prefill(x[:, :7])
    assert_close(y_pre, y[:, :7], 1e-10, "prefill")
    for t in range(7, 19):
        y_t, state = mixer.step(x[:, t], state)
        assert_close(y_t, y[:, t], 1e-10, f"step t={t}")


def test_generate_through_a_hybrid_model():
    model = LanguageModel(lm_config({"name": "hybrid", "mixers": [WINDOW, BASED]}), dtype=torch.float64)
    model.eval()
    assert model.can_decode
    ids = torch.randint(53, (2, 5))
    out = model.generate(ids, 8)
    logits = model(out)
    assert torch.equal(logits[:, 4:-1].argmax(-1), out[:, 5:])


class _NoDecode(Mixer):
    """A causal-only mixer without decoding (registered only inside the test below)."""

    supports_decode = False
    supports_bidirectional = False

    def _forward(self, x):
        return x.cumsum(1)

    def state_size(self, seq_len):
        return seq_len * self.d_model


def test_decode_and_direction_follow_the_selected_sub_mixer(monkeypatch):
    monkeypatch.setitem(MIXERS._table, "no_decode", _NoDecode)
    mixers = [{"name": "no_decode"}, WINDOW]
    plain, windowed = (Hybrid(16, mixers=mixers, layer_idx=i) for i in range(2))
    assert not plain.supports_decode and windowed.supports_decode
    with pytest.raises(NotImplementedError, match="does not support decoding"):
        plain.init_state(1)
    with pytest.raises(ValueError, match="causal only"):
        Hybrid(16, mixers=mixers, layer_idx=0, causal=False)
    assert Hybrid(16, mixers=mixers, layer_idx=1, causal=False).supports_bidirectional
    model = LanguageModel(lm_config({"name": "hybrid", "mixers": mixers}, n_layers=2))
    assert not model.can_decode


def test_mode_is_passed_to_the_sub_mixer():
    assert Hybrid(16, mixers=[WINDOW], mode="naive").mixer.mode == "naive"
    assert Hybrid(16, mixers=[WINDOW]).mixer.mode == "auto"
    with pytest.raises(ValueError, match="has no 'triton' form"):
        Hybrid(16, mixers=[WINDOW], mode="triton")


@pytest.mark.parametrize(
    "mixers,match",
    [
        ([], "non-empty list"),
        ("attention", "non-empty list"),
        ([WINDOW, {"name": "nope"}], r"mixers\[1\]: unknown mixer 'nope'"),
        ([{"name": "based", "window": 3}], r"mixers\[0\]: mixer 'based' has no argument 'window'"),
        ([{"name": "attention", "d_model": 8}], r"mixers\[0\]: 'd_model' is set by the model"),
    ],
    ids=["empty", "not-a-list", "unknown-name", "unknown-arg", "model-arg"],
)
def test_bad_sub_mixer_configs_name_the_entry(mixers, match):
    with pytest.raises(ValueError, match=match):
        Hybrid(16, mixers=mixers, layer_idx=1)


def test_model_config_validates_every_layer_of_the_pattern():
    """A bad value in the layer-1 entry fails the model config, not the first forward pass."""
    with pytest.raises(ValidationError, match=r"mixer\[1\] \(hybrid\): window must be a positive int"):
        lm_config({"name": "hybrid", "mixers": ["attention", {"name": "sliding_window", "window": -1}]})
    with pytest.raises(ValidationError, match=r"mixer\[0\] \(hybrid\): mixers\[1\]: unknown mixer"):
        lm_config({"name": "hybrid", "mixers": ["attention", {"name": "nope"}]})
    with pytest.raises(ValidationError, match="has no argument 'configs'"):
        MixerConfig(name="hybrid", configs=[WINDOW])  # Zoology's argument name is not accepted


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_round_trip(tmp_path, suffix):
    mixer = MixerConfig(name="hybrid", mixers=[MixerConfig(name="sliding_window", window=3), BASED])
    task = {"name": "mqar", "vocab_size": 64, "seq_len": 16, "num_kv_pairs": 2}
    model = {"d_model": 16, "n_layers": 2, "mixer": mixer, "channel_mixer": "none"}
    cfg = TrainConfig.model_validate({"task": task, "model": model, "max_steps": 1})
    path = tmp_path / f"train{suffix}"
    path.write_text(dump_config(cfg) if suffix == ".yaml" else json.dumps(cfg.model_dump(mode="json")))
    back = load_config(path)
    assert back.model_dump(mode="json") == cfg.model_dump(mode="json")
    assert back.model.mixer.kwargs["mixers"] == [{"name": "sliding_window", "window": 3}, BASED]
    torch.manual_seed(0)
    a = LanguageModel(back.model)
    torch.manual_seed(0)
    b = LanguageModel(cfg.model)
    assert [b_.mixer.mixer.name for b_ in a.backbone.blocks] == ["sliding_window", "based"]
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    over = load_config(path, ["model.mixer.mixers.1.feature_dim=8"])
    assert over.model.mixer.kwargs["mixers"][1]["feature_dim"] == 8
