"""The BASED hybrid language model and a matched attention baseline, as ``LMConfig`` presets.

``based_config("360m")`` is the released ``based-360m`` layer pattern (``HazyResearch/based``,
``train/configs/experiment/reference/based-360m.yaml``): 27 pre-norm (RMSNorm) blocks at
``d_model=1024``, each a sequence mixer plus a SwiGLU MLP of hidden width ``2 d`` without biases, no
positional embedding. The yaml's ``alt_mixer_layers`` / ``alt_mixer_2_layers`` are 0-based (the
released ``GPTModel`` builds its blocks with ``layer_idx=i for i in range(n_layer)``), so:

- layers 1, 6, 11, 16, 21: ``based`` Taylor linear attention, ``feature_dim=16``, 16 heads;
- layers 2, 7, 12, 17, 22: ``sliding_window`` softmax attention, 16 heads, rotary on every dim, and
  ``window=129``. The released ``window_size: 256`` becomes FlashAttention's ``(256 // 2, 0)``: each
  query sees itself and the previous 128 tokens; our ``window`` counts the query itself;
- the other 17 layers: ``base_conv``, kernel size 3, ``expand=4``.

Smaller sizes keep the rule: inside every full period of 5 layers, offset 1 is linear attention and
offset 2 the window; leftover layers after the last full period are convolutions (27 = 5 periods + 2).

``attention_config(size)`` is a Transformer of the same width, heads and MLP with rotary ``attention``
in every layer and the number of layers whose parameter count is closest to the BASED model's.

Both are also presets: ``LMConfig.from_preset("based-360m")``, ``LMConfig.from_preset("based-attn-360m")``.
"""

from __future__ import annotations

from typing import Any

from subq.models.config import LMConfig, count_params

BASED_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, n_layers=5, num_heads=4),
    "small": dict(d_model=256, n_layers=7, num_heads=4),
    "125m": dict(d_model=768, n_layers=13, num_heads=12),
    "360m": dict(d_model=1024, n_layers=27, num_heads=16),
}
"""Width, depth and heads (linear attention, sliding window and the attention baseline) per size."""

PERIOD = 5
LINEAR_ATTENTION_OFFSET, WINDOW_OFFSET = 1, 2
FEATURE_DIM = 16
WINDOW = 129  # itself + 128 previous tokens: the released window_size=256
KERNEL_SIZE, CONV_EXPAND = 3, 4
MLP_EXPAND = 2.0


def based_layer_pattern(n_layers: int) -> list[str]:
    """Mixer name per layer: ``based`` at offset 1 and ``sliding_window`` at offset 2 of every full
    period of 5 layers, ``base_conv`` elsewhere (``n_layers=27`` gives the released pattern)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    full = PERIOD * (n_layers // PERIOD)
    names = []
    for i in range(n_layers):
        offset = i % PERIOD if i < full else None
        names.append(
            "based"
            if offset == LINEAR_ATTENTION_OFFSET
            else "sliding_window"
            if offset == WINDOW_OFFSET
            else "base_conv"
        )
    return names


def _size(size: str) -> dict[str, int]:
    if size not in BASED_SIZES:
        raise KeyError(f"unknown BASED size {size!r}; valid sizes: {', '.join(BASED_SIZES)}")
    return BASED_SIZES[size]


def _common(size: str, vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        d_model=_size(size)["d_model"],
        channel_mixer={"name": "glu", "expand": MLP_EXPAND, "bias": False},
        norm="rmsnorm",
        pos_emb="none",
    )


def based_config(size: str = "360m", vocab_size: int = 50304, **overrides) -> LMConfig:
    """The BASED hybrid of a named size (``tiny``, ``small``, ``125m``, ``360m``).

    Args:
        size: a key of ``BASED_SIZES`` (default ``"360m"``, the released layer pattern).
        vocab_size: vocabulary (default 50304, GPT-2's 50257 padded to a multiple of 64).
        overrides: any other ``LMConfig`` field; an ``n_layers`` override rebuilds the layer pattern.
    """
    s = _size(size)
    n_layers = overrides.pop("n_layers", s["n_layers"])
    H = s["num_heads"]
    mixers = {
        "based": {"name": "based", "feature_dim": FEATURE_DIM, "num_heads": H},
        "sliding_window": {"name": "sliding_window", "num_heads": H, "window": WINDOW, "rotary": True},
        "base_conv": {"name": "base_conv", "kernel_size": KERNEL_SIZE, "expand": CONV_EXPAND},
    }
    pattern = [mixers[name] for name in based_layer_pattern(n_layers)]
    return LMConfig(**{**_common(size, vocab_size), "n_layers": n_layers, "mixer": pattern, **overrides})


def _lm_params(cfg: LMConfig) -> int:
    from subq.models.language_model import LanguageModel

    return count_params(LanguageModel(cfg, device="meta"))


def attention_config(size: str = "360m", vocab_size: int = 50304, **overrides) -> LMConfig:
    """A rotary-attention Transformer matched to ``based_config(size, vocab_size)``: same width,
    heads, SwiGLU MLP and norms, with the number of layers whose parameter count is closest to the
    BASED model's. Arguments as :func:`based_config` (an ``n_layers`` override is used as given)."""
    s = _size(size)
    attn = {"name": "attention", "num_heads": s["num_heads"], "rotary": True}
    base = {**_common(size, vocab_size), "mixer": attn}
    if "n_layers" not in overrides:
        target = _lm_params(based_config(size, vocab_size))
        one, two = (_lm_params(LMConfig(**base, n_layers=n)) for n in (1, 2))
        per_layer, rest = two - one, 2 * one - two
        base["n_layers"] = max(1, round((target - rest) / per_layer))
    return LMConfig(**{**base, **overrides})


def based_preset(name: str, **overrides) -> LMConfig:
    """``based-<size>`` -> :func:`based_config`, ``based-attn-<size>`` -> :func:`attention_config`."""
    valid = [f"based-{s}" for s in BASED_SIZES] + [f"based-attn-{s}" for s in BASED_SIZES]
    if name.startswith("based-attn-") and name.removeprefix("based-attn-") in BASED_SIZES:
        return attention_config(name.removeprefix("based-attn-"), **overrides)
    if name.startswith("based-") and name.removeprefix("based-") in BASED_SIZES:
        return based_config(name.removeprefix("based-"), **overrides)
    raise KeyError(f"unknown BASED preset {name!r}; valid presets: {', '.join(valid)}")
