"""The MQAR sweep behind ``subq zoo``: grids, the learning-rate sweep, parallel cells, summary, plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from subq.layers import MixerConfig
from subq.models import LanguageModel
from subq.train.zoo import (
    ZooConfig,
    ZooRow,
    ZooRun,
    best_over_lrs,
    mixer_label,
    model_sizes,
    plot_accuracy_vs_state,
    plot_series,
    run_zoo,
)


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


BASED_LABELS = [
    *(f"hybrid(base_conv(kernel_size=3), based(feature_dim={f}))" for f in (8, 16, 24)),
    *(f"hybrid(base_conv(kernel_size=3), sliding_window(window={w}))" for w in (16, 64, 128)),
    "hybrid(base_conv(kernel_size=3), attention)",
]


def test_based_preset_is_the_based_figure_setup():
    cfg = ZooConfig.preset("based")
    assert [mixer_label(m) for m in cfg.mixers] == BASED_LABELS
    assert (cfg.d_models, cfg.settings, cfg.lrs) == ([64, 128], [(256, 16)], [3e-3, 1e-3])
    assert (cfg.vocab_size, cfg.n_layers, cfg.batch_size, cfg.pos_emb) == (8192, 2, 256, "none")
    assert (cfg.num_train_examples, cfg.num_test_examples, cfg.epochs) == (20_000, 1_000, 24)
    runs = cfg.runs()
    assert len(runs) == 28 and len({r.cell for r in runs}) == 14
    lm = cfg.lm_config(runs[0])
    assert lm.channel_mixer.name == "none" and lm.pos_emb == "none"
    conv, based = (b.mixer.mixer for b in LanguageModel(lm, device="meta").backbone.blocks)
    assert (conv.name, conv.kernel_size, conv.expand) == ("base_conv", 3, 4)
    assert (based.name, based.feature_dim, based.num_heads) == ("based", 8, 1)
    # state per sequence, summed over the 2 layers: base_conv keeps 2d x k; based H (E D + E) with
    # H = 1, D = d, E = 1 + f + f^2; the window 2 min(L, w) d; attention 2 L d
    sizes = {(mixer_label(r.mixer), r.d_model): model_sizes(cfg, r)[0] for r in runs}
    for d in (64, 128):
        for f, label in zip((8, 16, 24), BASED_LABELS[:3], strict=True):
            E = 1 + f + f * f
            assert sizes[label, d] == 6 * d + E * d + E
        for w, label in zip((16, 64, 128), BASED_LABELS[3:6], strict=True):
            assert sizes[label, d] == 6 * d + 2 * w * d
        assert sizes[BASED_LABELS[6], d] == 6 * d + 2 * 256 * d
    assert sizes[BASED_LABELS[0], 64] == 5_129


def test_based_preset_tiny_run_logs_state_size_and_plots_by_family(tmp_path):
    cfg = ZooConfig.preset(
        "based",
        d_models=[16, 32],
        settings=[(32, 2)],
        lrs=[3e-3],
        vocab_size=64,
        num_train_examples=64,
        num_test_examples=32,
        batch_size=32,
        epochs=1,
        cpu_threads=1,
    )
    rows = run_zoo(cfg, out_dir=tmp_path)
    assert len(rows) == 14 and all(r.steps == 2 and not r.skipped for r in rows)
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [ZooRow(**x).label for x in lines] == [r.label for r in rows]
    for r in rows:
        model = LanguageModel(cfg.lm_config(ZooRun(r.config, r.d_model, r.seq_len, r.num_kv_pairs, r.lr)))
        layers = sum(b.mixer.state_size(32) for b in model.backbone.blocks)
        assert r.state_size == model.state_size(32) == layers > 0
    cells = best_over_lrs(rows)
    assert [c["mixer"] for c in cells] == [label for label in BASED_LABELS for _ in (16, 32)]
    series = plot_series(cells)
    assert [s.legend for s in series] == [
        "base_conv+based: feature_dim=8",
        "base_conv+based: feature_dim=16",
        "base_conv+based: feature_dim=24",
        "base_conv+sliding_window: window=16",
        "base_conv+sliding_window: window=64",
        "base_conv+sliding_window: window=128",
        "base_conv+attention",
    ]
    markers = [s.marker for s in series]
    assert len(set(markers[:3])) == len(set(markers[3:6])) == 1 and len(set(markers)) == 3
    assert len({s.shade for s in series[:3]}) == 3, "variants of a family need distinct shades"
    png = plot_accuracy_vs_state(cells, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hybrid_given_as_configs_and_checked_up_front():
    nested = MixerConfig(name="hybrid", mixers=[MixerConfig(name="sliding_window", window=2), "attention"])
    rows = run_zoo(tiny_grid(mixers=[nested], lrs=[3e-3]))
    assert rows[0].label == "hybrid(sliding_window(window=2), attention)"
    assert rows[0].mixer_kwargs == {
        "mixers": [{"name": "sliding_window", "window": 2}, {"name": "attention"}]
    }
    assert rows[0].state_size == 2 * 2 * 16 + 2 * 16 * 16  # window layer + attention layer
    bad = {"name": "hybrid", "mixers": ["attention", {"name": "sliding_window", "window": -1}]}
    with pytest.raises(ValidationError, match=r"at d_model=16: mixer\[1\] \(hybrid\): window must be"):
        tiny_grid(mixers=[bad])
