from subq.models.block import Block
from subq.models.config import PRESETS, EncoderConfig, LMConfig, count_params
from subq.models.language_model import Encoder, LanguageModel

__all__ = ["PRESETS", "Block", "Encoder", "EncoderConfig", "LMConfig", "LanguageModel", "count_params"]
