"""M2-BERT (Monarch Mixer, arXiv 2310.12109) as ``EncoderConfig`` presets: bidirectional
``monarch_mixer`` sequence mixers with ``monarch_glu`` dimension mixers.

    cfg = m2_bert_config("base")                        # d=768, 12 layers, ~80M parameters
    cfg = EncoderConfig.from_preset("m2_bert-mini")     # d=256, 4 layers (the small-scale experiment)
    enc = Encoder(EncoderConfig.from_preset("m2_bert-tiny", vocab_size=260, num_classes=2))

Shapes from ``HazyResearch/m2`` (``bert/yamls/pretrain/*.yaml``): BERT's WordPiece vocabulary (30,522),
``d_ff = 4 d``, ``monarch_mlp_nblocks: 4``, ``bidirectional: true``, ``residual_long_conv: true``,
``hyena_filter_order: 128``, ``hyena_emb_dim: 5``, ``hyena_w: 10``, pretraining length 128 with learned
absolute positions. What differs from the reference's ``BertLayer`` (kept to ``subq``'s one block): the
block is pre-norm with an identity residual around the sequence mixer, where M2 has no residual
there, a post-LayerNorm after the GLU and the position embeddings re-added after every layer.
"""

from __future__ import annotations

from typing import Any

from subq.models.config import EncoderConfig

M2_BERT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, n_layers=2),
    "mini": dict(d_model=256, n_layers=4),
    "base": dict(d_model=768, n_layers=12),
    "110m": dict(d_model=960, n_layers=12),
    "large": dict(d_model=1536, n_layers=12),
    "341m": dict(d_model=1792, n_layers=12),
}
"""``base`` is M2-BERT-base (80M), ``110m`` its parameter-matched variant, ``large`` the 260M model,
``341m`` the largest; ``tiny`` and ``mini`` scale it down for CPU runs and the small-scale study."""

M2_MIXER: dict[str, Any] = dict(filter_order=128, emb_dim=5, w=10.0, residual_long_conv=True)
M2_GLU: dict[str, Any] = dict(expand=4.0, nblocks=4)
BERT_VOCAB_SIZE = 30522
MAX_SEQ_LEN = 128
PRESET_PREFIX = "m2_bert-"


def m2_bert_config(size: str = "base", **overrides) -> EncoderConfig:
    """The M2-BERT encoder of a size in ``M2_BERT_SIZES``.

    Args:
        size: default ``"base"``.
        overrides: any ``EncoderConfig`` field (``vocab_size``, ``num_classes``, ``max_seq_len``, ...);
            ``max_seq_len`` also sets the mixers' filter length. ``mixer`` / ``channel_mixer`` replace
            the M2 layers.
    """
    if size not in M2_BERT_SIZES:
        raise KeyError(f"unknown M2-BERT size {size!r}; valid sizes: {', '.join(M2_BERT_SIZES)}")
    max_seq_len = overrides.pop("max_seq_len", MAX_SEQ_LEN)
    fields: dict[str, Any] = dict(
        vocab_size=BERT_VOCAB_SIZE,
        **M2_BERT_SIZES[size],
        max_seq_len=max_seq_len,
        pos_emb="learned",
        norm="layernorm",
        mixer={"name": "monarch_mixer", **M2_MIXER, "max_seq_len": max(2, max_seq_len)},
        channel_mixer={"name": "monarch_glu", **M2_GLU},
    )
    return EncoderConfig(**{**fields, **overrides})


def m2_bert_preset(preset: str, **overrides) -> EncoderConfig:
    """``m2_bert-<size>`` -> :func:`m2_bert_config` (``EncoderConfig.from_preset`` calls this)."""
    if not preset.startswith(PRESET_PREFIX):
        raise KeyError(f"not an M2-BERT preset: {preset!r} (expected {PRESET_PREFIX}<size>)")
    return m2_bert_config(preset[len(PRESET_PREFIX) :], **overrides)
