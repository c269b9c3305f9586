"""Tasks: typed configs that build ``(inputs, labels)`` datasets. Importing registers them all."""

from subq.tasks import dna, mqar, stdlib_lm, stdlib_mlm  # noqa: F401  (registration)
from subq.tasks.base import (
    IGNORE_INDEX,
    SequenceDataset,
    TaskConfig,
    get_task,
    list_tasks,
    register_task,
    split_seed,
)
from subq.tasks.mqar import MQARConfig, multiquery_ar

__all__ = [
    "IGNORE_INDEX",
    "MQARConfig",
    "SequenceDataset",
    "TaskConfig",
    "get_task",
    "list_tasks",
    "multiquery_ar",
    "register_task",
    "split_seed",
]
