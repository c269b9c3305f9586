"""``subq repro combiner`` at a tiny size (seconds): the axial-attention mask and layer, the digit
sequences, both experiments and the files the run writes.

    python -m pytest tests/repro/test_combiner_repro.py -q
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console

from subq.repro import combiner as repro
from subq.repro import get_reproduction

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = repro.ReproConfig(
    d_model=16,
    n_layers=1,
    num_heads=2,
    num_features=8,
    eval_batch_size=450,
    density_upsample=1,
    density_models=("attention", "axial", "axial_strided", "combiner_axial", "kernelized_rpe"),
    density_steps=3,
    density_batch_size=4,
    density_warmup=1,
    stability_models=("performer", "kernelized_rpe"),
    stability_seeds=2,
    stability_steps=3,
    stability_batch_size=4,
    stability_warmup=1,
)


def _expected_mask(T: int, m: int, strided: bool) -> torch.Tensor:
    """The intended pattern, pair by pair."""
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            row = i - j < m if strided else i // m == j // m
            mask[i, j] = row or i % m == j % m
    return mask


@pytest.mark.parametrize("strided", [False, True], ids=["row-prefix", "strided"])
@pytest.mark.parametrize("T,m", [(64, 8), (256, 16), (23, 5), (7, 1), (9, 9)], ids=lambda v: str(v))
def test_axial_mask_is_the_intended_pattern(T, m, strided):
    mask = repro.axial_mask(T, m, strided=strided)
    assert torch.equal(mask, _expected_mask(T, m, strided))
    assert not mask.triu(1).any(), "no position sees the future"
    assert mask.diagonal().all()
    if not strided:  # (u, l) sees l + 1 tokens of its row and the u tokens above it
        counts = torch.tensor([i % m + 1 + i // m for i in range(T)])
        assert torch.equal(mask.sum(1), counts)


def test_receptive_fields_after_two_layers():
    """Row prefix + column: (u, l) never hears from earlier rows right of column l, at any depth;
    the strided pattern reaches every earlier position in two layers."""
    T, m = 64, 8
    plain = repro.axial_mask(T, m).int()
    reach = ((plain @ plain) > 0) | plain.bool()
    reach3 = ((reach.int() @ plain) > 0) | reach
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    quadrant = (j // m <= i // m) & (j % m <= i % m)
    assert torch.equal(reach, quadrant) and torch.equal(reach3, quadrant)
    strided = repro.axial_mask(T, m, strided=True).int()
    assert torch.equal(((strided @ strided) > 0), j <= i)


@pytest.mark.parametrize("strided", [False, True], ids=["row-prefix", "strided"])
def test_axial_attention_depends_exactly_on_its_mask(strided):
    """One layer: output ``i`` has a nonzero Jacobian block for input ``j`` iff the mask allows it;
    the SDPA form equals the masked float32 reference."""
    T, m, d = 20, 6, 8
    torch.manual_seed(0)
    layer = repro.AxialAttention(d, row_len=m, strided=strided, num_heads=2).double()
    x = torch.randn(1, T, d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x)[:, :, 0]  # [T, d, T, d]
    depends = jac.abs().sum(dim=(1, 3)) > 0
    assert torch.equal(depends, repro.axial_mask(T, m, strided=strided))
    naive = repro.AxialAttention(d, row_len=m, strided=strided, num_heads=2, mode="naive").double()
    naive.load_state_dict(layer.state_dict())
    torch.testing.assert_close(naive(x), layer(x), rtol=1e-10, atol=1e-12)


def test_axial_model_is_attention_when_one_row_holds_everything():
    """Same init as ``attention``; with a row as long as the sequence the mask is the causal mask."""
    cfg = TINY.model_copy(update={"n_layers": 2})
    ids = torch.randint(0, repro.VOCAB_SIZE, (2, 16))
    full = repro.build_model("attention", cfg, 16, 16, seed=3).eval()
    axial = repro.build_model("axial", cfg, 16, 16, seed=3).eval()
    assert all(isinstance(b.mixer, repro.AxialAttention) for b in axial.backbone.blocks)
    torch.testing.assert_close(axial(ids), full(ids), rtol=1e-5, atol=1e-6)
    rows_of_4 = repro.build_model("axial", cfg, 16, 4, seed=3).eval()
    assert not torch.allclose(rows_of_4(ids), full(ids), atol=1e-4)
    combiner = repro.build_model("combiner_axial", cfg, 16, 4, seed=3)
    assert combiner.backbone.blocks[0].mixer.block_size == 4
    assert combiner.backbone.blocks[0].mixer.variant == "axial"


def test_digit_sequences_and_inputs():
    train, test = repro.load_digit_sequences(upsample=2)
    assert train.shape == (1347, 256) and test.shape == (450, 256)
    assert train.min() >= 0 and train.max() == repro.GRAY_LEVELS - 1
    small, _ = repro.load_digit_sequences(upsample=1)
    img, big = small[0].view(8, 8), train[0].view(16, 16)
    assert torch.equal(big[::2, ::2], img) and torch.equal(big[1::2, 1::2], img)
    x = repro.lm_inputs(small[:2])
    assert (x[:, 0] == repro.BOS).all() and torch.equal(x[:, 1:], small[:2, :-1])


def test_divergence_rule():
    ok = {"losses": [4.0, 3.0] + [2.0] * 18, "diverged_at": None}
    assert not repro.diverged(ok, threshold=math.log2(17))
    assert repro.diverged({"losses": [4.0, 3.0], "diverged_at": 2}, threshold=math.log2(17))
    assert repro.diverged({"losses": [2.0] * 18 + [5.0, 5.0], "diverged_at": None}, threshold=math.log2(17))


def test_training_stops_at_a_non_finite_loss():
    model = repro.build_model("performer", TINY, 64, 8, seed=0)
    with torch.no_grad():
        model.backbone.embed.weight[0, 0] = float("nan")
    train, _ = repro.load_digit_sequences(1)
    result = repro.train_model(
        model, train[train[:, 0] == 0], steps=5, batch_size=4, lr=1e-3, warmup=0, grad_clip=None, seed=0
    )
    assert result["diverged_at"] == 0 and result["losses"] == []


def test_tiny_run_writes_json_and_png(tmp_path):
    console = Console(record=True, width=180)
    record = repro.run(quick=True, out_dir=tmp_path, seed=1, console=console, config=TINY, device="cpu")
    assert get_reproduction("combiner") is repro and repro.CLAIM and "\n" not in repro.CLAIM
    saved = json.loads((tmp_path / "combiner.json").read_text())
    assert saved["density"] == json.loads(json.dumps(record["density"]))
    assert [r["model"] for r in saved["density"]] == list(TINY.density_models)
    for row in saved["density"]:
        assert row["params"] > 0 and 0 < row["test_bpd"] < 6 and len(row["runs"]) == 1
        assert len(row["runs"][0]["losses"]) == TINY.density_steps
    params = {r["model"]: r["params"] for r in saved["density"]}
    assert params["attention"] == params["axial"] == params["axial_strided"]
    stability = saved["stability"]
    assert [r["model"] for r in stability["rows"]] == list(TINY.stability_models)
    for row in stability["rows"]:
        assert [r["seed"] for r in row["runs"]] == [1, 2] and 0 <= row["diverged"] <= 2
    assert len(saved["verdicts"]) == 4
    assert (tmp_path / "combiner.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = console.export_text()
    assert "test bits/dim" in printed and "diverged" in printed and "combiner_axial" in printed


def test_largest_spike():
    assert repro.largest_spike([3.0, 2.0, 1.0]) == 0.0
    assert repro.largest_spike([3.0, 1.0, 2.5, 1.5, 1.8]) == 1.5
    assert repro.largest_spike([3.0, 1.0, 2.5, 0.5, 1.8], skip=3) == pytest.approx(1.3)


def test_zoo_combiner_preset_tiny_run(tmp_path):
    """``subq zoo --preset combiner``: attention, the four Combiner variants and both random-feature
    mixers, one head each; shrunk to seconds."""
    from subq.train.zoo import ZooConfig, mixers_from_names, run_zoo

    defaults = mixers_from_names(["combiner", "kernelized_rpe", "performer"])
    assert all(m.kwargs["num_heads"] == 1 for m in defaults) and defaults[0].kwargs["block_size"] == 8
    cfg = ZooConfig.preset(
        "combiner",
        d_models=[16],
        settings=[(32, 2)],
        vocab_size=64,
        num_train_examples=64,
        num_test_examples=32,
        batch_size=32,
        epochs=1,
    )
    variants = [m.kwargs.get("variant") for m in cfg.mixers if m.name == "combiner"]
    assert variants == ["fixed", "logsparse", "axial", "mixture"]
    rows = run_zoo(cfg, out_dir=tmp_path)
    assert [r.mixer for r in rows] == ["attention"] + ["combiner"] * 4 + ["kernelized_rpe", "performer"]
    assert all(r.steps == 2 and 0 <= r.accuracy <= 1 and r.state_size > 0 for r in rows)
    state = {r.label: r.state_size for r in rows}
    assert state["combiner(block_size=8, variant=fixed)"] < state["attention"]
