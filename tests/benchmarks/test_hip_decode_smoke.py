"""Smoke test of ``benchmarks/hip_decode.py`` at tiny lengths on CPU (PyTorch forms, wall clock)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.scripts import load_script

TINY = ["--device", "cpu", "--lengths", "256,512", "--heads", "4", "--kv-heads", "2", "--head-dim", "16"]
PRUNING = ["--mask-k", "32", "--window", "32", "--sink", "4"]  # G = 16 of up to ~240 candidate blocks


@pytest.fixture(scope="module")
def decode_bench():
    return load_script("hip_decode")


def test_tiny_run_gates_times_and_ends_with_json(decode_bench, tmp_path, capsys, one_thread):
    out = tmp_path / "decode.json"
    assert decode_bench.main([*TINY, *PRUNING, "--offload", "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    assert record["config"]["kv_heads"] == 2 and record["config"]["refresh"] == 8
    assert [r["T"] for r in record["rows"]] == [256, 512]
    for r in record["rows"]:
        assert r["gate"]["ok"] and r["gate"]["rel_rms"] <= 1e-4, r["gate"]
        assert r["gate"]["blocks_selected"] == 16  # the search pruned: G blocks of many
        assert set(r["forms"]) == {
            *("sdpa", "sdpa_mha", "hip_search", "hip_cached", "hip_amortized", "offload_warm", "offload_cold")
        }
        for f in r["forms"].values():
            assert f["eager_us"] > 0 and f["graph_us"] is None and f["extra_mib"] is None
            assert "errors" not in f
        assert r["speedup_hip_cached_vs_sdpa"] > 0
        assert r["kv_mib"] == 2 * r["T"] * 2 * 16 * 4 / 2**20
        off = r["offload"]
        assert off["ok"] and off["rel_rms_vs_full"] == 0.0  # the same keys, same order
        assert 2 * 16 <= off["blocks_fetched_cold"] <= 4 * 16 and off["capacity_blocks"] == 2 * 4 * 16
        assert off["host_kv_mib"] == round(r["kv_mib"], 2) and off["gpu_kv_mib"] > 0


def test_bad_options_exit(decode_bench):
    for argv in (
        ["--lengths", "1"],
        ["--heads", "32", "--kv-heads", "5"],
        ["--lengths", "a,b"],
        ["--refresh", "0"],
    ):
        with pytest.raises(SystemExit):
            decode_bench.parse_args(argv)
