"""ReLU linear attention (LiT) forward: our Triton dispatch vs flash-linear-attention's
``chunk_linear_attn`` vs SDPA causal, B=1, H=32, D=128, bf16, on one CUDA GPU (needs ``fla-core``).

    python benchmarks/relu_linear_attn_vs_fla.py --out relu_vs_fla.json

Same inputs for all three (``q, k = |randn|`` so ReLU is the identity on them); first both linear
forms are checked against the fp32 PyTorch chunked form at T = 8192 (relative RMS printed), then
``triton.testing.do_bench`` medians. ``subq bench --entries linear_attention`` times the same modes
with its full gate (forward and gradients) when the fla backward fits the time you have.
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from fla.ops.linear_attn import chunk_linear_attn
    from triton.testing import do_bench

    from subq.ops.linear_attn import chunk_linear_attention, linear_attention

    res: dict[str, float] = {}
    B, H, D = 1, 32, 128
    for i, T in enumerate(int(t) for t in args.lengths.split(",")):
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        q, k = q.abs(), k.abs()

        ours = functools.partial(linear_attention, q, k, v, feature_map="relu", mode="triton")
        fla = functools.partial(chunk_linear_attn, q, k, v, normalize=True)

        if i == 0:
            ref = chunk_linear_attention(q.float(), k.float(), v.float(), feature_map="relu")[0]
            for name, fn in (("ours", ours), ("fla", fla)):
                res[f"relerr.{name}"] = ((fn()[0].float() - ref).norm() / ref.norm()).item()
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        sdpa = functools.partial(F.scaled_dot_product_attention, qt, kt, vt, is_causal=True)

        for name, fn in (("ours", ours), ("fla", fla), ("sdpa", sdpa)):
            slow = name == "sdpa" and T >= 131072
            ms = do_bench(fn, warmup=5 if slow else 25, rep=20 if slow else 100, return_mode="median")
            res[f"T{T}.{name}.fwd_ms"] = ms
            print(f"T={T:>7} {name:>5} fwd {ms:8.3f} ms", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
