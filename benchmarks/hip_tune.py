"""Sweep the launch configurations of HiP's two prefill kernels (``subq/ops/hip/mask.py``,
``subq/ops/hip/block_sparse.py``) at the ``hip`` bench entry's shapes: B = 1, 32 query heads, D = 128,
bf16, the paper's settings (``mask_k=512, block_size_q=64, block_stride_q=2, block_size_k=2``, 16
sinks, window 256), causal.

Every config is first checked at a short length: its masks must equal :func:`naive_hip_mask`'s, and
its attention must match the PyTorch gather form (a config that compiles can still be wrong). Then it
is timed at each length (``do_bench`` median ms), and its masks and outputs are compared with the
default config's at that length. ``--ab-rounds N`` adds an interleaved A/B of the attention kernel's
one and two pipelining stages. Single sweeps can move by a few percent with the order of the variants
(``BENCHMARKS.md``). Prints one JSON row per config and a JSON last line with the fastest config per
kernel and length. GPU only (``--smoke``: tiny shapes and two configs per kernel, also in Triton's
interpreter).

    python benchmarks/hip_tune.py --T 32768,131072 --kv-heads 8 --ab-rounds 4 --out hip_tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HIP = dict(
    mask_k=512, block_size_q=64, block_stride_q=2, block_size_k=2, block_stride_k=1, sink_size=16, window=256
)
SMOKE_HIP = dict(
    mask_k=32, block_size_q=16, block_stride_q=2, block_size_k=2, block_stride_k=1, sink_size=4, window=16
)
MASK_CONFIGS = [  # besides the kernel's own choice
    dict(num_stages=s, max_registers=c, children_per_product=ch)
    for s, c, ch in [
        (1, 96, 32),
        (3, 96, 32),
        (4, 96, 32),
        (2, None, 32),
        (2, 112, 32),
        (2, 80, 32),
        (2, 96, 64),
        (2, 128, 64),
    ]
]
SMOKE_CONFIGS = {  # several chunks per search iteration (8 of 32 children per product)
    "mask": [dict(num_stages=1, max_registers=96, children_per_product=8)],
    "attention": [dict(num_stages=1, max_registers=128, keys_per_chunk=32)],
}
ATTN_CONFIGS = [  # besides the kernel's own choice: pipelining stages, register cap, keys per chunk
    dict(num_stages=s, max_registers=c, keys_per_chunk=bn)
    for s, c, bn in [
        (1, 128, 32),
        (3, 128, 32),
        (4, 128, 32),
        (2, None, 32),
        (2, 112, 32),
        (2, 144, 32),
        (3, 128, 64),
    ]
]


def _dtype(device: str) -> torch.dtype:
    """bf16 on the GPU; float16 in Triton's interpreter, which does not compute in bf16."""
    return torch.bfloat16 if device == "cuda" else torch.float16


_INPUTS: dict = {}


def inputs(T: int, H: int, H_kv: int, D: int, device: str):
    """Normal ``q, k, v`` (cached per shape: every config of a length reads the same tensors)."""
    key = (T, H, H_kv, D, device)
    if key not in _INPUTS:
        g = torch.Generator(device=device).manual_seed(0)
        _INPUTS.clear()  # one length at a time: at 128k the three take 1.3 GB
        _INPUTS[key] = tuple(
            torch.randn(1, T, h, D, generator=g, device=device).to(_dtype(device)) for h in (H, H_kv, H_kv)
        )
    return _INPUTS[key]


