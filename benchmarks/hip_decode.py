"""Decode-step latency of HiP attention against SDPA decode, at long context.

One new token (``q: [B, 1, H, D]``) attends a KV cache of ``T`` tokens (``[B, T, H_kv, D]``, the
``hip`` layer's layout; default B=1, H=32, H_kv=8, D=128, bf16). Per length:

- ``sdpa``: ``scaled_dot_product_attention`` of the query against the whole cache, PyTorch's default
  backend, GQA through ``enable_gqa=True`` on a ``[B, H_kv, T, D]`` cache (SDPA's own layout);
  ``sdpa_mha``: the same with the cache expanded to ``H`` heads (the ``ANCHORS.md`` decode anchor's
  configuration: 490 us at 128k with 32 heads; only when ``H_kv < H``);
- ``hip_search``: the mask search of the newest query (``hierarchical_mask``, ``block_size_q=1``) in
  one program per head (the layer's search on CPU);
- ``hip_cached``: one decode step over a cached mask (``hip_decode_attention``, split-K) in the
  state of the last step of a refresh interval: the mask searched ``refresh - 1`` tokens earlier and
  the window widened to ``window + refresh - 1`` (the widest of the interval: an upper bound);
- ``hip_amortized``: one search plus ``refresh`` steps with windows ``window .. window + refresh -
  1``, divided by ``refresh``.
- CUDA only: ``hip_search_split`` and ``hip_amortized_split``, the same with the search spread over
  the GPU (``hierarchical_mask(mode="triton_split")``, one launch per iteration): what the ``hip``
  layer and ``subq_hip`` run on CUDA (``hip_amortized_split`` is their per-token decode cost), and
  ``split_mask_agreement``: the fraction of its block ids equal to the one-program search's at the
  full length (the two score with different instructions, so near-ties can go either way).

Before timing, HiP's decode output is checked against ``naive_block_sparse_attention`` (float32) on
the same mask at ``min(T, 65536)``. Times, median microseconds:

- ``graph us`` (CUDA): GPU time per call. A CUDA graph runs ``[flush L2, call]`` 16 times; a second
  graph runs the 16 flushes alone; the difference / 16 is the call with a cold L2 (as in a model,
  where the other layers evict the cache between two steps of a layer) and without launch gaps (as in
  a graph-captured serving loop). The speedups use these times.
- ``eager us``: one call from Python (``triton.testing.do_bench`` on CUDA, wall clock on CPU),
  launch overhead included.

Memory: ``kv MiB`` (the HiP cache, K and V), ``extra MiB``: CUDA memory one call allocates above what
is allocated before it (``max_memory_allocated`` delta; ``None`` on CPU).

``--offload`` adds :class:`~subq.ops.hip.offload.OffloadedKVCache` (K and V in pinned host memory; on
the GPU the sinks, the last ``window + refresh`` tokens and an LRU pool of key blocks, by default
twice what one step selects): its output is checked against ``hip_cached``, then ``offload_warm`` (the
cached mask, every block in the pool) and ``offload_cold`` (the pool cleared before each call, every
selected block fetched over PCIe) are timed eagerly (the host-side page table rules out a CUDA graph),
and ``gpu_kv_mib`` reports the KV bytes it keeps on the GPU. The mask search is not offloaded: it
still reads the keys on the GPU (``hip_search``).

    python benchmarks/hip_decode.py                                   # CUDA, T = 32k, 128k, 1M
    python benchmarks/hip_decode.py --lengths 131072 --kv-heads 32 --num-splits 8
    python benchmarks/hip_decode.py --lengths 1048576 --offload       # GPU KV memory and latency at 1M
    python benchmarks/hip_decode.py --device cpu --lengths 256,512    # tiny, any machine

Prints a table, then one JSON line. Exit status 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

TOL = {"bf16": 1.5e-2, "fp16": 3e-3, "fp32": 1e-4}
GATE_MAX_T = 65536
GRAPH_CALLS = 16
L2_FLUSH_BYTES = 128 * 2**20  # over twice the H200's L2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="HiP decode step vs SDPA decode: latency and memory.")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--lengths", default="32768,131072,1048576", help="KV lengths T (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="B (default %(default)s)")
    p.add_argument("--heads", type=int, default=32, help="query heads H (default %(default)s)")
    p.add_argument("--kv-heads", type=int, default=8, help="KV heads H_kv (default %(default)s)")
    p.add_argument("--head-dim", type=int, default=128, help="D (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(TOL), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--mask-k", type=int, default=512, help="key budget k (default %(default)s)")
    p.add_argument("--block-size-k", type=int, default=2, help="key block (default %(default)s)")
    p.add_argument("--block-stride-k", type=int, default=1, help="key sampling stride (default %(default)s)")
    p.add_argument("--sink", type=int, default=16, help="sink tokens (default %(default)s)")
    p.add_argument("--window", type=int, default=256, help="sliding window (default %(default)s)")
    p.add_argument("--refresh", type=int, default=8, help="steps between mask searches (default %(default)s)")
    p.add_argument(
        "--num-splits", type=int, default=None, help="split-K of the decode kernel (default: the op's)"
    )
    p.add_argument("--reps", type=int, default=20, help="timed graph replays (default %(default)s)")
    p.add_argument(
        "--offload", action="store_true", help="also decode from a host-memory KV cache (OffloadedKVCache)"
    )
    p.add_argument(
        "--offload-capacity",
        type=int,
        default=None,
        help="device block pool of --offload (default: 2 steps' worth)",
    )
    p.add_argument("--no-mha", action="store_true", help="skip the SDPA baseline on an H-head cache")
    p.add_argument("--out", help="also write the JSON record to this file")
    args = p.parse_args(argv)
    try:
        args.lengths = [int(t) for t in args.lengths.split(",")]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    if min(args.lengths) < 2:
        p.error("--lengths must be >= 2")
    for name in ("batch", "heads", "kv_heads", "head_dim", "refresh", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.heads % args.kv_heads:
        p.error(f"--kv-heads {args.kv_heads} must divide --heads {args.heads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("hip_decode: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    rows = [bench_length(T, args, device) for T in args.lengths]
    record = {
        "benchmark": "hip_decode",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": {
            k: getattr(args, k)
            for k in (
                "batch",
                "heads",
                "kv_heads",
                "head_dim",
                "dtype",
                "mask_k",
                "block_size_k",
                "block_stride_k",
                "sink",
                "window",
                "refresh",
                "num_splits",
                "offload",
            )
        },  # fmt: skip
        "rows": rows,
    }
    print_table(record)
    line = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0 if all(r["gate"]["ok"] for r in rows) else 1


def bench_length(T: int, args: argparse.Namespace, device) -> dict:
    """Gate, then time and measure every form at KV length ``T``."""
    import torch

    from subq.ops.hip import hierarchical_mask, hip_decode_attention

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    B, H, Hkv, D = args.batch, args.heads, args.kv_heads, args.head_dim
    mode = "triton" if device.type == "cuda" else "torch"
    q = torch.randn(B, 1, H, D, device=device, dtype=dtype)
    k = torch.randn(B, T, Hkv, D, device=device, dtype=dtype)
    v = torch.randn(B, T, Hkv, D, device=device, dtype=dtype)
    hp = dict(block_size_k=args.block_size_k, sink_size=args.sink)
    search_kw = dict(
        mask_k=args.mask_k, block_size_q=1, block_stride_q=1, block_stride_k=args.block_stride_k,
        window=args.window, causal=True, mode=mode, **hp,
    )  # fmt: skip

    def search(k=k):
        return hierarchical_mask(q, k, **search_kw)

    def step(mask, window, k=k, v=v):
        return hip_decode_attention(
            q, k, v, *mask, window=window, num_splits=args.num_splits, mode=mode, **hp
        )[0]

    row = {"T": T, "gate": gate(q, k, v, search, step, args)}
    if not row["gate"]["ok"]:
        return row
    # the cached mask at the last step of an interval: searched refresh - 1 tokens ago, window widened
    wide = args.window + args.refresh - 1
    mask = search(k[:, : max(T - args.refresh + 1, 1)])

    def amortized():
        m = search()
        for j in range(args.refresh):
            step(m, args.window + j)

    row["kv_mib"] = 2 * k.numel() * k.element_size() / 2**20
    row["forms"] = {"sdpa": sdpa_decode(q, k, v, Hkv, device, args.reps)}
    forms = {"hip_search": search, "hip_cached": lambda: step(mask, wide), "hip_amortized": amortized}
    if device.type == "cuda":

        def search_split(k=k):
            return hierarchical_mask(q, k, **{**search_kw, "mode": "triton_split"})

        def amortized_split():
            m = search_split()
            for j in range(args.refresh):
                step(m, args.window + j)

        forms.update(hip_search_split=search_split, hip_amortized_split=amortized_split)
        split, fused = search_split()[0], search()[0]
        row["split_mask_agreement"] = round((split == fused).float().mean().item(), 4)
    row["forms"].update((name, measure(fn, device, args.reps)) for name, fn in forms.items())
    for name in ("hip_amortized", "hip_amortized_split"):
        if name in row["forms"]:
            row["forms"][name] = {
                key: (None if val is None else round(val / args.refresh, 2)) if key.endswith("_us") else val
                for key, val in row["forms"][name].items()
            }
    if Hkv < H and not args.no_mha:
        row["forms"]["sdpa_mha"] = sdpa_decode(q, k, v, H, device, args.reps)
    if args.offload:
        offload(row, q, k, v, mask, wide, step(mask, wide), args, device)
    _speedups(row)
    return row


def offload(row: dict, q, k, v, mask, window: int, want, args, device) -> None:
    """Decode from :class:`~subq.ops.hip.offload.OffloadedKVCache`: checked against the full-cache
    step, then timed with a warm pool (the cached mask: every block hits) and a cold one (cleared
    before each call: every selected block is fetched from host memory)."""
    from subq.ops.hip.offload import OffloadedKVCache

    G = mask[0].shape[-1]
    capacity = args.offload_capacity or 2 * args.batch * args.heads * G
    cache = OffloadedKVCache(
        k, v, device=device, block_size_k=args.block_size_k, sink_size=args.sink,
        recent=args.window + args.refresh, capacity=capacity,
    )  # fmt: skip
    mode = "triton" if device.type == "cuda" else "torch"

    def warm():
        return cache.decode(q, *mask, window=window, num_splits=args.num_splits, mode=mode)

    def cold():
        cache.clear()
        return warm()

    err = rel_rms(cold(), want)
    fetched = cache.misses
    ok = err <= TOL[args.dtype]
    row["offload"] = {
        "rel_rms_vs_full": float(f"{err:.3e}"),
        "ok": ok,
        "gpu_kv_mib": round(cache.device_bytes() / 2**20, 2),
        "host_kv_mib": round(2 * cache.k_host.numel() * cache.k_host.element_size() / 2**20, 2),
        "capacity_blocks": capacity,
        "blocks_fetched_cold": fetched,
    }
    row["gate"]["ok"] = row["gate"]["ok"] and ok
    if ok:
        row["forms"]["offload_warm"] = measure(warm, device, args.reps, graph=False)
        row["forms"]["offload_cold"] = measure(cold, device, args.reps, graph=False)


def sdpa_decode(q, k, v, heads: int, device, reps: int) -> dict:
    """SDPA decode measured on its own ``[B, heads, T, D]`` copy of the cache (``heads`` = H_kv: GQA;
    = H: the cache expanded to every query head), freed on return."""
    import torch.nn.functional as F

    H = q.shape[2]
    q_s = q.transpose(1, 2)  # [B, H, 1, D]
    k_s, v_s = (x.repeat_interleave(heads // x.shape[2], 2).transpose(1, 2).contiguous() for x in (k, v))
    return measure(lambda: F.scaled_dot_product_attention(q_s, k_s, v_s, enable_gqa=heads < H), device, reps)


def gate(q, k, v, search, step, args) -> dict:
    """HiP's decode step against the float32 reference on the same mask, on a prefix of the cache."""
    from subq.ops.hip import naive_block_sparse_attention

    Tg = min(k.shape[1], GATE_MAX_T)
    kg, vg = k[:, :Tg], v[:, :Tg]
    mask = search(kg)
    window = args.window + args.refresh - 1
    got = step(mask, window, kg, vg)
    want, _ = naive_block_sparse_attention(
        q.float(), kg.float(), vg.float(), *mask, block_size_q=1, block_size_k=args.block_size_k,
        sink_size=args.sink, window=window,
    )  # fmt: skip
    err = rel_rms(got, want)
    selected = int(mask[1].float().mean().item())
    return {"T": Tg, "rel_rms": float(f"{err:.3e}"), "tol": TOL[args.dtype], "ok": err <= TOL[args.dtype],
            "blocks_selected": selected}  # fmt: skip


