"""MQAR: Zoology's generator, position by position, and the config's validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from subq.tasks import IGNORE_INDEX, MQARConfig, get_task, list_tasks, multiquery_ar, split_seed

# Zoology's docstring example (V=12, K=2, L=16, filler zeros); numpy seed 7018 draws exactly it
DOC_INPUTS = [2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0]
DOC_LABELS = [-100] * 16
DOC_LABELS[6], DOC_LABELS[12] = 7, 8


def test_reproduces_zoology_documented_example():
    data = multiquery_ar(vocab_size=12, num_examples=1, seq_len=16, num_kv_pairs=2, seed=7018)
    assert data.inputs[0].tolist() == DOC_INPUTS
    assert data.labels[0].tolist() == DOC_LABELS


@pytest.mark.parametrize("L,K", [(64, 4), (128, 8), (256, 16)])
def test_structure(L, K):
    V = 8192
    data = multiquery_ar(V, 200, L, K, seed=1)
    x, y = data.inputs, data.labels
    assert x.shape == y.shape == (200, L)
    supervised = y != IGNORE_INDEX
    assert (supervised.sum(1) == K).all(), "exactly K supervised positions per example"
    for i in range(20):
        keys, values = x[i, 0 : 2 * K : 2], x[i, 1 : 2 * K : 2]
        assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
        assert len(set(keys.tolist())) == K and len(set(values.tolist())) == K
        pos = supervised[i].nonzero()[:, 0]
        assert (pos >= 2 * K).all() and (pos % 2 == 0).all()
        # the label at a query position is the value paired with the key sitting there
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        assert [pairs[k] for k in x[i, pos].tolist()] == y[i, pos].tolist()
        # filler is zero when random_non_queries is off
        rest = torch.ones(L, dtype=torch.bool)
        rest[: 2 * K] = False
        rest[pos] = False
        assert (x[i, rest] == 0).all()


def test_power_law_favours_short_gaps():
    data = multiquery_ar(8192, 2000, 256, 4, seed=3)
    pos = (data.labels != IGNORE_INDEX).nonzero()[:, 1]
    gaps = (pos - 8) // 2
    # p(g) ~ 1/(g+1): gap 0 is ~100x likelier than any gap near 100, i.e. ~10x all of 100..109
    assert (gaps == 0).sum() > 3 * ((gaps >= 100) & (gaps < 110)).sum() > 0


def test_random_non_queries_replaces_filler_only():
    a = multiquery_ar(512, 50, 64, 4, seed=5)
    b = multiquery_ar(512, 50, 64, 4, seed=5, random_non_queries=True)
    kept = a.inputs != 0
    assert torch.equal(a.inputs[kept], b.inputs[kept]) and torch.equal(a.labels, b.labels)
    assert (b.inputs[~kept] != 0).float().mean() > 0.9


def test_deterministic_and_splits_disjoint():
    cfg = MQARConfig(vocab_size=1024, seq_len=64, num_kv_pairs=4, num_train_examples=64, num_test_examples=64)
    assert torch.equal(cfg.build("train").inputs, cfg.build("train").inputs)
    assert not torch.equal(cfg.build("train").inputs, cfg.build("test").inputs)
    for seed in range(50):
        assert split_seed(seed, "train") < 2**31 <= split_seed(seed, "test") < 2**32


def test_registry():
    assert "mqar" in list_tasks() and get_task("mqar") is MQARConfig
    with pytest.raises(KeyError, match="valid names: .*mqar"):
        get_task("nope")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(seq_len=-4), "seq_len"),
        (dict(seq_len=64, num_kv_pairs=20), "num_kv_pairs"),
        (dict(vocab_size=32, seq_len=64), "vocab_size"),
        (dict(seq_len=63), "seq_len"),
        (dict(num_train_examples=0), "num_train_examples"),
        (dict(bogus=1), "bogus"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        MQARConfig(**kwargs)
