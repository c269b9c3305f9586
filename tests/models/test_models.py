"""LanguageModel and Encoder: shapes, hybrid stacks, decoding, configs and presets."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from subq.models import PRESETS, Encoder, EncoderConfig, LanguageModel, LMConfig, count_params


def tiny_lm(**kw) -> LanguageModel:
    cfg = dict(vocab_size=97, d_model=32, n_layers=3, channel_mixer="glu", max_seq_len=64, pos_emb="learned")
    return LanguageModel(LMConfig(**{**cfg, **kw}))


def test_forward_shape_and_tied_head():
    model = tiny_lm()
    ids = torch.randint(97, (2, 17))
    assert model(ids).shape == (2, 17, 97)
    assert (
        model.backbone.embed.weight.data_ptr()
        == next(p for n, p in model.named_parameters() if n == "backbone.embed.weight").data_ptr()
    )
    assert not any("head" in n for n, _ in model.named_parameters()), "head must be tied, not a new parameter"


def test_logits_at_selected_positions():
    model = tiny_lm().eval()
    ids = torch.randint(97, (3, 12))
    sel = torch.rand(3, 12) < 0.3
    torch.testing.assert_close(model(ids, positions=sel), model(ids)[sel])
    with pytest.raises(ValueError, match="bool mask of shape"):
        model(ids, positions=sel[:, :5])


def test_hybrid_list_is_cycled():
    model = tiny_lm(mixer=["attention", {"name": "sliding_window", "window": 4}])
    names = [b.mixer.name for b in model.backbone.blocks]
    assert names == ["attention", "sliding_window", "attention"]


def test_causal_lm_is_causal():
    model = tiny_lm(mixer=["attention", {"name": "sliding_window", "window": 4}]).eval()
    ids = torch.randint(97, (1, 20))
    ids2 = ids.clone()
    ids2[:, 12:] = (ids2[:, 12:] + 1) % 97
    assert torch.equal(model(ids)[:, :12], model(ids2)[:, :12])


@pytest.mark.parametrize(
    "mixer", ["attention", [{"name": "sliding_window", "window": 3}, "attention"]], ids=["attn", "hybrid"]
)
def test_generate_with_decode_matches_full_forward(mixer):
    model = tiny_lm(mixer=mixer).double().eval()
    ids = torch.randint(97, (2, 7))
    out = model.generate(ids, 12)
    assert out.shape == (2, 19) and torch.equal(out[:, :7], ids)
    # greedy decoding: each new token is the argmax of the full forward at the previous position
    logits = model(out)
    assert torch.equal(logits[:, 6:-1].argmax(-1), out[:, 7:])


def test_step_logits_match_forward():
    model = tiny_lm(mixer={"name": "sliding_window", "window": 5}, n_layers=2).double().eval()
    ids = torch.randint(97, (2, 15))
    full = model(ids)
    logits, states = model.prefill(ids[:, :4])
    torch.testing.assert_close(logits, full[:, :4])
    for t in range(4, 15):
        step_logits, states = model.step(ids[:, t], states, t)
        torch.testing.assert_close(step_logits, full[:, t], rtol=1e-10, atol=1e-10)


def test_state_size_sums_layers():
    model = tiny_lm(mixer=["attention", {"name": "sliding_window", "window": 4}], n_layers=2)
    assert model.state_size(100) == 2 * 100 * 32 + 2 * 4 * 32


def test_no_channel_mixer_has_no_second_branch():
    model = tiny_lm(channel_mixer="none", n_layers=2)
    assert all(b.channel is None and b.norm2 is None for b in model.backbone.blocks)
    assert model(torch.randint(97, (1, 5))).shape == (1, 5, 97)


def test_presets():
    assert set(PRESETS) >= {"tiny", "360m"}
    cfg = LMConfig.from_preset("360m", vocab_size=50304)
    model = LanguageModel(cfg, device="meta")
    assert 300e6 < count_params(model) < 420e6
    with pytest.raises(KeyError, match="valid presets"):
        LMConfig.from_preset("huge", vocab_size=10)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=10, d_model=-1), "d_model"),
        (dict(vocab_size=10, mixer="nope"), "unknown mixer 'nope'"),
        (
            dict(vocab_size=10, mixer={"name": "sliding_window", "window": -2}),
            "window must be a positive int",
        ),
        (dict(vocab_size=10, d_model=30, mixer={"name": "attention", "num_heads": 4}), "num_heads"),
        (dict(vocab_size=10, pos_emb="learned"), "max_seq_len"),
        (dict(vocab_size=10, extra_key=1), "extra_key"),
    ],
)
def test_invalid_config(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        LMConfig(**kwargs)


def test_too_long_input_with_learned_positions():
    model = tiny_lm()
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.randint(97, (1, 65)))


def test_encoder_heads():
    enc = Encoder(
        EncoderConfig(
            vocab_size=50,
            d_model=32,
            n_layers=2,
            num_classes=3,
            mixer={"name": "sliding_window", "window": 4},
        )
    )
    assert all(not b.mixer.causal for b in enc.backbone.blocks)
    ids = torch.randint(50, (2, 11))
    assert enc(ids).shape == (2, 11, 32)
    assert enc.mlm_logits(ids).shape == (2, 11, 50)
    assert enc.classify(ids).shape == (2, 3)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[:, 6:] = 0
    assert torch.allclose(enc.classify(ids, mask), enc.classifier(enc(ids)[:, :6].mean(1)), atol=1e-6)
    ids2 = ids.clone()
    ids2[:, 8] = (ids2[:, 8] + 1) % 50
    assert not torch.allclose(enc(ids)[:, 5], enc(ids2)[:, 5]), "encoder must see the future"
