"""``subq repro matrix_mixers`` at a tiny size (seconds): the models and their matched parameter
counts, the masking of training batches, the evaluation and the files a run writes.

    python -m pytest tests/repro/test_matrix_mixers.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from subq.layers.hydra import Hydra
from subq.repro import get_reproduction
from subq.repro import matrix_mixers as repro

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = repro.ReproConfig(
    d_model=32,
    n_layers=1,
    num_heads=2,
    hydra_headdim=16,
    hydra_d_state=4,
    hydra_chunk_size=16,
    m2_filter_order=8,
    seq_len=32,
    num_train_examples=200,
    num_test_examples=64,
    max_files=40,
    steps=4,
    batch_size=4,
    eval_every=2,
)


def test_models_share_everything_but_the_sequence_mixer():
    hidden = repro.matched_hidden(TINY, 260)
    params = {}
    for name in repro.MODELS:
        model = repro.build_model(name, TINY, hidden[name], 260, seed=0, device="cpu")
        cfg = model.cfg
        assert (cfg.d_model, cfg.n_layers, cfg.pos_emb, cfg.channel_mixer.name) == (32, 1, "learned", "glu")
        mixer = model.backbone.blocks[0].mixer
        if name.startswith("hydra"):
            assert isinstance(mixer, Hydra)
            expected = "quasiseparable" if name == "hydra" else name.removeprefix("hydra_")
            assert mixer.variant == expected
        params[name] = repro.count_params(model)
    target = params["hydra"]
    step = 3 * TINY.d_model * TINY.n_layers * 8  # one multiple of 8 of the hidden width
    for name, n in params.items():
        assert abs(n - target) <= step, f"{name}: {n} vs hydra {target}"


def test_matched_hidden_refuses_a_mixer_bigger_than_the_target():
    with pytest.raises(ValueError, match="m2: its sequence mixer alone"):
        repro.matched_hidden(TINY.model_copy(update={"m2_filter_order": 256, "channel_expand": 0.25}), 260)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown models"):
        repro.ReproConfig(models=("attention", "mamba"))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        repro.ReproConfig(d_model=30, num_heads=4)


def test_training_data_is_unmasked_and_test_keeps_its_masks():
    originals, test_x, test_y, tok = repro.load_data(TINY)
    assert originals.shape == (TINY.num_train_examples, TINY.seq_len)
    assert not np.isin(originals, [tok.mask_token_id]).any()
    assert (originals[:, 0] == tok.cls_token_id).all() and (originals[:, -1] == tok.sep_token_id).all()
    assert test_x.shape == test_y.shape == (TINY.num_test_examples, TINY.seq_len)
    masked = test_y != -100
    assert 0.2 < masked.float().mean() < 0.4  # mask_prob 0.3 of the non-special positions
    assert (test_x[masked] == tok.mask_token_id).float().mean() > 0.6


def test_evaluate_counts_only_masked_positions():
    class Oracle(torch.nn.Module):  # predicts the label wherever there is one, else token 0
        def __init__(self, labels):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.labels = labels

        def mlm_logits(self, x):
            y = self.labels[: len(x)].clamp_min(0)
            return F.one_hot(y, 260).float() * 50

    _, test_x, test_y, _ = repro.load_data(TINY)
    result = repro.evaluate(Oracle(test_y), test_x, test_y, batch_size=len(test_x))
    assert result["accuracy"] == 1.0 and result["loss"] < 1e-6


def test_verdicts():
    def row(name, acc, std=0.0):
        return {"model": name, "accuracy": acc, "accuracy_std": std}

    rows = [
        row("attention", 0.40),
        row("hydra", 0.50),
        row("hydra_additive", 0.45),
        row("hydra_diag_only", 0.47),
    ]
    lines = repro.verdicts(rows)
    assert "reproduced" in lines[0] and "not reproduced" not in lines[0]
    assert "hydra_additive +5.00" in lines[0] and "hydra - attention: +10.00" in lines[1]
    rows[3]["accuracy_std"] = 0.05
    assert "within the seed spread" in repro.verdicts(rows)[0]
    rows[2]["accuracy"] = 0.55
    assert "not reproduced (best: hydra_additive)" in repro.verdicts(rows)[0]


def test_tiny_run_writes_json_and_png(tmp_path):
    console = Console(width=160, record=True)
    cfg = TINY.model_copy(update={"seeds": 2})
    record = repro.run(quick=True, out_dir=tmp_path, seed=3, console=console, config=cfg, device="cpu")
    assert get_reproduction("matrix_mixers") is repro and repro.CLAIM and "\n" not in repro.CLAIM
    saved = json.loads((tmp_path / "matrix_mixers.json").read_text())
    assert (tmp_path / "matrix_mixers.png").stat().st_size > 0
    assert saved["rows"] == json.loads(json.dumps(record["rows"]))
    assert [r["model"] for r in saved["rows"]] == list(repro.MODELS)
    for r in saved["rows"]:
        assert [run["seed"] for run in r["runs"]] == [3, 4]
        assert 0 <= r["accuracy"] <= 1 and np.isfinite(r["loss"]) and r["params"] > 0
        assert [c["step"] for c in r["runs"][0]["curve"]] == [2, 4]
        assert len(r["runs"][0]["losses"]) == TINY.steps
    assert len(saved["verdicts"]) == 3
    assert "MLM acc" in console.export_text()


def test_same_seed_same_batches():
    """Every model of a seed sees the same batches and masks: two runs of one model agree exactly."""
    originals, test_x, test_y, tok = repro.load_data(TINY)
    hidden = repro.matched_hidden(TINY, tok.vocab_size)
    out = []
    for _ in range(2):
        model = repro.build_model(
            "attention", TINY, hidden["attention"], tok.vocab_size, seed=1, device="cpu"
        )
        out.append(repro.train_mlm(model, originals, tok, (test_x, test_y), TINY, seed=1)["losses"])
    assert out[0] == out[1]
