"""Sweep the launch configurations of the Triton SSD kernels (``subq/ops/ssd/fused_chunk.py``) at the
shapes of the Hydra and Mamba-2 benchmarks: one-launch bidirectional scans (Hydra, base size: 24 heads
of 64, N = 64) at 4k x 8 and 32k x 1, and the one-direction scan of the ``ssd`` bench entry
(B = 4, 16 heads of 64, N = 64). Every config is first checked against the PyTorch chunked form (a
config that compiles can still be wrong), then timed (forward under ``torch.no_grad``, as the encoder
benchmark runs, and forward + backward); prints one JSON row per config (the first, ``"default":
true``, is the kernels' own choice) and a JSON last line with the fastest config per shape and
phase. GPU only (``--smoke``: tiny shapes, also in Triton's interpreter).

    python benchmarks/ssd_tune.py --out ssd_tune.json

The kernels' sequential walk over the chunks bounds them at these sizes (``BENCHMARKS.md``, the Hydra
profile); more programs (smaller blocks of ``P``) and deeper pipelining are the knobs swept here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

SHAPES = {
    # name: (bidirectional, B, T, H, P, N, chunk)
    "hydra-4k": (True, 8, 4096, 24, 64, 64, 64),
    "hydra-32k": (True, 1, 32768, 24, 64, 64, 64),
    "mamba2-4k": (False, 4, 4096, 16, 64, 64, 64),
    "mamba2-32k": (False, 4, 32768, 16, 64, 64, 64),
}
SMOKE_SHAPES = {"smoke-bidir": (True, 1, 40, 2, 16, 16, 16), "smoke": (False, 1, 40, 2, 16, 16, 16)}
CONFIGS = [  # besides the kernels' own choice
    dict(BP=BP, num_warps=w, num_stages=s)
    for BP, w, s in [
        (32, 4, 3),  # the default for half precision
        (16, 4, 3),
        (16, 4, 2),
        (32, 4, 2),
        (32, 8, 3),
        (64, 4, 2),
        (64, 8, 3),
        (16, 2, 3),
    ]
]


def inputs(bidir: bool, B: int, T: int, H: int, P: int, N: int, device: str, dtype: torch.dtype):
    """A projection ``[B, T, H P + 4 N]`` holding ``x`` and ``B, C`` of both directions (Hydra's
    layout; one direction uses the first pair), ``dt [B, T, 2 H]`` and ``A [H]``."""
    proj = torch.randn(B, T, H * P + 4 * N, device=device).to(dtype) * 0.5
    dt = torch.nn.functional.softplus(torch.randn(B, T, 2 * H, device=device) - 2)
    A = -torch.rand(H, device=device) - 0.5
    return proj, dt, A


def run(bidir: bool, proj, dt, A, H: int, P: int, N: int, chunk: int, mode: str):
    from subq.ops.ssd import ssd, ssd_bidirectional

    x = proj[..., : H * P].unflatten(-1, (H, P))
    Bf, Cf, Bb, Cb = (proj[..., H * P + i * N : H * P + (i + 1) * N].unflatten(-1, (1, N)) for i in range(4))
    if bidir:
        return torch.cat(
            ssd_bidirectional(x, dt[..., :H], dt[..., H:], A, Bf, Cf, Bb, Cb, chunk_size=chunk, mode=mode)
        )
    return ssd(x, dt[..., :H], A, Bf, Cf, chunk_size=chunk, mode=mode)[0]


def _dtype(device: str) -> torch.dtype:
    """bf16 on the GPU; float16 in Triton's interpreter, which does not compute in bf16."""
    return torch.bfloat16 if device == "cuda" else torch.float16


def check(bidir: bool, H: int, P: int, N: int, chunk: int, device: str) -> float:
    """Largest relative-RMS error of the output and input gradients (half-precision kernels against the
    float32 PyTorch chunked form) at a short length."""
    proj, dt, A = inputs(bidir, 1, 300 if device == "cuda" else 40, H, P, N, device, _dtype(device))
    leaves = [proj.requires_grad_(), dt.requires_grad_()]
    ref = [t.detach().float().requires_grad_() for t in leaves]
    y = run(bidir, *leaves, A, H, P, N, chunk, "triton")
    y_r = run(bidir, *ref, A, H, P, N, chunk, "torch")
    g = torch.randn_like(y_r)
    grads = torch.autograd.grad((y.float() * g).sum(), leaves)
    grads_r = torch.autograd.grad((y_r * g).sum(), ref)
    errs = [(a.float() - b).norm() / b.norm() for a, b in zip((y, *grads), (y_r, *grads_r), strict=True)]
    return max(e.item() for e in errs)


def time_config(bidir: bool, shape: tuple, device: str) -> tuple[float, float]:
    """Median ms: forward under no_grad, and forward + backward."""
    from triton.testing import do_bench

    _, B, T, H, P, N, chunk = shape
    proj, dt, A = inputs(bidir, B, T, H, P, N, device, torch.bfloat16)

    def fwd():
        with torch.no_grad():
            run(bidir, proj, dt, A, H, P, N, chunk, "triton")

    proj.requires_grad_()
    g = torch.randn(B * (2 if bidir else 1), T, H, P, device=device, dtype=torch.bfloat16)

    def fwd_bwd():
        run(bidir, proj, dt, A, H, P, N, chunk, "triton").backward(g)

    return do_bench(fwd), do_bench(fwd_bwd, grad_to_none=[proj])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {','.join(SHAPES)}")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and two configs (also on CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        sys.exit("ssd_tune.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    import subq.ops.ssd.fused_chunk as mod

    default = mod._launch_config
    shapes = SMOKE_SHAPES if args.smoke else {k: SHAPES[k] for k in args.shapes.split(",")}
    configs = CONFIGS[:1] if args.smoke else CONFIGS
    rows, best = [], {}
    for name, shape in shapes.items():
        bidir, B, _, H, P, N, chunk = shape
        base = default(P, N, _dtype(device), (2 if bidir else 1) * B * H, torch.device(device))
        for cfg in [None, *configs]:  # None: the kernels' own choice
            if cfg is not None:
                mod._launch_config = lambda *a, cfg=cfg, base=base, **kw: {**base, **cfg}
            row = dict(shape=name, **(cfg or {k: base[k] for k in ("BP", "num_warps", "num_stages")}))
            row["default"] = cfg is None
            try:
                row["max_rel_err"] = check(bidir, H, P, N, chunk, device)
                if row["max_rel_err"] > 3e-2:
                    raise ValueError(f"wrong results: relative RMS error {row['max_rel_err']:.2e}")
                if not args.smoke:
                    row["fwd_ms"], row["fwd_bwd_ms"] = time_config(bidir, shape, device)
            except Exception as e:  # does not compile (registers, shared memory), or is wrong
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            finally:
                mod._launch_config = default
            rows.append(row)
            print(json.dumps(row), flush=True)
            for phase in ("fwd_ms", "fwd_bwd_ms"):
                if phase in row and (
                    f"{name}-{phase}" not in best or row[phase] < best[f"{name}-{phase}"][phase]
                ):
                    best[f"{name}-{phase}"] = row
    summary = {k: {c: v for c, v in r.items() if c != "shape"} for k, r in best.items()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "best": summary}, f, indent=1)
    print(json.dumps(summary))
    return {"rows": rows, "best": summary}


if __name__ == "__main__":
    main()
