"""Sweep the launch configurations of the Triton FFT convolution's three kernels
(``subq/ops/long_conv/triton_fft.py``) at the ``long_conv`` bench entry's shape: B = 1, 128 channels,
a filter as long as the sequence, float32 inputs, ``fp16`` operands.

For each length and kernel (forward columns, rows, inverse columns), every config is first checked:
the whole convolution with that config must be within 1e-3 relative RMS of the ``torch.fft`` float32
form at that length (a config that compiles can still be wrong). Then that kernel alone is timed
(``do_bench`` median ms). Each config overrides one kernel's launch in the cached plan (output rows,
sum terms and columns per program, warps, stages, register cap) and is clipped to the plan's sizes.
Prints one JSON row per config and a JSON last line with the fastest config per kernel and length.
GPU only (``--smoke``: a tiny length and one config per kernel, also in Triton's interpreter).

    python benchmarks/long_conv_tune.py --T 65536,1048576 --out long_conv_tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

CONFIGS = {  # besides the plan's own choice
    "columns": [
        dict(BM=bm, BK=bk, BN=bn, num_warps=w, num_stages=s, **({"maxnreg": r} if r else {}))
        for bm, bk, bn, w, s, r in [
            (64, 128, 64, 4, 1, None),
            (64, 128, 64, 4, 2, None),
            (64, 128, 64, 8, 2, None),
            (64, 64, 64, 4, 2, None),
            (128, 128, 64, 8, 2, None),
            (64, 128, 32, 4, 1, None),
            (64, 128, 64, 4, 1, 168),
        ]
    ],
    "inverse": [
        dict(BM=bm, BK=bk, BN=bn, MB=mb, num_warps=w, num_stages=s, **({"maxnreg": r} if r else {}))
        for bm, bk, bn, mb, w, s, r in [
            (128, 128, 64, None, 8, 1, None),
            (64, 128, 64, None, 4, 1, None),
            (128, 128, 32, None, 4, 1, None),
            (128, 128, 64, None, 8, 2, None),
            (64, 128, 64, 1, 4, 2, None),
            (128, 128, 64, None, 8, 1, 168),
        ]
    ],
    "rows": [
        dict(num_warps=w, **({"maxnreg": r} if r else {}))
        for w, r in [(2, None), (4, None), (8, None), (4, 168)]
    ],
}
SMOKE_CONFIGS = {
    "columns": [dict(BM=16, BK=16, BN=16, num_warps=4, num_stages=1)],
    "inverse": [dict(BM=16, BK=16, BN=16, MB=None, num_warps=4, num_stages=1)],
    "rows": [dict(num_warps=2)],
}
CHANNELS = 128
MIN_FACTOR = 16  # the GPU plan's least DFT factor, also in the interpreter: the smoke runs the GPU's tiles


def clipped(plan, kernel: str, cfg: dict) -> dict:
    """``cfg`` fitted to the plan's sizes (``N1 / 2`` sum terms and rows, ``N2`` columns)."""
    if kernel == "rows":
        return dict(cfg)
    K = plan.N1 // 2
    out = dict(cfg, BM=min(cfg["BM"], K), BK=min(cfg["BK"], K), BN=min(cfg["BN"], plan.N2))
    if kernel == "columns":
        out["MB"] = 1
    elif out.get("MB") is None:
        out["MB"] = K // out["BM"]
    return out


class plan_config:
    """Within the block, ``plan`` launches ``kernel`` with ``cfg`` (the forward columns' twiddle
    tables follow their columns per program)."""

    def __init__(self, plan, kernel: str, cfg: dict | None):
        self.plan, self.kernel, self.cfg = plan, kernel, cfg

    def __enter__(self):
        p = self.plan
        self.saved = dict(p.fwd), dict(p.inv), dict(p.row_launch)
        if self.cfg is None:
            return
        cfg = clipped(p, self.kernel, self.cfg)
        if self.kernel == "columns":
            p.set_forward(cfg)
        elif self.kernel == "inverse":
            p.inv = cfg
        else:
            p.row_launch = cfg

    def __exit__(self, *exc):
        p = self.plan
        p.set_forward(self.saved[0])
        p.inv, p.row_launch = self.saved[1:]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", default="65536,1048576", help="comma-separated lengths")
    ap.add_argument(
        "--smoke", action="store_true", help="a tiny length and one config per kernel (also on CPU)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        sys.exit("long_conv_tune.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    lengths = [64] if args.smoke else [int(t) for t in args.T.split(",")]
    channels = 4 if args.smoke else CHANNELS
    sweeps = SMOKE_CONFIGS if args.smoke else CONFIGS
    rows, best = [], {}
    for T in lengths:
        for row in sweep_length(T, channels, sweeps, device, args.smoke):
            rows.append(row)
            key = f"{row['kernel']}-{T}"
            if "ms" in row and (key not in best or row["ms"] < best[key]["ms"]):
                best[key] = row
    summary = {k: {c: v for c, v in r.items() if c not in ("kernel", "T")} for k, r in best.items()}
    result = {"config": dict(channels=channels, precision="fp16"), "rows": rows, "best": summary}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(summary))
    return result


def sweep_length(T: int, channels: int, sweeps: dict, device: str, smoke: bool) -> list[dict]:
    """The rows of every kernel's configs at length ``T``."""
    from subq.ops.long_conv import fft_long_conv
    from subq.ops.long_conv import triton_fft as tf

    g = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(1, channels, T, generator=g, device=device).transpose(1, 2)  # channels-first storage
    h = torch.randn(channels, T, generator=g, device=device) / T**0.5
    ref = fft_long_conv(u, h)
    plan = tf._plan(T, u.device, "fp16", MIN_FACTOR)
    st = tf._btc_strides(u)
    z_u = plan.spectrum(u, 1, channels, T, st)
    z_h = tf._filter_spectrum(plan, h, channels, T)
    sums = (channels, channels, (channels, 1, 0), (0, 1, 0), 1, False)
    w = plan.product(z_u, z_h, *sums)
    y = torch.empty_like(u)
    calls = {  # each kernel alone, on the default plan's intermediates
        "columns": lambda: plan.spectrum(u, 1, channels, T, st),
        "rows": lambda: plan.product(z_u, z_h, *sums),
        "inverse": lambda: plan.inverse(w, y, channels, T, tf._btc_strides(y)),
    }
    rows = []
    for kernel, configs in sweeps.items():
        for cfg in [None, *configs]:  # None: the plan's own choice
            with plan_config(plan, kernel, cfg):
                launch = {"columns": plan.fwd, "rows": plan.row_launch, "inverse": plan.inv}[kernel]
                row = dict(kernel=kernel, T=T, default=cfg is None, **launch)
                try:
                    out = tf.triton_long_conv(u, h, precision="fp16", min_factor=MIN_FACTOR)
                    row["rel_err"] = ((out - ref).norm() / ref.norm()).item()
                    if row["rel_err"] > 1e-3:
                        raise ValueError(f"wrong results: relative RMS error {row['rel_err']:.2e}")
                    if not smoke:
                        from triton.testing import do_bench

                        row["ms"] = do_bench(calls[kernel], warmup=20, rep=200)
                except Exception as e:  # does not compile (registers, shared memory), or is wrong
                    row["error"] = f"{type(e).__name__}: {e}"[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
