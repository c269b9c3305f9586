"""Multi-query associative recall (MQAR), generated exactly as Zoology's ``multiquery_ar``.

Each example is ``k1 v1 k2 v2 ... kK vK`` followed by queries: every key appears once more, after a
power-law distributed gap, and the label at the position holding the repeated key is its value;
every other label is -100. The numpy random stream (``np.random.RandomState(seed)``; keys, then
values, then gaps, one ``choice`` call per example) is Zoology's, so a seed gives Zoology's data.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from subq.tasks.base import IGNORE_INDEX, SequenceDataset, Split, TaskConfig, register_task, split_seed


def multiquery_ar(
    vocab_size: int,
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    seed: int,
    *,
    power_a: float = 0.01,
    num_passes: int = 1,
    random_non_queries: bool = False,
) -> SequenceDataset:
    """Generate ``num_examples`` MQAR sequences of ``seq_len`` tokens (Zoology's generator).

    Keys come from ``[1, V/2)``, values from ``[V/2, V)``; gap ``g`` of a query has probability
    ``∝ a (g+1)^(a-1)``. With ``random_non_queries`` the filler zeros become uniform random tokens
    (drawn from a torch generator seeded with ``seed``, where Zoology uses torch's global RNG).

    Zoology also asserts ``vocab_size > seq_len``, which its own documented example (V=12, L=16)
    violates; :class:`MQARConfig` enforces it, this function only needs room for the keys.
    """
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} exceeds the {vocab_size // 2 - 1} keys of vocab_size={vocab_size}"
        )
    if 2 * num_kv_pairs * num_passes + 2 * num_kv_pairs > seq_len:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} too large for seq_len={seq_len}: need 2*K*(num_passes+1) <= seq_len"
        )
    rs = np.random.RandomState(seed)
    context = 2 * num_kv_pairs * num_passes
    key_choices = np.arange(1, vocab_size // 2)
    value_choices = np.arange(vocab_size // 2, vocab_size)
    keys = np.stack([rs.choice(key_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)])
    values = np.stack(
        [rs.choice(value_choices, replace=False, size=num_kv_pairs) for _ in range(num_examples)]
    )

    kvs = np.zeros((num_examples, 2 * num_kv_pairs), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values
    kvs = np.tile(kvs, (1, num_passes))

    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gap_choices = np.arange(space)
    gaps = np.stack(
        [rs.choice(gap_choices, replace=False, p=p, size=num_kv_pairs) for _ in range(num_examples)]
    )

    queries = np.zeros((num_examples, seq_len - context + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, values=keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((num_examples, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context + 1, values=values, axis=1)

    inputs, labels = torch.from_numpy(examples[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy())
    if random_non_queries:
        g = torch.Generator().manual_seed(seed)
        filler = torch.randint(vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, filler, inputs)
    return SequenceDataset(inputs, labels)


@register_task("mqar")
class MQARConfig(TaskConfig):
    """MQAR task config (Zoology defaults: ``V=8192``, power law ``a=0.01``, filler zeros)."""

    name: Literal["mqar"] = "mqar"
    vocab_size: PositiveInt = 8192
    seq_len: PositiveInt = 64
    num_kv_pairs: PositiveInt = 4
    num_train_examples: PositiveInt = 100_000
    num_test_examples: PositiveInt = 3_000
    power_a: float = Field(0.01, gt=0.0)
    num_passes: PositiveInt = 1
    random_non_queries: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even, got {self.seq_len}")
        if self.vocab_size <= self.seq_len:
            raise ValueError(f"vocab_size ({self.vocab_size}) must exceed seq_len ({self.seq_len})")
        need = 2 * self.num_kv_pairs * (self.num_passes + 1)
        if need > self.seq_len:
            raise ValueError(
                f"num_kv_pairs={self.num_kv_pairs} too large for seq_len={self.seq_len} "
                f"(needs 2*K*(num_passes+1) = {need} <= seq_len)"
            )
        return self

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        """The ``split`` of this task for base seed ``seed`` (cached: sweeps rebuild the same data)."""
        return _build_cached(self, split, seed)

    def describe(self) -> str:
        return f"mqar(L={self.seq_len}, K={self.num_kv_pairs}, V={self.vocab_size})"


@functools.lru_cache(maxsize=4)
def _build_cached(cfg: MQARConfig, split: Split, seed: int) -> SequenceDataset:
    n = cfg.num_train_examples if split == "train" else cfg.num_test_examples
    return multiquery_ar(
        cfg.vocab_size,
        n,
        cfg.seq_len,
        cfg.num_kv_pairs,
        split_seed(seed, split),
        power_a=cfg.power_a,
        num_passes=cfg.num_passes,
        random_non_queries=cfg.random_non_queries,
    )
