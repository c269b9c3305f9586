"""Tiny training configs shared by the trainer tests (a run of a few hundred steps takes about a second)."""

from __future__ import annotations

import pytest

from subq.train import TrainConfig


def tiny_config(**overrides) -> TrainConfig:
    """Attention (d_model 32, 2 layers) on MQAR with V=64, L=16, K=2, one CPU thread."""
    data = dict(
        task=dict(
            name="mqar",
            vocab_size=64,
            seq_len=16,
            num_kv_pairs=2,
            num_train_examples=512,
            num_test_examples=128,
        ),
        model=dict(d_model=32, n_layers=2, mixer={"name": "attention"}, channel_mixer="none"),
        optim=dict(lr=3e-3),
        batch_size=32,
        max_steps=20,
        device="cpu",
        cpu_threads=1,
        log_every=5,
        progress=False,
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return TrainConfig.model_validate(data)


@pytest.fixture
def tiny():
    return tiny_config
