"""Smoke test of ``benchmarks/hip_tune.py``: its checks pass for the swept configs at tiny shapes
(Triton's interpreter on a CPU), every config reproduces the default's masks and outputs, and a
config that computes wrong masks is reported, not timed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("triton")

from tests.benchmarks.scripts import load_script  # noqa: E402


@pytest.fixture(scope="module")
def tune():
    return load_script("hip_tune")


def test_smoke_configs_pass_the_checks(tune, tmp_path, one_thread):
    out = tmp_path / "tune.json"
    record = tune.main(["--smoke", "--ab-rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == record["rows"]
    kinds = [r["kernel"] for r in record["rows"]]
    assert kinds == ["mask", "mask", "attention", "attention", "attention-ab", "attention-ab"]
    for row in record["rows"]:
        assert "error" not in row, row
        assert row.get("same_masks", True) and row.get("max_abs_diff", 0.0) == 0.0, row
    for row in record["rows"][2:4]:
        assert row["check_rel_err"] < 1e-2


def test_wrong_masks_are_reported(tune, monkeypatch, one_thread):
    import subq.ops.hip.mask as mod

    real = mod._hip_mask_triton

    def wrong(*args, **kwargs):  # every block one to the right: runs, wrong
        indices, counts = real(*args, **kwargs)
        return indices + 1, counts

    monkeypatch.setattr(mod, "_hip_mask_triton", wrong)
    monkeypatch.setattr(tune, "SMOKE_CONFIGS", {"mask": []})
    record = tune.main(["--smoke"])
    assert len(record["rows"]) == 1 and "wrong results" in record["rows"][0]["error"]
