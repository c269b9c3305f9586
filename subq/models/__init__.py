from subq.models.block import Block
from subq.models.classifier import SequenceClassifier
from subq.models.config import PRESETS, EncoderConfig, LMConfig, count_params
from subq.models.language_model import Encoder, LanguageModel

__all__ = [
    "PRESETS",
    "Block",
    "Encoder",
    "EncoderConfig",
    "LMConfig",
    "LanguageModel",
    "SequenceClassifier",
    "count_params",
]
