"""Reference SSD (Mamba-2's state-space dual): the quadratic "attention-like" form and the
token-by-token recurrence.

Both compute in float64 for float64 inputs and float32 otherwise; they are the ground truth for
``chunk.py`` and ``fused_chunk.py`` (see ``README.md`` for the math).
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")


def check_ssd_inputs(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, initial_state: Tensor | None
) -> tuple[int, int, int, int, int, int]:
    """Validate the op's arguments; return ``(batch, T, H, P, G, N)``."""
    _check_tensor("x", x, 4, "[B, T, H, P]")
    _check_tensor("dt", dt, 3, "[B, T, H]")
    _check_tensor("A", A, 1, "[H]")
    _check_tensor("B", B, 4, "[B, T, G, N]")
    _check_tensor("C", C, 4, "[B, T, G, N]")
    b, T, H, P = x.shape
    if T == 0:
        raise ValueError(f"sequence length must be >= 1: x {tuple(x.shape)}")
    if tuple(dt.shape) != (b, T, H):
        raise ValueError(
            f"dt must be [B, T, H] = {(b, T, H)} (from x {tuple(x.shape)}), got {tuple(dt.shape)}"
        )
    if tuple(A.shape) != (H,):
        raise ValueError(f"A must be [H] = ({H},) (from x {tuple(x.shape)}), got {tuple(A.shape)}")
    if B.shape[:2] != (b, T) or B.shape != C.shape:
        raise ValueError(
            f"B and C must both be [B, T, G, N] with B, T of x {tuple(x.shape)}: "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    G, N = B.shape[2], B.shape[3]
    if G == 0 or H % G != 0:
        raise ValueError(f"heads H={H} must be a multiple of groups G={G} (B {tuple(B.shape)})")
    if D is not None:
        _check_tensor("D", D, 1, "[H]")
        if tuple(D.shape) != (H,):
            raise ValueError(f"D must be [H] = ({H},), got {tuple(D.shape)}")
    if initial_state is not None:
        _check_tensor("initial_state", initial_state, 4, "[B, H, P, N]")
        if tuple(initial_state.shape) != (b, H, P, N):
            raise ValueError(
                f"initial_state must be [B, H, P, N] = {(b, H, P, N)}, got {tuple(initial_state.shape)}"
            )
    return b, T, H, P, G, N


def expand_groups(M: Tensor, H: int) -> Tensor:
    """``[B, T, G, N] -> [B, T, H, N]``: head ``h`` reads group ``h // (H // G)``."""
    return M.repeat_interleave(H // M.shape[2], dim=2)


def segsum(z: Tensor) -> Tensor:
    """``[..., T] -> [..., T, T]``: ``out[i, j] = sum_{j < k <= i} z_k`` for ``i >= j``, ``-inf`` above
    the diagonal (a difference of cumulative sums would lose precision, see README)."""
    T = z.shape[-1]
    zz = z[..., :, None].expand(*z.shape, T)  # [..., k, j] = z_k
    strict = torch.ones(T, T, dtype=torch.bool, device=z.device).tril(-1)
    out = zz.masked_fill(~strict, 0).cumsum(-2)  # [..., i, j] = sum_{j < k <= i} z_k
    return out.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=z.device).tril(), float("-inf"))


