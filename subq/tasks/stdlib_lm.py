"""Next-token prediction on real text that ships with every machine: the Python standard library.

    cfg = get_task("stdlib_lm")(seq_len=2048)             # the source files, UTF-8 bytes
    cfg = get_task("stdlib_lm")(text="docs", tokenizer="wordpiece")   # docstrings + comments

``text="source"`` (the default) reads every ``.py`` file of ``sysconfig.get_paths()["stdlib"]`` whole
(test suites, ``site-packages`` and IDLE left out, as in :mod:`subq.tasks.stdlib_mlm`); ``"docs"``
reads only their docstrings and comment blocks. Files, not windows, are split: a file is in the test
split when ``crc32(relative path) % 10 == 0``, so no text is in both splits.

The split's files, in path order, become one token stream ``[CLS] file_1 [SEP] [CLS] file_2 [SEP] ...``
cut into windows of ``seq_len + 1`` tokens that overlap by one: ``inputs = w[:-1]``, ``labels = w[1:]``,
so every token of the stream but the first is a label exactly once. ``num_train_examples`` /
``num_test_examples`` pick that many windows at random (seeded from the split's seed; ``None`` keeps
them all, shuffled). The tokenizers are those of :mod:`subq.tasks.stdlib_mlm`: ``"bytes"`` (260 ids)
or ``"wordpiece"`` (30,522 ids, the ``hf`` extra). The text depends on the Python version: the
CPython 3.11 library's sources are about 11 MB in ~670 files, ~5,000 windows of 2,048 bytes.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from subq.tasks.base import SequenceDataset, Split, TaskConfig, register_task, split_seed
from subq.tasks.stdlib_mlm import (
    Tokenizer,
    file_split,
    fill_vocab_size,
    get_tokenizer,
    stdlib_files,
    stdlib_root,
    stdlib_texts,
)

Text = Literal["source", "docs"]


@functools.lru_cache(maxsize=2)
def stdlib_sources(stdlib: str | None = None, max_files: int | None = None) -> tuple[tuple[str, str], ...]:
    """``(relative path, source)`` of the standard library's ``.py`` files, sorted by path (the first
    ``max_files`` of them when given). Files that are not UTF-8 are skipped."""
    root = stdlib_root(stdlib)
    out = []
    for path in stdlib_files(root):
        if max_files is not None and len(out) >= max_files:
            break
        try:
            out.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return tuple(out)


@register_task("stdlib_lm")
class StdlibLMConfig(TaskConfig):
    """Causal LM windows of the standard library's sources or docstrings (see the module docstring)."""

    name: Literal["stdlib_lm"] = "stdlib_lm"
    text: Text = "source"
    tokenizer: Tokenizer = "bytes"
    vocab_size: PositiveInt | None = None
    seq_len: int = Field(512, ge=2)
    max_files: PositiveInt | None = None
    num_train_examples: PositiveInt | None = None
    num_test_examples: PositiveInt | None = 256

    @model_validator(mode="after")
    def _check_vocab(self):
        return fill_vocab_size(self)

    def documents(self, split: Split) -> list[str]:
        """The texts of the files in ``split``, in path order (one per file)."""
        if self.text == "source":
            return [src for path, src in stdlib_sources(None, self.max_files) if file_split(path) == split]
        return [
            "\n\n".join(docs + comments)
            for path, docs, comments in stdlib_texts(None, self.max_files)
            if file_split(path) == split and docs + comments
        ]

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        return _lm_cached(self, split, seed)

    def describe(self) -> str:
        return f"stdlib_lm({self.text}, {self.tokenizer}, T={self.seq_len})"


def lm_windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into ``(N, seq_len)`` inputs and next-token labels: windows of ``seq_len + 1``
    tokens at stride ``seq_len`` (a trailing piece shorter than a window is dropped)."""
    n = (len(stream) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    rows = stream[idx]
    return rows[:, :-1], rows[:, 1:]


@functools.lru_cache(maxsize=4)
def _lm_cached(cfg: StdlibLMConfig, split: Split, seed: int) -> SequenceDataset:
    tok = get_tokenizer(cfg.tokenizer)
    ids: list[int] = []
    for doc in cfg.documents(split):
        ids.append(tok.cls_token_id)
        ids.extend(tok.encode(doc))
        ids.append(tok.sep_token_id)
    inputs, labels = lm_windows(np.asarray(ids, dtype=np.int64), cfg.seq_len)
    want = cfg.num_train_examples if split == "train" else cfg.num_test_examples
    if want is not None and want > len(inputs):
        raise ValueError(
            f"stdlib_lm: only {len(inputs)} windows of {cfg.seq_len} tokens in the {split} split, {want} "
            f"requested (lower num_{split}_examples or seq_len, or leave it None for all of them)"
        )
    order = np.random.default_rng(split_seed(seed, split)).permutation(len(inputs))[:want]
    return SequenceDataset(torch.from_numpy(inputs[order]), torch.from_numpy(labels[order]))
