"""HyenaDNA (arXiv 2306.15794) as ``LMConfig`` presets: a decoder-only stack of Hyena blocks over single
nucleotides.

    cfg = hyena_dna_config("tiny-1k")                    # d=128, 2 layers, 1k context, ~436K parameters
    cfg = LMConfig.from_preset("hyena_dna-large-1m")      # d=256, 8 layers, 1M context, ~6.6M parameters
    clf = SequenceClassifier(cfg, num_classes=2)          # GenomicBenchmarks-style head (classifier.py)

What each preset holds, from the reference (``HazyResearch/hyena-dna``: ``configs/experiment/hg38/
hg38_hyena.yaml``, ``genomic_benchmark.yaml``, ``src/models/sequence/long_conv_lm.py``) and the released
checkpoints' ``config.json`` (``LongSafari/hyenadna-*-seqlen-hf``):

- block ``LN -> Hyena -> residual -> LN -> MLP -> residual``, LayerNorm, final LayerNorm, no positional
  embedding (``max_position_embeddings=0``), head tied to the embedding, embedding dropout 0.1;
- Hyena layer ``order=2, filter_order=64, emb_dim=5, short_filter_order=3``, Sin frequency ``w=10``
  (every released size) and ``l_max`` (the mixer's ``max_seq_len``: its filter length and the time
  scale of its positional features) the trained length plus 2, as the reference sets it;
- MLP ``fc2(gelu(fc1(x)))`` of width ``d_inner = 4 d`` with biases (flash-attn's ``Mlp``). The reference
  uses the tanh approximation of GELU; the ``mlp`` channel mixer uses the exact GELU;
- vocabulary: the 12 tokens of :class:`~subq.tasks.dna.NucleotideTokenizer` padded to a multiple of 8
  (``pad_vocab_size_multiple: 8``), i.e. 16;
- the model's ``max_seq_len``: the length the size was trained at (the checkpoints' ``max_seq_len``
  is that plus 2: 1,026 for tiny-1k, 1,000,002 for large-1m, so the 1M model is 10^6 bases, not 2^20).
  Without positional embeddings the model itself is not sized from it.

Parameter counts of the paper: tiny-1k 436K, tiny-1k-d256 1.6M, small-32k 3.3M, medium/large 6.6M.
"""

from __future__ import annotations

from typing import Any

from subq.models.config import LMConfig
from subq.tasks.dna import NucleotideTokenizer

HYENA_DNA_SIZES: dict[str, dict[str, int]] = {
    "tiny-1k": dict(d_model=128, n_layers=2, max_len=1024),
    "tiny-1k-d256": dict(d_model=256, n_layers=2, max_len=1024),
    "tiny-16k": dict(d_model=128, n_layers=2, max_len=16384),
    "small-32k": dict(d_model=256, n_layers=4, max_len=32768),
    "medium-160k": dict(d_model=256, n_layers=8, max_len=160_000),
    "medium-450k": dict(d_model=256, n_layers=8, max_len=450_000),
    "large-1m": dict(d_model=256, n_layers=8, max_len=1_000_000),
}
"""Released checkpoints (``LongSafari/hyenadna-<size>-seqlen``): width, depth, trained length."""

HYENA_LAYER: dict[str, Any] = dict(order=2, filter_order=64, emb_dim=5, short_filter_order=3, w=10.0)
L_MAX_EXTRA = 2  # the reference's l_max = max_length + 2 (room for the special tokens)
MLP_EXPAND = 4.0
EMBED_DROPOUT = 0.1
PAD_VOCAB_MULTIPLE = 8
PRESET_PREFIX = "hyena_dna-"


def hyena_dna_config(size: str = "tiny-1k", **overrides) -> LMConfig:
    """The HyenaDNA language model of a released size (keys of ``HYENA_DNA_SIZES``).

    Args:
        size: default ``"tiny-1k"``.
        overrides: any ``LMConfig`` field (``d_model``, ``n_layers``, ``mixer``, ``embed_dropout``, ...);
            ``max_seq_len`` also sets the Hyena layers' ``l_max`` (``max_seq_len + 2``).
    """
    if size not in HYENA_DNA_SIZES:
        raise KeyError(f"unknown HyenaDNA size {size!r}; valid sizes: {', '.join(HYENA_DNA_SIZES)}")
    s = HYENA_DNA_SIZES[size]
    max_len = overrides.get("max_seq_len", s["max_len"])
    base = dict(
        vocab_size=NucleotideTokenizer.padded_vocab_size(PAD_VOCAB_MULTIPLE),
        d_model=s["d_model"],
        n_layers=s["n_layers"],
        mixer={"name": "hyena", **HYENA_LAYER, "max_seq_len": max_len + L_MAX_EXTRA},
        channel_mixer={"name": "mlp", "expand": MLP_EXPAND, "bias": True},
        norm="layernorm",
        pos_emb="none",
        max_seq_len=max_len,
        embed_dropout=EMBED_DROPOUT,
    )
    return LMConfig(**{**base, **overrides})


def hyena_dna_preset(name: str, **overrides) -> LMConfig:
    """``hyena_dna-<size>`` -> :func:`hyena_dna_config`."""
    size = name.removeprefix(PRESET_PREFIX)
    if not name.startswith(PRESET_PREFIX) or size not in HYENA_DNA_SIZES:
        valid = ", ".join(PRESET_PREFIX + s for s in HYENA_DNA_SIZES)
        raise KeyError(f"unknown HyenaDNA preset {name!r}; valid presets: {valid}")
    return hyena_dna_config(size, **overrides)
