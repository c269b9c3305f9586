"""Typed training configs and the file + ``key=value`` loader behind ``subq train``.

    cfg = load_config("configs/mqar-attention.yaml", ["optim.lr=1e-3", "model.d_model=64"])
    cfg = TrainConfig(task={"name": "mqar", "seq_len": 64}, max_steps=1000)   # model sized from the task

Every model rejects unknown keys. The task is chosen by ``task.name`` through the task registry
(``mqar`` when the name is left out); the model's ``vocab_size`` (and ``max_seq_len`` when
``pos_emb="learned"``) default to the task's ``vocab_size`` and ``seq_len``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from subq.models import LMConfig
from subq.tasks import TaskConfig, get_task, list_tasks
from subq.train.seqlen_warmup import SeqLenWarmup, SeqLenWarmupConfig

DEFAULT_TASK = "mqar"

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimConfig(BaseModel):
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``, stepped per optimizer step.

    Weight decay applies to every parameter, biases, norms and embeddings included, as in Zoology
    (``AdamW(model.parameters(), weight_decay=0.1)``). Warmup is ``warmup_steps`` when given, else
    ``warmup_fraction`` of the run's steps.
    """

    model_config = ConfigDict(extra="forbid")

    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.1
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    warmup_steps: NonNegativeInt | None = None
    warmup_fraction: float = Field(0.1, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: PositiveFloat | None = 1.0

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup length of a run of ``total_steps`` optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_fraction * total_steps)


class SeqLenWarmupOptions(BaseModel):
    """Sequence-length warm-up of a training run (HyenaDNA; :mod:`subq.train.seqlen_warmup`).

    Stages start at ``start_len`` tokens and double up to the task's ``seq_len``; each stage before the
    last lasts ``steps_per_stage`` optimizer steps (one number, or one per stage) and the last runs to
    the end. Tokens per step stay ``batch_size * seq_len``: a stage of length ``L`` cuts each of the
    step's ``batch_size`` sequences into ``seq_len / L`` pieces, so a step holds
    ``batch_size * seq_len / L`` sequences of ``L`` tokens. Every stage length must divide ``seq_len``
    (a power-of-two ``seq_len`` and ``start_len`` always do). Evaluation stays at ``seq_len``. Meant
    for next-token tasks, where every piece of a sequence is itself a training example.
    """

    model_config = ConfigDict(extra="forbid")

    start_len: PositiveInt = 64
    steps_per_stage: PositiveInt | tuple[PositiveInt, ...]

    def schedule(self, batch_size: int, seq_len: int) -> SeqLenWarmup:
        """The stages for ``batch_size`` sequences of ``seq_len`` tokens per step (``ValueError`` when
        the stages do not fit ``seq_len``)."""
        try:
            warmup = SeqLenWarmup(
                SeqLenWarmupConfig(
                    start_len=self.start_len,
                    max_len=seq_len,
                    steps_per_stage=self.steps_per_stage,
                    tokens_per_batch=batch_size * seq_len,
                )
            )
        except ValidationError as e:
            raise ValueError(format_validation_error(e, indent="")) from None
        uneven = [s.seq_len for s in warmup.stages if seq_len % s.seq_len]
        if uneven:
            raise ValueError(
                f"stage lengths {uneven} do not divide seq_len={seq_len}: each step's sequences are cut "
                "into whole pieces of the stage length (pick start_len * 2^k dividing seq_len)"
            )
        return warmup


