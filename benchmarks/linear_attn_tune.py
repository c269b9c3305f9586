"""Sweep the launch configurations of the chunked linear-attention kernels (``--form fused``:
``fused_chunk.py``; ``--form parallel``: ``chunk_parallel.py``) at the shapes of the benchmark targets.
Every config is first checked against the PyTorch chunked form (a config that compiles can still be
wrong), then timed; prints one JSON row per config and a JSON last line with the fastest forward and
backward config per shape. GPU only.

    python benchmarks/linear_attn_tune.py --form parallel --out tune.json

The defaults in each kernel file's ``_launch_config`` come from this sweep.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

SHAPES = {
    # name: (feature map, B, H, D, D_v, lengths)
    "based": ("taylor", 4, 16, 16, 64, (8192, 32768)),
    "relu": ("relu", 1, 32, 128, 128, (32768, 131072)),
}
MODULES = {
    "fused": ("subq.ops.linear_attn.fused_chunk", "fused_chunk_linear_attention"),
    "parallel": ("subq.ops.linear_attn.chunk_parallel", "chunk_parallel_linear_attention"),
}
CONFIGS = {
    ("fused", "taylor"): [
        dict(BT=BT, BV=BV, num_warps=w, num_stages=3) for BT, BV, w in [(16, 16, 4), (32, 16, 4), (32, 32, 4)]
    ],
    ("fused", "relu"): [
        dict(BT=BT, BV=BV, num_warps=w, num_stages=1)
        for BT, BV, w in [(32, 16, 4), (32, 32, 4), (32, 64, 4), (64, 32, 8), (64, 64, 4)]
    ],
    ("parallel", "taylor"): [
        dict(BT=BT, BR=16, BVS=BVS, BVO=64, num_warps=w, num_warps_bwd=wb)
        for BT, BVS, w, wb in [
            (64, 64, 4, 8),
            (64, 32, 4, 8),
            (32, 64, 4, 4),
            (128, 64, 8, 8),
            (64, 64, 8, 4),
        ]
    ],
    ("parallel", "relu"): [
        dict(BT=BT, BR=BR, BVS=BVS, BVO=BVO, num_warps=w, num_warps_bwd=wb)
        for BT, BR, BVS, BVO, w, wb in [
            (64, 64, 32, 64, 4, 8),
            (64, 64, 64, 64, 4, 8),
            (64, 128, 64, 128, 8, 8),
            (128, 64, 64, 64, 8, 8),
            (64, 32, 32, 32, 4, 4),
        ]
    ],
}


def check_config(fn, fm: str, D: int, Dv: int) -> float:
    """Largest relative-RMS error of the output and input gradients against the PyTorch chunked form
    (bf16 inputs, float32 reference) at a small length."""
    from subq.ops.linear_attn import chunk_linear_attention

    q, k = (torch.randn(1, 300, 2, D, device="cuda").bfloat16().requires_grad_() for _ in range(2))
    v = torch.randn(1, 300, 2, Dv, device="cuda").bfloat16().requires_grad_()
    ref = [x.detach().float().requires_grad_() for x in (q, k, v)]
    o = fn(q, k, v, feature_map=fm)[0]
    o_r = chunk_linear_attention(*ref, feature_map=fm)[0]
    do = torch.randn_like(o_r)
    grads = torch.autograd.grad((o.float() * do).sum(), (q, k, v))
    grads_r = torch.autograd.grad((o_r * do).sum(), ref)
    errs = [(a.float() - b).norm() / b.norm() for a, b in zip((o, *grads), (o_r, *grads_r), strict=True)]
    return max(e.item() for e in errs)


def time_config(fn, q, k, v, do, fm: str) -> tuple[float, float]:
    """Median forward and backward ms under the patched launch config."""
    from triton.testing import do_bench

    def fwd():
        return fn(q, k, v, feature_map=fm)

    def fwd_bwd():
        fwd()[0].backward(do)

    t_fwd = do_bench(fwd)
    return t_fwd, do_bench(fwd_bwd, grad_to_none=[q, k, v]) - t_fwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--form", choices=list(MODULES), default="parallel")
    ap.add_argument("--shapes", default="based,relu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("linear_attn_tune.py needs a CUDA GPU")
    module_name, fn_name = MODULES[args.form]
    mod = importlib.import_module(module_name)
    fn = getattr(mod, fn_name)
    default = mod._launch_config
    rows, best = [], {}
    for name in args.shapes.split(","):
        fm, B, H, D, Dv, lengths = SHAPES[name]
        for T in lengths:
            q, k = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            if fm == "relu":
                q, k = q.abs(), k.abs()
            v = torch.randn(B, T, H, Dv, device="cuda", dtype=torch.bfloat16)
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            do = torch.randn_like(v)
            for cfg in CONFIGS[(args.form, fm)]:
                mod._launch_config = lambda *a, cfg=cfg, **kw: dict(cfg)
                row = dict(form=args.form, shape=name, T=T, **cfg)
                try:
                    row["max_rel_err"] = check_config(fn, fm, D, Dv)
                    if row["max_rel_err"] > 2e-2:
                        raise ValueError(f"wrong results: relative RMS error {row['max_rel_err']:.2e}")
                    row["fwd_ms"], row["bwd_ms"] = time_config(fn, q, k, v, do, fm)
                except Exception as e:  # does not compile (registers, shared memory), or is wrong
                    row["error"] = f"{type(e).__name__}: {e}"[:200]
                rows.append(row)
                print(json.dumps(row), flush=True)
                if "error" in row:
                    continue
                for phase in ("fwd_ms", "bwd_ms"):
                    key = f"{name}-T{T}-{phase}"
                    if key not in best or row[phase] < best[key][phase]:
                        best[key] = row
            mod._launch_config = default
    summary = {
        key: {k: v for k, v in r.items() if k not in ("form", "shape", "T")} for key, r in best.items()
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "best": summary}, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
