"""Standard-library text tasks: docstrings and comments read with ast/tokenize, file-level splits,
BERT's 80/10/10 masking at a fixed seed, the docstring-vs-comment classification, and a tiny
M2-BERT pretraining + fine-tuning run that lowers its losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subq.models import Encoder
from subq.tasks import get_task
from subq.tasks.base import IGNORE_INDEX
from subq.tasks.stdlib_mlm import (
    ByteTokenizer,
    StdlibClassificationConfig,
    StdlibMLMConfig,
    _file_texts,
    file_split,
    mask_tokens,
    stdlib_texts,
)
from subq.train.encoder_tasks import classification_accuracy, finetune_classifier, pretrain_mlm

FILES = 40


def test_reads_docstrings_and_comment_blocks():
    src = '"""Module doc."""\n# first line\n# second line\nx = 1  # trailing\n\ndef f():\n    """F doc."""\n'
    docs, comments = _file_texts(src)
    assert docs == ["Module doc.", "F doc."]
    assert comments == ["first line second line trailing"]
    texts = stdlib_texts(None, FILES)
    assert len(texts) == FILES and sum(len(d) + len(c) for _, d, c in texts) > 100
    splits = {file_split(p) for p, _, _ in stdlib_texts(None, 400)}
    assert splits == {"train", "test"}


def test_mlm_masking_is_bert_80_10_10():
    tok = ByteTokenizer()
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (400, 64))
    inputs[:, 0], inputs[:, -1] = tok.cls_token_id, tok.sep_token_id
    masked, labels = mask_tokens(inputs, rng, tok, 0.15)
    chosen = labels != IGNORE_INDEX
    assert abs(chosen[:, 1:-1].mean() - 0.15) < 0.01 and not chosen[:, [0, -1]].any()
    assert (labels[chosen] == inputs[chosen]).all()
    as_mask = (masked[chosen] == tok.mask_token_id).mean()
    kept = (masked[chosen] == inputs[chosen]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 + 1 / 256
    assert (masked[~chosen] == inputs[~chosen]).all()


def test_mlm_task_is_seeded_and_splits_differ():
    cfg = get_task("stdlib_mlm")(max_files=FILES, seq_len=32, num_train_examples=30, num_test_examples=3)
    assert cfg.vocab_size == 260 and cfg.kind == "mlm"
    a, b = cfg.build("train", seed=1), cfg.build("train", seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert a.inputs.shape == (30, 32) and (a.inputs[:, 0] == 257).all() and (a.inputs[:, -1] == 258).all()
    assert (a.labels != IGNORE_INDEX).any()
    assert not torch.equal(cfg.build("train", seed=2).inputs, a.inputs)
    with pytest.raises(ValueError, match="windows available"):
        StdlibMLMConfig(max_files=2, seq_len=512, num_train_examples=10_000).build("train")
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        StdlibMLMConfig(vocab_size=100)


def test_classification_task_is_balanced():
    cfg = StdlibClassificationConfig(max_files=FILES, seq_len=32, num_train_examples=40, num_test_examples=4)
    d = cfg.build("train")
    y = d.labels[:, -1]
    assert y.tolist().count(0) == 20 and y.tolist().count(1) == 20
    assert (d.labels[:, :-1] == IGNORE_INDEX).all()


def test_tiny_m2_bert_pretrains_and_finetunes(one_thread):
    T = 32
    mlm = StdlibMLMConfig(max_files=FILES, seq_len=T, num_train_examples=200, num_test_examples=4)
    cls = StdlibClassificationConfig(max_files=FILES, seq_len=T, num_train_examples=200, num_test_examples=40)
    torch.manual_seed(0)
    enc = Encoder.from_preset("m2_bert-tiny", vocab_size=mlm.vocab_size, max_seq_len=T, num_classes=2)
    losses = pretrain_mlm(enc, mlm.build("train"), steps=60, batch_size=16, lr=3e-3)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5, losses
    ft = finetune_classifier(enc, cls.build("train"), steps=40, batch_size=16, lr=1e-3)
    assert np.mean(ft[-10:]) < np.mean(ft[:10]), ft
    acc = classification_accuracy(enc, cls.build("test"))
    assert 0.0 <= acc <= 1.0
