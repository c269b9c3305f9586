"""The sequence-mixer contract shared by every layer in ``subq.layers``.

A mixer maps ``[B, T, d_model] -> [B, T, d_model]``. Subclasses implement ``_forward`` (and, when they
can decode, ``init_state`` / ``_prefill`` / ``_step``); the public ``forward`` / ``prefill`` / ``step``
validate their input first, so every mixer fails the same way on bad input.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

State = Any
"""A mixer's decoding state: whatever the mixer needs to produce the next token (a KV cache, a
recurrent state, ...). Opaque to callers; passed back to :meth:`Mixer.step` unchanged."""

MODES = ("auto", "torch", "triton", "naive")


def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class Mixer(nn.Module):
    """Base class of sequence mixers.

    Args:
        d_model: model width; input and output are ``[B, T, d_model]``.
        causal: if True, output at ``t`` depends only on inputs ``<= t``.
        layer_idx: position of the layer in its model (for per-layer init or caches).
        mode: ``"auto"`` (Triton on CUDA where available, else the pure-PyTorch fast form),
            ``"torch"``, ``"triton"`` or ``"naive"`` (the reference, for tests).

    Class attributes a subclass sets:
        modes: the forms it implements among ``("torch", "triton", "naive")``.
        supports_decode: True when ``init_state`` / ``prefill`` / ``step`` are implemented (causal only).
        supports_bidirectional: True when ``causal=False`` is allowed.
        supports_causal: False for bidirectional-only mixers (``causal=True`` is then an error).
        example_kwargs: keyword arguments for a small instance (tests, ``subq list``).
    """

    name: ClassVar[str] = "mixer"
    modes: ClassVar[tuple[str, ...]] = ("torch", "naive")
    supports_decode: ClassVar[bool] = False
    supports_bidirectional: ClassVar[bool] = True
    supports_causal: ClassVar[bool] = True
    example_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        d_model: int,
        *,
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "auto" and mode not in self.modes:
            raise ValueError(
                f"{type(self).name} has no {mode!r} form; available modes: auto, {', '.join(self.modes)}"
            )
        if not causal and not self.supports_bidirectional:
            raise ValueError(f"{type(self).name} is causal only; causal=False is not supported")
        if causal and not self.supports_causal:
            raise ValueError(f"{type(self).name} is bidirectional only; causal=True is not supported")
        self.d_model = d_model
        self.causal = causal
        self.layer_idx = layer_idx
        self.mode = mode
        self.factory_kwargs = {"device": device, "dtype": dtype}

    # ---- forms -----------------------------------------------------------------------------------
    def resolve_mode(self, x: Tensor) -> str:
        """The concrete form used for input ``x``: never ``"auto"``."""
        if self.mode == "auto":
            if "triton" in self.modes and x.is_cuda and triton_available():
                return "triton"
            return "torch"
        if self.mode == "triton" and not x.is_cuda:
            raise RuntimeError(
                f"{type(self).name}: mode='triton' needs CUDA tensors, got device {x.device}; "
                "use mode='auto' or mode='torch' on CPU"
            )
        return self.mode

    # ---- the public contract ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, T, d_model]`` -> ``[B, T, d_model]``."""
        self._check_input(x, "x", ndim=3)
        return self._forward(x)

    def state_size(self, seq_len: int) -> int:
        """Floats kept per sequence to produce token ``seq_len + 1`` (the recall-vs-memory x-axis)."""
        raise NotImplementedError

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """The empty decoding state (before any token)."""
        self._require_decode("init_state")
        raise NotImplementedError

    def prefill(self, x: Tensor) -> tuple[Tensor, State]:
        """``forward(x)`` plus the state after the last token of ``x: [B, T, d_model]``."""
        self._require_decode("prefill")
        self._check_input(x, "x", ndim=3)
        return self._prefill(x)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoding step: ``x_t: [B, d_model]`` -> ``(y_t: [B, d_model], new_state)``."""
        self._require_decode("step")
        self._check_input(x_t, "x_t", ndim=2)
        return self._step(x_t, state)

    # ---- what subclasses implement ---------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _prefill(self, x: Tensor) -> tuple[Tensor, State]:
        """Default prefill: step through ``x`` token by token. Subclasses override with a parallel form."""
        state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y_t, state = self._step(x[:, t], state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    # ---- validation ------------------------------------------------------------------------------
    def _require_decode(self, what: str) -> None:
        if not self.supports_decode:
            raise NotImplementedError(f"{type(self).name} does not support decoding ({what})")
        if not self.causal:
            raise RuntimeError(f"{type(self).name}: {what} needs a causal mixer; this one has causal=False")

    def _check_input(self, x: Tensor, arg: str, *, ndim: int) -> None:
        shape = "[B, T, d_model]" if ndim == 3 else "[B, d_model]"
        if not isinstance(x, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor {shape}, got {type(x).__name__}")
        if x.dim() != ndim:
            raise ValueError(f"{arg} must be {ndim}-D {shape}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{arg} last dim must equal d_model={self.d_model}, got {x.shape[-1]} "
                f"(shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"{arg} must be a floating-point tensor, got dtype {x.dtype}")
        if ndim == 3 and x.shape[1] == 0:
            raise ValueError(f"{arg} must have at least one token, got T=0 (shape {tuple(x.shape)})")
        if x.shape[0] == 0:
            raise ValueError(f"{arg} must have batch size >= 1, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, causal={self.causal}, mode={self.mode!r}"
