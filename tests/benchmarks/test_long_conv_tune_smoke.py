"""Smoke test of ``benchmarks/long_conv_tune.py``: at a tiny length (Triton's interpreter on a CPU, the
GPU's plan) every kernel's default and swept config pass the check against the ``torch.fft`` form,
the configs reach the plan's launches, and a wrong convolution is reported, not timed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("triton")

from tests.benchmarks.scripts import load_script  # noqa: E402


@pytest.fixture(scope="module")
def tune():
    return load_script("long_conv_tune")


def test_smoke_configs_pass_the_check(tune, tmp_path, one_thread):
    out = tmp_path / "tune.json"
    record = tune.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == record["rows"]
    rows = record["rows"]
    assert [(r["kernel"], r["default"]) for r in rows] == [
        (k, d) for k in ("columns", "inverse", "rows") for d in (True, False)
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["rel_err"] < 1e-3
    swept = {r["kernel"]: r for r in rows if not r["default"]}
    assert swept["columns"]["BN"] == 16 and swept["columns"]["num_stages"] == 1  # the config, clipped
    assert swept["inverse"]["BN"] == 16 and swept["inverse"]["MB"] == 1


def test_a_wrong_convolution_is_reported(tune, monkeypatch, one_thread):
    from subq.ops.long_conv import triton_fft as tf

    real = tf.triton_long_conv
    monkeypatch.setattr(tf, "triton_long_conv", lambda *a, **kw: 2 * real(*a, **kw))  # runs, wrong
    monkeypatch.setattr(tune, "SMOKE_CONFIGS", {"rows": []})
    record = tune.main(["--smoke"])
    assert len(record["rows"]) == 1 and "wrong results" in record["rows"][0]["error"]
