"""Name registries for sequence mixers and channel mixers.

Configs refer to mixers by registered name (``{"name": "attention", "num_heads": 4}``), never by
import path. A registry is a plain dict guarded by helpful errors::

    @register_mixer("attention")
    class Attention(Mixer): ...

    get_mixer("attention")      # -> the class
    list_mixers()               # -> sorted names
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry:
    """A name -> class table with errors that list the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not name.replace("_", "").isalnum() or name != name.lower():
            raise ValueError(f"{self.kind} name must be lower_snake_case, got {name!r}")

        def wrap(cls: T) -> T:
            if name in self._table and self._table[name] is not cls:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {self._table[name].__qualname__}"
                )
            self._table[name] = cls
            cls.name = name
            return cls

        return wrap

    def get(self, name: str) -> type:
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table


MIXERS = Registry("mixer")
CHANNEL_MIXERS = Registry("channel mixer")


def register_mixer(name: str):
    """Class decorator: register a :class:`~subq.layers.base.Mixer` subclass under ``name``."""
    return MIXERS.register(name)


def get_mixer(name: str) -> type:
    """The mixer class registered under ``name`` (``KeyError`` listing valid names otherwise)."""
    return MIXERS.get(name)


def list_mixers() -> list[str]:
    """Sorted names of all registered sequence mixers."""
    return MIXERS.names()


def register_channel_mixer(name: str):
    """Class decorator: register a channel mixer (``[B, T, d_model] -> [B, T, d_model]``)."""
    return CHANNEL_MIXERS.register(name)


def get_channel_mixer(name: str) -> type:
    return CHANNEL_MIXERS.get(name)


def list_channel_mixers() -> list[str]:
    return CHANNEL_MIXERS.names()
