"""``subq repro hpoly`` on a tiny grid: runs, prints the table, writes hpoly.json and hpoly.png."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from subq.repro import get_reproduction
from subq.repro.hpoly import CLAIM, QUICK, HPolySweep, run

TINY = HPolySweep(dims=(8, 12), ratios=(2, 16), seeds=2, n_test=500, width2=32, rf_width=128)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_a_one_line_claim():
    module = get_reproduction("hpoly")
    assert module.run is run and module.CLAIM == CLAIM
    assert "\n" not in CLAIM and "d^k" in CLAIM and "d^{kq}" in CLAIM


def test_tiny_sweep_writes_json_and_png(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=150)
    record = run(quick=True, out_dir=tmp_path / "out", seed=4, console=console, sweep=TINY)

    saved = json.loads((tmp_path / "out" / "hpoly.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["name"] == "hpoly" and saved["seed"] == 4 and saved["settings"]["dims"] == [8, 12]
    assert len(saved["rows"]) == 2 * 2 * 2 and len(saved["summary"]) == 2 * 2
    assert sorted({r["seed"] for r in saved["rows"]}) == [4, 5]
    for row in saved["summary"]:
        assert row["n"] == round(row["n_over_dk"] * row["d"] ** 2) and row["repeats"] == 2
        for metric in ("nmse_three_layer", "nmse_random_features", "nmse_stage1"):
            assert 0 <= row[metric + "_min"] <= row[metric] <= row[metric + "_max"] < 10, (metric, row)
        assert -1 <= row["corr_eta_p"] <= 1
    # with n = 16 d^2 the first stage finds p, and the 3-layer net beats the kernel
    big = [r for r in saved["summary"] if r["n_over_dk"] == 16]
    assert all(r["corr_eta_p"] > 0.8 and r["nmse_three_layer"] < r["nmse_random_features"] for r in big), big

    png = (tmp_path / "out" / "hpoly.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    text = out.getvalue()
    assert "median of 2 repeats" in text and "RF kernel" in text and "2,304" in text


def test_presets_sweep_multiples_of_d_to_the_k():
    assert QUICK.k == 2 and QUICK.dims == (8, 16, 24) and max(QUICK.ratios) >= 16
    with pytest.raises(ValueError, match="stage2_fraction"):
        HPolySweep(dims=(8,), ratios=(1,), stage2_fraction=1.0)
