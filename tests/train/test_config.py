"""TrainConfig validation, model sizing from the task, file loading and dotted overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from subq.tasks import MQARConfig
from subq.train import TrainConfig, apply_override, dump_config, format_validation_error, load_config
from subq.train.config import parse_value


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


BASE = {
    "task": {"name": "mqar", "vocab_size": 128, "seq_len": 32, "num_kv_pairs": 2},
    "model": {"d_model": 32, "mixer": {"name": "attention", "num_heads": 2}},
    "max_steps": 10,
}


def test_model_sized_from_task():
    cfg = TrainConfig.model_validate({**BASE, "model": {**BASE["model"], "pos_emb": "learned"}})
    assert isinstance(cfg.task, MQARConfig)
    assert cfg.model.vocab_size == 128
    assert cfg.model.max_seq_len == 32
    # explicit values win over the task's
    cfg = TrainConfig.model_validate({**BASE, "model": {**BASE["model"], "vocab_size": 256}})
    assert cfg.model.vocab_size == 256 and cfg.model.max_seq_len is None


def test_defaults_and_task_name_default():
    cfg = TrainConfig(max_steps=1, task={"seq_len": 32})
    assert cfg.task.name == "mqar" and cfg.task.seq_len == 32
    assert cfg.model.vocab_size == cfg.task.vocab_size == 8192
    assert cfg.optim.weight_decay == 0.1 and cfg.optim.grad_clip == 1.0 and cfg.optim.min_lr_ratio == 0.0
    assert cfg.data_seed == 123 and cfg.out_dir is None


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_load_file_with_overrides(tmp_path, suffix):
    path = _write(tmp_path, f"cfg.{suffix}", BASE)
    cfg = load_config(
        str(path),
        [
            "optim.lr=3e-4",
            "model.mixer.name=sliding_window",
            "model.mixer.window=8",
            "task.seq_len=64",
            "optim.betas=[0.8, 0.9]",
            "progress=false",
            "out_dir=null",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.mixer.name == "sliding_window"
    assert cfg.model.mixer.kwargs == {"num_heads": 2, "window": 8}  # kept from the file
    assert cfg.task.seq_len == 64
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.progress is False and cfg.out_dir is None


def test_dump_round_trips(tmp_path):
    overrides = ["max_steps=3", "task.vocab_size=96", "optim.warmup_steps=2", "model.pos_emb=learned"]
    cfg = load_config(None, overrides)
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_override_into_name_shorthand_and_list():
    data = {"model": {"mixer": ["attention", {"name": "sliding_window", "window": 4}]}}
    apply_override(data, "model.mixer.0.num_heads=2")
    apply_override(data, "model.mixer.1.window=8")
    assert data["model"]["mixer"] == [
        {"name": "attention", "num_heads": 2},
        {"name": "sliding_window", "window": 8},
    ]
    with pytest.raises(ValueError, match="model.mixer.2"):
        apply_override(data, "model.mixer.2.window=8")


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=3"])
def test_malformed_override(item):
    with pytest.raises(ValueError, match="key=value"):
        apply_override({}, item)


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ValueError, match="batch_size is 4, not a mapping"):
        apply_override({"batch_size": 4}, "batch_size.x=1")


def test_parse_value():
    assert parse_value("3e-4") == 3e-4
    assert parse_value("1E5") == 1e5
    assert parse_value("10") == 10
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("attention") == "attention"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["nonsense=1"], "nonsense"),
        (["task.foo=1"], "foo"),
        (["model.mixer.bogus=1"], "bogus"),
        (["batch_size=-4"], "batch_size"),
        (["batch_size=0"], "batch_size"),
        (["eval_batch_size=0"], "eval_batch_size"),
        (["optim.lr=-1"], "optim.lr"),
        (["optim.betas=[0.9, 1.5]"], "optim.betas"),
        (["target_accuracy=1.5"], "target_accuracy"),
        (["device=tpu"], "device"),
        (["task.num_kv_pairs=16"], "num_kv_pairs=16 too large for seq_len=32"),
        (["task.name=nonexistent"], "unknown task 'nonexistent'; valid names: "),
        (["model.vocab_size=64"], "smaller than the task's vocab_size=128"),
        (["max_steps=null"], "set max_steps or epochs"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_invalid_config_names_the_problem(tmp_path, overrides, field):
    path = _write(tmp_path, "cfg.yaml", BASE)
    with pytest.raises(ValidationError) as info:
        load_config(str(path), overrides)
    assert field in format_validation_error(info.value)


def test_unknown_task_error_is_single():
    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate({**BASE, "task": {"name": "nope"}})
    assert info.value.error_count() == 1
    assert "valid names: " in str(info.value) and "mqar" in str(info.value)


def test_unknown_top_level_key_in_file(tmp_path):
    path = _write(tmp_path, "cfg.yaml", {**BASE, "learning_rate": 1e-3})
    with pytest.raises(ValidationError, match="learning_rate"):
        load_config(str(path))


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="must end in"):
        load_config(str(_write(tmp_path, "cfg.toml", BASE)))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping at top level"):
        load_config(str(listing))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


def test_example_config_loads():
    cfg = load_config(Path(__file__).parents[2] / "configs" / "mqar-attention.yaml")
    assert cfg.task.name == "mqar"
    assert cfg.model.mixers[0].name == "attention"
    assert cfg.model.vocab_size == cfg.task.vocab_size
