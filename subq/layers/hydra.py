"""Hydra (``hydra``): the quasiseparable matrix mixer ``shift(SSD(x)) + flip(shift(SSD(flip(x)))) +
diag(delta) x``, a bidirectional Mamba-2 (arXiv 2407.09941).

As ``Hydra`` in ``goombalab/hydra`` (``hydra/modules/hydra.py``, non-fused path):
``in_proj: d -> [z (d_inner), xBC (d_inner + 4 G N), dt (2 H)]`` without bias, where ``xBC = [x, B_f,
C_f, B_b, C_b]``; a **non-causal** depthwise convolution of ``xBC`` (kernel ``d_conv``, centred, with
bias) and SiLU; one SSD over the batch ``[x, flip x]`` with ``B, C`` of each direction (the backward
ones flipped), ``dt = softplus([dt_f, flip dt_b] + dt_bias)`` and one ``A = -exp(A_log)`` per head
shared by both directions, no ``D`` inside the scan; both outputs shifted one step later (zero at the
first position) so each SSD part is strictly triangular, the backward one flipped back. (Here the
two directions are two scans, the backward one run from the last token, which the Triton kernels do
in one launch, in place: no flipped or concatenated copies; :func:`~subq.ops.ssd.ssd_bidirectional`.)
The diagonal ``delta = fc_D(x) + D`` per head (data dependent); ``y = y_f + y_b + x * delta``, the
gated RMSNorm ``RMSNorm(y) * SiLU(z)`` (norm before the gate) and ``out_proj: d_inner -> d`` without
bias.

``variant`` selects the matrix of Hydra's ablation of its bidirectional construction (the paper's
~70M GLUE study: "Add" 80.6, "Add + Shift" 80.7, "Add + Diag" 80.7, "Quasi" 81.7); everything else
(projections, convolution, shared ``A`` and ``dt_bias``, gated norm) is unchanged. With ``M_f``,
``M_b`` the semiseparable SSD matrices of the two directions, ``S`` the one-step shift and ``J`` the
time reversal:

- ``"quasiseparable"`` (default, Hydra): ``S M_f + J S M_b J + diag(delta)``;
- ``"additive"``: ``M_f + J M_b J``, two SSMs added: both scans include the diagonal, which is
  ``dt_f C_f . B_f + dt_b C_b . B_b`` (counted once per direction), tied to the scans' parameters;
- ``"shift_only"`` (Add + Shift): ``S M_f + J S M_b J``, both parts strictly triangular and no
  diagonal term (``fc_D`` and ``D`` are not built), so no token mixes with itself;
- ``"diag_only"`` (Add + Diag): ``M_f + J M_b J + diag(delta)``, the added SSMs plus Hydra's
  data-dependent diagonal ``delta = fc_D(x) + D``.

The paper names the ablations without code (``goombalab/hydra`` ships only the quasiseparable mixer);
this reading takes Quasi = Add + Shift + Diag, each ablation dropping one of the two changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.registry import register_mixer
from subq.layers.ssd import GatedRMSNorm, SSMMixer, check_ssm_sizes
from subq.ops.gated_rmsnorm import summed_gated_rmsnorm
from subq.ops.ssd import ssd_bidirectional
from subq.ops.ssd.naive import compute_dtype

HYDRA_VARIANTS = ("quasiseparable", "additive", "shift_only", "diag_only")
"""Matrix-mixer variants of :class:`Hydra` (see the module docstring)."""


@register_mixer("hydra")
class Hydra(SSMMixer):
    """Hydra's quasiseparable mixer: two SSD scans with shared parameters plus a free diagonal.
    Bidirectional only.

    Args:
        d_model: model width.
        d_state: ``N``, state size per head (default 64).
        d_conv: taps of the centred convolution, odd (default 7).
        expand: ``d_inner = expand * d_model`` (default 2).
        headdim: ``P``, channels per head (default 64); ``H = d_inner / headdim``.
        ngroups: groups of heads sharing ``B, C`` (default 1).
        dt_min, dt_max, dt_init_floor: the initial step sizes (defaults 1e-3, 0.1, 1e-4).
        chunk_size: SSD chunk (default 64; a power of two >= 16, at most 128 for the Triton kernels;
            Hydra's code uses 256).
        bias: biases in ``in_proj`` and ``out_proj`` (default False); conv_bias: in the convolution
            (default True).
        conv_mode: the centred convolution's form outside ``mode="naive"``: ``"auto"`` (default: the
            Triton kernels when the mixer runs its Triton path and ``d_conv <= 8``, else PyTorch),
            ``"torch"`` (``F.conv1d`` on the transposed input) or ``"triton"``
            (:func:`~subq.ops.short_conv.triton_conv.triton_short_conv` with ``padding = d_conv // 2``,
            in place on the projection's output, so ``x``, ``B``, ``C`` stay row-contiguous slices;
            ``d_conv <= 8``; CUDA).
        norm_mode: the gated RMSNorm's form: ``"auto"`` (default, as ``conv_mode``), ``"torch"`` or
            ``"triton"`` (:mod:`subq.ops.gated_rmsnorm`, one pass; CUDA).
        variant: the mixing matrix, one of :data:`HYDRA_VARIANTS` (default ``"quasiseparable"``,
            Hydra; the others are the paper's ablations, see the module docstring).
        causal, layer_idx, mode, device, dtype: see :class:`~subq.layers.base.Mixer`; ``causal`` must
            be False.

    ``A_log = 0`` (``A = -1``) and ``D = 1`` at init; ``dt_bias``, ``A_log`` and ``D`` carry
    ``_no_weight_decay = True``. ``state_size(L) = L * (d_inner + 4 G N + 2 H) + H * P * N``: a new
    token changes every output, so the projected inputs of all ``L`` tokens are kept (the backward scan
    reruns), plus the forward scan's state. Variants without the diagonal (``additive``,
    ``shift_only``) have no ``fc_D`` and no ``D``.
    """

    modes = ("torch", "triton", "naive")
    supports_decode = False
    supports_bidirectional = True
    supports_causal = False
    example_kwargs = {"d_state": 8, "headdim": 16, "chunk_size": 16}

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 7,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        bias: bool = False,
        conv_bias: bool = True,
        conv_mode: str = "auto",
        norm_mode: str = "auto",
        variant: str = "quasiseparable",
        causal: bool = False,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        self.nheads = check_ssm_sizes(d_model, expand, headdim, d_state, ngroups, chunk_size)
        if not isinstance(d_conv, int) or d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"d_conv must be an odd positive int (a centred convolution), got {d_conv!r}")
        if variant not in HYDRA_VARIANTS:
            raise ValueError(f"variant must be one of {HYDRA_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.shifted = variant in ("quasiseparable", "shift_only")
        self.has_diagonal = variant in ("quasiseparable", "diag_only")
        self._init_ssm(
            d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, ngroups=ngroups,
            chunk_size=chunk_size, directions=2, bias=bias, conv_bias=conv_bias, dt_min=dt_min,
            dt_max=dt_max, dt_init_floor=dt_init_floor, conv_mode=conv_mode, norm_mode=norm_mode,
        )  # fmt: skip
        fk = self.factory_kwargs
        self.A_log = nn.Parameter(torch.zeros(self.nheads, **fk))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        if self.has_diagonal:
            self.D = nn.Parameter(torch.ones(self.nheads, **fk))
            self.D._no_weight_decay = True
            self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False, **fk)
        self.norm = GatedRMSNorm(self.d_inner, norm_before_gate=True, mode=norm_mode, **fk)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)

    def project(self, u: Tensor) -> dict[str, Tensor]:
        """The per-token parameters of the mixing matrix for ``u: [B, T, d_model]``: ``z [B, T, d_inner]``
        (the gate), ``x [B, T, H, P]``, ``B_f, C_f, B_b, C_b [B, T, G, N]``, ``dt_f, dt_b [B, T, H]``
        (after softplus), ``delta [B, T, H]`` (the diagonal; only for the variants that have one) and
        ``A [H]``."""
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, 2 * self.nheads], dim=-1)
        w, b = self._conv_params(xBC)
        if self._forms(self.resolve_mode(u))[0] == "triton":
            from subq.ops.short_conv.triton_conv import triton_short_conv

            xBC = triton_short_conv(
                xBC, w, b, padding=self.d_conv // 2, activation="silu"
            )  # [B, T, conv_dim]
        else:
            xBC = xBC.transpose(1, 2)
            xBC = F.conv1d(xBC, w[:, None, :], b, padding=self.d_conv // 2, groups=self.conv_dim)
            xBC = F.silu(xBC.transpose(1, 2))  # [B, T, conv_dim]
        GN = self.ngroups * self.d_state
        x, B_f, C_f, B_b, C_b = xBC.split([self.d_inner, GN, GN, GN, GN], dim=-1)
        dt = self._dt(dt, compute_dtype(u))
        out = dict(z=z, x=x.unflatten(-1, (self.nheads, self.headdim)), A=self._A(u))
        if self.has_diagonal:
            out["delta"] = F.linear(x, self.fc_D.weight, self.D.to(x.dtype))
        out.update(B_f=self._groups(B_f), C_f=self._groups(C_f), B_b=self._groups(B_b), C_b=self._groups(C_b))
        out["dt_f"], out["dt_b"] = dt.split(self.nheads, dim=-1)
        return out

    def _forward(self, u: Tensor) -> Tensor:
        p = self.project(u)
        mode = self.resolve_mode(u)
        # the backward scan runs from the last token (the kernels: both scans in one launch, in place)
        y_f, y_b = ssd_bidirectional(
            p["x"], p["dt_f"], p["dt_b"], p["A"], p["B_f"], p["C_f"], p["B_b"], p["C_b"],
            chunk_size=self.chunk_size, mode=mode,
        )  # fmt: skip
        if self._forms(mode)[1] == "triton" and y_f.dtype != torch.float64:
            # the sum of the two scans and the diagonal formed inside the norm's kernel
            diag = self.has_diagonal
            y = summed_gated_rmsnorm(
                y_f, y_b, p["z"], self.norm.weight, x=p["x"] if diag else None,
                delta=p["delta"] if diag else None, shifted=self.shifted, eps=self.norm.eps,
                norm_before_gate=True, group_size=self.norm.group_size, mode="triton",
            )  # fmt: skip
            return self.out_proj(y)
        y = self._combine(y_f, y_b, p)
        return self.out_proj(self.norm(y.flatten(-2), p["z"], "torch"))

    def _combine(self, y_f: Tensor, y_b: Tensor, p: dict[str, Tensor]) -> Tensor:
        """``[shift] y_f + [shift] y_b [+ x delta]`` from the two scans' outputs (both in token order),
        added into one buffer: with the shift, the forward scan's output at ``t - 1`` and the backward
        scan's at ``t + 1`` land at ``t``."""
        out = p["x"] * p["delta"][..., None] if self.has_diagonal else torch.zeros_like(y_f)
        if self.shifted:
            out[:, 1:] += y_f[:, :-1]
            out[:, :-1] += y_b[:, 1:]
        else:
            out += y_f
            out += y_b
        return out  # [B, T, H, P]

    def state_size(self, seq_len: int) -> int:
        return seq_len * (self.conv_dim + 2 * self.nheads) + self.nheads * self.headdim * self.d_state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}"
