"""Hugging Face ``transformers`` integration: ``import subq.hf`` registers ``subq_hip``.

    import subq.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="subq_hip")
    subq.hf.configure_hip(model, mask_k=512, dense_layers=3)   # optional; these are the defaults

``subq hf generate`` and ``subq hf bench`` (``subq.hf.runtime``) do the same from the command line.

Needs the ``[hf]`` extra (``transformers`` 5).
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("subq.hf needs transformers: pip install 'subq[hf]'") from e

from subq.hf.hip import (
    HIP_DEFAULTS,
    attention_classes,
    check_hip_support,
    configure_hip,
    hip_attention_forward,
    register,
)
from subq.hf.runtime import load_causal_lm

register()

__all__ = [
    "HIP_DEFAULTS",
    "attention_classes",
    "check_hip_support",
    "configure_hip",
    "hip_attention_forward",
    "load_causal_lm",
    "register",
]