def check_inputs(T: int, device: str):
    """Small integer-valued ``q, k, v``: every score is exact, so the masks can be compared with the
    naive search's bit for bit (ties go to the leftmost block in both)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randint(-2, 3, (1, T, h, 32), generator=g) for h in (4, 2, 2))
    return tuple(t.to(device=device, dtype=_dtype(device)) for t in (q, k, v))


def search(q, k, hip: dict, cfg: dict | None):
    from subq.ops.hip.mask import _hip_mask_triton

    geo = dict(hip)
    G = geo.pop("mask_k") // geo["block_size_k"]
    geo["sink"], geo["window"] = geo.pop("sink_size"), geo["window"]
    return _hip_mask_triton(q, k, G=G, causal=True, q_offset=k.shape[1] - q.shape[1], **geo, **(cfg or {}))


class attention_config:
    """Within the block, the forward kernel launches with ``cfg`` (stages, register cap, keys per chunk)."""

    def __init__(self, cfg: dict | None):
        self.cfg = cfg

    def __enter__(self):
        import subq.ops.hip.block_sparse as bs

        self.saved = bs.FWD_NUM_STAGES, bs.FWD_MAX_REGISTERS, bs._block_n
        if self.cfg:
            block_n = self.saved[2]
            bs.FWD_NUM_STAGES, bs.FWD_MAX_REGISTERS = self.cfg["num_stages"], self.cfg["max_registers"]
            bn = self.cfg["keys_per_chunk"]
            bs._block_n = lambda bk, bd, backward=False: (
                block_n(bk, bd, backward) if backward else max(bn, bk)
            )

    def __exit__(self, *exc):
        import subq.ops.hip.block_sparse as bs

        bs.FWD_NUM_STAGES, bs.FWD_MAX_REGISTERS, bs._block_n = self.saved


def attend(q, k, v, indices, counts, hip: dict, mode: str = "triton"):
    from subq.ops.hip.block_sparse import block_sparse_attention

    keys = ("block_size_q", "block_size_k", "sink_size", "window")
    return block_sparse_attention(
        q, k, v, indices, counts, causal=True, mode=mode, **{n: hip[n] for n in keys}
    )[0]


_NAIVE: dict = {}


def check(kernel: str, cfg: dict | None, hip: dict, T: int, device: str) -> float:
    """Raises when the config's masks differ from the naive search's; returns the attention's relative
    RMS error against the PyTorch gather form (0 for the mask kernel)."""
    from subq.ops.hip.naive import naive_hip_mask

    q, k, v = check_inputs(T, device)
    if kernel == "mask":
        got = search(q, k, hip, cfg)
        key = (T, tuple(hip.items()))
        if key not in _NAIVE:  # the same inputs for every config
            _NAIVE[key] = naive_hip_mask(q.float().cpu(), k.float().cpu(), causal=True, **hip)
        want = _NAIVE[key]
        if not all(torch.equal(a.cpu(), b) for a, b in zip(got, want, strict=True)):
            raise ValueError("wrong results: the masks differ from naive_hip_mask's")
        return 0.0
    indices, counts = search(q, k, hip, None)
    with attention_config(cfg):
        o = attend(q, k, v, indices, counts, hip).float()
    ref = attend(q.float(), k.float(), v.float(), indices, counts, hip, mode="torch")
    return ((o - ref).norm() / ref.norm()).item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", default="32768,131072", help="comma-separated lengths")
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ab-rounds", type=int, default=0, help="interleaved rounds of the attention stages A/B")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny shapes and two configs per kernel (also on CPU)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        sys.exit("hip_tune.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    hip, H, H_kv, D = (SMOKE_HIP, 4, 2, 32) if args.smoke else (HIP, 32, args.kv_heads, 128)
    lengths = [160] if args.smoke else [int(t) for t in args.T.split(",")]
    check_T = 160 if args.smoke else 2048
    sweeps = SMOKE_CONFIGS if args.smoke else {"mask": MASK_CONFIGS, "attention": ATTN_CONFIGS}
    rows, best = [], {}

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        key = f"{row['kernel']}-{row['T']}"
        if "ms" in row and (key not in best or row["ms"] < best[key]["ms"]):
            best[key] = row

    for kernel, configs in sweeps.items():
        for cfg in [None, *configs]:  # None: the kernel's own choice
            row = dict(kernel=kernel, default=cfg is None, **(cfg or {}))
            try:
                row["check_rel_err"] = check(kernel, cfg, hip, check_T, device)
                if row["check_rel_err"] > 1e-2:
                    raise ValueError(f"wrong results: relative RMS error {row['check_rel_err']:.2e}")
            except Exception as e:  # does not compile (registers, shared memory), or is wrong
                record({**row, "T": check_T, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            for T in lengths:
                record(time_config(kernel, cfg, hip, T, H, H_kv, D, device, dict(row), args.smoke))
    for T in lengths:
        for rnd in range(args.ab_rounds):
            for stages in (1, 2):
                cfg = dict(num_stages=stages, max_registers=128, keys_per_chunk=32)
                row = dict(kernel="attention-ab", round=rnd, **cfg)
                record(time_config("attention", cfg, hip, T, H, H_kv, D, device, row, args.smoke))
    summary = {k: {c: v for c, v in r.items() if c not in ("kernel", "T")} for k, r in best.items()}
    result = {
        "config": dict(hip=hip, heads=H, kv_heads=H_kv, head_dim=D),
        "rows": rows,
        "best": summary,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(summary))
    return result


_DEFAULTS: dict = {}  # (kernel, T) -> the default config's masks or output, for the comparisons


def time_config(kernel, cfg, hip, T, H, H_kv, D, device, row, smoke) -> dict:
    """``row`` with the median ms at length ``T`` and the comparison with the default config."""
    row["T"] = T
    q, k, v = inputs(T, H, H_kv, D, device)
    if kernel == "mask":
        fn = lambda: search(q, k, hip, cfg)  # noqa: E731
    else:
        indices, counts = _DEFAULTS.get(("mask", T, H_kv)) or search(q, k, hip, None)
        fn = lambda: attend(q, k, v, indices, counts, hip)  # noqa: E731
    try:
        with attention_config(cfg if kernel == "attention" else None):
            out = fn()
            base = _DEFAULTS.setdefault((kernel, T, H_kv), out)
            if kernel == "mask":
                row["same_masks"] = all(torch.equal(a, b) for a, b in zip(out, base, strict=True))
            else:
                row["max_abs_diff"] = (out.float() - base.float()).abs().max().item()
            if not smoke:
                from triton.testing import do_bench

                row["ms"] = do_bench(fn, warmup=50, rep=300)
    except Exception as e:  # e.g. out of shared memory at this size
        row["error"] = f"{type(e).__name__}: {e}"[:200]
    return row


if __name__ == "__main__":
    main()
