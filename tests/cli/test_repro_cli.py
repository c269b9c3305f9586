"""``subq repro NAME --quick`` end to end: every reproduction's quick version runs on the CPU and
writes its table (JSON) and plot (PNG). Minutes in total: marked ``slow`` (still run by default)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from subq.cli.main import main
from subq.repro import REPRODUCTIONS, get_reproduction

# Quick modes that train models for minutes (``lit``, ``peft_minilm``, ``hyena_dna``, ``combiner``: about
# 10 minutes each on 2 cores; ``hpoly`` and ``quadratic``: 2-4 minutes each on a slower 2-core machine,
# about a third of the suite's time there) are run end to end by hand; their own tests run tiny versions of
# every part, ``run`` included.
CLI_END_TO_END = ["quadattack", "subgm", "lora_limits"]


def test_every_reproduction_is_registered_and_importable():
    for name in REPRODUCTIONS:
        assert get_reproduction(name).CLAIM, name


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CLI_END_TO_END if n in REPRODUCTIONS])
def test_quick_reproduction_writes_table_and_plot(name, tmp_path):
    args = ["repro", name, "--quick", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert get_reproduction(name).CLAIM in " ".join(result.output.split())
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record, "empty result record"
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_reproduction_lists_valid_names():
    result = CliRunner().invoke(main, ["repro", "nope"])
    assert result.exit_code == 2 and "quadratic" in result.output
