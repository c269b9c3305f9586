"""The ``subq`` console script: every subcommand runs, has worked examples, and rejects bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from subq.cli.main import _COMMANDS, main


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("name", list(_COMMANDS))
def test_every_subcommand_has_worked_examples(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"subq {name}" in result.output


def test_list_shows_registries(cli):
    out = cli("list").output
    for word in ("attention", "sliding_window", "glu", "mlp", "none", "mqar", "360m", "quick", "zoology"):
        assert word in out
    assert "sliding_window" in cli("list", "mixers").output


def test_doctor_reports_versions(cli):
    out = cli("doctor").output
    assert "torch" in out and "CUDA available" in out and "sliding_window" in out


def test_zoo_dry_run_prints_the_paper_grid(cli):
    result = cli("zoo", "--preset", "zoology", "--mixers", "attention", "--dry-run")
    assert result.exit_code == 0
    assert "64 runs" in result.output and "1.00e-04" in result.output and "1.00e-02" in result.output


def test_zoo_unknown_mixer_lists_valid_names(cli):
    result = CliRunner().invoke(main, ["zoo", "--mixers", "attention,nope", "--dry-run"])
    assert result.exit_code == 2
    assert "nope" in result.output and "valid names: attention" in result.output


def test_zoo_bad_setting_is_a_usage_error():
    result = CliRunner().invoke(main, ["zoo", "--settings", "16:8", "--dry-run"])
    assert result.exit_code == 2 and "num_kv_pairs" in result.output


def test_zoo_tiny_run_writes_table_results_and_plot(cli, tmp_path):
    out = tmp_path / "zoo"
    result = cli(
        "zoo",
        "--d-models",
        "16",
        "--settings",
        "16:2",
        "--lrs",
        "3e-3",
        "--max-steps",
        "5",
        "--jobs",
        "1",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "MQAR test accuracy" in result.output and "state size" in result.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["mixer"] for r in rows} == {"attention", "sliding_window"}
    assert all(r["steps"] == 5 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cells"]) == 2
    assert (out / "accuracy_vs_state.png").read_bytes()[:4] == b"\x89PNG"
