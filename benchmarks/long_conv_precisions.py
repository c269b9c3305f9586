"""The Triton long convolution at each of its precisions vs the ``torch.fft`` float32 anchor on a
CUDA GPU: u ``[1, T, 128]`` (a channels-first view), h ``[128, T]``, fp32; relative RMS error
against the float64 FFT form.

    python benchmarks/long_conv_precisions.py --out long_conv_precisions.json

Prints ``T precision ms error`` lines (``triton.testing.do_bench`` medians) and a JSON last line.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="65536,1048576")
    ap.add_argument("--precisions", default="tf32x3,tf32,fp16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from triton.testing import do_bench

    from subq.bench.long_conv_entries import torch_fft_long_conv
    from subq.ops.long_conv import fft_long_conv, triton_long_conv

    res: dict[str, object] = {}
    for T in (int(t) for t in args.lengths.split(",")):
        u = torch.randn(1, 128, T, device="cuda").transpose(1, 2)
        h = torch.randn(128, T, device="cuda") / T**0.5
        ref = fft_long_conv(u.double(), h.double())
        res[f"T{T}.torch_fft_ms"] = do_bench(lambda: torch_fft_long_conv(u, h), rep=50)  # noqa: B023
        print(T, "torch_fft", res[f"T{T}.torch_fft_ms"], flush=True)
        for p in args.precisions.split(","):
            y = triton_long_conv(u, h, precision=p)
            err = ((y.double() - ref).norm() / ref.norm()).item()
            ms = do_bench(lambda: triton_long_conv(u, h, precision=p), rep=50)  # noqa: B023
            res[f"T{T}.{p}"] = {"ms": ms, "rel_rms": err}
            print(T, p, ms, err, flush=True)
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
