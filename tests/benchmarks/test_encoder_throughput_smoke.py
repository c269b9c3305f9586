"""Smoke test of ``benchmarks/encoder_throughput.py`` on tiny encoders on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from tests.benchmarks.scripts import load_script
from tests.conftest import assert_close


@pytest.fixture(scope="module")
def bench():
    return load_script("encoder_throughput")


def test_tiny_run_prints_table_and_json(bench, tmp_path, capsys, one_thread):
    out = tmp_path / "enc.json"
    argv = ["--device", "cpu", "--size", "tiny", "--lengths", "32,64", "--tokens", "128", "--iters", "1",
            "--warmup", "0", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    stdout = capsys.readouterr().out
    record = json.loads(stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    assert "T=64 x attn" in stdout
    rows = record["rows"]
    assert [(r["model"], r["T"], r["batch"]) for r in rows] == [
        (m, T, 128 // T) for T in (32, 64) for m in ("attention", "m2", "hydra")
    ]
    assert all(r["status"] == "ok" and r["tokens_per_ms"] > 0 and r["params"] > 0 for r in rows)
    assert set(record["speedup_over_attention"]) == {"m2", "hydra"}
    assert all(v > 0 for sp in record["speedup_over_attention"].values() for v in sp.values())


def test_models_share_width_and_depth(bench):
    for model in bench.MODELS:
        cfg = bench.encoder_config(model, "mini", 1024)
        assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (256, 4, 30522)
        assert cfg.max_seq_len == 1024
    attn, m2, hydra = (bench.encoder_config(m, "mini", 1024) for m in bench.MODELS)
    assert attn.mixer.name == "attention" and attn.mixer.kwargs["num_heads"] == 4
    assert m2.mixer.name == "monarch_mixer" and m2.mixer.kwargs["max_seq_len"] == 1024
    assert hydra.mixer.name == "hydra" and hydra.channel_mixer.name == "none" and hydra.pos_emb == "none"
    assert bench.encoder_config("hydra", "base", 512, hydra_layers=23).n_layers == 23
    assert hydra.mixer.kwargs["conv_mode"] == hydra.mixer.kwargs["norm_mode"] == "auto"
    triton = bench.encoder_config("hydra", "mini", 1024, hydra_conv="triton", hydra_norm="triton").mixer
    assert triton.kwargs == {**hydra.mixer.kwargs, "conv_mode": "triton", "norm_mode": "triton"}
    m2_triton = bench.encoder_config("m2", "mini", 1024, m2_long_conv="triton_fp16").mixer
    assert m2_triton.kwargs == {**m2.mixer.kwargs, "long_conv_form": "triton_fp16"}
    assert m2.mixer.kwargs["long_conv_form"] == "auto"


@pytest.mark.gpu
def test_cuda_graph_replays_the_eager_forward(bench):
    """``--cuda-graph``: the captured forward of every model writes what the eager one computes."""
    for model in bench.MODELS:
        enc = bench.Encoder(bench.encoder_config(model, "tiny", 4096)).cuda().eval()
        ids = torch.randint(0, 1000, (2, 4096), device="cuda")
        out = {}

        def forward(enc=enc, ids=ids, out=out):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                out["y"] = enc(ids)

        forward()
        eager = out["y"].clone()
        replay = bench._graphed(forward, warmup=1)
        with torch.inference_mode():
            out["y"].zero_()
        replay()
        torch.cuda.synchronize()
        # the same kernels on the same inputs; bf16 rounding bounds any difference in GEMM algorithms
        assert_close(out["y"].float(), eager.float(), 1e-2, model)


def test_oom_is_a_result_not_a_crash(bench, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")

    monkeypatch.setattr(bench, "_forward_ms", boom)
    args = bench.parse_args(["--device", "cpu", "--size", "tiny"])
    row = bench.measure("attention", 32768, args, torch.device("cpu"))
    assert row["status"] == "OOM" and row["tokens_per_ms"] is None and row["batch"] == 1
    assert bench.speedups([row, {**row, "model": "m2", "status": "ok", "tokens_per_ms": 3.0}]) == {
        "m2": {"32768": None}
    }


def test_bad_options_exit(bench):
    for argv in (["--lengths", "1"], ["--lengths", "a,b"], ["--models", "bert"], ["--tokens", "0"],
                 ["--hydra-layers", "0"]):  # fmt: skip
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
