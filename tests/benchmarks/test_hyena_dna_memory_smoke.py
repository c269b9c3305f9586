"""Smoke test of ``benchmarks/hyena_dna_memory.py`` at a tiny length on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from tests.benchmarks.scripts import load_script


@pytest.fixture(scope="module")
def memory_bench():
    return load_script("hyena_dna_memory")


@pytest.mark.parametrize(
    "extra", [[], ["--checkpoint-blocks", "--long-conv-form", "chunk"]], ids=["fft", "checkpointed-chunk"]
)
def test_tiny_step_runs_and_writes_json(memory_bench, tmp_path, capsys, one_thread, extra):
    out = tmp_path / "memory.json"
    argv = ["--device", "cpu", "--T", "64", "--steps", "2", "--out", str(out), *extra]
    assert memory_bench.main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    assert record["status"] == "ok" and record["tokens_per_step"] == 64
    assert 6.4e6 < record["params"] < 6.7e6  # large-1m: the paper's 6.6M
    assert len(record["step_s"]) == 2 and all(s > 0 for s in record["step_s"])
    assert record["loss"][0] == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=0.2)
    assert record["peak_allocated_gib"] is None  # CUDA only


def test_model_has_sequence_long_filters_and_the_chosen_form(memory_bench):
    args = memory_bench.parse_args(
        ["--device", "cpu", "--T", "96", "--long-conv-form", "chunk", "--checkpoint-blocks"]
    )
    model = memory_bench.build_model(args, torch.device("cpu"))
    blocks = model.backbone.blocks
    assert len(blocks) == 8 and all(isinstance(b, memory_bench.CheckpointedBlock) for b in blocks)
    mixer = blocks[0].block.mixer
    assert mixer.d_model == 256 and mixer.long_conv_form == "chunk" and mixer.max_seq_len >= 96
    x, y = memory_bench.random_batch(2, 96, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 96) and torch.equal(x[:, 1:], y[:, :-1])


def test_bad_options_exit(memory_bench):
    for argv in (["--T", "1"], ["--batch", "0"], ["--long-conv-form", "naive"]):
        with pytest.raises(SystemExit):
            memory_bench.parse_args(argv)
