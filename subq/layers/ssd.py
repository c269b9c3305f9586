"""Mamba-2's block as a causal sequence mixer (``ssd``), and the pieces it shares with Hydra
(:class:`SSMMixer`).

As ``Mamba2`` in ``state-spaces/mamba`` (``mamba_ssm/modules/mamba2.py``, non-fused path):
``in_proj: d -> [z (d_inner), xBC (d_inner + 2 G N), dt (H)]`` without bias, a causal depthwise
convolution of ``xBC`` (kernel ``d_conv``, with bias) and SiLU, split into ``x, B, C``,
``dt = softplus(dt + dt_bias)``, ``A = -exp(A_log)``, the SSD scan with the skip ``D``, the gated
RMSNorm ``RMSNorm(y * SiLU(z))`` (gate before the norm, one norm per group of heads) and
``out_proj: d_inner -> d`` without bias. ``d_inner = expand * d``, ``H = d_inner / headdim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.base import Mixer, triton_available
from subq.layers.registry import register_mixer
from subq.ops.gated_rmsnorm import gated_rmsnorm
from subq.ops.short_conv import (
    MAX_KERNEL_SIZE,
    MIN_KERNEL_SIZE,
    naive_short_conv,
    short_conv,
    short_conv_state,
    short_conv_step,
)
from subq.ops.ssd import ssd, ssd_step
from subq.ops.ssd.naive import compute_dtype


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y) * SiLU(z)`` (``norm_before_gate=True``, Hydra) or ``RMSNorm(y * SiLU(z))``
    (Mamba-2), normalised over groups of ``group_size`` channels, in float32 (float64 for float64);
    ``mode="triton"`` computes it with the Triton kernels of :mod:`subq.ops.gated_rmsnorm` (CUDA),
    ``"auto"`` with them on CUDA tensors and in PyTorch otherwise."""

    def __init__(
        self, d: int, *, eps: float = 1e-5, norm_before_gate: bool, group_size: int | None = None,
        mode: str = "auto", device=None, dtype=None,
    ):  # fmt: skip
        super().__init__()
        self.group_size = d if group_size is None else group_size
        if d % self.group_size:
            raise ValueError(f"group_size={self.group_size} must divide the width {d}")
        if mode not in ("auto", "torch", "triton"):
            raise ValueError(f"mode must be 'auto', 'torch' or 'triton', got {mode!r}")
        self.eps, self.norm_before_gate, self.mode = eps, norm_before_gate, mode
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, y: Tensor, z: Tensor, mode: str | None = None) -> Tensor:  # (..., d), (..., d)
        """``mode`` overrides the module's for one call (the mixers' ``mode="naive"`` passes
        ``"torch"``); float64 always runs in PyTorch."""
        mode = "torch" if y.dtype == torch.float64 else (mode or self.mode)
        if mode == "auto":
            mode = "triton" if y.is_cuda and triton_available() else "torch"
        return gated_rmsnorm(
            y, z, self.weight, eps=self.eps, norm_before_gate=self.norm_before_gate,
            group_size=self.group_size, mode=mode,
        )  # fmt: skip


