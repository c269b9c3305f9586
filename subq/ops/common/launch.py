"""Low-overhead launches of ``@triton.jit`` kernels.

``kernel[grid](*args, **meta)`` binds the arguments, specializes each one and builds a cache key on
every call: tens of microseconds of host time for a kernel of thirty arguments, which an op of several
launches at a few hundred microseconds of GPU time pays in full. :class:`FastLaunch` makes the first
call of each specialization through that path, keeps the compiled kernel it returns, and launches
later calls with the same specialization through the compiled kernel directly.

The specialization key is what Triton specializes on: a tensor's dtype and whether its address is a
multiple of 16 bytes; an integer's type (32 or 64 bit), whether it is 1 and whether it is a multiple of
16; a constexpr's (and a launch option's) exact value; and the current CUDA device, where the compiled
kernel was loaded. Under the interpreter (``TRITON_INTERPRET=1``), or where the JIT path returns no
compiled kernel, every call takes the JIT path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _spec(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or arg is None or isinstance(arg, (float, str)):
        return arg if not isinstance(arg, float) else float
    if isinstance(arg, int):
        return -(2**31) <= arg < 2**31, arg == 1, arg % 16 == 0
    return type(arg), arg


class FastLaunch:
    """``FastLaunch(kernel)[grid](*args, **meta)`` launches as ``kernel[grid](*args, **meta)``.

    ``args`` are the kernel's leading parameters, positional; ``meta`` names every other parameter
    (constexprs included) and the launch options (``num_warps``, ``num_stages``). Keyword-only
    parameters with defaults in the kernel's signature may be left out.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self._params = None
        self._cuda: bool | None = None
        # key -> (launcher, the trailing parameters' values, or their names where a tensor is among them)
        self._compiled: dict[tuple, tuple[Any, tuple, bool]] = {}

    def __getitem__(self, grid):
        grid = tuple(grid) + (1,) * (3 - len(grid))  # the compiled kernel's launcher reads three sizes
        return lambda *args, **meta: self.launch(grid, args, meta)

    def _trailing(self, n_args: int, meta: dict) -> tuple[str, ...]:
        """Names of the parameters after the ``n_args`` positional ones, in signature order."""
        if self._params is None:
            self._params = inspect.signature(self.kernel.fn).parameters
        names = tuple(self._params)[n_args:]
        missing = [n for n in names if n not in meta and self._params[n].default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"{self.kernel.fn.__name__}: missing arguments {missing}")
        return names

    def launch(self, grid: tuple, args: tuple, meta: dict) -> None:
        if self._cuda is None:
            self._cuda = torch.cuda.is_available()
        # a compiled kernel is loaded on the device that was current when it first ran
        device = torch.cuda.current_device() if self._cuda else None
        # the keywords in the caller's order: a call site that passes them in another order only adds
        # an entry. Constexprs and launch options by value, tensors by _spec (inlined for tensors: a
        # call per argument is a measurable share of a launch)
        specs = tuple(
            [(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else _spec(a) for a in args]
        )
        key = (
            device,
            grid,
            specs,
            tuple([(k, _spec(v) if isinstance(v, torch.Tensor) else v) for k, v in meta.items()]),
        )
        hit = self._compiled.get(key)
        if hit is not None:
            runner, trailing, by_name = hit
            if by_name:  # a tensor passed by keyword: this call's own
                trailing = [meta[n] if n in meta else self._params[n].default for n in trailing]
            runner(*args, *trailing)
            return
        compiled = self.kernel[grid](*args, **meta)
        if type(compiled).__name__ == "CompiledKernel" and hasattr(compiled, "run"):
            # the compiled kernel's launcher for this grid (it reads the current stream per call); the
            # trailing values are the key's, except tensors, which the key holds by specialization only
            names = self._trailing(len(args), meta)
            by_name = any(isinstance(v, torch.Tensor) for v in meta.values())
            values = tuple(meta[n] if n in meta else self._params[n].default for n in names)
            self._compiled[key] = (compiled[grid], names if by_name else values, by_name)


def fast_launch(kernel) -> FastLaunch:
    """:class:`FastLaunch` of ``kernel``."""
    return FastLaunch(kernel)
