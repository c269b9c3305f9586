"""The MQAR sweep behind ``subq zoo``: grids, the learning-rate sweep, parallel cells, summary, plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from subq.layers import MixerConfig
from subq.train.zoo import ZooConfig, ZooRow, best_over_lrs, plot_accuracy_vs_state, run_zoo


def tiny_grid(**kw) -> ZooConfig:
    base = dict(
        mixers=[MixerConfig(name="attention"), MixerConfig(name="sliding_window", window=2)],
        d_models=[16],
        settings=[(16, 2)],
        lrs=[3e-3, 1e-3],
        vocab_size=64,
        num_train_examples=256,
        num_test_examples=64,
        batch_size=32,
        epochs=1,
        cpu_threads=1,
    )
    return ZooConfig(**{**base, **kw})


def test_zoology_preset_is_the_paper_grid():
    cfg = ZooConfig.preset("zoology")
    assert cfg.vocab_size == 8192 and cfg.n_layers == 2
    assert cfg.settings == [(64, 4), (128, 8), (256, 16), (512, 64)]
    assert cfg.d_models == [64, 128, 256, 512]
    np.testing.assert_allclose(cfg.lrs, np.logspace(-4, -2, 4))
    assert cfg.batch_sizes == {64: 512, 128: 512, 256: 256, 512: 128}
    assert (cfg.num_train_examples, cfg.num_test_examples, cfg.epochs) == (100_000, 3_000, 64)
    assert cfg.target_accuracy == 0.99
    run = cfg.runs()[0]
    lm = cfg.lm_config(run)
    assert lm.channel_mixer.name == "none" and lm.pos_emb == "learned" and lm.embed_dropout == 0.1
    assert len(cfg.runs()) == 2 * 4 * 4 * 4


def test_quick_preset_compares_attention_with_a_small_state():
    cfg = ZooConfig.preset("quick")
    names = [m.name for m in cfg.mixers]
    assert names == ["attention", "sliding_window"]
    assert len(cfg.settings) >= 2
    window = cfg.mixers[1].kwargs["window"]
    assert all(window < L // 4 for L, _ in cfg.settings), "window must sit well below the query-key gaps"


def test_bad_grids_are_validation_errors():
    with pytest.raises(ValidationError, match="num_kv_pairs"):
        tiny_grid(settings=[(16, 8)])
    with pytest.raises(ValidationError, match="unknown mixer 'nope'"):
        tiny_grid(mixers=[{"name": "nope"}])
    with pytest.raises(ValidationError, match="d_models"):
        tiny_grid(d_models=[-8])
    with pytest.raises(KeyError, match="valid presets"):
        ZooConfig.preset("huge")


def test_sweep_rows_results_file_and_lr_skip(tmp_path):
    cfg = tiny_grid(target_accuracy=0.01)  # any trained model passes: the second lr is skipped
    rows = run_zoo(cfg, out_dir=tmp_path)
    assert len(rows) == 4
    assert [r.skipped for r in rows] == [False, True, False, True]
    trained = [r for r in rows if not r.skipped]
    assert all(0 <= r.accuracy <= 1 and r.steps == 8 and r.state_size > 0 for r in trained)
    assert trained[0].state_size == 2 * 2 * 16 * 16  # attention: 2 layers x 2 x L x d
    assert trained[1].state_size == 2 * 2 * 2 * 16  # sliding window: 2 layers x 2 x window x d
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [x["mixer"] for x in lines] == ["attention"] * 2 + ["sliding_window"] * 2


def test_full_lr_sweep_when_target_not_reached():
    rows = run_zoo(tiny_grid(mixers=[MixerConfig(name="attention")], target_accuracy=1.0))
    assert [r.skipped for r in rows] == [False, False]


def test_parallel_cells_give_the_same_rows_as_sequential():
    cfg = tiny_grid()
    seq = run_zoo(cfg)
    par = run_zoo(cfg, jobs=2)
    assert [(r.mixer, r.lr, r.accuracy, r.steps) for r in seq] == [
        (r.mixer, r.lr, r.accuracy, r.steps) for r in par
    ]


def _row(mixer, d, acc, lr, skipped=False):
    return ZooRow(mixer, {}, d, 64, 4, lr, 10 * d, 100, acc, acc, 5, 1.0, "max_steps", skipped)


def test_best_over_lrs_and_plot(tmp_path):
    rows = [
        _row("attention", 64, 0.5, 1e-3),
        _row("attention", 64, 0.9, 3e-3),
        _row("attention", 64, math.nan, 1e-2, True),
        _row("sliding_window", 64, 0.2, 1e-3),
    ]
    cells = best_over_lrs(rows)
    assert [(c["mixer"], c["accuracy"], c["lr"], c["runs"]) for c in cells] == [
        ("attention", 0.9, 3e-3, 2),
        ("sliding_window", 0.2, 1e-3, 1),
    ]
    png = plot_accuracy_vs_state(cells, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
