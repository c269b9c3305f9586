"""``subq repro lora_limits`` on a tiny grid: tables printed, JSON and PNG written, instances bounded as
asked, presets straddle the threshold."""

from __future__ import annotations

import io
import json
import math

import pytest
from pydantic import ValidationError
from rich.console import Console

from subq.repro import get_reproduction
from subq.repro.lora_limits import CLAIM, FULL, QUICK, LoRALimitsSweep, make_instance, run

TINY = LoRALimitsSweep(
    lengths=(64, 128),
    ratios=(0.25, 1.5),
    instances=("aligned", "gaussian"),
    degree=4,
    max_degree=8,
    timing_lengths=(64, 128),
    timing_degrees=(2,),
    timing_repeats=1,
    block_size=48,
    fast_block_size=40,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_a_one_line_claim():
    module = get_reproduction("lora_limits")
    assert module.run is run and module.CLAIM == CLAIM
    assert CLAIM and "\n" not in CLAIM and "sqrt(log L)" in CLAIM


def test_tiny_sweep_writes_json_and_png(tmp_path):
    out = io.StringIO()
    record = run(quick=True, out_dir=tmp_path, seed=3, console=Console(file=out, width=200), sweep=TINY)

    saved = json.loads((tmp_path / "lora_limits.json").read_text())
    assert saved == json.loads(json.dumps(record)), "the returned record is what was written"
    assert saved["name"] == "lora_limits" and saved["claim"] == CLAIM and saved["seed"] == 3
    assert LoRALimitsSweep(**saved["settings"]) == TINY
    assert (tmp_path / "lora_limits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cells = saved["cells"]
    assert len(cells) == 2 * 2 * 2, "one cell per (instance, T, rho)"
    for cell in cells:
        assert cell["gamma"] == pytest.approx(cell["ratio"] * math.sqrt(math.log(cell["T"])))
        assert cell["eps"] == 1 / cell["T"] and "4" in cell["errors"]
        assert cell["max_score"] <= cell["gamma"] ** 2 * (1 + 1e-12), "scores are bounded by Gamma^2"
    by_key = {(c["instance"], c["T"], c["ratio"]): c for c in cells}
    for kind in TINY.instances:
        for T in TINY.lengths:
            low, high = by_key[(kind, T, 0.25)], by_key[(kind, T, 1.5)]
            assert low["error"] < 1e-4 and low["degree_needed"] is not None, low
            assert high["error"] > 10 * low["error"], (low["error"], high["error"])
    aligned_high = [by_key[("aligned", T, 1.5)] for T in TINY.lengths]
    assert all(c["degree_needed"] is None and c["error"] > 0.1 for c in aligned_high), aligned_high

    assert [row["T"] for row in saved["timing"]] == [64, 128]
    assert set(saved["slopes"]) == {"exact", "fast_g2"}

    text = " ".join(out.getvalue().split())
    assert "aligned: max|G~-G|/max|G| at degree 4 (k1=70)" in text and "gaussian:" in text
    assert "'>8' = not reached" in text and "wall time (float32, best of 1)" in text and CLAIM[:40] in text


@pytest.mark.parametrize("kind", ["aligned", "gaussian"])
def test_instances_meet_the_entry_bound(kind):
    gamma = 2.5
    (x, y, w_q, w_k, w_v, adapters), alpha = make_instance(kind, 300, 4, 2, gamma, seed=1)
    lora = adapters["q"]
    q = x @ (w_q + alpha / lora.a.shape[0] * lora.b @ lora.a)
    assert (q.abs().max() - gamma).abs() < 1e-12 and ((x @ w_k).abs().max() - gamma).abs() < 1e-12
    assert set(adapters) == {"q", "v"} and y.abs().max() == 0
    if kind == "aligned":
        score = (q @ (x @ w_k).mT).abs().max() / 4
        assert score > 0.8 * gamma**2, "a query meets a key along its own direction"


@pytest.mark.parametrize("preset", [QUICK, FULL], ids=["quick", "full"])
def test_presets_straddle_the_threshold(preset):
    assert min(preset.ratios) <= 0.5 and max(preset.ratios) >= 1.5 and 1.0 in preset.ratios
    assert preset.degree in range(2, preset.max_degree + 1, 2)
    assert len(preset.timing_lengths) >= 5 and max(preset.timing_lengths) >= 4096


@pytest.mark.parametrize(
    "update,match",
    [
        ({"degree": 5}, r"degree=5 must be even"),
        ({"degree": 10}, r"degree=10 must be <= max_degree=8"),
        ({"ratios": (0.5, 0.0)}, r"ratios must be > 0"),
        ({"lengths": (1, 64)}, r"lengths must be >= 2"),
        ({"instances": ("uniform",)}, r"instances\.0"),
        ({"timing_lengths": (64,)}, r"timing_lengths\n"),
        ({"depth": 3}, r"depth\n"),
    ],
    ids=["odd", "degree>max", "rho0", "T1", "instance", "one-timing", "unknown"],
)
def test_bad_grid_names_the_field(update, match):
    with pytest.raises(ValidationError, match=match):
        LoRALimitsSweep(**{**TINY.model_dump(), **update})