def _speedups(row: dict) -> None:
    f = row["forms"]
    for base in ("sdpa", "sdpa_mha"):
        for name in ("hip_cached", "hip_amortized", "hip_amortized_split", "offload_warm", "offload_cold"):
            if base in f and name in f:
                row[f"speedup_{name}_vs_{base}"] = _ratio(f[base], f[name])


def _ratio(base: dict, fast: dict) -> float | None:
    key = "graph_us" if base.get("graph_us") and fast.get("graph_us") else "eager_us"
    return round(base[key] / fast[key], 2) if base.get(key) and fast.get(key) else None


def rel_rms(a, e) -> float:
    a, e = a.double(), e.double()
    return ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt()).item()


def measure(fn, device, reps: int, graph: bool = True) -> dict:
    """``eager_us``, ``graph_us`` (CUDA) and ``extra_mib`` (CUDA) of ``fn()``; a measurement that
    raises is ``None`` and its exception is kept in ``errors``."""
    result, errors = {}, {}
    for key, how in (
        ("eager_us", lambda: round(eager_us(fn, device), 2)),
        ("graph_us", lambda: round(graph_us(fn, reps), 2) if graph and device.type == "cuda" else None),
        ("extra_mib", lambda: peak_extra_mib(fn, device)),
    ):
        try:
            result[key] = how()
        except Exception as exc:  # kept in the record; the other measurements still run
            result[key] = None
            errors[key] = f"{type(exc).__name__}: {exc}"[:300]
            if device.type == "cuda":
                import torch

                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    if errors:
        result["errors"] = errors
    return result


