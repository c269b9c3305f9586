"""Reference depthwise long convolution: an explicit sum over the filter taps, and the input checks
shared by every form."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(u: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def check_tensor(t: Tensor, name: str, ndim: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")


def _check_like(t: Tensor, name: str, like: Tensor) -> None:
    if t.device != like.device or t.dtype != like.dtype:
        raise ValueError(
            f"{name} must match u's device and dtype ({like.device}, {like.dtype}), "
            f"got ({t.device}, {t.dtype})"
        )


def check_filter(h: Tensor, bias: Tensor | None, like: Tensor, C: int, causal: bool) -> int:
    """Validate ``h`` (``[C, L]`` causal, ``[2, C, L]`` bidirectional) and ``bias: [C]`` against ``C``
    channels and the device and dtype of ``like``; returns ``L``."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal:
        check_tensor(h, "h", 2, "[C, L] (causal)")
        if h.shape[0] != C:
            raise ValueError(f"h must be [C={C}, L], got shape {tuple(h.shape)}")
    else:
        check_tensor(h, "h", 3, "[2, C, L] (bidirectional: forward and reverse halves)")
        if h.shape[0] != 2 or h.shape[1] != C:
            raise ValueError(f"h must be [2, C={C}, L] for causal=False, got shape {tuple(h.shape)}")
    if h.shape[-1] == 0:
        raise ValueError(f"h must have at least one tap, got shape {tuple(h.shape)}")
    _check_like(h, "h", like)
    if bias is not None:
        check_tensor(bias, "bias", 1, "[C]")
        if bias.shape[0] != C:
            raise ValueError(f"bias must be [C={C}], got shape {tuple(bias.shape)}")
        _check_like(bias, "bias", like)
    return h.shape[-1]


def check_long_conv(u: Tensor, h: Tensor, bias: Tensor | None, causal: bool) -> tuple[int, int, int, int]:
    """Validate ``u: [B, T, C]``, ``h`` and ``bias`` (see :func:`naive_long_conv`); returns
    ``(B, T, C, L)``."""
    check_tensor(u, "u", 3, "[B, T, C]")
    B, T, C = u.shape
    if B == 0 or T == 0 or C == 0:
        raise ValueError(f"u must have B, T, C >= 1, got shape {tuple(u.shape)}")
    L = check_filter(h, bias, u, C, causal)
    if L > T:
        raise ValueError(
            f"filter length L={L} exceeds the sequence length T={T} "
            f"(u {tuple(u.shape)}, h {tuple(h.shape)}); taps beyond T - 1 never reach an output: "
            "pass h[..., :T]"
        )
    return B, T, C, L


def naive_long_conv(u: Tensor, h: Tensor, bias: Tensor | None = None, causal: bool = True) -> Tensor:
    """Depthwise long convolution by its definition, one filter tap (lag) at a time: O(B T L C).

    Causal: ``y[b, t, c] = bias[c] u[b, t, c] + sum_{j=0}^{L-1} h[c, j] u[b, t - j, c]``.
    Bidirectional (``causal=False``, two-sided filter ``h = (h_fwd, h_rev)``)::

        y[b, t, c] = bias[c] u[b, t, c] + sum_{j=0}^{L-1} h_fwd[c, j] u[b, t - j, c]
                                         + sum_{j=0}^{L-1} h_rev[c, j] u[b, t + 1 + j, c]

    with ``u = 0`` outside ``0 <= t < T``. Computes in float32 (float64 for float64 inputs).

    Args:
        u: `[B, T, C]`.
        h: `[C, L]` (causal) or `[2, C, L]` (``causal=False``: ``h[0]`` lags ``0 .. L-1``, ``h[1]``
            lags ``-1 .. -L``), ``1 <= L <= T``; same dtype and device as ``u``.
        bias: `[C]` or None (default None): the per-channel skip ``D`` of Hyena.
        causal: default True.

    Returns:
        ``y: [B, T, C]`` in the dtype of ``u``.
    """
    B, T, C, L = check_long_conv(u, h, bias, causal)
    acc = compute_dtype(u)
    uf = u.to(acc)
    h_fwd = (h if causal else h[0]).to(acc)  # [C, L]
    y = torch.zeros(B, T, C, dtype=acc, device=u.device)
    for j in range(L):  # lag j: output t reads input t - j
        y[:, j:] += h_fwd[:, j] * uf[:, : T - j]
    if not causal:
        h_rev = h[1].to(acc)
        for j in range(min(L, T - 1)):  # lag -(j + 1): output t reads input t + 1 + j
            y[:, : T - 1 - j] += h_rev[:, j] * uf[:, j + 1 :]
    if bias is not None:
        y = y + bias.to(acc) * uf
    return y.to(u.dtype)
