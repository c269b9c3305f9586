"""Hyena's implicit long filter in PyTorch: the reference for the Triton kernels and the CPU form.

``taps = (Sin MLP of the positional features) * exponential decay window``: with features
``z: [L, E]``, times ``t: [L]`` and one frequency vector ``freq: [F]`` shared by the three
activations (the reference's single ``Sin`` module),

    a_1 = z W_1^T + b_1,   h_1 = sin(freq * a_1)                         [L, F]
    a_k = h_{k-1} W_k^T + b_k,   h_k = sin(freq * a_k)    (k = 2, 3)     [L, F]
    taps[l, c] = (h_3 W_4^T)[l, c] * exp(-t_l |delta_c|)                [L, C]

The output is channels-first with its lags contiguous, as the long convolutions read filters:
``[groups, C / groups, L]``, where channel ``c`` lands at ``(c % groups, c // groups)`` (Hyena's
``N - 1`` filters of ``d`` channels are interleaved in the MLP's last layer: ``c = i (N - 1) + o``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4")


def check_hyena_filter(
    z: Tensor, t: Tensor, freq: Tensor, weights: tuple[Tensor, ...], deltas: Tensor, groups: int
):
    """Shapes of the inputs of :func:`naive_hyena_filter`; a ``ValueError`` naming the first mismatch."""
    if len(weights) != len(PARAMS):
        raise ValueError(f"hyena_filter takes the weights {PARAMS}; got {len(weights)} tensors")
    w1, b1, w2, b2, w3, b3, w4 = weights
    if z.dim() != 2 or t.shape != (z.shape[0],):
        raise ValueError(
            f"hyena_filter: z must be [L, E] and t [L]; got {tuple(z.shape)} and {tuple(t.shape)}"
        )
    L, E = z.shape
    Fw, C = freq.shape[0], w4.shape[0]
    expected = {
        "freq": (freq, (Fw,)),
        "w1": (w1, (Fw, E)),
        "b1": (b1, (Fw,)),
        "w2": (w2, (Fw, Fw)),
        "b2": (b2, (Fw,)),
        "w3": (w3, (Fw, Fw)),
        "b3": (b3, (Fw,)),
        "w4": (w4, (C, Fw)),
        "deltas": (deltas, (C,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"hyena_filter: {name} must have shape {shape} (E={E}, F={Fw}, C={C}); "
                f"got {tuple(tensor.shape)}"
            )
    if not isinstance(groups, int) or groups < 1 or C % groups:
        raise ValueError(
            f"hyena_filter: groups must be a positive divisor of the {C} channels; got {groups!r}"
        )


def naive_hyena_filter(
    z: Tensor,
    t: Tensor,
    freq: Tensor,
    weights: tuple[Tensor, ...],
    deltas: Tensor,
    *,
    groups: int = 1,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The taps at ``L`` positions, ``[groups, C / groups, L]`` (see the module docstring).

    Args:
        z: `[L, E]` positional features; t: `[L]` the window's times.
        freq: `[F]`; weights: ``(w1 [F, E], b1 [F], w2 [F, F], b2 [F], w3 [F, F], b3 [F], w4 [C, F])``.
        deltas: `[C]` the window's decay rates (their absolute values are used).
        groups: filters interleaved in the last layer's channels (default 1).
        dtype: of the output (default: that of the computation, the parameters' under no autocast).
    """
    check_hyena_filter(z, t, freq, weights, deltas, groups)
    w1, b1, w2, b2, w3, b3, w4 = weights
    h = z
    for w, b in ((w1, b1), (w2, b2), (w3, b3)):
        h = torch.sin(freq * F.linear(h, w, b))
    taps = F.linear(h, w4) * torch.exp(-t[:, None] * deltas.abs())  # [L, C]
    C = taps.shape[1]
    out = taps.T.unflatten(0, (C // groups, groups)).transpose(0, 1)  # [groups, C / groups, L]
    return out if dtype is None else out.to(dtype)
