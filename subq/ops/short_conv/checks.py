"""Input validation of the short-convolution ops: errors name the argument and the sizes received."""

from __future__ import annotations

from torch import Tensor

MIN_KERNEL_SIZE, MAX_KERNEL_SIZE = 2, 8


def _check_tensor(t: Tensor, name: str, ndim: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")


def check_weight(weight: Tensor, bias: Tensor | None, like: Tensor, C: int) -> int:
    """Validate ``weight: [C, k]`` and ``bias: [C]`` against ``C`` channels and the device and dtype
    of the input ``like``; returns ``k``."""
    _check_tensor(weight, "weight", 2, "[C, k]")
    if weight.shape[0] != C:
        raise ValueError(f"weight must be [C={C}, k], got shape {tuple(weight.shape)}")
    k = weight.shape[1]
    if not MIN_KERNEL_SIZE <= k <= MAX_KERNEL_SIZE:
        raise ValueError(
            f"kernel size k = weight.shape[1] must be in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {k}"
        )
    params = [("weight", weight)] if bias is None else [("weight", weight), ("bias", bias)]
    if bias is not None:
        _check_tensor(bias, "bias", 1, "[C]")
        if bias.shape[0] != C:
            raise ValueError(f"bias must be [C={C}], got shape {tuple(bias.shape)}")
    for name, p in params:
        if p.device != like.device or p.dtype != like.dtype:
            raise ValueError(
                f"{name} must match the input's device and dtype ({like.device}, {like.dtype}), "
                f"got ({p.device}, {p.dtype})"
            )
    return k


def check_short_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[int, int, int, int]:
    """Validate ``x: [B, T, C]``, ``weight: [C, k]``, ``bias: [C]``; returns ``(B, T, C, k)``."""
    _check_tensor(x, "x", 3, "[B, T, C]")
    B, T, C = x.shape
    if B == 0 or T == 0 or C == 0:
        raise ValueError(f"x must have B, T, C >= 1, got shape {tuple(x.shape)}")
    k = check_weight(weight, bias, x, C)
    return B, T, C, k


def check_short_conv_step(
    x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[int, int, int]:
    """Validate ``x_t: [B, C]``, ``conv_state: [B, C, k]`` and the weights; returns ``(B, C, k)``."""
    _check_tensor(x_t, "x_t", 2, "[B, C]")
    B, C = x_t.shape
    k = check_weight(weight, bias, x_t, C)
    _check_tensor(conv_state, "conv_state", 3, "[B, C, k]")
    if tuple(conv_state.shape) != (B, C, k):
        raise ValueError(f"conv_state must be [B={B}, C={C}, k={k}], got shape {tuple(conv_state.shape)}")
    return B, C, k


ACTIVATIONS = (None, "silu")


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
