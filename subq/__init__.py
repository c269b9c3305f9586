"""subq: sub-quadratic sequence mixers behind one contract, with references, fast kernels and benchmarks.

import subq
subq.list_mixers()                       # registered sequence mixers
mixer = subq.get_mixer("sliding_window")(d_model=256, window=64)
"""

from subq.layers import (
    ChannelMixerConfig,
    Mixer,
    MixerConfig,
    get_channel_mixer,
    get_mixer,
    list_channel_mixers,
    list_mixers,
    register_channel_mixer,
    register_mixer,
)
from subq.models import Encoder, EncoderConfig, LanguageModel, LMConfig
from subq.tasks import get_task, list_tasks

__version__ = "0.1.0"

__all__ = [
    "ChannelMixerConfig",
    "Encoder",
    "EncoderConfig",
    "LMConfig",
    "LanguageModel",
    "Mixer",
    "MixerConfig",
    "get_channel_mixer",
    "get_mixer",
    "get_task",
    "list_channel_mixers",
    "list_mixers",
    "list_tasks",
    "register_channel_mixer",
    "register_mixer",
]
