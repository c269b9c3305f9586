"""The training loop: schedule, metric, learning, early stop, metrics file, exact resume, NaN stop."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from contextlib import nullcontext

import pytest
import torch
from rich.console import Console

import subq.train.trainer as trainer_mod
from subq.train import (
    CheckpointError,
    Trainer,
    example_accuracy,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    train,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lr_schedule_warmup_then_cosine():
    kw = dict(lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = [lr_at(s, **kw) for s in range(14)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lr_at(14, **kw) == pytest.approx(0.1)
    assert lr_at(0, lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(2.0)


def test_example_accuracy_averages_per_example():
    labels = torch.tensor([[-100, 3, -100, 1], [2, -100, -100, -100], [-100, -100, -100, -100]])
    pred = torch.tensor([[0, 3, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(pred, 5).float()  # (3, 4, 5)
    acc, has = example_accuracy(logits, labels)
    assert has.tolist() == [True, True, False]
    assert acc[:2].tolist() == [0.5, 1.0]  # example 0: one of two supervised positions right
    sel = labels != -100
    acc_sparse, has_sparse = example_accuracy(logits[sel], labels, sel)  # head run at labelled positions only
    assert torch.equal(acc_sparse, acc) and torch.equal(has_sparse, has)


def test_training_decreases_loss_and_writes_metrics(tiny, tmp_path):
    cfg = tiny(max_steps=150, eval_every=50, out_dir=str(tmp_path))
    result = train(cfg)
    rows = _rows(tmp_path / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "test_accuracy" in r]
    assert [r["step"] for r in train_rows] == list(range(5, 151, 5))
    assert set(train_rows[0]) == {"step", "epoch", "loss", "lr", "tokens", "elapsed", "tokens_per_s"}
    assert train_rows[-1]["tokens"] == 150 * 32 * 16
    a, b = train_rows[-2], train_rows[-1]  # throughput of a row's window of log_every steps
    assert b["tokens_per_s"] == pytest.approx((b["tokens"] - a["tokens"]) / (b["elapsed"] - a["elapsed"]))
    assert train_rows[-1]["loss"] < 0.6 * train_rows[0]["loss"], (train_rows[0], train_rows[-1])
    assert [r["step"] for r in eval_rows] == [50, 100, 150]
    assert result.history == eval_rows
    assert result.stop_reason == "max_steps" and result.steps == 150 and result.tokens == 150 * 32 * 16
    assert result.final_accuracy == eval_rows[-1]["test_accuracy"] > 0.2  # chance is about 1/32
    assert result.best_accuracy == max(r["test_accuracy"] for r in eval_rows)
    assert (tmp_path / "config.yaml").is_file()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000150"


def test_evaluate_matches_a_direct_computation(tiny):
    trainer = Trainer(tiny(eval_batch_size=48))  # 128 test examples: batches of 48, 48, 32
    got = trainer.evaluate()
    with torch.no_grad():
        logits = trainer.model(trainer.test_data.inputs)
        acc, has = example_accuracy(logits, trainer.test_data.labels)
        loss = trainer_mod.lm_loss(logits, trainer.test_data.labels)
    assert got["test_accuracy"] == pytest.approx(acc[has].mean().item(), abs=1e-6)
    assert got["test_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert trainer.model.training


def test_epochs_set_the_length_and_eval_defaults_to_each_epoch(tiny):
    result = train(tiny(max_steps=None, epochs=2))  # 512 examples / batch 32 = 16 steps per epoch
    assert result.steps == 32
    assert [r["step"] for r in result.history] == [16, 32]
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert train(tiny(max_steps=5, epochs=2)).steps == 5  # whichever comes first


def test_early_stop_at_target_accuracy(tiny, tmp_path):
    cfg = tiny(max_steps=2000, eval_every=10, target_accuracy=0.2, out_dir=str(tmp_path))
    result = train(cfg)
    assert result.stop_reason == "target_accuracy"
    assert result.steps < 2000 and result.steps % 10 == 0
    assert result.final_accuracy >= 0.2
    assert all(r["test_accuracy"] < 0.2 for r in result.history[:-1])
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step_{result.steps:08d}"
    again = train(cfg, resume=True)
    assert again.stop_reason == "target_accuracy" and again.steps == result.steps  # already done


def test_batch_larger_than_train_set_is_an_error(tiny):
    with pytest.raises(ValueError, match="batch_size=1024 exceeds the 512 training examples"):
        Trainer(tiny(batch_size=1024))


def _crash_on_call(monkeypatch, n: int):
    real, calls = trainer_mod.lm_loss, [0]

    def crashing(logits, labels):
        calls[0] += 1
        if calls[0] == n:
            raise RuntimeError("simulated crash")
        return real(logits, labels)

    monkeypatch.setattr(trainer_mod, "lm_loss", crashing)


def test_resume_is_bit_exact(tiny, tmp_path, monkeypatch):
    # 4 steps per epoch so the run crosses epochs; dropout so the torch RNG state matters
    kw = dict(
        task={"num_train_examples": 128},
        model={"embed_dropout": 0.1},
        max_steps=10,
        eval_every=3,
        log_every=2,
    )
    straight = Trainer(tiny(**kw))
    straight_result = straight.fit()

    cfg = tiny(**kw, checkpoint_every=5, out_dir=str(tmp_path))
    _crash_on_call(monkeypatch, 7)  # dies during step 7, after the step-5 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg).fit()
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000005"
    assert max(r["step"] for r in _rows(tmp_path / "metrics.jsonl")) == 6  # rows past the checkpoint exist

    resumed = Trainer(cfg)
    result = resumed.fit(resume=True)
    assert result.steps == 10
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert list(want) == list(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    for p_want, p_got in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        want_state, got_state = straight.optimizer.state[p_want], resumed.optimizer.state[p_got]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(want_state[key], got_state[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s")} for r in rows]
    assert strip(result.history) == strip(straight_result.history)
    steps = [r["step"] for r in _rows(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == [2, 4, 6, 8, 10]  # the interrupted run's rows after step 5 were dropped, none doubled


def test_fresh_run_refuses_an_out_dir_with_checkpoints(tiny, tmp_path):
    train(tiny(max_steps=2, out_dir=str(tmp_path)))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(tiny(max_steps=2, out_dir=str(tmp_path)))


def test_resume_extends_a_finished_run(tiny, tmp_path):
    first = train(tiny(max_steps=6, out_dir=str(tmp_path)))
    again = train(tiny(max_steps=6, out_dir=str(tmp_path)), resume=True)
    assert again.steps == 6 and again.history == first.history  # nothing left to do
    longer = train(tiny(max_steps=9, out_dir=str(tmp_path)), resume=True)
    assert longer.steps == 9 and [r["step"] for r in longer.history] == [6, 9]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate_model", r"model\.safetensors: checksum mismatch"),
        ("garbage_json", r"state\.json: not valid JSON"),
        ("delete_tensors", r"state\.safetensors: missing"),
        ("delete_json", r"state\.json: missing"),
    ],
)
def test_corrupt_checkpoint_is_a_clear_error(tiny, tmp_path, damage, message):
    cfg = tiny(max_steps=2, out_dir=str(tmp_path))
    train(cfg)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    if damage == "truncate_model":
        blob = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage_json":
        (ckpt / "state.json").write_text('{"step": 2, "fil')
    elif damage == "delete_tensors":
        (ckpt / "state.safetensors").unlink()
    else:
        (ckpt / "state.json").unlink()
    with pytest.raises(CheckpointError, match=message) as info:
        train(cfg, resume=True)
    assert str(ckpt) in str(info.value)


def test_resume_without_checkpoint_or_out_dir(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(tiny(out_dir=str(tmp_path)), resume=True)
    with pytest.raises(CheckpointError, match="resume needs out_dir"):
        train(tiny(), resume=True)


def test_resume_with_another_model_is_refused(tiny, tmp_path):
    train(tiny(max_steps=2, out_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="different model"):
        train(tiny(max_steps=4, out_dir=str(tmp_path), model={"d_model": 64}), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch, caplog):
    real, calls = trainer_mod.lm_loss, [0]

    def poisoned(logits, labels):
        calls[0] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls[0] == 6 else loss

    monkeypatch.setattr(trainer_mod, "lm_loss", poisoned)
    trainer = Trainer(tiny(max_steps=20, checkpoint_every=2, out_dir=str(tmp_path)))
    with caplog.at_level(logging.ERROR, logger="subq.train"):
        result = trainer.fit()
    assert result.stop_reason == "nan"
    assert result.steps == 5
    assert "non-finite loss" in result.message and "step 6" in result.message
    assert any("non-finite loss" in r.getMessage() for r in caplog.records)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.name == "step_00000004"
    weights = load_checkpoint(ckpt).weights
    assert all(torch.isfinite(w).all() for w in weights.values())
    # the NaN step was never applied: the live weights are still finite
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    rows = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in rows and "Infinity" not in rows


def test_nan_parameter_stops_before_any_update(tiny, tmp_path):
    trainer = Trainer(tiny(max_steps=20, out_dir=str(tmp_path)))
    with torch.no_grad():
        trainer.model.backbone.embed.weight[0, 0] = math.nan  # token 0 fills every MQAR example
    result = trainer.fit()
    assert result.stop_reason == "nan" and result.steps == 0
    assert result.final_accuracy is None
    assert latest_checkpoint(tmp_path / "checkpoints") is None


def test_progress_bar_shows_step_loss_and_accuracy(tiny):
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    train(tiny(max_steps=10, eval_every=10, progress=True), console=console)
    text = stream.getvalue()
    assert "10/10" in text
    assert re.search(r"loss \d\.\d{4}", text) and re.search(r"acc 0\.\d{4}", text), text


def test_progress_bar_is_off_without_a_terminal(tiny):
    stream = io.StringIO()
    train(tiny(max_steps=10, progress=True), console=Console(file=stream, force_terminal=False))
    assert stream.getvalue() == ""


@pytest.mark.gpu
def test_cuda_bf16_run_learns_and_resumes(tiny, tmp_path):
    cfg = tiny(device="cuda", max_steps=150, eval_every=50, checkpoint_every=100, out_dir=str(tmp_path))
    trainer = Trainer(cfg)
    assert trainer.device.type == "cuda" and trainer.autocast is not nullcontext
    result = trainer.fit()
    assert result.stop_reason == "max_steps" and result.final_accuracy > 0.2
    longer = train(cfg.model_copy(update={"max_steps": 160}), resume=True)
    assert longer.steps == 160 and [r["step"] for r in longer.history] == [50, 100, 150, 160]
