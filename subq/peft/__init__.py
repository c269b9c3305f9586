"""Parameter-efficient fine-tuning for subq and Hugging Face models: LoRA (in peft's adapter format),
prefix tuning and NTK-Attention, and the exact and almost-linear LoRA gradients of one attention head
(``fast_lora_grad``). The math is in ``subq/peft/README.md``."""

from subq.peft.convert import convert_to_linear_attention, hybrid_distillation_loss
from subq.peft.fast_lora_grad import (
    LoRAFactors,
    LoRAGrad,
    autograd_lora_grad,
    exact_lora_grad,
    fast_lora_grad,
    lora_attention_loss,
    lora_grad_flops,
    taylor_exp_features,
    taylor_feature_dim,
)
from subq.peft.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    freeze_base,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameter_count,
    unmerge_lora,
)
from subq.peft.prefix import (
    PrefixAttention,
    apply_ntk_attention,
    apply_prefix_tuning,
    augmented_attention,
    naive_augmented_attention,
    ntk_feature_map,
)

__all__ = [
    "convert_to_linear_attention",
    "hybrid_distillation_loss",
    "LoRAFactors",
    "LoRAGrad",
    "autograd_lora_grad",
    "exact_lora_grad",
    "fast_lora_grad",
    "lora_attention_loss",
    "lora_grad_flops",
    "taylor_exp_features",
    "taylor_feature_dim",
    "LoRAConfig",
    "LoRALinear",
    "PrefixAttention",
    "apply_lora",
    "apply_ntk_attention",
    "apply_prefix_tuning",
    "augmented_attention",
    "freeze_base",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "naive_augmented_attention",
    "ntk_feature_map",
    "save_lora",
    "trainable_parameter_count",
    "unmerge_lora",
]