def init_dt_bias(nheads: int, dt_min: float, dt_max: float, dt_init_floor: float, **fk) -> Tensor:
    """Mamba-2's ``dt_bias``: the inverse softplus of ``dt`` log-uniform in ``[dt_min, dt_max]``
    (floored at ``dt_init_floor``), so that ``softplus(dt_bias)`` starts there."""
    dt = torch.exp(torch.rand(nheads, **fk) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def check_ssm_sizes(
    d_model: int, expand: int, headdim: int, d_state: int, ngroups: int, chunk_size: int
) -> int:
    """Validate the SSM layer sizes; return ``nheads``."""
    for name, v in (("expand", expand), ("headdim", headdim), ("d_state", d_state), ("ngroups", ngroups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size!r}")
    d_inner = expand * d_model
    if d_inner % headdim:
        raise ValueError(f"expand * d_model = {d_inner} must be divisible by headdim={headdim}")
    nheads = d_inner // headdim
    if nheads % ngroups:
        raise ValueError(
            f"heads {nheads} (expand * d_model / headdim) must be a multiple of ngroups={ngroups}"
        )
    return nheads


@dataclass
class SSDState:
    """``conv: [B, conv_dim, d_conv]`` (the last ``d_conv`` inputs of the convolution, model dtype) and
    ``ssm: [B, H, headdim, d_state]`` (float32, float64 for float64 models)."""

    conv: Tensor
    ssm: Tensor


class SSMMixer(Mixer):
    """What Mamba-2's block (:class:`SSDMixer`) and :class:`~subq.layers.hydra.Hydra` share, for ``S``
    scan directions (1 and 2): ``in_proj: d -> [z (d_inner), xBC (d_inner + 2 S G N), dt (S H)]``, the
    depthwise convolution of ``xBC`` (``nn.Conv1d``'s init), ``dt_bias`` (one per head, shared by the
    directions), ``A = -exp(A_log)`` and the sizes in ``extra_repr``. Not a mixer by itself."""

    def _init_ssm(
        self,
        d_model: int,
        *,
        d_state: int,
        d_conv: int,
        expand: int,
        headdim: int,
        ngroups: int,
        chunk_size: int,
        directions: int,
        bias: bool,
        conv_bias: bool,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        conv_mode: str = "auto",
        norm_mode: str = "auto",
    ) -> None:
        """The sizes, then ``in_proj``, the convolution and ``dt_bias`` in this order (the order of the
        random draws); ``self.nheads`` must be set. The subclass adds ``A_log``, ``D``, the norm and
        ``out_proj``."""
        if conv_mode not in ("auto", "torch", "triton"):
            raise ValueError(f"conv_mode must be 'auto', 'torch' or 'triton', got {conv_mode!r}")
        if conv_mode == "triton" and not MIN_KERNEL_SIZE <= d_conv <= MAX_KERNEL_SIZE:
            raise ValueError(
                f"conv_mode='triton' takes d_conv in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {d_conv}"
            )
        if norm_mode not in ("auto", "torch", "triton"):
            raise ValueError(f"norm_mode must be 'auto', 'torch' or 'triton', got {norm_mode!r}")
        self.conv_mode, self.norm_mode = conv_mode, norm_mode
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.chunk_size = chunk_size
        self.d_inner = expand * d_model
        self.conv_dim = self.d_inner + 2 * directions * ngroups * d_state
        fk = self.factory_kwargs
        self.in_proj = nn.Linear(
            d_model, self.d_inner + self.conv_dim + directions * self.nheads, bias=bias, **fk
        )
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **fk))  # [conv_dim, k]
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim, **fk)) if conv_bias else None
        bound = 1 / math.sqrt(d_conv)  # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads, dt_min, dt_max, dt_init_floor, **fk))

    def _forms(self, mode: str) -> tuple[str, str]:
        """The convolution's and the norm's forms (``"torch"`` or ``"triton"``) under the resolved mixer
        ``mode``: ``"auto"`` takes the Triton kernels when the mixer runs its Triton path (and the
        convolution has at most 8 taps), PyTorch otherwise; ``mode="naive"`` always runs PyTorch."""
        if mode == "naive":
            return "torch", "torch"
        fast = mode == "triton"
        conv = self.conv_mode
        if conv == "auto":
            conv = "triton" if fast and MIN_KERNEL_SIZE <= self.d_conv <= MAX_KERNEL_SIZE else "torch"
        norm = self.norm_mode if self.norm_mode != "auto" else ("triton" if fast else "torch")
        return conv, norm

    def _conv_params(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """The filter (and bias) in the dtype of the activations (they differ under autocast)."""
        bias = None if self.conv_bias is None else self.conv_bias.to(like.dtype)
        return self.conv_weight.to(like.dtype), bias

    def _groups(self, m: Tensor) -> Tensor:
        """``[..., G * N] -> [..., G, N]``."""
        return m.unflatten(-1, (self.ngroups, self.d_state))

    def _dt(self, dt: Tensor, ct: torch.dtype) -> Tensor:
        """Raw ``dt [..., S H]`` -> ``softplus(dt + dt_bias)`` in ``ct``."""
        return F.softplus(dt.to(ct) + self.dt_bias.to(ct).repeat(dt.shape[-1] // self.nheads))

    def _A(self, like: Tensor) -> Tensor:
        return -torch.exp(self.A_log.to(compute_dtype(like)))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"nheads={self.nheads}, headdim={self.headdim}, ngroups={self.ngroups}"
        )


@register_mixer("ssd")
class SSDMixer(SSMMixer):
    """Mamba-2: a selective state-space layer computed by the SSD algorithm. Causal.

    Args:
        d_model: model width.
        d_state: ``N``, state size per head (default 128, Mamba-2's default).
        d_conv: causal convolution taps, 2..8 (default 4).
        expand: ``d_inner = expand * d_model`` (default 2).
        headdim: ``P``, channels per head (default 64); ``H = d_inner / headdim``.
        ngroups: groups of heads sharing ``B, C`` (default 1).
        A_init_range: ``A = -U(A_init_range)`` at init (default ``(1, 16)``).
        dt_min, dt_max, dt_init_floor: the initial step sizes (defaults 1e-3, 0.1, 1e-4).
        chunk_size: SSD chunk (default 64; a power of two >= 16, at most 128 for the Triton kernels).
        bias: biases in ``in_proj`` and ``out_proj`` (default False); conv_bias: in the convolution
            (default True).
        conv_mode: the causal convolution's form outside ``mode="naive"``: ``"auto"`` (default: the
            Triton kernels when the mixer runs its Triton path, else PyTorch), ``"torch"``
            (``F.conv1d``) or ``"triton"`` (:func:`~subq.ops.short_conv.short_conv`'s Triton kernels,
            in place on the projection's output; CUDA).
        norm_mode: the gated RMSNorm's form: ``"auto"`` (default, as ``conv_mode``), ``"torch"`` or
            ``"triton"`` (:mod:`subq.ops.gated_rmsnorm`, one pass; CUDA).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`.

    ``state_size(L) = H * headdim * d_state + (d_inner + 2 ngroups d_state) * d_conv`` for every ``L``.
    ``dt_bias``, ``A_log`` and ``D`` carry ``_no_weight_decay = True`` (as in Mamba-2).
    """

    modes = ("torch", "triton", "naive")
    supports_decode = True
    supports_bidirectional = False
    example_kwargs = {"d_state": 8, "headdim": 16, "ngroups": 2, "chunk_size": 16}

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        bias: bool = False,
        conv_bias: bool = True,
        conv_mode: str = "auto",
        norm_mode: str = "auto",
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        self.nheads = check_ssm_sizes(d_model, expand, headdim, d_state, ngroups, chunk_size)
        if not isinstance(d_conv, int) or not MIN_KERNEL_SIZE <= d_conv <= MAX_KERNEL_SIZE:
            raise ValueError(
                f"d_conv must be an int in [{MIN_KERNEL_SIZE}, {MAX_KERNEL_SIZE}], got {d_conv!r}"
            )
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be 0 < low <= high, got {A_init_range!r}")
        self._init_ssm(
            d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, ngroups=ngroups,
            chunk_size=chunk_size, directions=1, bias=bias, conv_bias=conv_bias, dt_min=dt_min,
            dt_max=dt_max, dt_init_floor=dt_init_floor, conv_mode=conv_mode, norm_mode=norm_mode,
        )  # fmt: skip
        fk = self.factory_kwargs
        A = torch.empty(self.nheads, **fk).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads, **fk))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(
            self.d_inner, norm_before_gate=False, group_size=self.d_inner // ngroups, mode=norm_mode, **fk
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    # ---- pieces ------------------------------------------------------------------------------------
    def _split(self, xBC: Tensor, dt: Tensor):
        """Post-convolution ``xBC [..., conv_dim]`` and raw ``dt [..., H]`` -> ``x [..., H, P]``,
        ``B, C [..., G, N]``, ``dt [..., H]`` after softplus."""
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        return x, self._groups(B), self._groups(C), self._dt(dt, compute_dtype(x))

    def _scan(self, x: Tensor, initial_state: Tensor | None = None, output_final_state: bool = False):
        """``[B, T, d_model]`` -> ``(y [B, T, d_model], SSDState or None)``."""
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        mode = self.resolve_mode(x)
        conv_mode, norm_mode = self._forms(mode)
        if mode == "naive":
            xBC_act = F.silu(naive_short_conv(xBC, *self._conv_params(xBC)))
        else:
            xBC_act = short_conv(xBC, *self._conv_params(xBC), mode=conv_mode, activation="silu")
        xs, B, C, dt = self._split(xBC_act, dt)
        A = self._A(xs)
        y, h = ssd(
            xs, dt, A, B, C, D=self.D, initial_state=initial_state, output_final_state=output_final_state,
            chunk_size=self.chunk_size, mode=mode,
        )  # fmt: skip
        out = self.out_proj(self.norm(y.flatten(-2), z, norm_mode))
        state = SSDState(short_conv_state(xBC, self.d_conv), h) if output_final_state else None
        return out, state

    # ---- the contract ------------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        return self._scan(x)[0]

    def state_size(self, seq_len: int) -> int:
        return self.nheads * self.headdim * self.d_state + self.conv_dim * self.d_conv

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> SSDState:
        self._require_decode("init_state")
        device = device if device is not None else self.conv_weight.device
        dtype = dtype if dtype is not None else self.conv_weight.dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return SSDState(
            conv=torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype
            ),
        )

    def _prefill(self, x: Tensor) -> tuple[Tensor, SSDState]:
        return self._scan(x, output_final_state=True)

    def _step(self, x_t: Tensor, state: SSDState) -> tuple[Tensor, SSDState]:
        z, xBC, dt = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        c, conv_state = short_conv_step(xBC, state.conv.to(xBC.dtype), *self._conv_params(xBC))
        xs, B, C, dt = self._split(F.silu(c), dt)
        y, h = ssd_step(xs, dt, self._A(xs), B, C, state.ssm, D=self.D)
        norm_mode = self._forms(self.resolve_mode(x_t))[1]
        return self.out_proj(self.norm(y.flatten(-2), z, norm_mode)), SSDState(conv_state, h)
