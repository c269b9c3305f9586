"""LoRA (Hu et al. 2021): rank-``r`` adapters ``W x + (alpha / r) B A x`` on chosen linear layers.

    model = apply_lora(model, targets=["query", "value"], r=8, alpha=16)   # BERT; subq: ["qkv_proj", ...]
    ...train...
    save_lora(model, "adapter/")          # adapter_config.json + adapter_model.safetensors, peft's format
    load_lora(fresh_model, "adapter/")    # also loads what peft's save_pretrained wrote
    merge_lora(model)                     # W <- W + (alpha / r) B A; unmerge_lora undoes it

Targets are matched like peft's ``target_modules``: a list of module-name suffixes (``"query"`` matches
``encoder.layer.0.attention.self.query``) or one string, a regular expression matched against the full
name. Applying LoRA freezes every other parameter. The saved files use peft's names
(``base_model.model.<module>.lora_A.weight``), so ``peft.PeftModel.from_pretrained`` loads an adapter
saved from a Hugging Face model, and :func:`load_lora` loads peft's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# ---- finding, replacing and freezing modules (shared with subq.peft.prefix) ---------------------------


def _name_matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _summarise(names: Sequence[str], limit: int = 40) -> str:
    """Module names with layer indices folded (``encoder.layer.*.attention.self.query``), in order."""
    folded = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", n) for n in names))
    more = f", ... ({len(folded) - limit} more)" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more if folded else "(none)"


def find_target_modules(
    model: nn.Module,
    targets: Sequence[str] | str | None,
    supported: Callable[[nn.Module], bool],
    *,
    kind: str,
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules that ``targets`` select; ``None`` selects every supported one.

    A module that an adapter wrapper holds as its ``base_layer`` is not a candidate (its wrapper is).
    Raises ``ValueError`` listing the supported module names when a target matches nothing, and
    ``TypeError`` when a target matches a module of an unsupported type.
    """
    candidates = [(n, m) for n, m in model.named_modules() if n and not _name_matches(n, "base_layer")]
    supported_names = [n for n, m in candidates if supported(m)]
    if targets is None:
        if not supported_names:
            raise ValueError(f"no {kind} found in {type(model).__name__}")
        return [(n, m) for n, m in candidates if supported(m)]
    if isinstance(targets, str):
        chosen = [(n, m) for n, m in candidates if re.fullmatch(targets, n)]
        if not chosen:
            raise ValueError(
                f"target pattern {targets!r} matches no module; {kind}s in this model: "
                f"{_summarise(supported_names)}"
            )
    else:
        if not targets:
            raise ValueError("targets is empty")
        chosen = []
        for target in targets:
            hits = [(n, m) for n, m in candidates if _name_matches(n, target)]
            if not hits:
                raise ValueError(
                    f"target {target!r} matches no module; "
                    f"{kind}s in this model: {_summarise(supported_names)}"
                )
            chosen += [h for h in hits if h not in chosen]
    for name, module in chosen:
        if not supported(module):
            raise TypeError(f"target module {name!r} is a {type(module).__name__}, not a supported {kind}")
    return chosen


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` is."""
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def _modules_to_save(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    found = []
    for target in names:
        hits = [(n, m) for n, m in model.named_modules() if n and _name_matches(n, target)]
        if not hits:
            raise ValueError(
                f"modules_to_save entry {target!r} matches no module; top-level modules: "
                f"{', '.join(n for n, _ in model.named_children())}"
            )
        found += hits
    return found


def freeze_base(model: nn.Module, modules_to_save: Sequence[str] = ()) -> None:
    """``requires_grad`` only for adapter parameters (LoRA, prefix, NTK) and the modules named in
    ``modules_to_save`` (module-name suffixes); every other parameter is frozen."""
    keep = {
        id(p) for m in model.modules() if hasattr(m, "adapter_parameters") for p in m.adapter_parameters()
    }
    keep |= {id(p) for _, m in _modules_to_save(model, modules_to_save) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters with ``requires_grad`` (what an adapter trains)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- the layer ---------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """``y = base_layer(x) + scaling * lora_B(lora_A(dropout(x)))``, ``scaling = alpha / r``.

    Args:
        base_layer: the frozen ``nn.Linear`` (``W: [out, in]``).
        r: rank; ``lora_A.weight: [r, in]`` (Kaiming-uniform init), ``lora_B.weight: [out, r]`` (zeros,
            so the adapted layer starts equal to the base).
        alpha: ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the adapter's input (default 0).

    ``merge()`` folds ``scaling * B A`` into ``W``; while merged the forward is the base layer alone.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora=False):
        super().__init__()
        self.base_layer = base_layer
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        fk = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **fk)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **fk)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # the base layer's attributes, for code that reads them (``out_proj.weight.device``)
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A.weight, self.lora_B.weight]

    def delta_weight(self) -> Tensor:
        """``scaling * B A``: ``[out, in]``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged")
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


# ---- applying to a model -----------------------------------------------------------------------------


@dataclass
class LoRAConfig:
    """What :func:`apply_lora` was given, under peft's ``LoraConfig`` field names."""

    target_modules: list[str] | str
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    modules_to_save: list[str] = field(default_factory=list)
    use_rslora: bool = False

    def to_peft(self, base_model_name_or_path: str | None = None) -> dict:
        """The ``adapter_config.json`` that peft's ``LoraConfig`` reads."""
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": base_model_name_or_path,
            "inference_mode": True,
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "use_dora": False,
            **asdict(self),
            "modules_to_save": self.modules_to_save or None,
        }

    @classmethod
    def from_peft(cls, cfg: dict) -> LoRAConfig:
        """Read peft's ``adapter_config.json``; features this module does not implement are errors."""
        if cfg.get("peft_type") != "LORA":
            raise ValueError(f"not a LoRA adapter: peft_type={cfg.get('peft_type')!r}")
        unsupported = {
            "use_dora": lambda v: bool(v),
            "fan_in_fan_out": lambda v: bool(v),
            "bias": lambda v: v not in (None, "none"),
            "lora_bias": lambda v: bool(v),
            "rank_pattern": lambda v: bool(v),
            "alpha_pattern": lambda v: bool(v),
            "layers_to_transform": lambda v: v is not None,
            "target_parameters": lambda v: bool(v),
            "trainable_token_indices": lambda v: bool(v),
            "layer_replication": lambda v: bool(v),
        }
        bad = [f"{k}={cfg[k]!r}" for k, test in unsupported.items() if k in cfg and test(cfg[k])]
        if bad:
            raise NotImplementedError(
                f"adapter uses LoRA features subq.peft does not implement: {', '.join(bad)}"
            )
        targets = cfg["target_modules"]
        return cls(
            target_modules=targets if isinstance(targets, str) else list(targets),
            r=int(cfg["r"]),
            lora_alpha=float(cfg["lora_alpha"]),
            lora_dropout=float(cfg.get("lora_dropout") or 0.0),
            modules_to_save=list(cfg.get("modules_to_save") or []),
            use_rslora=bool(cfg.get("use_rslora", False)),
        )


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, LoRALinear))


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(
    model: nn.Module,
    targets: Sequence[str] | str,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    modules_to_save: Sequence[str] = (),
    use_rslora: bool = False,
) -> nn.Module:
    """Replace the ``nn.Linear`` layers that ``targets`` select by :class:`LoRALinear` and freeze the rest.

    Args:
        model: a subq or Hugging Face model; changed in place and returned.
        targets: module-name suffixes, or one regular expression matched against full names. BERT:
            ``"query"``, ``"key"``, ``"value"``, ``"attention.output.dense"`` (W_O), ``"intermediate.dense"``
            and ``"output.dense"`` (the MLP; this suffix also matches ``attention.output.dense``). subq:
            ``"qkv_proj"`` (W_Q, W_K, W_V fused: one adapter spans all three), ``"out_proj"``, ``"fc1"``,
            ``"gate_up"``, ``"fc2"``.
        r: rank (default 8). alpha: ``scaling = alpha / r`` (default 16). dropout: on the adapter input.
        modules_to_save: module-name suffixes (e.g. ``"classifier"``) trained in full and saved with
            the adapter, as peft's ``modules_to_save``.
        use_rslora: ``scaling = alpha / sqrt(r)`` (peft's rank-stabilised LoRA).

    The config is kept in ``model.lora_config`` for :func:`save_lora`.
    """
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    config = LoRAConfig(
        target_modules=targets if isinstance(targets, str) else list(targets),
        r=r,
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        modules_to_save=list(modules_to_save),
        use_rslora=use_rslora,
    )
    old: LoRAConfig | None = getattr(model, "lora_config", None)
    if old is not None:
        if (old.r, old.lora_alpha, old.lora_dropout, old.use_rslora) != (r, alpha, dropout, use_rslora):
            raise ValueError(
                f"the model already has LoRA with r={old.r}, alpha={old.lora_alpha}, "
                f"dropout={old.lora_dropout}, use_rslora={old.use_rslora}; "
                "one model holds one LoRA configuration"
            )
        if isinstance(old.target_modules, str) or isinstance(config.target_modules, str):
            raise ValueError("cannot extend a LoRA given by a target regular expression; apply it once")
        config.target_modules = list(dict.fromkeys(old.target_modules + config.target_modules))
        config.modules_to_save = list(dict.fromkeys(old.modules_to_save + config.modules_to_save))
    for name, module in find_target_modules(model, targets, _is_linear, kind="linear layer"):
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name!r} already has a LoRA adapter")
        replace_module(model, name, LoRALinear(module, r, alpha, dropout, use_rslora))
    model.lora_config = config
    freeze_base(model, config.modules_to_save)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W <- W + scaling B A``); the forward is unchanged."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers")
    for _, layer in layers:
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (``W <- W - scaling B A``, exact up to float rounding)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers")
    for _, layer in layers:
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors by parameter name: every ``lora_A``/``lora_B`` weight and the parameters of
    the ``modules_to_save``."""
    config: LoRAConfig | None = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapter (use apply_lora or load_lora)")
    keep = {id(p) for _, m in lora_layers(model) for p in m.adapter_parameters()}
    keep |= {id(p) for _, m in _modules_to_save(model, config.modules_to_save) for p in m.parameters()}
    return {n: p.detach() for n, p in model.named_parameters() if id(p) in keep}


def save_lora(model: nn.Module, directory: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (peft's names) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + n: t.contiguous() for n, t in lora_state_dict(model).items()}
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    (directory / CONFIG_NAME).write_text(json.dumps(model.lora_config.to_peft(base_name), indent=2) + "\n")
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def _expected_shapes(model: nn.Module, config: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the adapter ``config`` would put on ``model``."""
    if lora_layers(model):
        old: LoRAConfig | None = getattr(model, "lora_config", None)
        if old is not None and (old.r, old.lora_alpha, old.use_rslora) != (
            config.r,
            config.lora_alpha,
            config.use_rslora,
        ):
            raise ValueError(
                f"the model's LoRA has r={old.r}, alpha={old.lora_alpha}, use_rslora={old.use_rslora}; "
                f"the adapter has r={config.r}, alpha={config.lora_alpha}, use_rslora={config.use_rslora}"
            )
        return {n: tuple(t.shape) for n, t in lora_state_dict(model).items()}
    shapes = {}
    for name, module in find_target_modules(model, config.target_modules, _is_linear, kind="linear layer"):
        shapes[f"{name}.lora_A.weight"] = (config.r, module.in_features)
        shapes[f"{name}.lora_B.weight"] = (module.out_features, config.r)
    for name, module in _modules_to_save(model, config.modules_to_save):
        shapes.update({f"{name}.{n}": tuple(p.shape) for n, p in module.named_parameters()})
    return shapes


def load_lora(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a LoRA adapter saved by :func:`save_lora` or by peft's ``save_pretrained``.

    Applies LoRA with the saved config first when the model has none. Every tensor is checked before
    anything changes: a missing, unexpected or differently shaped tensor is a ``ValueError`` naming it.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} does not exist (a LoRA adapter directory holds {name})"
            )
    config = LoRAConfig.from_peft(json.loads((directory / CONFIG_NAME).read_text()))
    raw = load_file(str(directory / WEIGHTS_NAME))
    tensors = {}
    for key, t in raw.items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(
                f"adapter tensor {key!r} does not start with {PEFT_PREFIX!r} (not peft's format)"
            )
        tensors[key[len(PEFT_PREFIX) :]] = t
    expected = _expected_shapes(model, config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "adapter does not fit this model: "
            + "; ".join(
                s
                for s in (
                    f"missing tensors {missing}" if missing else "",
                    f"tensors the model has no place for {unexpected}" if unexpected else "",
                )
                if s
            )
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"adapter tensor {key!r} has shape {tuple(tensors[key].shape)} but the model expects {shape}"
            )
    if not lora_layers(model):
        apply_lora(
            model,
            config.target_modules,
            config.r,
            config.lora_alpha,
            config.lora_dropout,
            modules_to_save=config.modules_to_save,
            use_rslora=config.use_rslora,
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, t in tensors.items():
            params[key].copy_(t)
    return model
