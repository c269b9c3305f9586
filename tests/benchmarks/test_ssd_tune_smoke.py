"""Smoke test of ``benchmarks/ssd_tune.py``: its correctness check passes for the swept configs at tiny
shapes (Triton's interpreter on a CPU), and a config that computes wrong results is reported, not
timed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("triton")

from tests.benchmarks.scripts import load_script  # noqa: E402


@pytest.fixture(scope="module")
def tune():
    return load_script("ssd_tune")


def test_smoke_configs_pass_the_check(tune, tmp_path, one_thread):
    out = tmp_path / "tune.json"
    record = tune.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == record["rows"]
    assert {r["shape"] for r in record["rows"]} == set(tune.SMOKE_SHAPES)
    for row in record["rows"]:
        assert "error" not in row, row
        assert row["max_rel_err"] < 3e-2


def test_a_wrong_config_is_reported(tune, monkeypatch, one_thread):
    import subq.ops.ssd.fused_chunk as mod

    real = mod._forward

    def wrong(*args, **kwargs):  # outputs scaled by 2: compiles, runs, wrong
        y, ht, hs = real(*args, **kwargs)
        return (None if y is None else 2 * y), ht, hs

    monkeypatch.setattr(mod, "_forward", wrong)
    record = tune.main(["--smoke"])
    assert record["rows"] and all("wrong results" in r["error"] for r in record["rows"])
