"""Benchmark entries of the long convolution and of Hyena (issue 5).

    subq bench --entries long_conv --dtype fp32 --heads 1 --head-dim 128 --T 65536,1048576
    subq bench --entries hyena --dtype bf16 --heads 1 --head-dim 128 --T 4096,32768,131072,1048576

``long_conv``: the depthwise causal convolution ``y = h * u`` with a filter as long as the sequence,
``u: [B, T, C]``, ``h: [C, T]``, ``C = H * D`` channels (``--heads 1 --head-dim 128`` gives the 128
channels of the issue's anchor). Modes, each gated against ``naive_long_conv`` (relative RMS of ``y``,
``du`` and ``dh`` in the gate column):

- ``torch_fft``: the anchor, ``irfft(rfft(u, n=2T) * rfft(h, n=2T), n=2T)[..., :T]`` on ``u: [B, C, T]``
  in float32, whatever the benchmark dtype (:func:`torch_fft_long_conv`);
- ``fft``: :func:`~subq.ops.long_conv.fft_long_conv` (one FFT of 5-smooth size ``>= 2T - 1``);
- ``chunk``: :func:`~subq.ops.long_conv.chunk_long_conv` (dyadic blocks, bitwise causal);
- ``triton``, ``triton_tf32``, ``triton_fp16``: :func:`~subq.ops.long_conv.triton_long_conv` at
  ``precision="tf32x3"`` (the default, float32-exact), ``"tf32"`` and ``"fp16"``: the matmuls' operands
  rounded to 10 mantissa bits, gated at relative RMS ``1e-3`` (the issue's bound; they measure
  about 7.4e-4 at every length).

``u`` is stored channels first, ``[B, C, T]`` contiguous (the anchor's layout and the FFT's: time is
the contiguous axis), and every mode receives it as the ``[B, T, C]`` view ``u_bct.transpose(1, 2)``,
so no mode pays a transpose inside the timed region: ``u.transpose(1, 2)`` is free. A mode is a
function ``(u: [B, T, C], h: [C, L]) -> y: [B, T, C]``; adding one is one line in
:data:`LONG_CONV_MODES` (name it ``triton`` or list it in ``cuda_only`` if it needs CUDA). The entry
has no SDPA baseline (``sdpa_layers=0``): its comparison is ``torch_fft``, in the same run.

``hyena``: two Hyena operators of width ``d = H * D`` with residual connections,
``x = x + hyena(x)`` twice (no norms, no MLPs), batch ``B``: the operator stack HyenaDNA times against
attention (2 layers, width 128, batch 1). Each layer has HyenaDNA's hyperparameters (order 2,
filter MLP width 64, ``emb_dim`` 5, short filter 3, ``w`` 10) and a filter as long as the sequence
(``max_seq_len = T``). Modes: ``fft``, ``chunk``, ``triton`` and ``triton_fp16`` (CUDA), the layer's
``mode="torch"`` with that ``long_conv_form``; reference: the same weights with ``mode="naive"``.
In bf16 or fp16 the weights stay float32 and the stack runs under ``torch.autocast`` (as training
does), and so does the reference: the gate compares the forms, not the precisions. The implicit
filters are computed in float32 in every form (``HyenaFilter.taps`` runs the MLP outside autocast;
on CUDA the fused Triton filter, in the reference PyTorch's), then cast to the activations' dtype.
The runner's baseline is two causal SDPA calls in sequence (``sdpa_layers=2``) at ``[B, H, T, D]``:
attention's operator alone, without the projections that the Hyena stack's time includes, so the speedup is a
lower bound. Use ``H = 1, D = 128``: Hyena's operator is single-headed over all ``d`` channels, and
head dim 128 is the one FlashAttention is tuned for (the attention FLOPs, ``2 T^2 H D``, are the same
for any split of ``d``). Where one SDPA call takes longer than ``Timing.single_call_ms`` the runner
times one call instead of a median.

FLOPs: an FFT convolution of ``C`` channels at ``n = 2T`` counts ``2.5 n log2 n`` per real transform
(two per batch row and channel, plus one per channel for the filter) and ``3 n`` per batch row and
channel for the complex product. The Hyena stack adds per layer and batch row ``2 T d (3 d + d)`` for
the projections, ``2 k (3 d) T`` for the short convolution, ``2 T d`` for the gates, and per layer
``2 T (e F + 2 F^2 + F d)`` for the filter MLP.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from subq.bench.registry import BenchShape, register_bench
from subq.layers import get_mixer
from subq.models.hyena_dna import HYENA_LAYER
from subq.ops.long_conv import chunk_long_conv, fft_long_conv, naive_long_conv, triton_long_conv
from subq.ops.short_conv import naive_short_conv, short_conv

HYENA_BENCH_LAYERS = 2


def torch_fft_long_conv(u: Tensor, h: Tensor) -> Tensor:
    """The ``torch.fft`` float32 reference form: ``irfft(rfft(u, n=2T) * rfft(h, n=2T), n=2T)[..., :T]``.

    Args:
        u: `[B, T, C]`, best a view of a channels-first ``[B, C, T]`` tensor (then no copy is made).
        h: `[C, L]`, ``L <= T``.

    Returns:
        ``y: [B, T, C]`` float32 (a view of the ``[B, C, T]`` result).
    """
    T = u.shape[1]
    n = 2 * T
    x = u.transpose(1, 2).float()  # [B, C, T]
    y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(h.float(), n=n), n=n)[..., :T]
    return y.transpose(1, 2)  # [B, T, C]


LONG_CONV_MODES = {
    "torch_fft": torch_fft_long_conv,
    "fft": fft_long_conv,
    "chunk": chunk_long_conv,
    "triton": triton_long_conv,
    "triton_tf32": functools.partial(triton_long_conv, precision="tf32"),
    "triton_fp16": functools.partial(triton_long_conv, precision="fp16"),
}
"""Mode name -> ``fn(u: [B, T, C], h: [C, L]) -> y: [B, T, C]`` of the ``long_conv`` entry."""


def fft_conv_flops(B: int, C: int, T: int) -> float:
    """FLOPs of a causal FFT convolution of ``B`` rows of ``C`` channels at ``n = 2T`` (module docstring)."""
    n = 2 * T
    transform = 2.5 * n * math.log2(n)
    return B * C * (2 * transform + 3 * n) + C * transform


def long_conv_flops(s: BenchShape) -> float:
    return fft_conv_flops(s.B, s.H * s.D, s.T)


def long_conv_bytes(s: BenchShape) -> float:
    """Read ``u: [B, T, C]`` and ``h: [C, T]``, write ``y: [B, T, C]``."""
    C = s.H * s.D
    return (2 * s.B + 1) * s.T * C * s.dtype.itemsize


@register_bench(
    "long_conv",
    modes=LONG_CONV_MODES,
    reference=naive_long_conv,
    flops=long_conv_flops,
    bytes=long_conv_bytes,
    gate_max_T=8192,
    sdpa_layers=0,
    cuda_only=("triton", "triton_tf32", "triton_fp16"),
    gate_tol={"triton_tf32": 1e-3, "triton_fp16": 1e-3},
)
def long_conv_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``u: [B, T, C]`` (a view of channels-first storage ``[B, C, T]``), standard normal, and
    ``h: [C, T]``, normal with variance ``1 / T`` so that ``y`` has unit variance; ``C = H * D``."""
    C = s.H * s.D
    u = torch.randn(s.B, C, s.T, dtype=s.dtype, device=s.device).transpose(1, 2)
    h = torch.randn(C, s.T, dtype=s.dtype, device=s.device) * s.T**-0.5
    return {"u": u, "h": h}


