"""HiP's quality on a byte-level LM trained on one GPU: parts (a)-(c) of ``subq repro hip_quality`` on
the causal LM only (no MiniLM), at a length where HiP's paper defaults prune.

Trains ``hip_quality``'s byte-level Llama (``build_lm``: d = 256, 4 layers, 8 query / 2 KV heads) on
windows of ``--seq-len`` bytes of the standard library's source (train split; ``--pairs`` planted
``KEY-dddd = dddd`` lines and as many questions in a ``0.75`` fraction of them), then measures on the
test split with HiP at the paper's defaults (``mask_k = 512``, ``block_size_q = 64``, stride 2,
``block_size_k = 2``, 16 sinks, window 256, every layer):

- (a) mask quality: HiP's captured softmax mass over the exact top-k mass at HiP's key count, and the
  ceilings of a per-query and a shared-per-query-block selection (``hip_quality.mask_quality``);
- (b) held-out bits per byte and perplexity with dense attention, HiP, window-only and sink + window
  attention at the same key budget;
- (c) planted-pair retrieval accuracy with each.

    python benchmarks/hip_quality_lm.py --steps 2879      # one H200: 2 minutes of training
    python benchmarks/hip_quality_lm.py --keys byte --answer-weight 30   # one-byte keys (retrieval)
    python benchmarks/hip_quality_lm.py --keys byte --answer-weight 30 --hip-variants 32:1,16:1 \
        --save lm.safetensors                                      # and HiP with smaller query blocks
    python benchmarks/hip_quality_lm.py --device cpu --seq-len 1152 --steps 2 --batch 1 --d-model 32 \
        --eval-windows 1 --retrieval-examples 1                    # smoke test

The last stdout line is the JSON record (``--out PATH`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from subq.repro import hip_quality as hq


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2879, help="training steps")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=8, help="planted pairs (and questions) per window")
    ap.add_argument(
        "--keys", choices=("digits", "byte"), default="digits",
        help="planted keys: 'KEY-dddd = ' (digits) or one byte that UTF-8 text never holds (byte)",
    )  # fmt: skip
    ap.add_argument("--answer-weight", type=float, default=4.0, help="training weight of the answer bytes")
    ap.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity")
    ap.add_argument("--retrieval-examples", type=int, default=100, help="held-out windows with questions")
    ap.add_argument(
        "--hip-variants", default="",
        help="more HiP query-block settings for (c), as block_size_q:block_stride_q pairs, e.g. 32:1,16:1",
    )  # fmt: skip
    ap.add_argument("--save", default=None, help="write the trained LM's weights here (safetensors)")
    ap.add_argument("--load", default=None, help="evaluate these weights (from --save) instead of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = hq.ReproConfig(
        seq_len=args.seq_len, d_model=args.d_model, n_layers=4, num_heads=8, num_kv_heads=2,
        batch_size=args.batch, train_steps=args.steps, lr=2e-3, warmup=min(200, args.steps // 10),
        train_bytes=40_000_000, retrieval_fraction=0.75, retrieval_pairs=args.pairs,
        retrieval_questions=args.pairs, retrieval_keys=args.keys, answer_weight=args.answer_weight,
        hip=hq.HiPSettings(),
        eval_windows=args.eval_windows, eval_batch_size=4, retrieval_examples=args.retrieval_examples,
        quality_windows=2,
        quality_queries=min(2048, args.seq_len // 2),
    )  # fmt: skip
    hq.register_attentions()
    train = hq.stdlib_source_bytes("train", cfg.train_bytes)
    test = hq.stdlib_source_bytes("test", cfg.train_bytes)
    variants = [tuple(int(v) for v in pair.split(":")) for pair in args.hip_variants.split(",") if pair]
    model = hq.build_lm(cfg, args.seed, args.device)
    if args.load:
        from safetensors.torch import load_model

        load_model(model, args.load, device=args.device)
        training = {"seconds": 0.0, "losses": [], "loaded": args.load}
    else:
        t0 = time.perf_counter()
        training = hq.train_lm(model, train, cfg, args.seed, args.device)
        last = training["losses"][-100:]
        passes = args.steps * args.batch * args.seq_len / len(train)
        print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; last-100 training loss "
              f"{sum(last) / len(last):.3f} bits/byte ({len(train)} training bytes, "
              f"{passes:.1f} passes)")  # fmt: skip
    if args.save:
        from safetensors.torch import save_model

        save_model(model, args.save)
    lm = hq.lm_quality(model, test, cfg, args.seed, args.device)
    layers = ", ".join(f"{x['equal_budget']:.3f}" for x in lm["per_layer"])
    print(f"(a) mask quality {lm['equal_budget']:.3f} (per layer {layers}); ceilings: shared "
          f"{lm['block_oracle_shared']:.3f}, per query {lm['block_oracle_query']:.3f}")  # fmt: skip
    rows = hq.evaluate_methods(model, test, cfg, args.seed, args.device)
    for r in rows:
        print(f"{r['method']:>12}: {r['bits_per_byte']:.4f} bits/byte, ppl / dense {r['ppl_ratio']:.4f} "
              f"(past the budget {r['ppl_late_ratio']:.4f}), "
              f"retrieval {100 * r['retrieval_acc']:.1f}%")  # fmt: skip
    for bq, sq in variants:
        hip = cfg.hip.model_copy(update={"block_size_q": bq, "block_stride_q": sq})
        (r,) = hq.evaluate_methods(model, test, cfg.model_copy(update={"hip": hip}), args.seed, args.device,
                                   methods=("hip",))  # fmt: skip
        r.update(method=f"hip bq={bq} sq={sq}", hip=hip.model_dump(), ppl_ratio=r["ppl"] / rows[0]["ppl"],
                 retrieval_gap=100 * (r["retrieval_acc"] - rows[0]["retrieval_acc"]))  # fmt: skip
        r["ppl_late_ratio"] = r["ppl_late"] / rows[0]["ppl_late"]
        rows.append(r)
        acc = 100 * r["retrieval_acc"]
        print(f"{r['method']:>12}: ppl / dense {r['ppl_ratio']:.4f}, retrieval {acc:.1f}%")
    needles = None
    if args.keys == "byte":
        needles = hq.needle_coverage(model, test, cfg, args.seed, args.device)
        print("needles: dense probability in the retrieving head, per layer "
              + ", ".join(f"{v:.3f}" for v in needles["needle_prob"]) + "; kept by HiP's mask "
              + ", ".join(f"{v:.3f}" for v in needles["covered"]))  # fmt: skip
    import transformers

    record = {
        "config": cfg.model_dump(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_bytes": len(train),
        "training": {"seconds": training["seconds"], "losses_every_10": training["losses"][::10]},
        "byte_lm": lm,
        "methods": rows,
        "needles": needles,
    }
    line = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line)
    print(line)
    return record


if __name__ == "__main__":
    main()
