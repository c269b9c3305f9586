"""LiT's recipe for turning a softmax-attention model into a linear-attention one (arXiv 2501.12976):
swap every attention mixer for LiT's ``linear_attention``, inherit the rest of the weights, and train the
student with a hybrid distillation loss against the softmax teacher.

    student = convert_to_linear_attention(teacher, num_heads=2, conv_size=5)
    terms = diffusion.training_losses(student, x0, y)                  # L_simple + L_vlb, per example
    with torch.no_grad():
        teacher_out = teacher(terms["x_t"], terms["t"], y)
    loss = terms["loss"].mean() + hybrid_distillation_loss(terms["output"], teacher_out, channels=C)

Weight inheritance follows LiT's guideline 4, "load all parameters except those of the (linear)
attention module": the embeddings, adaLN, MLPs, norms and output layer come from the teacher and every
new mixer starts from a fresh initialisation. The paper's ablation found that also loading Q, K, V from
softmax attention does slightly worse; ``inherit_attention=True`` loads the q/k/v and output projections
(the depthwise convolution is always new) to test that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.attention import Attention
from subq.layers.linear_attention import LinearAttention


def convert_to_linear_attention(
    model: nn.Module,
    *,
    inherit_attention: bool = False,
    mixer_init: Callable[[nn.Module], None] | None = None,
    **linear_attention_kwargs,
) -> nn.Module:
    """A copy of ``model`` in which every softmax-attention mixer (``attention``, ``sliding_window``)
    is a bidirectional or causal (as the original) :class:`~subq.layers.linear_attention.LinearAttention`.

    Args:
        model: the teacher; left unchanged.
        inherit_attention: also copy the q/k/v and output projections (weights and biases) of each
            attention into its replacement (default False: LiT's rule, the new mixers start fresh).
        mixer_init: applied to each new mixer after construction, so fresh mixers get the same
            initialisation as in a model built from scratch (e.g. :func:`subq.models.dit.dit_linear_init_`);
            None keeps the mixer's own initialisation.
        **linear_attention_kwargs: arguments of ``LinearAttention`` (``num_heads``, ``conv_size``,
            ``feature_map``, ``eps``, ``bias``, ``mode``). ``bias`` defaults to whether the teacher's
            projections have biases.

    Returns the student, on the device and in the dtype of the teacher's weights, with every parameter
    trainable (also when the teacher is frozen). Every parameter outside the swapped mixers equals the
    teacher's.
    """
    for key in ("d_model", "causal", "layer_idx", "device", "dtype"):
        if key in linear_attention_kwargs:
            raise ValueError(f"{key!r} is taken from each attention mixer, not from the arguments")
    student = copy.deepcopy(model).requires_grad_(True)
    swapped = 0
    for parent in list(student.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, Attention):
                continue
            if child.rotary is not None:
                raise ValueError(
                    f"{name}: attention with rotary embeddings cannot be converted "
                    "(linear_attention has none)"
                )
            weight = child.out_proj.weight
            kwargs = {"bias": child.out_proj.bias is not None, "mode": "auto"} | linear_attention_kwargs
            new = LinearAttention(
                child.d_model,
                causal=child.causal,
                layer_idx=child.layer_idx,
                device=weight.device,
                dtype=weight.dtype,
                **kwargs,
            )
            if mixer_init is not None:
                mixer_init(new)
            if inherit_attention:
                _copy_projections(child, new, name)
            setattr(parent, name, new)
            swapped += 1
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} holds no attention mixer to convert")
    return student


def _copy_projections(src: Attention, dst: LinearAttention, name: str) -> None:
    for proj in ("qkv_proj", "out_proj"):
        a, b = getattr(src, proj), getattr(dst, proj)
        if a.weight.shape != b.weight.shape:
            raise ValueError(
                f"{name}.{proj}: cannot inherit a {tuple(a.weight.shape)} weight into "
                f"{tuple(b.weight.shape)} (grouped-query attention has narrower k/v projections)"
            )
        if (a.bias is None) != (b.bias is None):
            raise ValueError(
                f"{name}.{proj}: bias={a.bias is not None} in the teacher, {b.bias is not None} here"
            )
        b.weight.data.copy_(a.weight.data)
        if a.bias is not None:
            b.bias.data.copy_(a.bias.data)


def hybrid_distillation_loss(
    student_output: Tensor,
    teacher_output: Tensor,
    *,
    channels: int,
    lambda_eps: float = 0.5,
    lambda_sigma: float = 0.05,
) -> Tensor:
    """LiT's distillation terms ``lambda_eps ||eps_T - eps_S||^2 + lambda_sigma ||Sigma_T - Sigma_S||^2``.

    Args:
        student_output: ``[B, C or 2C, ...]``: predicted noise, then (for a learned-variance model like
            DiT) the raw variance output ``v`` that sets ``log Sigma``.
        teacher_output: the teacher's output on the same ``(x_t, t, y)``, same shape; no gradient flows
            into it.
        channels: ``C``, the image channels (the noise is ``output[:, :C]``).
        lambda_eps, lambda_sigma: the weights (LiT: 0.5 and 0.05).

    Both norms are means over elements, like ``L_simple``. The variance term compares the raw outputs
    ``v`` (LiT does not say whether it matches ``v`` or ``Sigma``; ``log Sigma`` is ``v`` times a
    per-step constant plus an offset); it is zero for models without learned variance (``C`` outputs).
    The full objective is ``L_simple (+ L_vlb) + hybrid_distillation_loss(...)``.
    """
    if student_output.shape != teacher_output.shape:
        raise ValueError(
            f"student_output {tuple(student_output.shape)} and teacher_output "
            f"{tuple(teacher_output.shape)} must have the same shape"
        )
    total = student_output.shape[1]
    if total not in (channels, 2 * channels):
        raise ValueError(f"outputs have {total} channels; expected channels={channels} or 2 * channels")
    teacher_output = teacher_output.detach()
    loss = lambda_eps * F.mse_loss(student_output[:, :channels], teacher_output[:, :channels])
    if total == 2 * channels and lambda_sigma:
        loss = loss + lambda_sigma * F.mse_loss(student_output[:, channels:], teacher_output[:, channels:])
    return loss
