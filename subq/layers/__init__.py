"""Sequence mixers, channel mixers and their registries. Importing this package registers them all."""

from subq.layers import (  # noqa: F401  (registration side effects)
    attention,
    base_conv,
    based,
    channel,
    combiner,
    hip,
    hybrid,
    hydra,
    hyena,
    kernelized_rpe,
    linear_attention,
    monarch_glu,
    monarch_mixer,
    quadratic,
    ssd,
)
from subq.layers.base import Mixer, State
from subq.layers.channel import ChannelMixer
from subq.layers.config import ChannelMixerConfig, MixerConfig
from subq.layers.registry import (
    get_channel_mixer,
    get_mixer,
    list_channel_mixers,
    list_mixers,
    register_channel_mixer,
    register_mixer,
)

__all__ = [
    "ChannelMixer",
    "ChannelMixerConfig",
    "Mixer",
    "MixerConfig",
    "State",
    "get_channel_mixer",
    "get_mixer",
    "list_channel_mixers",
    "list_mixers",
    "register_channel_mixer",
    "register_mixer",
]
