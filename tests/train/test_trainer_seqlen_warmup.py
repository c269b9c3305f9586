"""The sequence-length warm-up inside the trainer: scheduled lengths and batch sizes reach the model,
tokens per step stay constant, evaluation stays at full length, resume is exact.

python -m pytest tests/train/test_trainer_seqlen_warmup.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import subq.train.trainer as trainer_mod
from subq.models import LMConfig
from subq.train import TrainConfig, Trainer, load_config

SEQ_LEN, BATCH = 64, 4


def hyena_dna_run(**overrides) -> TrainConfig:
    """A one-block Hyena LM (HyenaDNA's layer, narrow) on next-base prediction of 64 bases, warm-up from
    16 tokens, two steps per warm-up stage."""
    data = dict(
        task=dict(
            name="dna_markov_copy",
            seq_len=SEQ_LEN,
            copy_distance=16,
            segment_len=4,
            copy_period=8,
            num_train_examples=64,
            num_test_examples=8,
        ),
        model=dict(
            d_model=16,
            n_layers=1,
            channel_mixer="none",
            mixer=dict(name="hyena", filter_order=8, emb_dim=5, w=10.0, max_seq_len=SEQ_LEN + 2),
        ),
        seqlen_warmup=dict(start_len=16, steps_per_stage=2),
        batch_size=BATCH,
        max_steps=7,
        eval_every=100,
        log_every=1,
        device="cpu",
        cpu_threads=1,
        progress=False,
    )
    return TrainConfig.model_validate({**data, **overrides})


def _record_shapes(trainer: Trainer) -> list[tuple[tuple[int, ...], bool]]:
    """``(input shape, training?)`` of every forward of the trainer's model, training and evaluation."""
    shapes = []
    trainer.model.register_forward_pre_hook(lambda m, args: shapes.append((tuple(args[0].shape), m.training)))
    return shapes


def test_trainer_runs_the_scheduled_lengths_and_batch_sizes(tmp_path):
    trainer = Trainer(hyena_dna_run(out_dir=str(tmp_path)))
    shapes = _record_shapes(trainer)
    result = trainer.fit()
    trainer.close()
    # stages 16, 32, 64 tokens: 16, 8, 4 sequences per step (tokens per step 256 throughout)
    train_shapes = [shape for shape, training in shapes if training]
    assert train_shapes == [(16, 16)] * 2 + [(8, 32)] * 2 + [(4, 64)] * 3
    eval_shapes = {shape for shape, training in shapes if not training}
    assert eval_shapes == {(BATCH, SEQ_LEN)}  # evaluation: whole sequences
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    stages = [(r["seq_len"], r["batch_size"]) for r in train_rows]
    assert stages == [(16, 16)] * 2 + [(32, 8)] * 2 + [(64, 4)] * 3
    assert [r["tokens"] for r in train_rows] == [256 * (i + 1) for i in range(7)]
    assert result.tokens == 7 * BATCH * SEQ_LEN and result.final_accuracy is not None


def test_pieces_are_the_steps_sequences_cut_in_order():
    trainer = Trainer(hyena_dna_run())
    x, y = trainer.train_data.inputs[:BATCH], trainer.train_data.labels[:BATCH]
    px, py = trainer._warmup_pieces(x, y)  # step 0: 16 tokens
    assert px.shape == py.shape == (16, 16)
    assert torch.equal(px[4:8].reshape(1, -1), x[1:2]) and torch.equal(py.reshape(BATCH, -1), y)
    trainer.step = 6  # the last stage: whole sequences
    assert torch.equal(trainer._warmup_pieces(x, y)[0], x)
    trainer.close()


def test_off_by_default(tmp_path):
    cfg = hyena_dna_run(out_dir=str(tmp_path))
    off = Trainer(cfg.model_copy(update={"seqlen_warmup": None}))
    assert TrainConfig.model_fields["seqlen_warmup"].default is None and off.seqlen_warmup is None
    shapes = _record_shapes(off)
    off.fit()
    off.close()
    assert {shape for shape, training in shapes if training} == {(BATCH, SEQ_LEN)}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any("seq_len" in r for r in rows)


def test_resume_inside_the_warmup_is_exact(tmp_path, monkeypatch):
    straight = Trainer(hyena_dna_run())
    straight.fit()
    straight.close()
    cfg = hyena_dna_run(out_dir=str(tmp_path), checkpoint_every=3)
    real, calls = trainer_mod.lm_loss, [0]

    def crashing(logits, labels):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("simulated crash")
        return real(logits, labels)

    monkeypatch.setattr(trainer_mod, "lm_loss", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg).fit()
    monkeypatch.undo()
    resumed = Trainer(cfg)
    resumed.fit(resume=True)  # from step 3: the middle of the 32-token stage
    resumed.close()
    for (name, want), got in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(want, got), name


@pytest.mark.parametrize(
    ("warmup", "message"),
    [
        (dict(start_len=12, steps_per_stage=2), "do not divide seq_len=64"),
        (dict(start_len=128, steps_per_stage=2), "start_len=128 must be <= max_len=64"),
        (dict(start_len=16, steps_per_stage=[2]), "steps_per_stage has 1 entries"),
    ],
    ids=["uneven", "too-long", "stage-count"],
)
def test_bad_warmup_is_a_config_error(warmup, message):
    with pytest.raises(ValueError, match=message):
        hyena_dna_run(seqlen_warmup=warmup)


def test_example_config_is_hyena_dna_tiny_with_a_warmup():
    path = Path(__file__).resolve().parents[2] / "configs" / "hyena_dna-seqlen-warmup.yaml"
    cfg = load_config(path)
    assert cfg.model == LMConfig.from_preset("hyena_dna-tiny-1k")
    stages = cfg.seqlen_warmup.schedule(cfg.batch_size, cfg.task.seq_len).stages
    assert [(s.seq_len, s.batch_size, s.first_step) for s in stages] == [
        (64, 256, 0),
        (128, 128, 100),
        (256, 64, 200),
        (512, 32, 300),
        (1024, 16, 400),
    ]
    assert load_config(path, ["seqlen_warmup=null"]).seqlen_warmup is None
