"""M2-BERT presets: the released sizes' parameter counts, a tiny encoder's MLM and classification
heads, bidirectional mixing, the preset names."""

from __future__ import annotations

import pytest
import torch

from subq.models import Encoder, EncoderConfig, count_params
from subq.models.m2_bert import M2_BERT_SIZES, m2_bert_config


@pytest.mark.parametrize("size,millions", [("base", 80), ("110m", 110), ("large", 260), ("341m", 341)])
def test_parameter_counts_match_the_paper(size, millions):
    enc = Encoder(m2_bert_config(size), device="meta")
    n = count_params(enc) / 1e6
    assert abs(n - millions) / millions < 0.05, f"m2_bert-{size}: {n:.1f}M parameters, paper {millions}M"


def test_preset_names_and_layers():
    cfg = EncoderConfig.from_preset("m2_bert-mini")
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.max_seq_len) == (256, 4, 30522, 128)
    assert cfg.mixers[0].name == "monarch_mixer" and cfg.channel_mixer.name == "monarch_glu"
    assert cfg.mixers[0].kwargs["max_seq_len"] == 128
    assert EncoderConfig.from_preset("m2_bert-tiny", max_seq_len=64).mixers[0].kwargs["max_seq_len"] == 64
    with pytest.raises(KeyError, match="valid sizes: " + ", ".join(M2_BERT_SIZES)):
        EncoderConfig.from_preset("m2_bert-huge")


def test_tiny_encoder_heads_and_bidirectional():
    enc = Encoder.from_preset("m2_bert-tiny", vocab_size=100, max_seq_len=32, num_classes=3).eval()
    ids = torch.randint(0, 100, (2, 20))
    assert enc.mlm_logits(ids).shape == (2, 20, 100)
    assert enc.classify(ids, torch.ones(2, 20)).shape == (2, 3)
    ids2 = ids.clone()
    ids2[:, 15] = (ids2[:, 15] + 1) % 100
    h, h2 = enc(ids), enc(ids2)
    assert not torch.allclose(h[:, 5], h2[:, 5]), "a later token must reach an earlier position"


def test_m2_bert_runs_under_bf16_autocast():
    """The block-diagonal GLU and the short filter follow the activations' dtype under autocast, as
    ``nn.Linear`` does (an fp32 weight against bf16 activations used to raise)."""
    model = Encoder.from_preset("m2_bert-tiny")
    ids = torch.randint(0, 100, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(ids)
    assert torch.isfinite(y.float()).all()
