"""Hydra-BERT presets: the base size's parameter count against the paper's 112M, the preset names,
scaling down by overrides, and a tiny encoder's masked-LM forward that sees both directions."""

from __future__ import annotations

import pytest
import torch

from subq.models import Encoder, EncoderConfig, LMConfig, count_params
from subq.models.hydra_bert import hydra_bert_config


def test_base_has_the_papers_parameter_count():
    n = count_params(Encoder(hydra_bert_config("base"), device="meta")) / 1e6
    assert abs(n - 112) / 112 < 0.03, f"hydra_bert base: {n:.1f}M parameters, paper 112M"


def test_preset_names_and_overrides():
    cfg = EncoderConfig.from_preset("hydra_bert")
    assert (cfg.d_model, cfg.n_layers, cfg.pos_emb, cfg.channel_mixer.name) == (768, 23, "none", "none")
    assert cfg.mixers[0].name == "hydra"
    mini = EncoderConfig.from_preset("hydra_bert-mini", vocab_size=1000)
    assert (mini.d_model, mini.n_layers, mini.vocab_size) == (256, 4, 1000)
    small = EncoderConfig.from_preset("hydra_bert", d_model=128, n_layers=2)
    assert (small.d_model, small.n_layers) == (128, 2)
    with pytest.raises(KeyError, match="valid sizes"):
        EncoderConfig.from_preset("hydra_bert-huge")
    with pytest.raises(ValueError, match="bidirectional only"):
        LMConfig(vocab_size=10, d_model=64, mixer={"name": "hydra"})


def test_tiny_encoder_mlm_sees_both_directions(one_thread):
    enc = Encoder(EncoderConfig.from_preset("hydra_bert-tiny", vocab_size=50), dtype=torch.float64)
    ids = torch.randint(50, (2, 20))
    logits = enc.mlm_logits(ids)
    assert logits.shape == (2, 20, 50) and torch.isfinite(logits).all()
    ids2 = ids.clone()
    ids2[:, 15] = (ids2[:, 15] + 1) % 50
    h, h2 = enc(ids), enc(ids2)
    assert not torch.allclose(h[:, 5], h2[:, 5]), "a later token must change an earlier output"
    assert not torch.allclose(h[:, 18], h2[:, 18]), "an earlier token must change a later output"
