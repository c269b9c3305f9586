"""Input validation shared by the public ops: errors name the argument and the sizes received."""

from __future__ import annotations

from torch import Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int, int]:
    """Validate ``q: [B, T, H, D]``, ``k: [B, S, H_kv, D]``, ``v: [B, S, H_kv, D_v]``.

    ``H`` must be a multiple of ``H_kv`` (grouped-query attention). Returns ``(B, T, H, H_kv, D)``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    B, T, H, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must agree in [B, S, H_kv]: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"q and k head dims differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    H_kv = k.shape[2]
    if H % H_kv != 0:
        raise ValueError(f"query heads H={H} must be a multiple of key/value heads H_kv={H_kv}")
    if T == 0 or k.shape[1] == 0:
        raise ValueError(f"sequence length must be >= 1: q {tuple(q.shape)}, k {tuple(k.shape)}")
    return B, T, H, H_kv, D


def check_window(window: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")


INT32_ROWS_LIMIT = 2**31
"""Kernels that index a sequence's ``[T, H, D]`` rows with 32-bit offsets take ``T * H * D`` below this."""


def check_int32_rows(op: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` when one sequence of a ``[B, T, ...]`` tensor has ``2^31`` elements or more:
    the named Triton kernels compute offsets inside a sequence in 32 bits (the batch offset is 64-bit)."""
    for name, t in tensors.items():
        per_sequence = t[0].numel() if t.dim() > 0 and t.shape[0] > 0 else 0
        if per_sequence >= INT32_ROWS_LIMIT:
            raise ValueError(
                f"{op}: the Triton kernels index one sequence with 32-bit offsets, so each sequence of "
                f"{name} must have fewer than 2^31 elements; got {name} {tuple(t.shape)} "
                f"({per_sequence:,} per sequence): use a shorter sequence, fewer heads, or mode='torch'"
            )


def fits_int32_rows(*tensors: Tensor) -> bool:
    """Whether every ``[B, T, ...]`` tensor passes :func:`check_int32_rows` (for ``mode="auto"``)."""
    return all(t.dim() == 0 or t.shape[0] == 0 or t[0].numel() < INT32_ROWS_LIMIT for t in tensors)