def ssd_matrix(dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The SSD mixing matrix ``M [B, H, T, T]``, ``M_ts = (C_t . B_s) L_ts dt_s``: ``y = M x`` per channel
    (without the initial state and ``D``). Shapes as :func:`naive_ssd`; computed in the dtype of ``dt``."""
    H = dt.shape[-1]
    L = torch.exp(segsum((dt * A).transpose(1, 2)))  # [B, H, T, T]
    CB = torch.einsum("bthn,bshn->bhts", expand_groups(C, H), expand_groups(B, H))
    return CB * L * dt.transpose(1, 2)[:, :, None, :]


def naive_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Quadratic form ``y = (L o C B^T) (dt x) + D x`` with ``L_ts = exp(sum_{s < r <= t} dt_r A)``
    for ``s <= t`` (0 above the diagonal).

    Args:
        x: `[B, T, H, P]`, the inputs (``P`` channels per head).
        dt: `[B, T, H]`, the step sizes (already positive: the caller applies softplus and bias).
        A: `[H]`, the per-head decay rate (negative for a decaying state).
        B: `[B, T, G, N]`; C: `[B, T, G, N]`, the input and output projections of the state, shared by
            the ``H // G`` heads of a group.
        D: `[H]` or None, the skip connection (default None).
        initial_state: `[B, H, P, N]` or None, the state before the first token (default zeros).
        output_final_state: also return the state after the last token.

    Returns:
        ``(y: [B, T, H, P] in the dtype of x, final_state: [B, H, P, N] or None)``.
    """
    b, T, H, P, G, N = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    ct = compute_dtype(x)
    xf = x.to(ct)
    y = torch.einsum("bhts,bshp->bthp", ssd_matrix(dt.to(ct), A.to(ct), B.to(ct), C.to(ct)), xf)
    Ch = expand_groups(C.to(ct), H)
    a = (dt.to(ct) * A.to(ct)).transpose(1, 2)  # [B, H, T], log decay per step
    cum = a.cumsum(-1)  # [B, H, T]
    if initial_state is not None:
        h0 = initial_state.to(ct)
        y = y + torch.einsum("bthn,bhpn,bht->bthp", Ch, h0, torch.exp(cum))
    if D is not None:
        y = y + xf * D.to(ct)[:, None]
    final = None
    if output_final_state:
        w = torch.exp(segsum(a)[..., -1, :])  # [B, H, T], decay from each token to the end
        xbar = xf * dt.to(ct)[..., None]
        final = torch.einsum("bht,bthp,bthn->bhpn", w, xbar, expand_groups(B.to(ct), H))
        if initial_state is not None:
            final = final + torch.exp(cum[..., -1])[..., None, None] * initial_state.to(ct)
    return y.to(x.dtype), final


def ssd_step(
    x_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor,
    *,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One recurrent step: ``h = exp(dt A) h + dt x B^T``, ``y = h C (+ D x)``.

    Args:
        x_t: `[B, H, P]`; dt_t: `[B, H]`; A: `[H]`; B_t, C_t: `[B, G, N]`; D: `[H]` or None.
        state: `[B, H, P, N]`, the state before the token (float32 or float64). Not modified.

    Returns:
        ``(y_t: [B, H, P] in the dtype of x_t, new_state: [B, H, P, N] in the dtype of state)``.
    """
    H = x_t.shape[1]
    ct = state.dtype
    dtf = dt_t.to(ct)
    Bh = B_t.to(ct).repeat_interleave(H // B_t.shape[1], dim=1)  # [B, H, N]
    Ch = C_t.to(ct).repeat_interleave(H // C_t.shape[1], dim=1)
    decay = torch.exp(dtf * A.to(ct))  # [B, H]
    xbar = x_t.to(ct) * dtf[..., None]  # [B, H, P]
    h = decay[..., None, None] * state + xbar[..., :, None] * Bh[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    if D is not None:
        y = y + x_t.to(ct) * D.to(ct)[:, None]
    return y.to(x_t.dtype), h


def naive_recurrent_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Recurrent form, one token at a time with :func:`ssd_step`. Arguments and returns as
    :func:`naive_ssd`."""
    b, T, H, P, G, N = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    ct = compute_dtype(x)
    h = x.new_zeros(b, H, P, N, dtype=ct) if initial_state is None else initial_state.to(ct)
    ys = []
    for t in range(T):
        y_t, h = ssd_step(x[:, t].to(ct), dt[:, t], A, B[:, t], C[:, t], h, D=D)
        ys.append(y_t)
    return torch.stack(ys, 1).to(x.dtype), (h if output_final_state else None)