def eager_us(fn, device) -> float:
    """Median microseconds of one call from Python: ``do_bench`` on CUDA, wall clock on CPU."""
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def graph_us(fn, reps: int) -> float:
    """Median GPU microseconds of ``fn()`` with a cold L2 and no launch gaps (module docstring)."""
    import torch

    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    fn()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graphs = {}
    for with_call in (True, False):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(GRAPH_CALLS):
                flush.zero_()
                if with_call:
                    fn()
        graphs[with_call] = g
    torch.cuda.synchronize()
    times = {True: [], False: []}
    for _ in range(reps):
        for with_call, g in graphs.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            end.record()
            end.synchronize()
            times[with_call].append(start.elapsed_time(end) * 1e3 / GRAPH_CALLS)
    del graphs
    return max(statistics.median(times[True]) - statistics.median(times[False]), 0.0)


def peak_extra_mib(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)


def print_table(record: dict) -> None:
    c = record["config"]
    print(
        f"HiP decode on {record['device']}: B={c['batch']} H={c['heads']} H_kv={c['kv_heads']} "
        f"D={c['head_dim']} {c['dtype']}, k={c['mask_k']} block_k={c['block_size_k']} sink={c['sink']} "
        f"window={c['window']} refresh={c['refresh']}"
    )
    names = ("sdpa", "sdpa_mha", "hip_search", "hip_cached", "hip_amortized")
    if any("hip_search_split" in r.get("forms", {}) for r in record["rows"]):
        names += ("hip_search_split", "hip_amortized_split")
    if c["offload"]:
        names += ("offload_warm", "offload_cold")
    print(f"{'T':>8} {'kv MiB':>9} {'gate':>10} | " + " | ".join(f"{n:>22}" for n in names) + " | speedups")
    print(f"{'':>30}| " + " | ".join(f"{'graph/eager us, MiB':>22}" for _ in names) + " |")
    for r in record["rows"]:
        g = r["gate"]
        cells = [
            f"{r['T']:>8} {r.get('kv_mib', 0):>9.1f} {('ok' if g['ok'] else 'FAIL'):>4} {g['rel_rms']:.0e}"
        ]
        for n in names:
            f = r.get("forms", {}).get(n)
            cells.append(
                f"{_num(f['graph_us']):>7}/{_num(f['eager_us']):>7} {_num(f['extra_mib']):>6}"
                if f
                else f"{'-':>22}"
            )
        ups = {k[len("speedup_") :]: v for k, v in r.items() if k.startswith("speedup_")}
        cells.append(" ".join(f"{k}={_num(v)}x" for k, v in ups.items()))
        print(" | ".join(cells))
        if "split_mask_agreement" in r:
            agree = r["split_mask_agreement"]
            print(f"{'':>8} split search: {agree:.2%} of block ids as the one-program search's")
        if "offload" in r:
            off = r["offload"]
            print(
                f"{'':>8} offload: GPU KV {off['gpu_kv_mib']} MiB of {off['host_kv_mib']} MiB in host "
                f"memory, {off['blocks_fetched_cold']} blocks fetched cold, "
                f"rel-RMS vs full {off['rel_rms_vs_full']:.0e}"
            )


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


if __name__ == "__main__":
    sys.exit(main())
