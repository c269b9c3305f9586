"""Hydra-BERT (arXiv 2407.09941) as ``EncoderConfig`` presets: bidirectional ``hydra`` mixers and no
channel mixer.

    cfg = hydra_bert_config("base")                       # d=768, 23 layers, ~112M parameters
    cfg = EncoderConfig.from_preset("hydra_bert")         # the same
    cfg = EncoderConfig.from_preset("hydra_bert-mini")    # d=256, 4 layers (the small-scale study)
    enc = Encoder(EncoderConfig.from_preset("hydra_bert-tiny", vocab_size=260))

Shapes from ``goombalab/hydra`` (``hydra/bert/yamls/*/hydra.yaml``, ``hydra/bert/src/bert_layers.py``):
23 Hydra layers at ``d = 768`` without MLP, BERT's WordPiece vocabulary (30,522), no position
embeddings, pretraining length 128; the mixer's defaults (``d_state 64, d_conv 7, expand 2, headdim 64,
ngroups 1``). What differs from the reference (kept to ``subq``'s one block): the block is pre-norm,
``x + Hydra(LN(x))``, where Hydra-BERT is post-norm, ``LN(x + Hydra(x))``. ``tiny`` also shrinks
``headdim`` and ``d_state`` for CPU tests.
"""

from __future__ import annotations

from typing import Any

from subq.models.config import EncoderConfig

HYDRA_BERT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_layers=2, mixer=dict(headdim=32, d_state=16)),
    "mini": dict(d_model=256, n_layers=4, mixer={}),
    "base": dict(d_model=768, n_layers=23, mixer={}),
}
"""``base`` is Hydra-BERT-base (112M); ``mini`` the 4-layer ``d = 256`` model of the small-scale study;
``tiny`` for tests. ``mixer`` holds each size's changes to the ``hydra`` defaults."""

BERT_VOCAB_SIZE = 30522
MAX_SEQ_LEN = 128
PRESET_NAME = "hydra_bert"


def hydra_bert_config(size: str = "base", **overrides) -> EncoderConfig:
    """The Hydra-BERT encoder of a size in ``HYDRA_BERT_SIZES``.

    Args:
        size: default ``"base"``.
        overrides: any ``EncoderConfig`` field (``vocab_size``, ``d_model``, ``n_layers``,
            ``num_classes``, ...); ``mixer`` replaces the Hydra mixer config.
    """
    if size not in HYDRA_BERT_SIZES:
        raise KeyError(f"unknown Hydra-BERT size {size!r}; valid sizes: {', '.join(HYDRA_BERT_SIZES)}")
    shape = dict(HYDRA_BERT_SIZES[size])
    fields: dict[str, Any] = dict(
        vocab_size=BERT_VOCAB_SIZE,
        d_model=shape["d_model"],
        n_layers=shape["n_layers"],
        max_seq_len=MAX_SEQ_LEN,
        pos_emb="none",
        norm="layernorm",
        mixer={"name": "hydra", **shape["mixer"]},
        channel_mixer={"name": "none"},
    )
    return EncoderConfig(**{**fields, **overrides})


def hydra_bert_preset(preset: str, **overrides) -> EncoderConfig:
    """``hydra_bert`` (the base size) or ``hydra_bert-<size>`` -> :func:`hydra_bert_config`
    (``EncoderConfig.from_preset`` calls this)."""
    if preset == PRESET_NAME:
        return hydra_bert_config("base", **overrides)
    if not preset.startswith(PRESET_NAME + "-"):
        raise KeyError(
            f"not a Hydra-BERT preset: {preset!r} (expected {PRESET_NAME} or {PRESET_NAME}-<size>)"
        )
    return hydra_bert_config(preset[len(PRESET_NAME) + 1 :], **overrides)
