"""Benchmark entries as data: a :class:`BenchSpec` per op, registered by name with :func:`register_bench`.

An entry says what to time and how to check it; :mod:`subq.bench.runner` does the rest::

    @register_bench(
        "sliding_window",
        modes={"torch": chunk_sliding_window_attention, "triton": flex_sliding_window_attention},
        reference=naive_sliding_window_attention,
        flops=sliding_window_flops,            # forward FLOPs of a BenchShape
        bytes=qkvo_bytes,                      # forward bytes moved (inputs read + output written)
        params={"window": 256},                # entry parameters and their defaults
    )
    def sliding_window_inputs(s: BenchShape) -> dict[str, Tensor]:
        return qkv_inputs(s)

Every mode function and the reference are called as ``fn(**inputs, **params)`` and return the
output tensor or the op-standard ``(o, final_state)``. Run the registered entries with
``subq bench``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class BenchShape:
    """One benchmark shape: batch ``B``, length ``T``, heads ``H``, head dim ``D``, dtype, device and
    the entry's parameters (``params["window"]`` for sliding-window attention)."""

    B: int
    T: int
    H: int
    D: int
    dtype: torch.dtype
    device: torch.device
    params: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> BenchShape:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BenchSpec:
    """A benchmark entry; build it through :func:`register_bench`.

    Attributes:
        name: registered name (``subq bench --entries NAME``).
        make_inputs: ``shape -> {argument name: value}``; every floating-point tensor among the
            values is differentiated in the backward gate and timing.
        modes: mode name (``"torch"``, ``"triton"``, ...) -> the fast function to time.
        reference: the naive function the gate compares against (run on float32 copies).
        flops: forward FLOPs of a shape (for TFLOP/s).
        bytes: forward bytes moved of a shape (for GB/s).
        params: entry parameters and their defaults, passed to every function as keywords.
        backward: whether the functions support backward (gate and fwd+bwd timing).
        cuda_only: modes that run only on CUDA (reported as skipped elsewhere).
        gate_max_T: the correctness gate runs at ``min(T, gate_max_T)`` because the naive
            reference usually holds the full ``T x T`` score matrix.
        sdpa_layers: the SDPA baseline the entry is compared with is this many causal SDPA calls in
            sequence (a 2-layer stack against 2 attention layers); 0: no SDPA baseline (an op whose
            comparison is another of its own modes).
        gate_tol: mode -> the gate's relative-RMS tolerance for a mode whose documented accuracy is
            looser than the benchmark dtype's default (a reduced-precision option of a float32 op);
            the gate uses the larger of the two.
    """

    name: str
    make_inputs: Callable[[BenchShape], dict[str, Any]]
    modes: Mapping[str, Callable[..., Any]]
    reference: Callable[..., Any]
    flops: Callable[[BenchShape], float]
    bytes: Callable[[BenchShape], float]
    params: Mapping[str, Any] = field(default_factory=dict)
    backward: bool = True
    cuda_only: tuple[str, ...] = ("triton",)
    gate_max_T: int = 2048
    sdpa_layers: int = 1
    gate_tol: Mapping[str, float] = field(default_factory=dict)


BENCHES: dict[str, BenchSpec] = {}


def register_bench(
    name: str,
    *,
    modes: Mapping[str, Callable[..., Any]],
    reference: Callable[..., Any],
    flops: Callable[[BenchShape], float],
    bytes: Callable[[BenchShape], float],
    params: Mapping[str, Any] | None = None,
    backward: bool = True,
    cuda_only: tuple[str, ...] = ("triton",),
    gate_max_T: int = 2048,
    sdpa_layers: int = 1,
    gate_tol: Mapping[str, float] | None = None,
) -> Callable[[Callable[[BenchShape], dict[str, Any]]], Callable[[BenchShape], dict[str, Any]]]:
    """Decorator on an entry's input maker: registers a :class:`BenchSpec` under ``name``.

    ``params`` defaults must be ``int``, ``float``, ``bool`` or ``str``: ``subq bench --param k=v``
    parses ``v`` to the type of the default. The decorated function is returned unchanged.
    """
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"bench name must be lower_snake_case, got {name!r}")
    if not modes:
        raise ValueError(f"bench {name!r}: modes must name at least one function")
    params = dict(params or {})
    for key, default in params.items():
        if not isinstance(default, (int, float, bool, str)):
            raise TypeError(
                f"bench {name!r}: params[{key!r}] default must be int, float, bool or str, "
                f"got {type(default).__name__}"
            )
    if gate_max_T < 1:
        raise ValueError(f"bench {name!r}: gate_max_T must be >= 1, got {gate_max_T}")
    if not isinstance(sdpa_layers, int) or sdpa_layers < 0:
        raise ValueError(f"bench {name!r}: sdpa_layers must be an int >= 0, got {sdpa_layers!r}")
    gate_tol = dict(gate_tol or {})
    if unknown := sorted(set(gate_tol) - set(modes)):
        raise ValueError(f"bench {name!r}: gate_tol names modes it does not have: {', '.join(unknown)}")

    def wrap(make_inputs: Callable[[BenchShape], dict[str, Any]]) -> Callable[[BenchShape], dict[str, Any]]:
        if name in BENCHES and BENCHES[name].make_inputs is not make_inputs:
            raise ValueError(f"bench {name!r} is already registered")
        BENCHES[name] = BenchSpec(
            name=name,
            make_inputs=make_inputs,
            modes=dict(modes),
            reference=reference,
            flops=flops,
            bytes=bytes,
            params=params,
            backward=backward,
            cuda_only=tuple(cuda_only),
            gate_max_T=gate_max_T,
            sdpa_layers=sdpa_layers,
            gate_tol=gate_tol,
        )
        return make_inputs

    return wrap


def get_bench(name: str) -> BenchSpec:
    """The entry registered under ``name`` (``KeyError`` listing valid names otherwise)."""
    try:
        return BENCHES[name]
    except KeyError:
        raise KeyError(f"unknown bench entry {name!r}; valid names: {', '.join(list_benches())}") from None


def list_benches() -> list[str]:
    """Sorted names of all registered benchmark entries."""
    return sorted(BENCHES)


def qkv_inputs(s: BenchShape) -> dict[str, Tensor]:
    """``q, k, v: [B, T, H, D]``, standard normal, in the shape's dtype and device."""
    return {name: torch.randn(s.B, s.T, s.H, s.D, dtype=s.dtype, device=s.device) for name in "qkv"}


def qkvo_bytes(s: BenchShape) -> float:
    """Bytes an attention forward must move at least: read ``q, k, v``, write ``o`` (4 x B*T*H*D)."""
    return 4 * s.B * s.T * s.H * s.D * s.dtype.itemsize
