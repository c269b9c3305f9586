"""Hugging Face ``transformers`` integration: ``import subq.hf`` registers ``subq_hip``.

    import subq.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="subq_hip")
    subq.hf.configure_hip(model, mask_k=512, dense_layers=3)   # optional; these are the defaults

Needs the ``[hf]`` extra (``transformers`` 5).
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("subq.hf needs transformers: pip install 'subq[hf]'") from e

from subq.hf.hip import HIP_DEFAULTS, configure_hip, hip_attention_forward, register

register()

__all__ = ["HIP_DEFAULTS", "configure_hip", "hip_attention_forward", "register"]
