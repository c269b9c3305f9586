"""Feature maps ``phi: [..., D] -> [..., E]`` for linear attention, looked up by name.

``taylor`` is BASED's second-order Taylor map (``TaylorExp`` in ``HazyResearch/based``,
``based/models/mixers/linear_attention.py``)::

    phi(x) = [1, x / D**(1/4), vec(x x^T) / (sqrt(2) * sqrt(D))]      E = 1 + D + D**2

so that ``phi(q) . phi(k) = 1 + q.k / sqrt(D) + (q.k)**2 / (2 D)``, the 2nd-order Taylor expansion of
``exp(q.k / sqrt(D))``. Duplicate products ``x_a x_b`` and ``x_b x_a`` are both kept, as in the
reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def taylor_feature_map(x: Tensor) -> Tensor:
    """BASED's Taylor map: `[..., D]` -> `[..., 1 + D + D**2]` (scaling as in the module docstring)."""
    D = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (math.sqrt(2.0) * math.sqrt(D))
    return torch.cat([torch.ones_like(x[..., :1]), x / D**0.25, x2], dim=-1)


def relu_feature_map(x: Tensor) -> Tensor:
    """``max(x, 0)`` (LiT); `[..., D]` -> `[..., D]`."""
    return F.relu(x)


def elu_plus_one_feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1 > 0`` (Katharopoulos et al. 2020); `[..., D]` -> `[..., D]`."""
    return F.elu(x) + 1.0


def identity_feature_map(x: Tensor) -> Tensor:
    """``x`` unchanged; `[..., D]` -> `[..., D]`."""
    return x


FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "taylor": taylor_feature_map,
    "relu": relu_feature_map,
    "elu_plus_one": elu_plus_one_feature_map,
    "identity": identity_feature_map,
}


def feature_dim(name: str, head_dim: int) -> int:
    """``E``, the size of ``phi(x)`` for ``x`` of size ``head_dim``."""
    get_feature_map(name)
    return 1 + head_dim + head_dim**2 if name == "taylor" else head_dim


def get_feature_map(name: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The map registered under ``name`` (a callable is returned unchanged)."""
    if callable(name):
        return name
    try:
        return FEATURE_MAPS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"feature_map must be one of {', '.join(FEATURE_MAPS)} or a callable, got {name!r}"
        ) from None
