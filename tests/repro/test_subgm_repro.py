"""``subq repro subgm`` on a tiny grid: tables printed, JSON and PNG written, presets valid."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError
from rich.console import Console

from subq.repro import get_reproduction
from subq.repro.subgm import CLAIM, FULL, QUICK, SubGMSweep, run

TINY = SubGMSweep(
    d=6,
    r=1,
    ms=(60,),
    r_primes=(1, 6),
    alphas=(1.0, 1e-3),
    outlier_fractions=(0.0, 0.2),
    iters=300,
    rho=0.98,
    curve_stride=50,
    seeds=2,
)


def test_tiny_run_writes_json_and_png(tmp_path):
    out = io.StringIO()
    record = run(quick=True, out_dir=tmp_path, seed=5, console=Console(file=out, width=200), sweep=TINY)

    saved = json.loads((tmp_path / "subgm.json").read_text())
    assert saved == json.loads(json.dumps(record)), "the returned record is what was written"
    assert saved["name"] == "subgm" and saved["claim"] == CLAIM and saved["seed"] == 5
    assert SubGMSweep(**saved["settings"]) == TINY
    assert (tmp_path / "subgm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cells = saved["cells"]
    assert len(cells) == 1 * 2 * 2 * 2, "one cell per (m, outlier fraction, r', alpha)"
    for cell in cells:
        assert [run["seed"] for run in cell["runs"]] == [5, 6]
        assert len(cell["curve"]) == TINY.iters // TINY.curve_stride + 1
        assert cell["max_final_error"] >= cell["final_error"]
    exact = [c for c in cells if c["outlier_fraction"] == 0.0 and c["r_prime"] == 1]
    assert max(c["max_final_error"] for c in exact) < 1e-2, "r' = r without outliers recovers X*"

    text = " ".join(out.getvalue().split())  # titles wrap at the table's width
    assert "final ||UU^T-X*||_F/||X*||_F after 300 steps" in text and "median of 2 seeds" in text
    assert "first iteration with error < 0.1" in text and CLAIM[:40] in text


def test_registered_with_a_one_line_claim():
    module = get_reproduction("subgm")
    assert module.run is run
    assert CLAIM and "\n" not in CLAIM


@pytest.mark.parametrize("preset", [QUICK, FULL], ids=["quick", "full"])
def test_presets_span_the_claim(preset):
    assert preset.r_primes == (preset.r, 2 * preset.r, preset.d)
    unknowns = preset.d * (preset.d + 1) // 2
    assert min(preset.ms) < unknowns < max(preset.ms), "one m lets a full-rank U U^T overfit, one does not"
    assert 0.0 in preset.outlier_fractions and max(preset.outlier_fractions) >= 0.2
    assert max(preset.alphas) == 1.0 and min(preset.alphas) <= 1e-7


@pytest.mark.parametrize(
    "update,match",
    [
        ({"r_primes": (1, 7)}, r"r_prime=7 must satisfy r=1 <= r_prime <= d=6"),
        ({"outlier_fractions": (0.0, 1.0)}, r"outlier_fraction\n"),
        ({"ms": ()}, r"ms\n"),
        ({"alphas": (1.0, 0.0)}, r"alphas\.1\n"),
    ],
    ids=["rprime>d", "p1", "no-m", "alpha0"],
)
def test_bad_grid_names_the_field(update, match):
    with pytest.raises(ValidationError, match=match):
        SubGMSweep(**{**TINY.model_dump(), **update})