class TrainConfig(BaseModel):
    """One training run: model, task, optimizer, schedule length, evaluation, checkpoints, device.

    Length: ``max_steps`` optimizer steps, or ``epochs`` passes over the training set
    (``ceil(epochs * (N // batch_size))`` steps; the last incomplete batch of each epoch is dropped);
    with both, the run stops at whichever comes first. ``batch_size`` is the global batch, split
    evenly over the ranks under ``torchrun``. ``eval_every`` defaults to once per epoch; the run is
    evaluated at the end too. ``checkpoint_every=None`` saves only at the end (when ``out_dir`` is set);
    ``checkpoints=False`` saves none (``out_dir`` then holds only the config and the metrics).
    ``model`` may name a preset with overrides, ``{preset: based-360m, n_layers: 12}``
    (``LMConfig.from_preset``; the vocabulary still defaults to the task's).
    ``parallel`` is how ranks share the model under ``torchrun``: ``"ddp"`` (a replica per rank) or
    ``"fsdp"`` (parameters, gradients and optimizer state sharded, :mod:`subq.train.distributed`);
    ``comm_dtype`` the dtype of their collectives: ``"fp32"`` (default) or ``"bf16"`` (half the bytes;
    gradients summed in bf16, and under FSDP the parameters gathered in bf16).
    ``cpu_threads`` sets ``torch.set_num_threads`` for the run (None keeps torch's default); 1 is
    fastest for tiny models, whose ops are too small to split. ``seqlen_warmup`` (default off) trains
    on shorter pieces of the sequences first, at constant tokens per step (:class:`SeqLenWarmupOptions`).
    """

    model_config = ConfigDict(extra="forbid")

    model: LMConfig
    task: SerializeAsAny[TaskConfig] = Field(default_factory=lambda: get_task(DEFAULT_TASK)())
    optim: OptimConfig = Field(default_factory=OptimConfig)
    batch_size: PositiveInt = 64
    max_steps: PositiveInt | None = None
    epochs: PositiveFloat | None = None
    eval_every: PositiveInt | None = None
    eval_batch_size: PositiveInt | None = None
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)
    seed: int = 0
    data_seed: int = 123
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    comm_dtype: Literal["fp32", "bf16"] = "fp32"
    cpu_threads: PositiveInt | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    out_dir: str | None = None
    checkpoint_every: PositiveInt | None = None
    checkpoints: bool = True
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    progress: bool = True
    seqlen_warmup: SeqLenWarmupOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _size_model_from_task(cls, data: Any) -> Any:
        """Fill ``model.vocab_size`` (and ``model.max_seq_len`` for learned positions) from the task."""
        if not isinstance(data, dict):
            return data
        model = data.get("model", {})
        if not isinstance(model, dict):
            return data
        sizes = _task_sizes(data.get("task"))
        model = dict(model)
        if "preset" in model:  # {preset: based-360m, ...overrides}: the preset's fields, written out
            preset = model.pop("preset")
            if "vocab_size" not in model and "vocab_size" in sizes:
                model["vocab_size"] = sizes["vocab_size"]
            try:
                model = LMConfig.from_preset(preset, **model).model_dump(mode="json")
            except KeyError as e:
                raise ValueError(f"model.preset: {e.args[0]}") from None
        if "vocab_size" not in model and "vocab_size" in sizes:
            model["vocab_size"] = sizes["vocab_size"]
        if model.get("pos_emb") == "learned" and model.get("max_seq_len") is None and "seq_len" in sizes:
            model["max_seq_len"] = sizes["seq_len"]
        return {**data, "model": model}

    @field_validator("task", mode="before")
    @classmethod
    def _task_from_registry(cls, value: Any) -> Any:
        if isinstance(value, TaskConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"task must be a mapping such as {{name: mqar, seq_len: 64}}, got {value!r}")
        name = value.get("name", DEFAULT_TASK)
        if not isinstance(name, str) or name not in list_tasks():
            raise ValueError(f"unknown task {name!r}; valid names: {', '.join(list_tasks())}")
        try:
            return get_task(name).model_validate({**value, "name": name})
        except ValidationError as e:
            raise ValueError(f"{name}: {format_validation_error(e, indent='')}") from None

    @model_validator(mode="after")
    def _check(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs (with both, the run stops at whichever comes first)")
        vocab, seq_len = getattr(self.task, "vocab_size", None), getattr(self.task, "seq_len", None)
        m = self.model
        if vocab is not None and m.vocab_size < vocab:
            raise ValueError(f"model.vocab_size={m.vocab_size} is smaller than the task's vocab_size={vocab}")
        if m.pos_emb == "learned" and None not in (m.max_seq_len, seq_len) and m.max_seq_len < seq_len:
            raise ValueError(f"model.max_seq_len={m.max_seq_len} is below the task's seq_len={seq_len}")
        if self.seqlen_warmup is not None:
            if seq_len is None:
                raise ValueError(f"seqlen_warmup needs a task with a seq_len; {self.task.name} has none")
            try:
                self.seqlen_warmup.schedule(self.batch_size, seq_len)
            except ValueError as e:
                raise ValueError(f"seqlen_warmup: {e}") from None
        return self


def _task_sizes(task: Any) -> dict[str, Any]:
    """``vocab_size``/``seq_len`` of a task given as a config or a raw dict ({} when unknown)."""
    if isinstance(task, TaskConfig):
        return {k: getattr(task, k) for k in ("vocab_size", "seq_len") if hasattr(task, k)}
    task = {} if task is None else task
    if not isinstance(task, dict):
        return {}
    name = task.get("name", DEFAULT_TASK)
    if not isinstance(name, str) or name not in list_tasks():
        raise ValueError(f"task: unknown task {name!r}; valid names: {', '.join(list_tasks())}")
    fields = get_task(name).model_fields
    sizes = {}
    for key in ("vocab_size", "seq_len"):
        if key in task:
            sizes[key] = task[key]
        elif key in fields and not fields[key].is_required():
            sizes[key] = fields[key].get_default(call_default_factory=True)
    return sizes


# ---- loading ----------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML safe loader that also reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """An override's value as YAML: ``3e-4`` -> float, ``true`` -> bool, ``[1, 2]`` -> list, ``a`` -> str."""
    return yaml.load(text, Loader=_Loader)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping in a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
    text = path.read_text()
    try:
        data = json.loads(text) if suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path} is not valid {suffix[1:].upper()}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level, not {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set a dotted ``key=value`` in the raw config mapping ``data`` (in place).

    Missing intermediate mappings are created; keys the config does not have are caught later by
    validation. A registered-name string on the way (``mixer: attention``) becomes
    ``{name: attention}`` so ``model.mixer.num_heads=2`` works on it; list items are addressed by
    index (``model.mixer.0.window=16``).
    """
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        raise ValueError(f"override {item!r} must look like dotted.key=value, e.g. optim.lr=3e-4")
    node: Any = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                raise ValueError(f"override {item!r}: {where} is not an index of a list of {len(node)} items")
            slot: Any = int(part)
        elif isinstance(node, dict):
            slot = part
        else:
            raise ValueError(f"override {item!r}: {'.'.join(parts[:depth])} is {node!r}, not a mapping")
        if last:
            node[slot] = parse_value(text)
            return
        child = node[slot] if isinstance(node, list) or slot in node else {}
        if isinstance(child, str):
            child = {"name": child}
        node[slot] = child
        node = child


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML/JSON file (or the defaults when ``path`` is None)
    with dotted ``key=value`` overrides applied in order.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) naming any unknown key or invalid value,
    ``ValueError`` for a malformed file or override, ``FileNotFoundError`` for a missing file.
    """
    data = read_config_file(path) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    return TrainConfig.model_validate(data)


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def format_validation_error(error: ValidationError, indent: str = "  ") -> str:
    """One line per problem: ``optim.lr: Input should be greater than 0 (got -1)``."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if "[" not in str(p))  # drop union-member tags
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {_short(err['input'])})" if err["type"] not in ("value_error", "missing") else ""
        lines.append(f"{indent}{loc + ': ' if loc else ''}{msg}{got}")
    return "\n".join(lines) if indent else "; ".join(lines)


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
