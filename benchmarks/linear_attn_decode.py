"""Decode-step benchmark of BASED linear attention: the fused Triton step against the chunked PyTorch form.

One step of ``fused_recurrent_linear_attention_step`` (Taylor features, ``f = 16``, ``E = 273``,
``D_v = 64``, ``H = 16``, bf16 q/k/v, float32 state) at batch 1, 16, 64, 256, and the same step through
``chunk_linear_attention`` (``T = 1``, ``initial_state``, ``output_final_state=True``). Both are checked
against ``naive_recurrent_linear_attention`` before they are timed.

Bytes moved per step: the float32 state read and written once, ``2 * 4 * B * H * (E * D_v + E)``, plus
q, k, v read and o written. Two times per form, medians:

- ``graph us``: GPU time per step. One CUDA graph steps through enough independent (q, k, v, state)
  sets to hold four times the L2 (60 MB on an H200), so every step reads its state from HBM and no
  launch gap is counted; replay time / number of steps. GB/s and the fraction of the H200's 4.8 TB/s
  HBM bandwidth come from this time.
- ``eager us``: one step launched from Python, ``triton.testing.do_bench`` (L2 flushed between calls).
  At small batch this is the launch overhead, not the kernel.

    python benchmarks/linear_attn_decode.py                      # needs CUDA
    python benchmarks/linear_attn_decode.py --batch 64 --block-v 32 --out decode.json
    python benchmarks/linear_attn_decode.py --interpret-smoke    # CPU, Triton interpreter, tiny shapes

Prints a table, then one JSON line. Exit status 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

H200_HBM_GBS = 4800.0
L2_BYTES = 60e6
TOLERANCE = {"o": 1e-2, "state": 1e-5}  # bf16 output; float32 state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="BASED decode step: fused Triton kernel vs chunked PyTorch; time, GB/s, fraction of HBM."
    )
    p.add_argument(
        "--batch", default="1,16,64,256", help="batch sizes, comma-separated (default %(default)s)"
    )
    p.add_argument("--heads", type=int, default=16, help="H (default %(default)s)")
    p.add_argument("--feature-dim", type=int, default=16, help="f, the q/k head dim (default %(default)s)")
    p.add_argument("--head-dim-v", type=int, default=64, help="D_v (default %(default)s)")
    p.add_argument("--feature-map", default="taylor", help="feature map (default %(default)s)")
    p.add_argument("--block-v", type=int, default=None, help="value columns per program (default: the op's)")
    p.add_argument("--num-warps", type=int, default=4, help="warps per program (default %(default)s)")
    p.add_argument("--peak-gbs", type=float, default=H200_HBM_GBS, help="HBM GB/s (default H200: 4800)")
    p.add_argument("--reps", type=int, default=50, help="timed graph replays (default %(default)s)")
    p.add_argument("--no-torch", action="store_true", help="time the fused step only")
    p.add_argument("--out", help="also write the JSON record to this file")
    p.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="CPU, Triton interpreter, H=2, batch 1,2: checks the script; its times mean nothing",
    )
    return p.parse_args(argv)


def bytes_moved(B: int, H: int, D: int, Dv: int, E: int, in_bytes: int) -> int:
    """The float32 state read and written once plus q, k, v read and o written."""
    return 2 * 4 * B * H * (E * Dv + E) + in_bytes * B * H * (2 * D + 2 * Dv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined, so before the import
        args.heads, args.batch = 2, "1,2"
    import torch

    if not args.interpret_smoke and not torch.cuda.is_available():
        print(
            "linear_attn_decode: needs a CUDA device (the Triton kernel does not run on CPU); "
            "pass --interpret-smoke to check the script through the Triton interpreter",
            file=sys.stderr,
        )
        return 2
    from subq.ops.linear_attn import feature_dim

    torch.manual_seed(0)
    device = "cpu" if args.interpret_smoke else "cuda"
    E = feature_dim(args.feature_map, args.feature_dim)
    rows = [bench_batch(int(b), E, args, device) for b in args.batch.split(",")]
    record = {
        "benchmark": "linear_attn_decode",
        "device": "cpu-interpret" if args.interpret_smoke else torch.cuda.get_device_name(),
        "config": {
            "H": args.heads,
            "D": args.feature_dim,
            "E": E,
            "D_v": args.head_dim_v,
            "feature_map": args.feature_map,
            "dtype": "bf16",
            "state": "fp32",
            "block_v": args.block_v,
            "num_warps": args.num_warps,
        },
        "peak_gbs": args.peak_gbs,
        "rows": rows,
    }
    print_table(record)
    line = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0 if all(g["ok"] for r in rows for g in r["gate"].values()) else 1


def bench_batch(B: int, E: int, args: argparse.Namespace, device: str) -> dict:
    """Check, then time, both forms at batch ``B``."""
    import torch

    from subq.ops.linear_attn import chunk_linear_attention, naive_recurrent_linear_attention
    from subq.ops.linear_attn.fused_recurrent import fused_recurrent_linear_attention_step

    H, D, Dv, fm = args.heads, args.feature_dim, args.head_dim_v, args.feature_map
    state_bytes = 4 * B * H * (E * Dv + E)
    n_sets = 1 if device == "cpu" else min(256, math.ceil(4 * L2_BYTES / state_bytes))

    def make_set():
        q, k, v = (torch.randn(B, H, d, device=device, dtype=torch.bfloat16) for d in (D, D, Dv))
        # the state after a 64-token prompt: positive z keeps the normaliser away from zero
        pk, pv = torch.randn(B, 64, H, D, device=device), torch.randn(B, 64, H, Dv, device=device)
        _, (S, z) = chunk_linear_attention(pk, pk, pv, feature_map=fm, output_final_state=True)
        return q, k, v, S.contiguous(), z.contiguous(), torch.empty(B, H, Dv, device=device, dtype=q.dtype)

    sets = [make_set() for _ in range(n_sets)]

    def fused(q, k, v, S, z, o):
        kw = dict(feature_map=fm, out=o, block_v=args.block_v, num_warps=args.num_warps)
        return fused_recurrent_linear_attention_step(q, k, v, (S, z), **kw)

    def chunked(q, k, v, S, z, o):
        x = (q[:, None], k[:, None], v[:, None])
        o_, state = chunk_linear_attention(*x, feature_map=fm, initial_state=(S, z), output_final_state=True)
        return o_[:, 0], state

    forms = {"fused": fused} if args.no_torch else {"fused": fused, "torch": chunked}
    q, k, v, S, z, o = sets[0]
    ref_o, (ref_S, ref_z) = naive_recurrent_linear_attention(
        q[:, None], k[:, None], v[:, None], feature_map=fm, initial_state=(S, z), output_final_state=True
    )
    row = {"batch": B, "bytes": bytes_moved(B, H, D, Dv, E, q.element_size()), "steps_per_graph": n_sets}
    row["gate"] = {}
    for name, fn in forms.items():
        a_o, (a_S, a_z) = fn(q, k, v, S.clone(), z.clone(), torch.empty_like(o))
        errs = {"o": rel_rms(a_o, ref_o[:, 0]), "S": rel_rms(a_S, ref_S), "z": rel_rms(a_z, ref_z)}
        ok = errs["o"] <= TOLERANCE["o"] and max(errs["S"], errs["z"]) <= TOLERANCE["state"]
        row["gate"][name] = {"ok": bool(ok), **{k_: float(f"{e:.3e}") for k_, e in errs.items()}}
    for name, fn in forms.items():
        if not row["gate"][name]["ok"]:
            row[name] = None
            continue
        eager = eager_us(lambda fn=fn: fn(*sets[0]), device)
        graph = graph_us(fn, sets, args.reps) if device == "cuda" else None
        gbs = row["bytes"] / ((graph if graph else eager) * 1e-6) / 1e9
        row[name] = {
            "graph_us": None if graph is None else round(graph, 2),
            "eager_us": round(eager, 2),
            "GB/s": round(gbs, 1),
            "hbm_frac": round(gbs / args.peak_gbs, 3),
        }
    return row


def rel_rms(a, e) -> float:
    a, e = a.double(), e.double()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt()).item()


def eager_us(fn, device: str) -> float:
    """Median microseconds of one call: do_bench on CUDA, wall clock of 3 calls on CPU."""
    if device == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def graph_us(fn, sets: list, reps: int) -> float:
    """Median GPU microseconds per step: one CUDA graph runs ``fn`` once on every set."""
    import torch

    for s in sets:  # compile and warm up outside the capture
        fn(*s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in sets:
            fn(*s)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(sets))
    return statistics.median(times)


def print_table(record: dict) -> None:
    c = record["config"]
    print(
        f"BASED decode step on {record['device']}: H={c['H']} f={c['D']} E={c['E']} D_v={c['D_v']} "
        f"{c['dtype']} q/k/v, {c['state']} state, block_v={c['block_v']}, num_warps={c['num_warps']}; "
        f"HBM peak {record['peak_gbs']:.0f} GB/s"
    )
    print(
        f"{'batch':>6} {'MB':>8} | {'fused graph us':>14} {'GB/s':>7} {'% HBM':>6} {'eager us':>9} | "
        f"{'torch graph us':>14} {'eager us':>9} | {'speedup':>7}"
    )
    print("-" * 96)
    for r in record["rows"]:
        f, t = r["fused"], r.get("torch")
        cells = [f"{r['batch']:>6} {r['bytes'] / 1e6:>8.2f}"]
        cells.append(
            f"{_num(f['graph_us']):>14} {f['GB/s']:>7.0f} {100 * f['hbm_frac']:>5.1f}% {f['eager_us']:>9.1f}"
            if f
            else f"{'FAIL':>39}"
        )
        cells.append(
            f"{_num(t['graph_us']):>14} {t['eager_us']:>9.1f}"
            if t
            else f"{'FAIL' if 'torch' in r else '-':>24}"
        )
        fast = (f["graph_us"] or f["eager_us"]) if f else None
        slow = (t["graph_us"] or t["eager_us"]) if t else None
        cells.append(f"{slow / fast:>6.1f}x" if fast and slow else f"{'-':>7}")
        print(" | ".join(cells))


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
