"""Zoology's ``Hybrid`` mixer (``hybrid``): a pattern of sub-mixers over the layers, named by one config.

Followed: ``Hybrid`` in ``HazyResearch/zoology`` (``zoology/mixers/hybrid.py``). The layer at index
``i`` builds ``mixers[i % len(mixers)]`` and *is* that mixer: the sub-mixers are not applied together
inside one layer. The BASED paper's MQAR models (``zoology/experiments/arxiv24_based_figure2/configs.py``:
``Hybrid(configs=[BaseConv(kernel_size=3), Based(feature_dim=f, num_heads=1)])``, 2 layers, no MLP)
are therefore a ``base_conv`` layer followed by a ``based`` layer, and the model's state is the
sum of the two layers' states. ``LMConfig(mixer=[...])`` cycles a list over the layers the same
way; ``hybrid`` names such a pattern in a single mixer config, so that a ``subq zoo`` cell or any
other place that takes one mixer can hold a hybrid::

    MixerConfig(name="hybrid", mixers=[{"name": "base_conv", "kernel_size": 3},
                                       {"name": "based", "feature_dim": 16, "num_heads": 1}])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from torch import Tensor

from subq.layers.base import Mixer, State
from subq.layers.config import MixerConfig
from subq.layers.registry import register_mixer


def sub_mixer_configs(mixers: Any) -> list[MixerConfig]:
    """``mixers`` (names, mappings or :class:`MixerConfig`) as validated configs; the error names the
    index of a bad entry."""
    if isinstance(mixers, str | dict | MixerConfig) or not isinstance(mixers, Sequence) or not mixers:
        raise ValueError(
            "mixers must be a non-empty list of mixer configs such as "
            f"[{{'name': 'base_conv'}}, {{'name': 'based', 'feature_dim': 16}}], got {mixers!r}"
        )
    configs = []
    for i, m in enumerate(mixers):
        try:
            configs.append(m if isinstance(m, MixerConfig) else MixerConfig.model_validate(m))
        except ValidationError as e:
            problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise ValueError(f"mixers[{i}]: {problems}") from None
    return configs


@register_mixer("hybrid")
class Hybrid(Mixer):
    """One sub-mixer per layer, picked by layer index (Zoology's ``Hybrid``): ``mixers[layer_idx % n]``.

    Args:
        d_model: model width.
        mixers: the per-layer pattern, a non-empty list of mixer configs (``{"name": ..., **kwargs}``,
            a registered name, or :class:`~subq.layers.config.MixerConfig`); every entry is validated,
            only the selected one is built.
        layer_idx: selects the sub-mixer; ``None`` (a mixer outside a model) selects ``mixers[0]``.
        causal, mode, device, dtype: passed to the sub-mixer (``mode="auto"`` lets it pick its own
            fast form, Triton included).

    Everything else is the selected sub-mixer's: output, ``state_size(L)``, decoding state (returned
    unchanged) and, per instance, ``supports_decode`` / ``supports_bidirectional``. The class
    attributes say what a hybrid *can* do when its sub-mixers can.
    """

    modes = ("torch", "naive")
    supports_decode = True
    supports_bidirectional = True
    example_kwargs = {
        "mixers": [
            {"name": "sliding_window", "num_heads": 2, "window": 5},
            {"name": "based", "feature_dim": 4, "num_heads": 2},
        ]
    }

    def __init__(
        self,
        d_model: int,
        *,
        mixers: list[dict[str, Any] | MixerConfig],
        causal: bool = True,
        layer_idx: int | None = None,
        mode: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(d_model, causal=causal, layer_idx=layer_idx, mode=mode, device=device, dtype=dtype)
        self.configs = sub_mixer_configs(mixers)
        self.index = (layer_idx or 0) % len(self.configs)
        selected = self.configs[self.index]
        self.mixer: Mixer = selected.cls(
            d_model,
            causal=causal,
            layer_idx=layer_idx,
            mode=mode,
            device=device,
            dtype=dtype,
            **selected.kwargs,
        )
        self.supports_decode = self.mixer.supports_decode
        self.supports_bidirectional = self.mixer.supports_bidirectional

    def _forward(self, x: Tensor) -> Tensor:
        return self.mixer(x)

    # ---- decoding ------------------------------------------------------------------------------------
    def state_size(self, seq_len: int) -> int:
        return self.mixer.state_size(seq_len)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        self._require_decode("init_state")
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def _prefill(self, x: Tensor) -> tuple[Tensor, State]:
        return self.mixer.prefill(x)

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.mixer.step(x_t, state)

    def extra_repr(self) -> str:
        names = ", ".join(c.name for c in self.configs)
        return f"{super().extra_repr()}, pattern=[{names}], selected=mixers[{self.index}]"
