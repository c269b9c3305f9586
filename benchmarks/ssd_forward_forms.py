"""Time the two forms of the Triton SSD forward (``subq.ops.ssd.fused_chunk.FORWARD``): ``walk`` (one
program walks every chunk with the whole chunk's work) and ``parallel`` (the walk carries only the
state; one program per chunk computes the outputs), at chunk 64 and 128, bf16, on three shapes:
Hydra's bidirectional launch at the base encoder's 4k batch (8 sequences x 2 directions, 24 heads of
64, N = 64) and the ``ssd`` bench entry's (B = 4, 16 heads of 64, N = 64) at T = 4096 and 32768.
Prints ``do_bench`` medians in ms and each form's relative RMS against the walk, and as the last
line one JSON object (``--out`` also writes it). GPU only.

    python benchmarks/ssd_forward_forms.py --out ssd_forms.json
"""

import argparse
import json

import torch
import triton

from subq.ops.ssd import fused_chunk as fc


def hydra(Q):
    b, T, H, P, N = 8, 4096, 24, 64, 64
    x = torch.randn(b, T, H, P, device="cuda", dtype=torch.bfloat16)
    BC = torch.randn(b, T, 4, N, device="cuda", dtype=torch.bfloat16)
    dt = torch.rand(b, T, 2 * H, device="cuda") * 0.1
    A = -torch.rand(H, device="cuda")
    B, C = BC[:, :, 0:1], BC[:, :, 1:2]
    return lambda form: fc._forward(x, dt, A, B, C, None, True, False, False, Q, False, 2, 2 * N, form)[0]


def single(T, Q):
    b, H, P, N = 4, 16, 64, 64
    x = torch.randn(b, T, H, P, device="cuda", dtype=torch.bfloat16)
    B = torch.randn(b, T, 1, N, device="cuda", dtype=torch.bfloat16)
    C = torch.randn(b, T, 1, N, device="cuda", dtype=torch.bfloat16)
    dt = torch.rand(b, T, H, device="cuda") * 0.1
    A = -torch.rand(H, device="cuda")
    return lambda form: fc._forward(x, dt, A, B, C, None, True, False, False, Q, False, 1, 0, form)[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ssd_forward_forms.py times CUDA kernels")
    shapes = [
        ("hydra 8x4096 H24 bidir", hydra),
        ("ssd 4x4096 H16", lambda Q: single(4096, Q)),
        ("ssd 4x32768 H16", lambda Q: single(32768, Q)),
    ]
    rows = []
    for name, make in shapes:
        for Q in (64, 128):
            f = make(Q)
            ref = f("walk").float()
            for form in ("walk", "parallel"):
                ms = triton.testing.do_bench(lambda f=f, form=form: f(form), warmup=20, rep=200)
                d = ((f(form).float() - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
                print(f"{name} Q={Q} {form}: {ms:.3f} ms (rel-RMS vs walk {d:.1e})", flush=True)
                rows.append({"shape": name, "chunk": Q, "form": form, "ms": ms, "rel_rms_vs_walk": d})
    record = {"gpu": torch.cuda.get_device_name(), "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
