"""``subq train``: help with examples, a tiny run from a file plus overrides, resume, config errors."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

import subq.train.trainer as trainer_mod
from subq.cli.main import main
from subq.cli.train import command

TINY = {
    "task": {
        "name": "mqar",
        "vocab_size": 64,
        "seq_len": 16,
        "num_kv_pairs": 2,
        "num_train_examples": 256,
        "num_test_examples": 64,
    },
    "model": {"d_model": 32, "mixer": {"name": "attention"}, "channel_mixer": "none"},
    "batch_size": 32,
    "max_steps": 8,
    "log_every": 4,
    "device": "cpu",
    "cpu_threads": 1,
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_help_has_worked_examples():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "subq train --config configs/mqar-attention.yaml optim.lr=1e-3 model.d_model=64" in result.output
    assert "--resume" in result.output and "torchrun --nproc_per_node=2" in result.output


def test_train_from_file_with_overrides(config_file, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(command, ["--config", str(config_file), "optim.lr=3e-3", f"out_dir={out}"])
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output and "max_steps" in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 8]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 3e-3
    assert (out / "checkpoints" / "step_00000008" / "model.safetensors").is_file()


def test_resume_continues_the_run(config_file, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(command, ["--config", str(config_file), f"out_dir={out}"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(command, ["--config", str(config_file), f"out_dir={out}"])
    assert again.exit_code != 0 and "--resume" in again.output
    args = ["--config", str(config_file), f"out_dir={out}", "max_steps=12", "--resume"]
    more = runner.invoke(command, args)
    assert more.exit_code == 0, more.output
    assert (out / "checkpoints" / "step_00000012").is_dir()


def test_resume_without_checkpoint_is_an_error(config_file, tmp_path):
    args = ["--config", str(config_file), f"out_dir={tmp_path / 'none'}", "--resume"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 1
    assert "no checkpoint to resume from" in result.output


def test_print_config_applies_overrides_without_a_file():
    args = ["--print-config", "max_steps=3", "task.seq_len=32", "model.d_model=48"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["task"]["seq_len"] == 32 and printed["model"]["d_model"] == 48
    assert printed["model"]["vocab_size"] == printed["task"]["vocab_size"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["batch_size=-1"], "batch_size: Input should be greater than 0"),
        (["task.name=nope"], "unknown task 'nope'"),
        (["task.num_kv_pairs=8"], "num_kv_pairs=8 too large for seq_len=16"),
        (["optim.lr"], "must look like dotted.key=value"),
    ],
)
def test_bad_config_is_reported_without_traceback(config_file, args, message):
    result = CliRunner().invoke(command, ["--config", str(config_file), *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path):
    result = CliRunner().invoke(command, ["--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_nan_run_prints_the_summary_and_fails(config_file, monkeypatch):
    monkeypatch.setattr(trainer_mod, "lm_loss", lambda logits, labels: logits.sum() * float("nan"))
    result = CliRunner().invoke(command, ["--config", str(config_file)])
    assert result.exit_code == 1
    assert "best accuracy" in result.output and "non-finite loss" in result.output
