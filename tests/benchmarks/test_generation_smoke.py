"""Smoke test of ``benchmarks/generation.py`` at the tiny size on CPU, plus its chunked prefill."""

from __future__ import annotations

import json

import pytest
import torch

from subq.models import LanguageModel
from subq.models.based import attention_config, based_config
from tests.benchmarks.scripts import load_script


@pytest.fixture(scope="module")
def generation():
    return load_script("generation")


def test_tiny_run_prints_table_and_json(generation, tmp_path, capsys, one_thread):
    out = tmp_path / "results.json"
    argv = "--size tiny --device cpu --prompt-len 16 --new-tokens 4 --batches 1,2 --prefill-batch 1"
    assert generation.main([*argv.split(), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert json.loads(out.read_text()) == record
    assert any(line.startswith("model") and "e2e new tok/s" in line for line in lines)
    assert set(record["params"]) == {"based", "attention"}
    for g in record["gate"].values():  # passes, and a decoder that lost its context would not
        assert g["passed"] and g["context_rel_rms"] > max(g["tolerance"], 100 * g["rel_rms"])
    rows = [(r["model"], r["batch"], r["status"]) for r in record["results"]]
    assert rows == [("based", 1, "ok"), ("based", 2, "ok"), ("attention", 1, "ok"), ("attention", 2, "ok")]
    for r in record["results"]:
        assert r["e2e_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0
    based_state = {r["state_mb_per_seq"] for r in record["results"] if r["model"] == "based"}
    assert len(based_state) == 1


@pytest.mark.parametrize("make_config", [based_config, attention_config], ids=["based", "attention"])
def test_chunked_prefill_and_greedy_decode_equal_generate(generation, make_config, one_thread):
    model = LanguageModel(make_config("tiny", vocab_size=97), dtype=torch.float64).eval()
    ids = torch.randint(97, (3, 10))
    with torch.inference_mode():
        expected = model.generate(ids, 6)[:, 10:]
        logits, states = generation.chunked_prefill(model, ids, chunk=2, kv_capacity=80)
        slots = [s.k.shape[1] for s in states] if make_config is attention_config else None
        tokens, states = generation.greedy_decode(model, logits, states, start=10, n_new=6)
    assert torch.equal(tokens, expected)
    if slots is not None:  # the KV caches were allocated at their final capacity, never regrown
        assert slots == [80] * len(states) and [s.k.shape[1] for s in states] == slots


def test_bad_options_exit(generation):
    with pytest.raises(SystemExit):
        generation.parse_args(["--models", "mamba"])
    with pytest.raises(SystemExit):
        generation.parse_args(["--batches", "8,1"])
