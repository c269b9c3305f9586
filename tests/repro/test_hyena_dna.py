"""``subq repro hyena_dna`` at a tiny size: the pieces of both parts, and a run that writes its files.

Run: ``python -m pytest tests/repro/test_hyena_dna.py -q``.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from rich.console import Console

from subq.layers.hyena import Hyena
from subq.models.hyena_dna import hyena_dna_config
from subq.models.language_model import LanguageModel
from subq.repro import get_reproduction
from subq.repro import hyena_dna as repro

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_COPY = repro.CopySettings(
    d_model=16,
    copy_distance=32,
    segment_len=16,
    copy_period=32,
    long_len=64,
    short_len=16,
    tokens_per_batch=128,
    steps=6,
    warmup_start_len=16,
    steps_per_stage=1,
    lr=1e-3,
    ablation_emb_dims=(7,),
    num_train=16,
    num_test=4,
    eval_batch=3,
)
TINY_MOTIF = repro.MotifSettings(
    distances=(8, 32),
    d_model=16,
    window=8,
    attention_max_len=64,
    motif_len=4,
    min_len=32,
    tokens_per_batch=128,
    steps=3,
    lr=1e-3,
    num_train=16,
    num_test=8,
    eval_batch=5,
)
CPU = torch.device("cpu")


def test_registered_with_a_one_line_claim():
    module = get_reproduction("hyena_dna")
    assert module is repro and module.run is repro.run
    assert repro.CLAIM and "\n" not in repro.CLAIM


def test_presets_validate_and_respect_the_context_lengths():
    for s in (repro.QUICK_COPY, repro.FULL_COPY):
        assert s.long_len >= 2 * s.copy_distance and s.short_len < s.copy_distance
        assert s.warmup().stages[-1].seq_len == s.long_len
        assert all(st.seq_len * st.batch_size == s.tokens_per_batch for st in s.warmup().stages)
        assert s.warmup().warmup_steps < s.steps
    assert repro.FULL_COPY.long_len == 1024 and repro.FULL_COPY.d_model is None  # tiny-1k as released
    for s in (repro.QUICK_MOTIF, repro.FULL_MOTIF):
        assert s.window < max(s.distances)
    assert max(repro.FULL_MOTIF.distances) >= 100_000
    with pytest.raises(ValueError, match="short_len"):
        repro.CopySettings(**(TINY_COPY.model_dump() | {"short_len": 32}))
    with pytest.raises(ValueError, match="long_len"):
        repro.CopySettings(**(TINY_COPY.model_dump() | {"long_len": 48}))
    with pytest.raises(ValueError, match="tokens_per_batch"):
        repro.CopySettings(**(TINY_COPY.model_dump() | {"tokens_per_batch": 96}))


def test_hyena_layers_get_no_weight_decay():
    model = LanguageModel(hyena_dna_config("tiny-1k", d_model=16, max_seq_len=32))
    decay, no_decay = repro.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    hyena = {id(p) for m in model.modules() if isinstance(m, Hyena) for p in m.parameters()}
    assert hyena and not hyena & {id(p) for p in decay["params"]}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert model.backbone.embed.weight in decay["params"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_random_crops_are_aligned_windows_of_the_rows():
    inputs = torch.arange(5 * 20).view(5, 20)
    labels = inputs + 1000
    x, y = repro.random_crops(inputs, labels, 7, 6, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 6)
    assert torch.equal(y, x + 1000)
    assert torch.equal(x.diff(dim=1), torch.ones(7, 5, dtype=x.dtype))  # consecutive positions of one row
    assert (x // 20 == x[:, :1] // 20).all()


def test_windowed_losses_give_every_target_between_half_and_a_full_window_of_context():
    """A 'model' whose logit for token 0 is a tenth of the number of tokens before the target: the
    loss of each target then tells the context it was scored with."""

    class ContextCounter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids):
            B, T = ids.shape
            logits = torch.zeros(B, T, 2)
            logits[..., 0] = 0.1 * torch.arange(T, dtype=torch.float32)
            return logits

    ids = torch.zeros(3, 24, dtype=torch.long)
    full = repro.token_losses(ContextCounter(), ids, ids, window=None, batch_size=2)
    windowed = repro.token_losses(ContextCounter(), ids, ids, window=8, batch_size=2)
    # the loss of label 0 with logits (c / 10, 0) is log(1 + exp(-c / 10)), c = tokens before the target
    context = lambda losses: (-10 * torch.log(torch.expm1(losses))).round()  # noqa: E731
    assert torch.equal(context(full)[0], torch.arange(24.0))
    seen = context(windowed)[0]
    assert torch.equal(seen[:4], torch.arange(4.0))  # the first window keeps its first targets
    assert ((seen[4:] >= 4) & (seen[4:] <= 7)).all(), seen
    with pytest.raises(ValueError, match="multiple"):
        repro.token_losses(ContextCounter(), ids[:, :22], ids[:, :22], window=8, batch_size=2)


def test_copy_references_split_the_exact_losses():
    task = TINY_COPY.task()
    ref = repro.copy_references(task)
    e = task.entropy()
    c = e.copy_fraction
    assert math.isclose(ref["optimal"], (1 - c) * ref["fresh"], rel_tol=1e-9)
    assert math.isclose(
        ref["short_context"], c * ref["short_context_copied"] + (1 - c) * ref["fresh"], rel_tol=1e-9
    )
    assert ref["optimal"] < ref["short_context"]


def test_copy_part_trains_both_models(tmp_path):
    result = repro.copy_experiment(TINY_COPY, seed=1, device=CPU)
    long, short, ablation = result["models"]
    assert [(m["name"], m["train_len"], m["emb_dim"]) for m in result["models"]] == [
        ("long", 64, 5),
        ("short", 16, 5),
        ("long, emb_dim 7", 64, 7),
    ]
    assert [s["seq_len"] for s in long["warmup_stages"]] == [16, 32, 64] and short["warmup_stages"] is None
    assert long["eval_context"].startswith("whole") and short["eval_context"] == "windows of 16, stride 8"
    for m in (long, short, ablation):
        assert math.isfinite(m["loss"]) and math.isclose(m["perplexity"], math.exp(m["loss"]))
        assert min(m["loss_copied"], m["loss_fresh"]) <= m["loss"] <= max(m["loss_copied"], m["loss_fresh"])
        assert m["loss"] < math.log(16) + 1  # near uniform over the padded vocabulary after 6 steps


def test_motif_models_differ_only_in_the_mixer():
    hyena = repro.motif_model_config("hyena", TINY_MOTIF, 64)
    assert hyena == hyena_dna_config("tiny-1k", d_model=16, n_layers=2, max_seq_len=64, embed_dropout=0.0)
    for kind, name in (("sliding_window", "sliding_window"), ("attention", "attention")):
        cfg = repro.motif_model_config(kind, TINY_MOTIF, 64)
        assert cfg.mixer.name == name and cfg.mixer.kwargs["rotary"] is True
        assert cfg.model_dump(exclude={"mixer"}) == hyena.model_dump(exclude={"mixer"})
    assert repro.motif_model_config("sliding_window", TINY_MOTIF, 64).mixer.kwargs["window"] == 8
    wide = TINY_MOTIF.model_copy(update={"hyena_emb_dim": 7})
    assert repro.motif_model_config("hyena", wide, 64).mixer.kwargs["emb_dim"] == 7


def test_motif_part_trains_every_model_and_skips_long_attention():
    rows = repro.motif_experiment(TINY_MOTIF, seed=0, device=CPU)
    assert [(r["model"], r["distance"]) for r in rows] == [
        (m, d) for d in (8, 32) for m in ("hyena", "sliding_window", "attention")
    ]
    assert [r["seq_len"] for r in rows] == [32] * 3 + [64] * 3
    for r in rows:
        assert (
            0.0 <= r["accuracy"] <= 1.0
            and len(r["train_curve"]) == 3
            and r["batch_size"] == 128 // r["seq_len"]
        )
    capped = repro.motif_experiment(
        TINY_MOTIF.model_copy(update={"attention_max_len": 32, "models": ("attention",)}), seed=0, device=CPU
    )
    assert capped[0]["accuracy"] is not None and capped[1]["accuracy"] is None and "skipped" in capped[1]


def test_run_writes_json_and_png(tmp_path):
    out = io.StringIO()
    record = repro.run(
        quick=True,
        out_dir=tmp_path,
        seed=2,
        console=Console(file=out, width=200),
        copy=TINY_COPY,
        motif=TINY_MOTIF,
    )
    saved = json.loads((tmp_path / "hyena_dna.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["name"] == "hyena_dna" and saved["seed"] == 2 and saved["quick"] is True
    assert saved["settings"]["copy"]["long_len"] == 64 and saved["settings"]["motif"]["distances"] == [8, 32]
    assert len(saved["copy"]["models"]) == 3 and len(saved["motif"]) == 6
    assert len(saved["verdicts"]) == 2 + 3
    assert (tmp_path / "hyena_dna.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = out.getvalue()
    assert (
        "perfect recall" in printed and "dna_motif_distance" in printed and "quick: reduced sizes" in printed
    )
