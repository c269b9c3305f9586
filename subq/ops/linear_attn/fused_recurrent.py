"""Fused recurrent linear attention in Triton: one decode step reads and writes the state once.

``fused_recurrent_linear_attention_step`` is one step of
:func:`~subq.ops.linear_attn.naive.naive_recurrent_linear_attention` on a token ``[B, H, D]``, with the
state ``(S: [B, H, E, D_v], z: [B, H, E])`` (float32) updated in place::

    S += phi(k) v^T,   z += phi(k),   o = phi(q)^T S / (phi(q) . z + eps)

The features are computed in registers from ``q`` and ``k``, row by row of ``S``, never stored: for
``taylor`` row ``0`` is ``1``, rows ``1 .. D`` are ``x / D^{1/4}`` and row ``1 + D + a D + b`` is
``x_a x_b / (sqrt(2) sqrt(D))``. Each program owns one ``(batch, head)`` and one block of ``BV``
value columns and walks the ``E`` rows in blocks of ``BE``. ``z`` is read by every value block (for
the normaliser) but written by none of them when there are several (a read after another program's
write would count ``phi(k)`` twice); a second, small kernel then adds ``phi(k)`` to ``z``. With a
single value block the main kernel writes ``z`` itself.

``fused_recurrent_linear_attention`` loops the step over ``T`` (one launch per token); it is for tests
and short prompts, not a prefill kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("subq.ops.linear_attn.fused_recurrent needs Triton: pip install 'subq[gpu]'") from e

from subq.ops.common.checks import check_qkv
from subq.ops.linear_attn.feature_maps import feature_dim
from subq.ops.linear_attn.naive import LinearAttentionState

MAX_HEAD_DIM = {"taylor": 32, "relu": 128, "elu_plus_one": 128, "identity": 128}
"""Largest ``D`` of ``q`` and ``k`` per feature map (``taylor``: ``E = 1 + D + D^2 <= 1057``)."""
MAX_VALUE_DIM = 256
"""Largest ``D_v``."""
_FEATURE_MAP_IDS = {"identity": 0, "relu": 1, "elu_plus_one": 2, "taylor": 3}


@triton.jit
def linear_attention_feature_rows(
    p_x, o_e, m_e, x_scale, c_lin, c_quad, D: tl.constexpr, FEATURE_MAP: tl.constexpr
):
    """``phi(x_scale * x)`` at feature rows ``o_e: [BE]`` (zero where ``m_e`` is false); ``x: [D]`` at
    ``p_x``."""
    if FEATURE_MAP == 3:
        # taylor: row 0 is 1, rows 1..D are x, row 1 + D + a * D + b is x_a * x_b
        o_r = tl.maximum(o_e - 1 - D, 0)
        m_lin = (o_e >= 1) & (o_e <= D)
        m_quad = m_e & (o_e > D)
        o_a = tl.where(m_lin, o_e - 1, o_r // D)
        b_a = tl.load(p_x + o_a, mask=m_lin | m_quad, other=0.0).to(tl.float32) * x_scale  # [BE]
        b_b = tl.load(p_x + o_r % D, mask=m_quad, other=0.0).to(tl.float32) * x_scale  # [BE]
        b_phi = tl.where(m_lin, b_a * c_lin, b_a * b_b * c_quad)
        b_phi = tl.where(o_e == 0, 1.0, b_phi)
    else:
        b_x = tl.load(p_x + o_e, mask=m_e, other=0.0).to(tl.float32) * x_scale  # [BE]
        if FEATURE_MAP == 0:
            b_phi = b_x
        elif FEATURE_MAP == 1:
            b_phi = tl.maximum(b_x, 0.0)
        else:
            b_phi = tl.where(b_x > 0, b_x + 1.0, tl.exp(b_x))
    return tl.where(m_e, b_phi, 0.0)


@triton.jit
def fused_recurrent_linear_attention_fwd_kernel(
    q,
    k,
    v,
    o,
    S,
    z,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_vb,
    stride_vh,
    stride_ob,
    stride_oh,
    scale,
    eps,
    c_lin,
    c_quad,
    H: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    E: tl.constexpr,
    BE: tl.constexpr,
    BV: tl.constexpr,
    FEATURE_MAP: tl.constexpr,
    NORMALIZE: tl.constexpr,
    WRITE_Z: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    p_q = q + i_b * stride_qb + i_h * stride_qh
    p_k = k + i_b * stride_kb + i_h * stride_kh
    # int64: B * H * E * D_v passes 2^31 at large batch
    p_S = S + i_bh.to(tl.int64) * (E * DV)
    p_z = z + i_bh.to(tl.int64) * E

    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    b_v = tl.load(v + i_b * stride_vb + i_h * stride_vh + o_v, mask=m_v, other=0.0).to(tl.float32)  # [BV]
    b_o = tl.zeros([BV], dtype=tl.float32)
    b_den = tl.zeros([BE], dtype=tl.float32)
    # unrolled: about 10% more bandwidth than a loop on an H200 (BASED sizes, E = 273)
    for i_e in tl.static_range(0, (E + BE - 1) // BE):
        o_e = i_e * BE + tl.arange(0, BE)
        m_e = o_e < E
        b_fk = linear_attention_feature_rows(p_k, o_e, m_e, 1.0, c_lin, c_quad, D, FEATURE_MAP)  # [BE]
        b_fq = linear_attention_feature_rows(p_q, o_e, m_e, scale, c_lin, c_quad, D, FEATURE_MAP)  # [BE]
        p_Se = p_S + o_e[:, None] * DV + o_v[None, :]
        m_Se = m_e[:, None] & m_v[None, :]
        b_S = tl.load(p_Se, mask=m_Se, other=0.0) + b_fk[:, None] * b_v[None, :]  # [BE, BV]
        tl.store(p_Se, b_S, mask=m_Se)
        b_o += tl.sum(b_fq[:, None] * b_S, 0)
        if NORMALIZE or WRITE_Z:
            b_z = tl.load(p_z + o_e, mask=m_e, other=0.0) + b_fk  # [BE]
            if WRITE_Z:
                tl.store(p_z + o_e, b_z, mask=m_e)
            b_den += b_fq * b_z
    if NORMALIZE:
        b_o = b_o / (tl.sum(b_den, 0) + eps)
    p_o = o + i_b * stride_ob + i_h * stride_oh + o_v
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)


@triton.jit
def fused_recurrent_linear_attention_z_kernel(
    k,
    z,
    stride_kb,
    stride_kh,
    c_lin,
    c_quad,
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    BE: tl.constexpr,
    FEATURE_MAP: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    p_k = k + i_b * stride_kb + i_h * stride_kh
    p_z = z + i_bh.to(tl.int64) * E
    for i_e in range(0, tl.cdiv(E, BE)):
        o_e = i_e * BE + tl.arange(0, BE)
        m_e = o_e < E
        b_fk = linear_attention_feature_rows(p_k, o_e, m_e, 1.0, c_lin, c_quad, D, FEATURE_MAP)  # [BE]
        tl.store(p_z + o_e, tl.load(p_z + o_e, mask=m_e, other=0.0) + b_fk, mask=m_e)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def fused_recurrent_linear_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: LinearAttentionState,
    *,
    feature_map: str = "taylor",
    normalize: bool = True,
    scale: float | None = None,
    eps: float = 1e-6,
    out: Tensor | None = None,
    block_v: int | None = None,
    num_warps: int = 4,
) -> tuple[Tensor, LinearAttentionState]:
    """One decode step of feature-mapped linear attention; the state is updated in place.

    Args:
        q: `[B, H, D]`; k: `[B, H, D]`; v: `[B, H, D_v]`; any floating dtype, same device.
        state: ``(S: [B, H, E, D_v], z: [B, H, E])``, float32, contiguous, on the device of ``q``;
            ``E = feature_dim(feature_map, D)``. Both are updated in place.
        feature_map: ``taylor`` (default; ``D <= 32``), ``relu``, ``elu_plus_one`` or ``identity``
            (``D <= 128``); ``D_v <= 256``.
        normalize: divide by ``phi(q) . z + eps`` (default True).
        scale: multiplies ``q`` before the feature map (default None: no scaling).
        eps: added to the normaliser (default 1e-6).
        out: optional `[B, H, D_v]` tensor of the dtype of ``q`` (last dim contiguous) to write ``o`` into.
        block_v: value columns per program (default: ``D_v`` rounded up to a power of two, at most 64).
        num_warps: warps per program (default 4).

    Returns:
        ``(o: [B, H, D_v] in the dtype of q, state)``, ``state`` being the same two tensors, updated.
    """
    if not isinstance(feature_map, str) or feature_map not in _FEATURE_MAP_IDS:
        raise ValueError(f"feature_map must be one of {', '.join(_FEATURE_MAP_IDS)}, got {feature_map!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [B, H, D] tensor, got {_describe(t)}")
    B, H, D = q.shape
    Dv = v.shape[-1]
    if tuple(k.shape) != (B, H, D) or tuple(v.shape[:2]) != (B, H):
        raise ValueError(f"shapes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must share a device: {q.device}, {k.device}, {v.device}")
    if not 1 <= D <= MAX_HEAD_DIM[feature_map]:
        raise ValueError(
            f"fused_recurrent_linear_attention_step supports D <= {MAX_HEAD_DIM[feature_map]} with "
            f"feature_map={feature_map!r}, got D={D}"
        )
    if not 1 <= Dv <= MAX_VALUE_DIM:
        raise ValueError(
            f"fused_recurrent_linear_attention_step supports D_v <= {MAX_VALUE_DIM}, got D_v={Dv}"
        )
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    E = feature_dim(feature_map, D)
    S, z = _check_state(state, B, H, E, Dv, q.device)
    if out is None:
        out = torch.empty(B, H, Dv, dtype=q.dtype, device=q.device)
    elif (
        not isinstance(out, Tensor)
        or tuple(out.shape) != (B, H, Dv)
        or out.dtype != q.dtype
        or out.device != q.device
        or out.stride(-1) != 1
    ):
        raise ValueError(
            f"out must be a [B, H, D_v] = {(B, H, Dv)} tensor like q, stride 1 in D_v; got {_describe(out)}"
        )
    BV = block_v if block_v is not None else min(triton.next_power_of_2(Dv), 64)
    if BV < 1 or BV & (BV - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v!r}")
    NV = triton.cdiv(Dv, BV)
    BE = 64 if feature_map == "taylor" else min(triton.next_power_of_2(D), 64)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    c_lin, c_quad = D**-0.25, 1.0 / (math.sqrt(2.0) * math.sqrt(D))
    fused_recurrent_linear_attention_fwd_kernel[(NV, B * H)](
        q,
        k,
        v,
        out,
        S,
        z,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        1.0 if scale is None else float(scale),
        float(eps),
        c_lin,
        c_quad,
        H=H,
        D=D,
        DV=Dv,
        E=E,
        BE=BE,
        BV=BV,
        FEATURE_MAP=_FEATURE_MAP_IDS[feature_map],
        NORMALIZE=bool(normalize),
        WRITE_Z=NV == 1,
        num_warps=num_warps,
    )
    if NV > 1:
        fused_recurrent_linear_attention_z_kernel[(B * H,)](
            k,
            z,
            k.stride(0),
            k.stride(1),
            c_lin,
            c_quad,
            H=H,
            D=D,
            E=E,
            BE=BE,
            FEATURE_MAP=_FEATURE_MAP_IDS[feature_map],
            num_warps=1,
        )
    return out, state


def fused_recurrent_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "taylor",
    normalize: bool = True,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: LinearAttentionState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LinearAttentionState | None]:
    """Causal linear attention token by token with :func:`fused_recurrent_linear_attention_step`.

    Args:
        q: `[B, T, H, D]`; k: `[B, T, H, D]`; v: `[B, T, H, D_v]`.
        initial_state: ``(S: [B, H, E, D_v], z: [B, H, E])`` (copied to float32, never modified).
        output_final_state: also return the state after the last token.
        Others as :func:`fused_recurrent_linear_attention_step`.

    Returns:
        ``(o: [B, T, H, D_v] in the dtype of q, (S, z) in float32 or None)``.
    """
    B, T, H, H_kv, D = check_qkv(q, k, v)
    if k.shape[1] != T or H_kv != H:
        raise ValueError(f"q, k, v must agree in [B, T, H]: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not isinstance(feature_map, str) or feature_map not in _FEATURE_MAP_IDS:
        raise ValueError(f"feature_map must be one of {', '.join(_FEATURE_MAP_IDS)}, got {feature_map!r}")
    E, Dv = feature_dim(feature_map, D), v.shape[-1]
    if initial_state is None:
        S = torch.zeros(B, H, E, Dv, dtype=torch.float32, device=q.device)
        z = torch.zeros(B, H, E, dtype=torch.float32, device=q.device)
    else:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError("initial_state must be a pair (S: [B, H, E, D_v], z: [B, H, E])")
        S, z = (
            x.to(device=q.device, dtype=torch.float32, memory_format=torch.contiguous_format, copy=True)
            for x in initial_state
        )
    state = (S, z)
    o = torch.empty(B, T, H, Dv, dtype=q.dtype, device=q.device)
    for t in range(T):
        fused_recurrent_linear_attention_step(
            q[:, t],
            k[:, t],
            v[:, t],
            state,
            feature_map=feature_map,
            normalize=normalize,
            scale=scale,
            eps=eps,
            out=o[:, t],
        )
    return o, (state if output_final_state else None)


def _check_state(state, B: int, H: int, E: int, Dv: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError("state must be a pair (S: [B, H, E, D_v], z: [B, H, E])")
    S, z = state
    for name, t, shape in (("S", S, (B, H, E, Dv)), ("z", z, (B, H, E))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"state {name} must have shape {shape}, got {_describe(t)}")
        if t.dtype != torch.float32:
            raise ValueError(f"state {name} must be float32 (it is updated in place), got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"state {name} must be contiguous (it is updated in place)")
        if t.device != device:
            raise ValueError(f"state {name} is on {t.device}, q on {device}")
    return S, z


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
