"""``subq repro quadattack`` end to end on a tiny configuration: it trains both models, attacks, and
writes a JSON record and a PNG plot.

    pytest tests/repro/test_quadattack_repro.py
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console

from subq.repro import get_reproduction
from subq.repro.quadattack import Budget, QuadAttackConfig

torch.set_num_threads(1)


def test_tiny_reproduction_writes_json_and_png(tmp_path):
    module = get_reproduction("quadattack")
    assert module.CLAIM and "\n" not in module.CLAIM
    tiny = QuadAttackConfig(n_images=4, ks=[1, 3], budgets=[Budget(lr=0.05, iterations=4)], epochs=2)
    console = Console(record=True, width=160)
    record = module.run(quick=True, out_dir=tmp_path, seed=0, console=console, config=tiny)

    saved = json.loads((tmp_path / "quadattack.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["config"]["n_images"] == 4
    assert {(r["model"], r["k"]) for r in saved["rows"]} == {(m, k) for m in ("mlp", "vit") for k in (1, 3)}
    for row in saved["rows"]:
        for method in ("quadattack", "cwk"):
            m = row[method]
            assert 0.0 <= m["asr"] <= 1.0
            assert (m["l2"] is None) == (m["asr"] == 0.0)
            assert m["qp_infeasible"] == 0
    assert (tmp_path / "quadattack.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ASR quad" in console.export_text()


def test_config_rejects_unknown_keys_and_bad_k(tmp_path):
    with pytest.raises(ValidationError):
        QuadAttackConfig(n_images=4, ks=[1], budgets=[], epochs=1, images=4)
    bad = QuadAttackConfig(n_images=4, ks=[10], budgets=[Budget(lr=0.01, iterations=1)], epochs=1)
    with pytest.raises(ValueError, match=r"ks must lie in \[1, 9\].*\[10\]"):
        get_reproduction("quadattack").run(quick=True, out_dir=tmp_path, config=bad)