class HyenaStack(nn.Module):
    """``x = x + layer(x)`` over ``n_layers`` float32 Hyena layers of width ``d_model`` with HyenaDNA's
    hyperparameters, under ``torch.autocast(dtype=autocast_dtype)`` when that is set.

    ``forward(x, mode=, form=, short=)`` runs every layer in ``mode`` (``"torch"`` or ``"naive"``) with
    ``long_conv_form=form`` and ``short_conv_mode=short``: the forms share one set of weights.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        *,
        max_seq_len: int,
        autocast_dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        hyena = get_mixer("hyena")
        kwargs = {**HYENA_LAYER, "max_seq_len": max_seq_len}
        self.layers = nn.ModuleList(
            hyena(d_model, layer_idx=i, device=device, **kwargs) for i in range(n_layers)
        )
        self.autocast_dtype = autocast_dtype

    def forward(self, x: Tensor, *, mode: str, form: str, short: str = "torch") -> Tensor:
        for layer in self.layers:
            layer.mode, layer.long_conv_form, layer.short_conv_mode = mode, form, short
        cast = self.autocast_dtype is not None
        with torch.autocast(x.device.type, dtype=self.autocast_dtype) if cast else nullcontext():
            for layer in self.layers:
                x = x + layer(x)  # [B, T, d]
        return x


def fft_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="torch", form="fft")


def chunk_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="torch", form="chunk")


def triton_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="torch", form="triton")


def triton_fp16_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="torch", form="triton_fp16")


def all_triton_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="torch", form="triton_fp16", short="triton")


def naive_hyena_stack(x: Tensor, stack: HyenaStack) -> Tensor:
    return stack(x, mode="naive", form="fft")


def hyena_flops(s: BenchShape) -> float:
    d, T, F, e = s.H * s.D, s.T, HYENA_LAYER["filter_order"], HYENA_LAYER["emb_dim"]
    k = HYENA_LAYER["short_filter_order"]
    per_row = 2 * T * d * 4 * d + 2 * k * 3 * d * T + 2 * T * d
    filter_mlp = 2 * T * (e * F + 2 * F * F + F * d)
    return HYENA_BENCH_LAYERS * (s.B * per_row + filter_mlp + fft_conv_flops(s.B, d, T))


def hyena_bytes(s: BenchShape) -> float:
    """Read ``x``, write ``y``: ``2 B T d`` elements (a lower bound: activations are not counted)."""
    return 2 * s.B * s.T * s.H * s.D * s.dtype.itemsize


@register_bench(
    "hyena",
    modes={
        "fft": fft_hyena_stack,
        "chunk": chunk_hyena_stack,
        "triton": triton_hyena_stack,
        "triton_fp16": triton_fp16_hyena_stack,
        "all_triton": all_triton_hyena_stack,
    },
    reference=naive_hyena_stack,
    flops=hyena_flops,
    bytes=hyena_bytes,
    sdpa_layers=HYENA_BENCH_LAYERS,
    cuda_only=("triton", "triton_fp16", "all_triton"),
    gate_tol={"triton_fp16": 3e-3, "all_triton": 3e-3},
)
def hyena_inputs(s: BenchShape) -> dict[str, object]:
    """``x: [B, T, d]`` standard normal (``d = H * D``) and ``stack``: a :class:`HyenaStack` of two
    layers with ``max_seq_len = T``, autocast to the benchmark dtype when that is half precision."""
    half = s.dtype in (torch.bfloat16, torch.float16)
    stack = HyenaStack(
        s.H * s.D,
        HYENA_BENCH_LAYERS,
        max_seq_len=max(s.T, 2),
        autocast_dtype=s.dtype if half else None,
        device=s.device,
    )
    return {"x": torch.randn(s.B, s.T, s.H * s.D, dtype=s.dtype, device=s.device), "stack": stack}


# ---- short convolution ---------------------------------------------------------------------------------
def _short_conv_mode(mode: str):
    def run(x: Tensor, w: Tensor, b: Tensor, k: int) -> Tensor:
        return short_conv(x, w, b, mode=mode)

    run.__name__ = f"{mode}_short_conv"
    return run


def _naive_short_conv(x: Tensor, w: Tensor, b: Tensor, k: int) -> Tensor:
    return naive_short_conv(x, w, b)


def short_conv_flops(s: BenchShape) -> float:
    return 2 * s.params["k"] * s.B * s.T * s.H * s.D


def short_conv_bytes(s: BenchShape) -> float:
    """Read ``x``, write ``y`` (``[B, T, C]``; the weights are negligible)."""
    return 2 * s.B * s.T * s.H * s.D * s.dtype.itemsize


@register_bench(
    "short_conv",
    modes={"torch": _short_conv_mode("torch"), "triton": _short_conv_mode("triton")},
    reference=_naive_short_conv,
    flops=short_conv_flops,
    bytes=short_conv_bytes,
    params={"k": 3},
    sdpa_layers=0,
)
def short_conv_inputs(s: BenchShape) -> dict[str, Tensor]:
    """The causal depthwise convolution of Hyena and BASED on a projection's output: ``x: [B, T, C]``
    token-major (``C = H * D`` contiguous), ``w: [C, k]``, ``b: [C]``. ``torch`` is ``F.conv1d`` on the
    transposed input (:func:`~subq.ops.short_conv.short_conv`), ``triton`` the kernels of
    :mod:`subq.ops.short_conv.triton_conv`."""
    C, k = s.H * s.D, s.params["k"]
    x = torch.randn(s.B, s.T, C, dtype=s.dtype, device=s.device)
    w = torch.randn(C, k, dtype=s.dtype, device=s.device) / k**0.5
    return {"x": x, "w": w, "b": torch.randn(C, dtype=s.dtype, device=s.device)}
