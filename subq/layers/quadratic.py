"""Quadratic neurons with ReLinear training (Fan et al., "On Expressivity and Trainability of Quadratic
Networks", IEEE TNNLS 2023; code ``FengleiFan/ReLinear``), and the ``quadratic`` channel mixer.

A quadratic neuron replaces the affine pre-activation ``w . x + b`` by

    (w_r . x + b_r) * (w_g . x + b_g) + w_b . (x * x) + c

:class:`QuadraticLinear` and :class:`QuadraticConv2d` hold the three parts as submodules ``r``, ``g``
and ``b`` (``c`` is ``b``'s bias), as in the reference ``qresnet.py``. ReLinear is two things:

1. the initialisation: ``r`` as the conventional layer it replaces, ``w_g = 0, b_g = 1, w_b = 0, c = 0``,
   so a fresh layer computes exactly ``r(x)``;
2. a much smaller learning rate for the quadratic parameters (``g`` and ``b``):
   :func:`relinear_param_groups`.

    layer = QuadraticLinear(64, 128)
    opt = torch.optim.SGD(relinear_param_groups(model, lr=0.1), lr=0.1, momentum=0.9)

The reproduction on ``load_digits`` runs with ``subq repro quadratic --quick``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.channel import ChannelMixer, _hidden
from subq.layers.registry import register_channel_mixer

RELINEAR_QUADRATIC_LR_SCALE = 1e-5 / 0.1
"""Learning rate of the quadratic parameters over the base learning rate in the reference code:
``qtrainer_10_5.py`` trains with ``--lr 0.1`` and ``--lr_gb 1e-5`` for the ``g`` and ``b`` convolutions."""


class _QuadraticNeurons(nn.Module):
    """Shared part of the quadratic layers: submodules ``r``, ``g``, ``b`` of one kind (linear or conv)."""

    r: nn.Module
    g: nn.Module
    b: nn.Module

    def reset_parameters(self) -> None:
        """ReLinear initialisation: ``r`` as the conventional layer, ``w_g = 0, b_g = 1, w_b = 0, c = 0``."""
        self.r.reset_parameters()
        with torch.no_grad():
            self.g.weight.zero_()
            self.g.bias.fill_(1.0)
            self.b.weight.zero_()
            if self.b.bias is not None:
                self.b.bias.zero_()

    def quadratic_parameters(self) -> Iterator[nn.Parameter]:
        """``w_g, b_g, w_b`` and ``c`` (when present): the parameters ReLinear trains slowly."""
        yield from self.g.parameters()
        yield from self.b.parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.r(x) * self.g(x) + self.b(x * x)


class QuadraticLinear(_QuadraticNeurons):
    """``(W_r x + b_r) * (W_g x + b_g) + W_b (x * x) + c``, applied over the last dimension.

    Args:
        in_features: size of the last input dimension.
        out_features: size of the last output dimension.
        bias: learn ``b_r`` and ``c`` (default True). ``b_g`` is always learned: ReLinear sets it to 1.
        device, dtype: of the parameters.

    Shapes: ``x`` is ``[..., in_features]``, the output ``[..., out_features]``. Parameters: about three
    times those of ``nn.Linear(in_features, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        factory = {"device": device, "dtype": dtype}
        self.r = nn.Linear(in_features, out_features, bias=bias, **factory)
        self.g = nn.Linear(in_features, out_features, bias=True, **factory)
        self.b = nn.Linear(in_features, out_features, bias=bias, **factory)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}"
            )
        return super().forward(x)

    def extra_repr(self) -> str:
        bias = self.r.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


class QuadraticConv2d(_QuadraticNeurons):
    """``conv_r(x) * conv_g(x) + conv_b(x * x)``: the quadratic convolution of QResNet's ``BasicBlock``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding: as in ``nn.Conv2d``.
        bias: learn ``conv_r``'s bias and ``c`` (``conv_b``'s bias); default True as in the reference.
            ``conv_g``'s bias (``b_g``) is always learned.
        device, dtype: of the parameters.

    Shapes: ``x`` is ``[B, in_channels, H, W]``, the output ``[B, out_channels, H', W']`` with ``H', W'``
    those of ``nn.Conv2d``. Keep a normalisation after it (the reference puts BatchNorm after every
    quadratic convolution): ``x * x`` grows fast through un-normalised layers.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        conv = {
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "device": device,
            "dtype": dtype,
        }
        self.r = nn.Conv2d(in_channels, out_channels, bias=bias, **conv)
        self.g = nn.Conv2d(in_channels, out_channels, bias=True, **conv)
        self.b = nn.Conv2d(in_channels, out_channels, bias=bias, **conv)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be [B, in_channels={self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        return super().forward(x)


def quadratic_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The quadratic parameters (``w_g, b_g, w_b, c``) of every quadratic layer in ``model``, each once.

    Selected by module role (the ``g`` and ``b`` parts of :class:`QuadraticLinear` and
    :class:`QuadraticConv2d`), not by parameter name.
    """
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, _QuadraticNeurons):
            for p in module.quadratic_parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def relinear_param_groups(
    model: nn.Module, lr: float, *, quadratic_lr_scale: float = RELINEAR_QUADRATIC_LR_SCALE
) -> list[dict]:
    """Optimizer parameter groups with ReLinear's learning-rate split ("shrinking the gradients").

    Args:
        model: any module; its quadratic layers are found by type.
        lr: learning rate of every parameter that is not quadratic (``w_r``, ``b_r``, norms, heads, ...).
        quadratic_lr_scale: learning rate of ``w_g, b_g, w_b, c`` over ``lr``. Default ``1e-4``: the
            reference ``qtrainer_10_5.py`` uses ``lr = 0.1`` and ``lr_gb = 1e-5`` (its ReZero variant
            ``lr_gb = 1e-3``). ``0`` freezes the network at its conventional part; ``1`` is plain training.

    Returns up to two groups, ``{"name": "linear", "params": [...], "lr": lr}`` and
    ``{"name": "quadratic", "params": [...], "lr": lr * quadratic_lr_scale}``; an empty group is left out.
    Other optimizer settings (momentum, weight decay) come from the optimizer's defaults.
    """
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if quadratic_lr_scale < 0:
        raise ValueError(f"quadratic_lr_scale must be >= 0, got {quadratic_lr_scale}")
    quadratic = quadratic_parameters(model)
    quadratic_ids = {id(p) for p in quadratic}
    linear = [p for p in model.parameters() if id(p) not in quadratic_ids]
    groups = [
        {"name": "linear", "params": linear, "lr": lr},
        {"name": "quadratic", "params": quadratic, "lr": lr * quadratic_lr_scale},
    ]
    return [group for group in groups if group["params"]]


@register_channel_mixer("quadratic")
class QuadraticMLP(ChannelMixer):
    """``fc2(gelu(fc1(x)))`` with ``fc1`` a QuadraticLinear: ``[B, T, d_model] -> [B, T, d_model]``.

    Hidden width ``expand * d_model`` (default 4, rounded up to a multiple of 8), no biases except ``b_g``.
    Under the ReLinear initialisation it computes exactly what the ``mlp`` channel mixer with the same
    ``fc1``/``fc2`` weights computes; train it with :func:`relinear_param_groups`.
    """

    def __init__(self, d_model: int, *, expand: float = 4.0, device=None, dtype=None):
        super().__init__(d_model)
        hidden = _hidden(d_model, expand)
        self.fc1 = QuadraticLinear(d_model, hidden, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
