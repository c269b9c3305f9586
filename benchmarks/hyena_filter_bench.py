"""Time Hyena's implicit filter: the PyTorch form against the fused Triton kernels
(``subq/ops/hyena_filter/``), forward and forward + backward, and their agreement.

The filter is HyenaDNA's (``d = 128`` channels, MLP width 64, ``emb_dim`` 5, ``w`` 10) with
``max_seq_len = L``; ``HyenaFilter.taps(L, dtype=bf16)`` as the Hyena layer calls it under bf16
autocast (the MLP itself runs in float32 in both forms), with a bf16 upstream gradient for the
backward. ``do_bench`` medians, in ms. Also reported: the relative RMS of the Triton taps (float32
and bf16) and of the old bf16-autocast MLP against the float32 PyTorch taps. Prints one line per
length and, as the last line, one JSON object (``--out`` also writes it). GPU only (``--smoke``: a
tiny length, also in Triton's interpreter on a CPU).

    python benchmarks/hyena_filter_bench.py --L 4096,131072,1048576 --out hyena_filter.json
"""

from __future__ import annotations

import argparse
import json

import torch


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).pow(2).mean() / ref.double().pow(2).mean()).sqrt().item()


def bench_length(L: int, device: str, timed: bool) -> dict:
    from subq.layers.hyena import HyenaFilter

    filt = HyenaFilter(128, emb_dim=5, filter_order=64, max_seq_len=L, w=10.0, bidirectional=False).to(device)
    row: dict = {"L": L}
    g = torch.randn(1, 128, L, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float16)
    for mode in ("torch", "triton"):

        def fwd(mode=mode):
            with torch.autocast(device, dtype=g.dtype, enabled=device == "cuda"):
                return filt.taps(L, dtype=g.dtype, mode=mode)

        if timed:
            from triton.testing import do_bench

            row[f"{mode}_fwd_ms"] = do_bench(fwd, warmup=10, rep=100)
            row[f"{mode}_fwd_bwd_ms"] = do_bench(lambda fwd=fwd: fwd().backward(g), warmup=10, rep=100)
        else:
            fwd().backward(g)
    with torch.no_grad():
        exact = filt.taps(L, mode="torch")[0]
        row["triton_fp32_rel_rms"] = rel_rms(filt.taps(L, mode="triton")[0], exact)
        row["triton_half_rel_rms"] = rel_rms(filt.taps(L, dtype=g.dtype, mode="triton")[0], exact)
        if device == "cuda":  # the MLP as bf16 autocast runs it (the reference code's behaviour)
            with torch.autocast(device, dtype=torch.bfloat16):
                row["autocast_mlp_rel_rms"] = rel_rms(filt(torch.arange(L, device=device)).T, exact)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", default="4096,131072,1048576", help="comma-separated lengths")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--smoke", action="store_true", help="one tiny length, untimed (runs on a CPU too)")
    args = p.parse_args(argv)
    if args.smoke:
        device, lengths, timed = ("cuda" if torch.cuda.is_available() else "cpu"), [100], False
    else:
        if not torch.cuda.is_available():
            raise SystemExit("hyena_filter_bench.py times CUDA kernels; use --smoke on a CPU")
        device, lengths, timed = "cuda", [int(x) for x in args.L.split(",")], True
    rows = []
    for L in lengths:
        rows.append(bench_length(L, device, timed))
        r = rows[-1]
        times = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k.endswith("_ms"))
        print(f"L={L}  {times}  triton rel-RMS fp32 {r['triton_fp32_rel_rms']:.1e}", flush=True)
    record = {"gpu": torch.cuda.get_device_name() if timed else "none", "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    print(json.dumps(record))
    return rows


if __name__ == "__main__":
    main()
