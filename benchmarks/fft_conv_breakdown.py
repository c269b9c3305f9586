"""Where the time of the ``torch.fft`` long convolution goes on a CUDA GPU: the anchor expression
``irfft(rfft(u, n=2T) * rfft(h, n=2T), n=2T)[..., :T]`` (u ``[1, 128, T]``, h ``[128, T]``, fp32)
split into its transforms and product, and a half-precision cuFFT variant with its error.

    python benchmarks/fft_conv_breakdown.py --out fft_breakdown.json

Prints one line per timing (``triton.testing.do_bench`` medians, ms) and a JSON last line.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.nn import functional as F


def breakdown(T: int, C: int, log) -> None:
    """Time the anchor and its pieces at length ``T`` with ``C`` channels."""
    from triton.testing import do_bench

    n = 2 * T
    u = torch.randn(1, C, T, device="cuda")
    h = torch.randn(C, T, device="cuda") / T**0.5

    def ref():
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(h, n=n), n=n)[..., :T]

    U = torch.fft.rfft(u, n=n)
    up = F.pad(u, (0, T))

    def half():
        s_u, s_h = u.abs().amax(-1, keepdim=True), h.abs().amax(-1, keepdim=True)
        a = torch.fft.rfft((u / s_u).half(), n=n, norm="ortho")
        b = torch.fft.rfft((h / s_h).half(), n=n, norm="ortho")
        return torch.fft.irfft(a * b, n=n, norm="ortho")[..., :T].float() * (s_u * s_h) * n**0.5

    log(f"T{T}.anchor_ms", do_bench(ref, rep=50))
    log(f"T{T}.rfft_u_ms", do_bench(lambda: torch.fft.rfft(u, n=n), rep=50))
    log(f"T{T}.irfft_ms", do_bench(lambda: torch.fft.irfft(U, n=n), rep=50))
    log(f"T{T}.product_ms", do_bench(lambda: U * U, rep=50))
    log(f"T{T}.rfft_prepadded_ms", do_bench(lambda: torch.fft.rfft(up), rep=50))
    y = ref().double()
    log(f"T{T}.half_relerr", ((half().double() - y).norm() / y.norm()).item())
    log(f"T{T}.half_ms", do_bench(half, rep=50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="65536,1048576")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res: dict[str, float] = {}

    def log(key: str, value: float) -> None:
        res[key] = value
        print(f"{key:40s} {value:.4f}", flush=True)

    for T in (int(t) for t in args.lengths.split(",")):
        breakdown(T, args.channels, log)
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
