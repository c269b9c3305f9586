"""Chunked SSD in pure PyTorch (Mamba-2's algorithm, ``ssd_minimal``): O(T Q (N + P) + T N P), the
CPU path.

The sequence is cut into chunks of ``Q`` tokens. Inside a chunk the quadratic masked form; each chunk
also writes its own state, a scan over chunks turns those into the state before every chunk, and each
chunk reads that state decayed to every position (``README.md`` has the four steps). Everything
accumulates in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.ops.ssd.naive import check_ssd_inputs, compute_dtype, expand_groups, segsum


def check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def chunk_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """SSD by chunks; same semantics as :func:`~subq.ops.ssd.naive.naive_ssd`.

    Args:
        x: `[B, T, H, P]`; dt: `[B, T, H]`; A: `[H]`; B, C: `[B, T, G, N]`; D: `[H]` or None.
        initial_state: `[B, H, P, N]` or None.
        chunk_size: tokens per chunk ``Q`` (default 64; any ``T`` is padded up to a multiple).

    Returns:
        ``(y: [B, T, H, P] in the dtype of x, final_state: [B, H, P, N] float32 (float64 for float64
        inputs) or None)``.
    """
    check_chunk_size(chunk_size)
    b, T, H, P, G, N = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    ct = compute_dtype(x)
    Q = min(chunk_size, T)
    n = -(-T // Q)
    pad = n * Q - T
    # padded tokens have dt = 0: no decay and no input, so they change no state
    xbar = F.pad(x.to(ct) * dt.to(ct)[..., None], (0, 0, 0, 0, 0, pad)).reshape(b, n, Q, H, P)
    Bc = F.pad(expand_groups(B.to(ct), H), (0, 0, 0, 0, 0, pad)).reshape(b, n, Q, H, N)
    Cc = F.pad(expand_groups(C.to(ct), H), (0, 0, 0, 0, 0, pad)).reshape(b, n, Q, H, N)
    a = F.pad(dt.to(ct) * A.to(ct), (0, 0, 0, pad)).reshape(b, n, Q, H).permute(0, 3, 1, 2)  # [B, H, n, Q]
    a_cum = a.cumsum(-1)  # [B, H, n, Q], inclusive, from the chunk's start

    # 1. inside each chunk: (L o C B^T) xbar
    L = torch.exp(segsum(a))  # [B, H, n, Q, Q]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * L
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xbar)

    # 2. each chunk's own state: sum_j exp(a_cum[end] - a_cum[j]) xbar_j B_j^T
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [B, H, n, Q]
    S = torch.einsum("bhcl,bclhp,bclhn->bchpn", decay_to_end, xbar, Bc)  # [B, n, H, P, N]

    # 3. scan over chunks: the state before each chunk
    chunk_decay = torch.exp(a_cum[..., -1])  # [B, H, n]
    h = xbar.new_zeros(b, H, P, N) if initial_state is None else initial_state.to(ct)
    prev = []
    for c in range(n):
        prev.append(h)
        h = chunk_decay[:, :, c, None, None] * h + S[:, c]
    h_prev = torch.stack(prev, 1)  # [B, n, H, P, N]

    # 4. each position reads the state before its chunk, decayed to it
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, h_prev, torch.exp(a_cum))
    y = y.reshape(b, n * Q, H, P)[:, :T]
    if D is not None:
        y = y + x.to(ct) * D.to(ct)[:, None]
    return y.to(x.dtype), (h if output_final_state else None)
