"""DDP and FSDP on CPU: two gloo processes, started as torchrun would (WORLD_SIZE/RANK/MASTER_* in
the env)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from subq.train import TrainConfig, Trainer
from subq.train.distributed import full_state
from tests.conftest import assert_close
from tests.train.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(nprocs: int, *args) -> None:
    """Start ``nprocs`` workers on a fresh port; try another port if a concurrent process took it."""
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(nprocs, _free_port(), *args), nprocs=nprocs, join=True)
            return
        except mp.ProcessRaisedException as e:
            if "address already in use" not in str(e).lower() or attempt == 2:
                raise


def _worker(rank: int, world: int, port: int, out: str, cfg_json: str, resume: bool = False) -> None:
    os.environ.update(
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    trainer = Trainer(TrainConfig.model_validate_json(cfg_json))
    try:
        result = trainer.fit(resume=resume)
        weights, _ = full_state(trainer.model, trainer.optimizer)  # collective under FSDP
        save_file(dict(weights), str(Path(out) / f"rank{rank}.safetensors"))
        summary = {"steps": result.steps, "history": result.history}
        Path(out, f"rank{rank}.json").write_text(json.dumps(summary))
    finally:
        trainer.close()


def test_two_gloo_ranks_hold_identical_weights_and_match_one_process(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(max_steps=12, eval_every=6, checkpoint_every=6, log_every=3, out_dir=str(run))
    _spawn(2, str(tmp_path), cfg.model_dump_json())

    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 12
    # the all-reduced evaluation gives both ranks the same numbers
    assert [h["test_accuracy"] for h in r0["history"]] == [h["test_accuracy"] for h in r1["history"]]

    # only rank 0 wrote files: one row per log step, checkpoints at 6 and 12
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6, 9, 12]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]

    # each rank took half of every global batch: the result is one process on the whole batch
    single = Trainer(cfg.model_copy(update={"out_dir": None}))
    single.fit()
    for name, want in single.model.state_dict().items():
        assert_close(w0[name], want, 1e-4, name)
    initial = Trainer(cfg.model_copy(update={"out_dir": None})).model.state_dict()
    moved = sum((w0[n] - p).norm() for n, p in initial.items())
    assert moved > 0.1  # the weights did train, so the comparison above is not vacuous


def test_fsdp_ranks_match_one_process_and_checkpoints_resume_across_layouts(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(max_steps=12, eval_every=6, checkpoint_every=6, log_every=3, out_dir=str(run))
    fsdp = cfg.model_copy(update={"parallel": "fsdp"})
    _spawn(2, str(tmp_path), fsdp.model_dump_json())

    w0 = load_file(tmp_path / "rank0.safetensors")  # the full weights are gathered to rank 0 only
    assert load_file(tmp_path / "rank1.safetensors") == {}
    single = Trainer(cfg.model_copy(update={"out_dir": None}))
    single.fit()
    for name, want in single.model.state_dict().items():
        assert_close(w0[name], want, 1e-4, name)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    scores = [[(h["step"], h["test_accuracy"], h["test_loss"]) for h in r["history"]] for r in (r0, r1)]
    assert scores[0] == scores[1] and [s[0] for s in scores[0]] == [6, 12]

    # the sharded run's checkpoint holds full tensors: one process resumes it at step 6 ...
    (run / "checkpoints" / "step_00000012").rename(tmp_path / "step_12")
    resumed = Trainer(cfg.model_copy(update={"max_steps": 12}))
    resumed.fit(resume=True)
    for name, want in single.model.state_dict().items():
        assert_close(resumed.model.state_dict()[name], want, 1e-4, name)
    # ... and so do two FSDP ranks (optimizer state loaded into the shards)
    (run / "checkpoints" / "step_00000012").rename(tmp_path / "step_12_single")
    _spawn(2, str(tmp_path), fsdp.model_dump_json(), True)
    for name, want in single.model.state_dict().items():
        assert_close(load_file(tmp_path / "rank0.safetensors")[name], want, 1e-4, name)


def test_one_rank_under_torchrun_takes_the_distributed_path(monkeypatch):
    cfg = tiny_config(max_steps=8, log_every=4)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # what torchrun sets, also with one rank
    for var, value in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for parallel in ("ddp", "fsdp"):
        trainer = Trainer(cfg.model_copy(update={"parallel": parallel}))
        try:
            assert trainer.dist.enabled and trainer.dist.world_size == 1
            assert (trainer.ddp_model is not trainer.model) == (parallel == "ddp")
            trainer.fit()
            weights, _ = full_state(trainer.model, trainer.optimizer)
        finally:
            trainer.close()
        monkeypatch.delenv("TORCHELASTIC_RUN_ID")
        single = Trainer(cfg)
        assert not single.dist.enabled
        single.fit()
        for name, want in single.model.state_dict().items():
            assert_close(weights[name], want, 1e-5, name)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))


def test_bf16_collectives_reduce_gradients_in_bf16(monkeypatch):
    """``comm_dtype="bf16"``: after backward every gradient is a bf16 value (it went through a bf16
    all-reduce or reduce-scatter); with fp32 collectives most are not. One rank, both layouts."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    for var, value in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(var, value)
    ids = torch.randint(0, 64, (4, 16))
    for parallel in ("ddp", "fsdp"):
        for comm in ("fp32", "bf16"):
            monkeypatch.setenv("MASTER_PORT", str(_free_port()))
            trainer = Trainer(tiny_config(parallel=parallel, comm_dtype=comm))
            try:
                trainer.ddp_model(ids).float().square().mean().backward()
                grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
                grads = torch.cat(
                    [g.to_local().flatten() if hasattr(g, "to_local") else g.flatten() for g in grads]
                )
                assert grads.dtype == torch.float32 and grads.abs().sum() > 0
                in_bf16 = (grads == grads.bfloat16().float()).float().mean().item()
                if comm == "bf16":
                    assert in_bf16 == 1.0, (parallel, in_bf16)
                else:
                    assert in_bf16 < 0.5, (parallel, in_bf16)
            finally:
                trainer.close()


def test_bf16_collectives_train_like_fp32_on_two_ranks(tmp_path):
    cfg = tiny_config(max_steps=12, log_every=3)
    single = Trainer(cfg)
    single.fit()
    initial = Trainer(cfg).model.state_dict()
    for parallel in ("ddp", "fsdp"):
        _spawn(
            2,
            str(tmp_path),
            cfg.model_copy(update={"parallel": parallel, "comm_dtype": "bf16"}).model_dump_json(),
        )
        w0 = load_file(tmp_path / "rank0.safetensors")
        if parallel == "ddp":  # replicas stay identical: every rank applies the same bf16 sum
            w1 = load_file(tmp_path / "rank1.safetensors")
            assert all(torch.equal(w0[n], w1[n]) for n in w0)
        for name, want in single.model.state_dict().items():
            assert_close(w0[name], want, 3e-2, f"{parallel} {name}")
        assert sum((w0[n] - p).norm() for n, p in initial.items()) > 0.1
