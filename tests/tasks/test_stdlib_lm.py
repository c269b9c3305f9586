"""Next-token windows of the standard library: labels are the inputs shifted by one, every token of the
split's stream is a label once, file-level splits, seeded picks, and a clear error when too few."""

from __future__ import annotations

import pytest
import torch

from subq.tasks import get_task
from subq.tasks.stdlib_lm import lm_windows, stdlib_sources
from subq.tasks.stdlib_mlm import file_split

FILES = 60


def test_windows_shift_by_one_and_cover_the_stream_once():
    stream = torch.arange(23).numpy()
    inputs, labels = lm_windows(stream, 5)
    assert inputs.shape == labels.shape == (4, 5)
    assert (labels[:, :-1] == inputs[:, 1:]).all() and (labels == inputs + 1).all()
    assert labels.reshape(-1).tolist() == list(range(1, 21))  # each label once, the tail dropped


def test_source_task_reads_whole_files_as_bytes():
    cfg = get_task("stdlib_lm")(max_files=FILES, seq_len=64, num_test_examples=8)
    assert cfg.kind == "lm" and cfg.vocab_size == 260
    train, test = cfg.build("train", seed=3), cfg.build("test", seed=3)
    assert len(test) == 8 and len(train) > 100 and train.inputs.shape[1] == 64
    assert torch.equal(train.labels[:, :-1], train.inputs[:, 1:])
    assert torch.equal(cfg.build("train", seed=3).inputs, train.inputs)
    assert not torch.equal(cfg.build("train", seed=4).inputs, train.inputs)  # seeded shuffle

    # the train windows are exactly the train files' bytes, with [CLS] before and [SEP] after each file
    stream = []
    for path, src in stdlib_sources(None, FILES):
        if file_split(path) == "train":
            stream += [257, *src.encode(), 258]
    windows = lm_windows(torch.tensor(stream).numpy(), 64)[0]
    assert len(windows) == len(train)
    got = sorted(map(tuple, train.inputs.tolist()))
    assert got == sorted(map(tuple, windows.tolist()))


def test_docs_text_and_bad_sizes():
    docs = get_task("stdlib_lm")(text="docs", max_files=FILES, seq_len=32, num_test_examples=4)
    ids = docs.build("train").inputs.reshape(-1).tolist()
    text = bytes(b for b in ids if b < 256).decode("utf-8", "replace")
    code = bytes(
        b
        for b in get_task("stdlib_lm")(max_files=FILES).build("train").inputs.reshape(-1).tolist()
        if b < 256
    )
    assert "def __init__(self" not in text and b"def __init__(self" in code  # prose, not code
    with pytest.raises(ValueError, match="windows of 32 tokens in the test split"):
        get_task("stdlib_lm")(max_files=FILES, seq_len=32, num_test_examples=10**7).build("test")
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        get_task("stdlib_lm")(vocab_size=100)
