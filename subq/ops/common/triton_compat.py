"""``triton`` and ``triton.language`` for modules that define kernels next to PyTorch forms.

Triton is optional (``pip install subq[gpu]``; CPU-only torch builds do not bring it). Where it is
missing, ``@triton.jit`` leaves the function as it is, so such a module still imports and its
PyTorch forms run; anything that would launch a kernel raises an ``ImportError`` that says what to
install. Modules using this need ``from __future__ import annotations`` (kernel signatures name
``tl.constexpr``).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is not installed

    class _Missing:
        def __init__(self, name: str):
            self._name = name

        def jit(self, fn=None, **_):
            return fn if fn is not None else (lambda f: f)

        def __getattr__(self, attr):
            raise ImportError(
                f"{self._name}.{attr}: Triton is not installed; pip install 'subq[gpu]' (or triton) "
                "for the GPU kernels, or use mode='torch'"
            )

    triton = _Missing("triton")
    tl = _Missing("triton.language")

__all__ = ["tl", "triton"]
