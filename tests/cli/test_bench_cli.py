"""``subq bench`` through click's test runner on CPU.

python -m pytest tests/cli/test_bench_cli.py -q
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from subq.bench import qkv_inputs, qkvo_bytes, register_bench, registry
from subq.bench.registry import list_benches
from subq.cli.bench import command
from subq.cli.main import main
from subq.ops.attention import naive_attention

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--device", "cpu", "--quick", "--T", "32,64"]


def _invoke(args, cmd=command):
    return CliRunner().invoke(cmd, args)


def _last_json(output):
    return json.loads(output.rstrip("\n").splitlines()[-1])


def test_quick_runs_and_ends_with_json():
    result = _invoke(["--device", "cpu", "--quick"])
    assert result.exit_code == 0, result.output
    record = _last_json(result.stdout)
    assert record["config"]["quick"] is True and record["config"]["dtype"] == "fp32"
    ran = [r for r in record["rows"] if r["gate"]["status"] != "skipped"]
    assert {r["entry"] for r in ran} == set(list_benches())  # every registered entry ran
    assert all(r["gate"]["status"] == "pass" and r["fwd_ms"] > 0 for r in ran)


def test_reachable_from_the_subq_group():
    result = _invoke(["bench", *TINY, "--entries", "attention"], cmd=main)
    assert result.exit_code == 0, result.output
    assert [r["entry"] for r in _last_json(result.stdout)["rows"]] == ["attention", "attention"]


def test_options_reach_the_rows(tmp_path):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = _invoke(
        [
            *TINY,
            "--entries",
            "sliding_window",
            "--modes",
            "torch",
            "--param",
            "window=8",
            "--heads",
            "3",
            "--head-dim",
            "4",
            "--no-backward",
            "--json",
            str(json_path),
            "--plot",
            str(plot_path),
        ]
    )
    assert result.exit_code == 0, result.output
    rows = _last_json(result.stdout)["rows"]
    assert [(r["mode"], r["T"], r["H"], r["D"], r["params"]["window"]) for r in rows] == [
        ("torch", 32, 3, 4, 8),
        ("torch", 64, 3, 4, 8),
    ]
    assert all(r["fwd_bwd_ms"] is None for r in rows)
    assert json.loads(json_path.read_text())["rows"] == rows
    assert plot_path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "args, match",
    [
        (["--entries", "attention,nope"], "unknown entry 'nope'; valid names: attention, based"),
        (["--modes", "cuda_magic"], "unknown mode 'cuda_magic'"),
        (["--param", "windw=3"], "no selected entry takes 'windw'"),
        (["--param", "window=wide"], "window='wide': expected int"),
        (["--param", "window"], "expected key=value"),
        (["--T", "1024,lots"], "--T"),
    ],
    ids=["entry", "mode", "param-key", "param-type", "param-form", "seq-len"],
)
def test_bad_options_are_named(args, match):
    result = _invoke([*TINY, *args])
    assert result.exit_code == 2
    assert match in result.output


def test_failing_gate_exits_1_without_timings(monkeypatch):
    monkeypatch.setattr(registry, "BENCHES", dict(registry.BENCHES))

    def acausal(q, k, v):
        return naive_attention(q, k, v, causal=False)

    register_bench(
        "acausal", modes={"torch": acausal}, reference=naive_attention, flops=lambda s: 1.0, bytes=qkvo_bytes
    )(qkv_inputs)
    result = _invoke([*TINY, "--entries", "acausal"])
    assert result.exit_code == 1
    rows = _last_json(result.stdout)["rows"]
    assert all(r["gate"]["status"] == "FAIL" and r["fwd_ms"] is None for r in rows)
