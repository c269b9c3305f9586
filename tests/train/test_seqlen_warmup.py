"""Sequence-length warm-up: stage lengths, batch sizes, stage boundaries, the reference's example."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from subq.train.seqlen_warmup import SeqLenWarmup, SeqLenWarmupConfig, Stage, stage_lengths


def test_paper_schedule_doubles_from_64_with_constant_tokens():
    w = SeqLenWarmup(SeqLenWarmupConfig(max_len=1024, steps_per_stage=10, tokens_per_batch=2**16))
    assert [s.seq_len for s in w.stages] == [64, 128, 256, 512, 1024]
    assert [s.batch_size for s in w.stages] == [1024, 512, 256, 128, 64]
    assert all(s.seq_len * s.batch_size == 2**16 and s.grad_accum == 1 for s in w.stages)
    assert w.warmup_steps == 40
    expected = {0: (64, 1024), 9: (64, 1024), 10: (128, 512), 39: (512, 128), 40: (1024, 64)}
    for step, pair in {**expected, 10**9: (1024, 64)}.items():
        assert w.at_step(step) == pair, f"step {step}"


def test_reference_example_stages():
    # hg38_hyena_seqlen_warmup_reload.yaml: (epochs, seq_len, per-GPU batch) with global_batch_size 256
    cfg = SeqLenWarmupConfig(
        start_len=1024, max_len=32768, steps_per_stage=[2, 2, 2, 2, 4], tokens_per_batch=8 * 32768,
        global_batch_size=256,
    )  # fmt: skip
    stages = SeqLenWarmup(cfg).stages
    got = [(s.seq_len, s.batch_size, s.batch_size * s.grad_accum, s.first_step) for s in stages]
    assert got == [
        (1024, 256, 256, 0), (2048, 128, 256, 2), (4096, 64, 256, 4), (8192, 32, 256, 6),
        (16384, 16, 256, 8), (32768, 8, 256, 12),
    ]  # fmt: skip
    assert stages[-1] == Stage(32768, 8, 32, 12, None)


def test_lengths_that_are_not_a_power_of_two_end_at_max_len():
    assert stage_lengths(64, 1_000_000)[-3:] == [262144, 524288, 1_000_000]
    assert stage_lengths(64, 64) == [64] and stage_lengths(64, 128) == [64, 128]
    w = SeqLenWarmup(SeqLenWarmupConfig(max_len=1000, steps_per_stage=1, tokens_per_batch=4096))
    got = [(s.seq_len, s.batch_size) for s in w.stages]
    assert got == [(64, 64), (128, 32), (256, 16), (512, 8), (1000, 4)]


def test_global_batch_that_does_not_split_evenly():
    # 24 sequences per step; at most 16, 8, 4 fit in a pass at 256, 512, 1024
    w = SeqLenWarmup(SeqLenWarmupConfig(
        start_len=256, max_len=1024, steps_per_stage=5, tokens_per_batch=4096, global_batch_size=24
    ))  # fmt: skip
    assert [(s.batch_size, s.grad_accum) for s in w.stages] == [(12, 2), (8, 3), (4, 6)]
    # a prime global batch: all of it in one pass, or one sequence per pass
    w = SeqLenWarmup(SeqLenWarmupConfig(
        start_len=256, max_len=1024, steps_per_stage=5, tokens_per_batch=3072, global_batch_size=7
    ))  # fmt: skip
    assert [(s.batch_size, s.grad_accum) for s in w.stages] == [(7, 1), (1, 7), (1, 7)]


def test_single_stage_is_constant():
    w = SeqLenWarmup(SeqLenWarmupConfig(start_len=512, max_len=512, steps_per_stage=3, tokens_per_batch=512))
    assert w.warmup_steps == 0 and w.at_step(0) == w.at_step(1000) == (512, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(start_len=2048), "start_len=2048 must be <= max_len=1024"),
        (dict(tokens_per_batch=512), "tokens_per_batch=512 must be >= max_len=1024"),
        (dict(steps_per_stage=[1, 2]), "steps_per_stage has 2 entries .* give 4 warm-up stages"),
        (dict(steps_per_stage=0), "steps_per_stage"),
        (dict(bogus=1), "bogus"),
    ],
)
def test_config_errors(kwargs, match):
    base = dict(max_len=1024, steps_per_stage=10, tokens_per_batch=4096)
    with pytest.raises(ValidationError, match=match):
        SeqLenWarmupConfig(**{**base, **kwargs})


def test_negative_step_rejected():
    w = SeqLenWarmup(SeqLenWarmupConfig(max_len=128, steps_per_stage=1, tokens_per_batch=128))
    with pytest.raises(ValueError, match="step must be >= 0"):
        w.at_step(-1)
