"""Layout changes of ``[B, T, C]`` activations between token-major and channels-first storage.

``x.transpose(1, 2).contiguous()`` on a token-major half-precision tensor reads each element from its
own 32-byte sector: about 2.3 ms for a ``[1, 2^20, 128]`` bfloat16 tensor on an H200, where 512 MB of
traffic take 0.2 ms. The kernel here copies ``[BT, BC]`` tiles, loaded along the source's unit
stride and stored along the destination's (Triton stages the tile through shared memory), so both
sides are coalesced.

- :func:`channels_first`: ``x: [B, T, C]`` -> the same values as a ``[B, T, C]`` view of contiguous
  ``[B, C, T]`` storage (unit stride in ``T``);
- :func:`channels_last`: ``x: [B, T, C]`` -> the same values, contiguous (unit stride in ``C``).

Both return ``x`` itself when it has that layout already, and use the Triton kernel for CUDA tensors
with a unit stride in the other dimension (``kernel=True``: also CPU tensors under
``TRITON_INTERPRET=1``, as the Triton ops' own paths and the tests ask), else PyTorch's copy. They
have no autograd, for the insides of ``autograd.Function`` s; :func:`to_channels_first` and
:func:`to_channels_last` are the differentiable forms.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is optional on CPU
    triton = None

BT, BC = 64, 64


def _use_kernel(x: Tensor, kernel: bool) -> bool:
    if triton is None or x.shape[0] >= 65536:  # the batch is the grid's third dimension
        return False
    return x.is_cuda or (kernel and x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:
    from subq.ops.common.launch import fast_launch

    @triton.jit
    def transpose_btc_kernel(
        x,
        y,
        T,
        C,
        s_b,
        s_other,
        TO_CF: tl.constexpr,
        BT: tl.constexpr,
        BC: tl.constexpr,
    ):
        # one [BT, BC] tile of batch i_b. TO_CF: x has unit stride in C (s_other: its T stride) and y is
        # contiguous [B, C, T]; else x has unit stride in T (s_other: its C stride) and y is [B, T, C]
        i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        o_t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
        o_c = (i_c * BC + tl.arange(0, BC)).to(tl.int64)
        m = (o_t < T)[:, None] & (o_c < C)[None, :]
        p_x = x + i_b.to(tl.int64) * s_b
        p_y = y + i_b.to(tl.int64) * T * C
        if TO_CF:
            b = tl.load(p_x + o_t[:, None] * s_other + o_c[None, :], mask=m)
            tl.store(p_y + o_c[None, :] * T + o_t[:, None], b, mask=m)
        else:
            b = tl.load(p_x + o_t[:, None] + o_c[None, :] * s_other, mask=m)
            tl.store(p_y + o_t[:, None] * C + o_c[None, :], b, mask=m)

    _transpose = fast_launch(transpose_btc_kernel)


def _copy(x: Tensor, to_cf: bool) -> Tensor:
    B, T, C = x.shape
    if to_cf:
        y = torch.empty(B, C, T, device=x.device, dtype=x.dtype)
        s_other = x.stride(1)
    else:
        y = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        s_other = x.stride(2)
    if x.numel():
        grid = (triton.cdiv(T, BT), triton.cdiv(C, BC), B)
        _transpose[grid](x, y, T, C, x.stride(0), s_other, TO_CF=to_cf, BT=BT, BC=BC, num_warps=4)
    return y.transpose(1, 2) if to_cf else y


def channels_first(x: Tensor, *, kernel: bool = False) -> Tensor:
    """``x: [B, T, C]`` with unit stride in ``T`` (a view of ``[B, C, T]`` storage): ``x`` when it has
    one already (or ``T == 1``), else a copy."""
    if x.shape[1] == 1 or x.stride(1) == 1:
        return x
    if (x.shape[2] == 1 or x.stride(2) == 1) and _use_kernel(x, kernel):
        return _copy(x, True)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def channels_last(x: Tensor, *, kernel: bool = False) -> Tensor:
    """``x: [B, T, C]`` contiguous: ``x`` when it is already, else a copy."""
    if x.is_contiguous():
        return x
    if (x.shape[1] == 1 or x.stride(1) == 1) and _use_kernel(x, kernel):
        return _copy(x, False)
    return x.contiguous()


class _ChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.contiguous_in = x.is_contiguous()
        return channels_first(x)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return channels_last(dy) if ctx.contiguous_in else dy


class _ChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.time_unit_in = x.shape[1] == 1 or x.stride(1) == 1
        return channels_last(x)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return channels_first(dy) if ctx.time_unit_in else dy


def to_channels_first(x: Tensor) -> Tensor:
    """:func:`channels_first` with autograd (the gradient goes back contiguous when the input was)."""
    return _ChannelsFirst.apply(x)


def to_channels_last(x: Tensor) -> Tensor:
    """:func:`channels_last` with autograd (the gradient goes back channels-first when the input had
    a unit stride in ``T``)."""
    return _ChannelsLast.apply(x)


# ---- projections between token-major and channels-first activations -----------------------------------
class _ProjectToChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        B, T, _ = x.shape
        y = torch.empty(B, w.shape[0], T, device=x.device, dtype=x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            for b in range(B):  # [E, d] @ [d, T]: the transposed operand is read in place
                torch.mm(w, x[b].t(), out=y[b])
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w = ctx.saved_tensors
        B, T, d = x.shape
        E = w.shape[0]
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty(B, T, d, device=x.device, dtype=x.dtype)
            for b in range(B):
                torch.mm(dy[b].t(), w, out=dx[b])  # [T, E] @ [E, d]
        if ctx.needs_input_grad[1]:
            dw = torch.mm(dy.transpose(0, 1).reshape(E, B * T), x.reshape(B * T, d))  # [E, d]
        return dx, dw


class _ProjectFromChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(z, w)
        ctx.has_bias = bias is not None
        B, _, T = z.shape
        y = torch.empty(B, T, w.shape[0], device=z.device, dtype=z.dtype)
        with torch.autocast(z.device.type, enabled=False):
            for b in range(B):  # [T, d] @ [d, e]: both operands transposed views
                if bias is None:
                    torch.mm(z[b].t(), w.t(), out=y[b])
                else:
                    torch.addmm(bias, z[b].t(), w.t(), out=y[b])
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        z, w = ctx.saved_tensors
        B, d, T = z.shape
        e = w.shape[0]
        dz = dw = db = None
        if ctx.needs_input_grad[0]:
            dz = torch.empty(B, d, T, device=z.device, dtype=z.dtype)
            for b in range(B):
                torch.mm(w.t(), dy[b].t(), out=dz[b])  # [d, e] @ [e, T]: channels first
        if ctx.needs_input_grad[1]:
            dw = torch.mm(dy.reshape(B * T, e).t(), z.transpose(0, 1).reshape(d, B * T).t())  # [e, d]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 1), dtype=torch.float32).to(w.dtype)
        return dz, dw, db


def _check_projection(x: Tensor, w: Tensor, bias: Tensor | None, d: int, layout: str) -> None:
    if x.dim() != 3 or w.dim() != 2 or w.shape[1] != d:
        raise ValueError(
            f"expected x: {layout} and weight: [out, d={x.shape[-1] if x.dim() else '?'}], got "
            f"{tuple(x.shape)} and {tuple(w.shape)}"
        )
    for name, t in (("weight", w), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(
                f"{name} must match x's dtype and device ({x.dtype}, {x.device}), got {t.dtype}, {t.device}"
            )
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"bias must be [{w.shape[0]}], got {tuple(bias.shape)}")


def project_to_channels_first(x: Tensor, weight: Tensor) -> Tensor:
    """``x: [B, T, d]`` times ``weight: [E, d]`` (an ``nn.Linear``'s, no bias), stored channels first:
    ``[B, E, T]`` contiguous, ``y[b] = weight x[b]^T``; one GEMM per batch row, the transposed operand
    read in place, and the same in the backward (``dx`` token-major contiguous). ``weight`` in the dtype of
    ``x`` (the caller casts; autocast does not reach inside)."""
    _check_projection(x, weight, None, x.shape[-1], "[B, T, d]")
    return _ProjectToChannelsFirst.apply(x, weight)


def project_from_channels_first(z: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``z: [B, d, T]`` (channels first) through ``nn.Linear``'s ``weight: [e, d]`` and ``bias: [e]``:
    ``[B, T, e]`` contiguous, with no transposing copy either way (the gradient of ``z`` comes back
    ``[B, d, T]`` contiguous). ``weight`` and ``bias`` in the dtype of ``z``."""
    _check_projection(z, weight, bias, z.shape[1], "[B, d, T]")
    return _ProjectFromChannelsFirst.apply(z, weight, bias)
