"""``attn_implementation="subq_hip"``: HiP attention as a ``transformers`` attention function.

The model computes queries, keys and values (RoPE already applied, keys and values from its own KV
cache); this function replaces only the softmax attention. Causal models (Llama, Qwen, Mistral, ...)
and encoders (BERT family) are told apart by the attention module's ``is_causal``. The mask function
registered beside it hands over the 2-D padding mask (as for FlashAttention); padded sequences are
attended row by row over their unpadded tokens, so left (decoders) and right (encoders) padding are
both exact. The first ``dense_layers`` layers stay dense. In decoding (one query) each layer caches
its block mask and searches again every ``refresh_interval`` steps, widening the window in between.
"""

from __future__ import annotations

import torch
from torch import Tensor

from subq.ops.attention.sdpa import sdpa_gqa
from subq.ops.hip import hip_attention, hip_decode_step
from subq.ops.hip.checks import HIP_ARGS, HIP_DECODE_ARGS, check_hip_args

NAME = "subq_hip"
HIP_DEFAULTS = dict(
    mask_k=512,
    block_size_q=64,
    block_stride_q=2,
    block_size_k=2,
    block_stride_k=1,
    sink_size=16,
    window=256,
    dense_layers=3,
    refresh_interval=8,
    mode="auto",
)


def attention_classes(model) -> list[str]:
    """Names of the module classes in ``model`` whose name contains ``Attention``, in order of first use."""
    names: list[str] = []
    for module in model.modules():
        name = type(module).__name__
        if "Attention" in name and name not in names:
            names.append(name)
    return names


def check_hip_support(model) -> None:
    """Raise ``ValueError`` unless ``model`` routes its attention through ``AttentionInterface``.

    Models that do not (``_supports_attention_backend = False``: Bloom, Falcon, GPT-Neo, MPT, ...)
    hard-code their attention, so ``attn_implementation="subq_hip"`` would be ignored or fail deep
    inside ``transformers``; the message names the attention class found."""
    cls = type(model)
    if getattr(cls, "_supports_attention_backend", False):
        return
    found = attention_classes(model)
    raise ValueError(
        f"subq_hip cannot run in {cls.__name__}: its attention ("
        f"{', '.join(found) if found else 'no *Attention* module found'}) does not go through "
        f"transformers' AttentionInterface (_supports_attention_backend is False). Supported are models "
        f"whose attention does, e.g. Llama, Qwen2/3, Mistral, Gemma, Phi-3 and the BERT family."
    )


def configure_hip(model, **kwargs) -> dict:
    """Set HiP hyperparameters on ``model.config.subq_hip`` (unknown names raise); returns them all.
    Raises ``ValueError`` for a model whose attention cannot be replaced (:func:`check_hip_support`)."""
    check_hip_support(model)
    unknown = set(kwargs) - set(HIP_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown HiP arguments {sorted(unknown)}; valid: {sorted(HIP_DEFAULTS)}")
    cfg = {**HIP_DEFAULTS, **getattr(model.config, "subq_hip", {}), **kwargs}
    check_hip_args(**{k: cfg[k] for k in HIP_ARGS})
    model.config.subq_hip = cfg
    return cfg


def _layer_index(module) -> int | None:
    idx = getattr(module, "layer_idx", None)
    return idx if isinstance(idx, int) else None


def _dense(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> Tensor:
    """``[1, T, H, D]`` layout; queries aligned to the last keys."""
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    T_q, T_k = qh.shape[2], kh.shape[2]
    if causal and T_q == T_k and T_q > 1:  # a prompt: SDPA's causal kernels, no [T, T] mask in memory
        return sdpa_gqa(qh, kh, vh, is_causal=True, scale=scale).transpose(1, 2)
    mask = None
    if causal and T_q > 1:  # a chunk of queries after cached keys
        mask = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(T_k - T_q)
    return sdpa_gqa(qh, kh, vh, attn_mask=mask, scale=scale).transpose(1, 2)


def _hip_rows(
    module, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, cfg: dict, cache_ok: bool
):
    """HiP over unpadded ``q: [B, T_q, H, D]``, ``k, v: [B, T_k, H_kv, D]``."""
    if q.shape[1] != 1 or not causal:
        if cache_ok:  # a new prompt: the next decode step searches again
            module._subq_hip_mask = None
        hip = {n: cfg[n] for n in HIP_ARGS}
        return hip_attention(q, k, v, causal=causal, scale=scale, mode=cfg["mode"], **hip)[0]
    state = getattr(module, "_subq_hip_mask", None) if cache_ok else None
    mask = None if state is None else (state["indices"], state["counts"], state["searched_at"])
    o, (indices, counts, searched_at) = hip_decode_step(
        q, k, v, mask, refresh_interval=cfg["refresh_interval"], scale=scale, mode=cfg["mode"],
        **{n: cfg[n] for n in HIP_DECODE_ARGS},
    )  # fmt: skip
    if cache_ok:
        module._subq_hip_mask = dict(indices=indices, counts=counts, searched_at=searched_at)
    return o


def hip_attention_forward(
    module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    """The ``transformers`` attention function: ``query [B, H, T_q, D]``, ``key, value [B, H_kv, T_k, D]``
    -> ``([B, T_q, H, D], None)``. ``attention_mask``: ``None`` or the 2-D ``[B, T_k]`` padding mask."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"subq_hip expects the 2-D padding mask of its registered mask function, got shape "
            f"{tuple(attention_mask.shape)} from {type(module).__name__}; load the model with "
            f"attn_implementation='subq_hip' after importing subq.hf"
        )
    cfg = {**HIP_DEFAULTS, **getattr(getattr(module, "config", None), "subq_hip", {})}
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, T, H, D]
    layer = _layer_index(module)
    dense = layer is not None and layer < cfg["dense_layers"]

    def attend(qb, kb, vb, cache_ok):
        if dense:
            return _dense(qb, kb, vb, causal=causal, scale=scale)
        return _hip_rows(module, qb, kb, vb, causal=causal, scale=scale, cfg=cfg, cache_ok=cache_ok)

    if attention_mask is None or bool(attention_mask.all()):
        return attend(q, k, v, cache_ok=True).to(query.dtype), None
    # padded batch: every row over its own tokens (keys kept by the mask; queries are the last T_q)
    keep = attention_mask[:, -k.shape[1] :].bool()
    T_q = q.shape[1]
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    for b in range(q.shape[0]):
        keep_q = keep[b, -T_q:]
        if not keep_q.any():
            continue
        o = attend(q[b : b + 1, keep_q], k[b : b + 1, keep[b]], v[b : b + 1, keep[b]], cache_ok=False)
        out[b, keep_q] = o[0].to(out.dtype)
    return out, None


def register() -> None:
    """Register ``subq_hip`` with ``AttentionInterface`` and its (2-D padding) mask function."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, hip_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
