"""Model configs and named size presets.

``LMConfig.from_preset("360m", vocab_size=50304, mixer="attention")`` -> a validated config. Mixer
arguments are checked by building each mixer once on the meta device, so a bad value (a negative
window, heads that do not divide d_model) is a validation error naming the field.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from subq.layers import ChannelMixerConfig, MixerConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, n_layers=2),
    "small": dict(d_model=256, n_layers=4),
    "125m": dict(d_model=768, n_layers=12),
    "360m": dict(d_model=1024, n_layers=24),
}
"""Named sizes (``d_model``, ``n_layers``); ``subq list`` prints them."""


class _BackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: PositiveInt
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 2
    mixer: MixerConfig | list[MixerConfig] = Field(default_factory=lambda: MixerConfig(name="attention"))
    channel_mixer: ChannelMixerConfig = Field(default_factory=lambda: ChannelMixerConfig(name="glu"))
    max_seq_len: PositiveInt | None = None
    pos_emb: Literal["none", "learned"] = "none"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    embed_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(0.02, gt=0.0)

    _causal: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.pos_emb == "learned" and self.max_seq_len is None:
            raise ValueError("pos_emb='learned' needs max_seq_len")
        for i, cfg in enumerate(self.mixers):
            try:
                cfg.build(self.d_model, causal=self._causal, layer_idx=i, device="meta")
            except (ValueError, TypeError) as e:
                raise ValueError(f"mixer[{i}] ({cfg.name}): {e}") from None
        try:
            self.channel_mixer.build(self.d_model, device="meta")
        except (ValueError, TypeError) as e:
            raise ValueError(f"channel_mixer ({self.channel_mixer.name}): {e}") from None
        return self

    @property
    def mixers(self) -> list[MixerConfig]:
        """One mixer config per layer (a list in ``mixer`` is cycled over the layers)."""
        pattern = self.mixer if isinstance(self.mixer, list) else [self.mixer]
        if not pattern:
            raise ValueError("mixer list is empty")
        return [pattern[i % len(pattern)] for i in range(self.n_layers)]

    @classmethod
    def from_preset(cls, preset: str, **overrides):
        """A config of a named size (see ``PRESETS``) with any field overridden. ``LMConfig`` also
        takes ``based-<size>``, ``based-attn-<size>`` (see :mod:`subq.models.based`) and
        ``hyena_dna-<size>`` (see :mod:`subq.models.hyena_dna`); ``EncoderConfig`` takes ``m2_bert-<size>``
        (see :mod:`subq.models.m2_bert`) and ``hydra_bert`` / ``hydra_bert-<size>`` (see
        :mod:`subq.models.hydra_bert`)."""
        if preset.startswith("based-") and issubclass(cls, LMConfig):
            from subq.models.based import based_preset  # per-layer hybrid patterns live there

            return based_preset(preset, **overrides)
        if preset.startswith("hyena_dna-") and issubclass(cls, LMConfig):
            from subq.models.hyena_dna import hyena_dna_preset

            return hyena_dna_preset(preset, **overrides)
        if preset.startswith("m2_bert-") and issubclass(cls, EncoderConfig):
            from subq.models.m2_bert import m2_bert_preset

            return m2_bert_preset(preset, **overrides)
        if preset.split("-")[0] == "hydra_bert" and issubclass(cls, EncoderConfig):
            from subq.models.hydra_bert import hydra_bert_preset

            return hydra_bert_preset(preset, **overrides)
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})


class LMConfig(_BackboneConfig):
    """Causal language model: embedding, ``n_layers`` blocks, final norm, tied head."""


class EncoderConfig(_BackboneConfig):
    """Bidirectional encoder with masked-LM and sequence-classification heads."""

    pos_emb: Literal["none", "learned"] = "learned"
    max_seq_len: PositiveInt | None = 512
    num_classes: PositiveInt | None = None
    pooling: Literal["mean", "first"] = "mean"

    _causal: bool = False


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
