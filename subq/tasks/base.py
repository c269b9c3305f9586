"""The task contract: a pydantic config with ``build(split, seed) -> SequenceDataset``.

Train and test data of a task never share a seed: :func:`split_seed` maps a base seed to a train
seed in ``[0, 2**31)`` and a test seed in ``[2**31, 2**32)``, as Zoology does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from subq.layers.registry import Registry

Split = Literal["train", "test"]
IGNORE_INDEX = -100
TASKS = Registry("task")


def register_task(name: str):
    return TASKS.register(name)


def get_task(name: str) -> type[TaskConfig]:
    return TASKS.get(name)


def list_tasks() -> list[str]:
    return TASKS.names()


def split_seed(seed: int, split: Split) -> int:
    """Derive the seed of a data split: train in ``[0, 2**31)``, test in ``[2**31, 2**32)``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng(seed)
    train, test = int(rng.integers(0, 2**31)), int(rng.integers(2**31, 2**32))
    return train if split == "train" else test


@dataclass
class SequenceDataset:
    """``inputs: (N, T)`` token ids and ``labels: (N, T)`` with ``-100`` where nothing is supervised."""

    inputs: Tensor
    labels: Tensor

    def __post_init__(self):
        if self.inputs.shape != self.labels.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs and labels must both be (N, T): {tuple(self.inputs.shape)} vs "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i):
        return self.inputs[i], self.labels[i]

    def to(self, device) -> SequenceDataset:
        return SequenceDataset(self.inputs.to(device), self.labels.to(device))


class TaskConfig(BaseModel):
    """Base of task configs: unknown keys are rejected; ``name`` selects the task."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = "lm"  # "lm": next-token labels per position

    name: str
    # subclasses also define ``vocab_size`` and ``seq_len`` fields (the model is sized from them)

    def build(self, split: Split, seed: int = 123) -> SequenceDataset:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name
