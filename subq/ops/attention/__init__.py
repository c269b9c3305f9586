from subq.ops.attention.naive import attention_mask, naive_attention
from subq.ops.attention.sdpa import sdpa_attention

__all__ = ["attention_mask", "naive_attention", "sdpa_attention"]
