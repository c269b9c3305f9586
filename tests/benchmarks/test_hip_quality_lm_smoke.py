"""Smoke test of ``benchmarks/hip_quality_lm.py``: a two-step byte LM on CPU, every part measured."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("hip_quality_lm")


def test_tiny_run_prints_results_and_json(bench, tmp_path, capsys, one_thread):
    out = tmp_path / "q.json"
    argv = ["--device", "cpu", "--seq-len", "1152", "--steps", "2", "--batch", "1", "--d-model", "32",
            "--eval-windows", "1", "--retrieval-examples", "1", "--out", str(out)]  # fmt: skip
    record = bench.main(argv)
    stdout = capsys.readouterr().out
    assert json.loads(stdout.strip().splitlines()[-1]) == json.loads(out.read_text())
    assert "(a) mask quality" in stdout
    assert [r["method"] for r in record["methods"]] == ["dense", "hip", "window", "sink_window"]
    lm = record["byte_lm"]
    assert len(lm["per_layer"]) == 4 and 0 < lm["equal_budget"] <= lm["block_oracle_query"] + 1e-6
    assert record["methods"][0]["ppl_ratio"] == 1.0
    assert all(0 <= r["retrieval_acc"] <= 1 for r in record["methods"])


def test_hip_variants_and_saved_weights(bench, tmp_path, capsys, one_thread):
    """``--hip-variants`` adds one row per query-block setting; ``--load`` of ``--save``'s weights
    reproduces every measurement without training."""
    weights = tmp_path / "lm.safetensors"
    argv = ["--device", "cpu", "--seq-len", "1152", "--batch", "1", "--d-model", "32", "--eval-windows", "1",
            "--retrieval-examples", "1", "--hip-variants", "32:1", "--keys", "byte"]  # fmt: skip
    trained = bench.main([*argv, "--steps", "2", "--save", str(weights)])
    loaded = bench.main([*argv, "--load", str(weights)])
    capsys.readouterr()
    assert [r["method"] for r in trained["methods"]][-1] == "hip bq=32 sq=1"
    assert trained["methods"][-1]["hip"]["block_size_q"] == 32
    assert trained["methods"][-1]["hip"]["block_stride_q"] == 1
    for a, b in zip(trained["methods"], loaded["methods"], strict=True):
        assert a["bits_per_byte"] == pytest.approx(b["bits_per_byte"], rel=1e-5)
    assert trained["byte_lm"]["equal_budget"] == pytest.approx(loaded["byte_lm"]["equal_budget"], rel=1e-5)
    needles = trained["needles"]
    assert needles["questions"] == 8 and len(needles["needle_prob"]) == len(needles["covered"]) == 4
    assert all(0 <= v <= 1 for v in needles["needle_prob"] + needles["covered"])
    assert needles == loaded["needles"]
