"""``subq repro lit`` on a tiny configuration (seconds): it trains the teacher and every student, writes
lit.json and lit.png; plus the Frechet distance and the data loader.

    python -m pytest tests/repro/test_lit.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from subq.repro import get_reproduction
from subq.repro.lit import FULL, QUICK, STUDENTS, LitConfig, frechet_distance, load_digit_images, run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = LitConfig(
    image_size=8,
    d_model=16,
    depth=1,
    teacher_steps=4,
    student_steps=2,
    evals=1,
    students=STUDENTS,
    samples_per_class=3,
    sample_steps=2,
    classifier_epochs=1,
)


def test_registered_with_a_one_line_claim():
    module = get_reproduction("lit")
    assert module.run is run and "\n" not in module.CLAIM and "distillation" in module.CLAIM


def test_tiny_run_writes_json_and_png(tmp_path):
    console = Console(record=True, width=160)
    record = run(quick=True, out_dir=tmp_path, seed=1, console=console, config=TINY, device="cpu")
    saved = json.loads((tmp_path / "lit.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert [r["name"] for r in saved["rows"]] == ["teacher", *STUDENTS]
    for row in saved["rows"]:
        steps = [p["step"] for p in row["curve"]]
        assert steps == ([0, 4] if row["name"] == "teacher" else [0, 2]), row["name"]
        for p in row["curve"]:
            assert 0 <= p["acc"] <= 1 and p["fd"] >= 0 and p["mse"] > 0 and np.isfinite(p["vb"])
    rows = {r["name"]: r for r in saved["rows"]}
    # the two students converted by LiT's rule start as the same model; inheriting q/k/v differs
    assert rows["inherit"]["curve"][0] == rows["inherit_distill"]["curve"][0]
    assert rows["inherit_qkv_distill"]["curve"][0]["mse"] != rows["inherit"]["curve"][0]["mse"]
    assert rows["scratch"]["inherited_fraction"] == 0.0
    assert 0.5 < rows["inherit"]["inherited_fraction"] < rows["inherit_qkv_distill"]["inherited_fraction"] < 1
    assert rows["inherit"]["params"] == rows["scratch"]["params"]
    assert 0.5 < saved["classifier_test_acc"] <= 1 and saved["fd_real_vs_real"] > 0
    assert len(saved["verdicts"]) == 1 + len(STUDENTS)
    assert (tmp_path / "lit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = console.export_text()
    assert "softmax DiT (teacher)" in text and "linear, inherit + distill" in text and "FD" in text


def test_frechet_distance_matches_the_matrix_square_root():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eig(s_a @ s_b)  # (S_a S_b)^{1/2} has eigenvalues sqrt(eig(S_a S_b))
    expect = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b) - 2 * np.sqrt(w.real).sum()
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)


def test_digits_are_split_and_scaled():
    x_tr, y_tr, x_te, y_te = load_digit_images(16)
    assert x_tr.shape == (1347, 1, 16, 16) and x_te.shape == (450, 1, 16, 16)
    assert x_tr.min() >= -1 and x_tr.max() <= 1 and x_tr.min() == -1
    assert (torch.bincount(y_tr) - 3 * torch.bincount(y_te)).abs().max() <= 3  # stratified 75/25
    assert load_digit_images(8)[0].shape == (1347, 1, 8, 8)


def test_config_rejects_unknown_students_and_keys():
    with pytest.raises(ValidationError, match="unknown students"):
        LitConfig(students=("scratch", "nope"))
    with pytest.raises(ValidationError):
        LitConfig(steps=3)
    assert set(QUICK.students) <= set(FULL.students) == set(STUDENTS)


def _curves(record: dict) -> list[list[dict]]:
    return [[{k: v for k, v in p.items() if k != "train_s"} for p in row["curve"]] for row in record["rows"]]


def test_second_run_reuses_the_saved_models_and_gives_the_same_record(tmp_path):
    first = run(quick=True, out_dir=tmp_path, seed=1, console=Console(width=160), config=TINY, device="cpu")
    assert (tmp_path / "lit_teacher.safetensors").is_file()
    names = ["teacher", *TINY.students]
    assert all((tmp_path / f"lit_{name}_samples.safetensors").is_file() for name in names)
    console = Console(record=True, width=160)
    second = run(quick=True, out_dir=tmp_path, seed=1, console=console, config=TINY, device="cpu")
    assert console.export_text().count("loaded from") == len(names)
    assert _curves(second) == _curves(first)
    # students trained anew after a loaded teacher train as they did the first time
    for name in TINY.students[1:]:
        (tmp_path / f"lit_{name}_samples.safetensors").unlink()
    console = Console(record=True, width=160)
    third = run(quick=True, out_dir=tmp_path, seed=1, console=console, config=TINY, device="cpu")
    assert console.export_text().count("loaded from") == 2
    assert _curves(third) == _curves(first)
    # the saved classifier is the one that scores a resumed run: zeroed, it scores 1 in 10 correct
    path = tmp_path / "lit_classifier.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path), metadata=meta)
    fourth = run(quick=True, out_dir=tmp_path, seed=1, console=Console(width=160), config=TINY, device="cpu")
    assert first["classifier_test_acc"] > 0.5
    assert fourth["classifier_test_acc"] == pytest.approx(0.1, abs=0.02)
    # another seed does not reuse it
    console = Console(record=True, width=160)
    run(quick=True, out_dir=tmp_path, seed=2, console=console, config=TINY, device="cpu")
    assert "loaded from" not in console.export_text()


def test_plot_draws_a_teacher_that_trains_longer_than_the_students(tmp_path):
    from subq.repro.lit import _plot

    def row(name, steps):
        curve = [{"step": s, "mse": 1 / (1 + s), "acc": 0.5, "fd": 10 / (1 + s)} for s in steps]
        return {"name": name, "label": name, "curve": curve}

    rows = [row("teacher", range(0, 20_001, 2_000)), row("scratch", range(0, 5_001, 500))]
    samples = {r["name"]: torch.zeros(60, 1, 8, 8) for r in rows}
    _plot(rows, samples, 1.0, tmp_path / "lit.png")
    assert (tmp_path / "lit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
