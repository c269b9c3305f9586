"""Checkpoint files: atomic writes that never clobber a good checkpoint, verification, pruning."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import subq.train.checkpoint as ckpt_mod
from subq.train import (
    CheckpointError,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from subq.train.checkpoint import optimizer_state_from_json, optimizer_state_to_json


def _save(root, step, value=0.0, **kw):
    return save_checkpoint(
        root,
        step,
        weights={"w": torch.full((3, 2), value)},
        tensors={"t": torch.arange(4)},
        state={"note": "x"},
        **kw,
    )


def test_save_and_load_round_trip(tmp_path):
    path = _save(tmp_path, 7, 1.5)
    assert path.name == "step_00000007"
    ckpt = load_checkpoint(path)
    assert ckpt.step == 7 and ckpt.state["note"] == "x"
    assert torch.equal(ckpt.weights["w"], torch.full((3, 2), 1.5))
    assert torch.equal(ckpt.tensors["t"], torch.arange(4))
    assert set(ckpt.state["files"]) == {"model.safetensors", "state.safetensors"}


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, fail_at):
    good = _save(tmp_path, 1, 1.0)
    before = {f.name: f.read_bytes() for f in good.iterdir()}

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "write":
        real = ckpt_mod._write_synced

        def half_then_fail(path, data):
            if path.name == "state.safetensors":
                path.write_bytes(data[: len(data) // 2])
                boom()
            real(path, data)

        monkeypatch.setattr(ckpt_mod, "_write_synced", half_then_fail)
    elif fail_at == "fsync":
        monkeypatch.setattr(ckpt_mod.os, "fsync", boom)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, 2, 2.0)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]  # no partial step_2, no temp dir
    assert {f.name: f.read_bytes() for f in good.iterdir()} == before
    assert latest_checkpoint(tmp_path) == good
    assert torch.equal(load_checkpoint(good).weights["w"], torch.full((3, 2), 1.0))


def test_failed_save_during_training_keeps_the_old_checkpoint_and_resume_works(tiny, tmp_path, monkeypatch):
    cfg = tiny(max_steps=4, checkpoint_every=2, out_dir=str(tmp_path))
    real = ckpt_mod._write_synced

    def fail_at_step_4(path, data):
        if path.parent.name.startswith(".tmp-step_00000004"):
            raise OSError(5, "Input/output error")
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_synced", fail_at_step_4)
    with pytest.raises(OSError, match="Input/output error"):
        Trainer(cfg).fit()
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000002"]
    assert load_checkpoint(root / "step_00000002").step == 2
    trainer = Trainer(cfg)
    assert trainer.fit(resume=True).steps == 4
    assert latest_checkpoint(root).name == "step_00000004"


def test_keep_prunes_old_checkpoints(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]


def test_existing_step_is_never_overwritten(tmp_path):
    _save(tmp_path, 3, 1.0)
    with pytest.raises(FileExistsError):
        _save(tmp_path, 3, 2.0)
    assert torch.equal(load_checkpoint(tmp_path / "step_00000003").weights["w"], torch.full((3, 2), 1.0))


def test_listing_ignores_temporary_and_foreign_dirs(tmp_path):
    (tmp_path / ".tmp-step_00000009-abc").mkdir()
    (tmp_path / "step_notanumber").mkdir()
    _save(tmp_path, 10)
    _save(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000010"]
    assert list_checkpoints(tmp_path / "missing") == []


def test_unreadable_safetensors_with_matching_checksum(tmp_path):
    path = _save(tmp_path, 1)
    garbage = b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"
    (path / "model.safetensors").write_bytes(garbage)
    state = json.loads((path / "state.json").read_text())
    state["files"]["model.safetensors"] = hashlib.sha256(garbage).hexdigest()
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


def test_wrong_format_version(tmp_path):
    path = _save(tmp_path, 1)
    state = json.loads((path / "state.json").read_text())
    state["format_version"] = 99
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path)


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    data, tensors = optimizer_state_to_json(opt.state_dict())
    data = json.loads(json.dumps(data))  # through JSON, as in a checkpoint
    restored = torch.optim.AdamW(model.parameters(), lr=1.0)
    restored.load_state_dict(optimizer_state_from_json(data, tensors))
    assert restored.param_groups[0]["betas"] == (0.8, 0.9)
    for p in model.parameters():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(restored.state[p][key], opt.state[p][key])
