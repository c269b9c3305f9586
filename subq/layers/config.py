"""Typed configs that name a registered mixer plus its own keyword arguments.

``MixerConfig(name="sliding_window", window=32)`` (or just ``"sliding_window"``) is validated against
the registry: the name must exist and every extra key must be a keyword argument of that mixer.
Arguments the model sets itself (``d_model``, ``causal``, ``layer_idx``, ``device``, ``dtype``) are
rejected here.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from subq.layers.registry import CHANNEL_MIXERS, MIXERS, Registry

_SET_BY_MODEL = {"d_model", "causal", "layer_idx", "device", "dtype"}


def _accepted_kwargs(cls: type) -> set[str] | None:
    """Keyword arguments of ``cls.__init__``, following ``**kwargs`` up to the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


class _NamedConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    registry: ClassVar[Registry]

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self):
        registry = type(self).registry
        if self.name not in registry:
            raise ValueError(
                f"unknown {registry.kind} {self.name!r}; valid names: {', '.join(registry.names())}"
            )
        cls = registry.get(self.name)
        accepted = _accepted_kwargs(cls) - _SET_BY_MODEL
        for key in self.kwargs:
            if key in _SET_BY_MODEL:
                raise ValueError(f"{key!r} is set by the model, not in the {registry.kind} config")
            if key not in accepted:
                raise ValueError(
                    f"{registry.kind} {self.name!r} has no argument {key!r}; "
                    f"it accepts: {', '.join(sorted(accepted))}"
                )
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        """The mixer's own keyword arguments (everything but ``name``)."""
        return dict(self.__pydantic_extra__ or {})

    @property
    def cls(self) -> type:
        return type(self).registry.get(self.name)


class MixerConfig(_NamedConfig):
    """A sequence mixer by registered name plus its keyword arguments."""

    registry: ClassVar[Registry] = MIXERS

    def build(
        self, d_model: int, *, causal: bool = True, layer_idx: int | None = None, device=None, dtype=None
    ):
        return self.cls(
            d_model, causal=causal, layer_idx=layer_idx, device=device, dtype=dtype, **self.kwargs
        )


class ChannelMixerConfig(_NamedConfig):
    """A channel mixer by registered name plus its keyword arguments."""

    registry: ClassVar[Registry] = CHANNEL_MIXERS

    def build(self, d_model: int, *, device=None, dtype=None):
        return self.cls(d_model, device=device, dtype=dtype, **self.kwargs)
