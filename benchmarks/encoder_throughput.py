"""Forward throughput (tokens/ms) of M2-BERT, Hydra-BERT and a same-width, same-depth attention encoder.

Three :class:`~subq.models.Encoder` s of one size (``--size``: ``d_model`` and ``n_layers`` of the
``m2_bert-<size>`` preset, BERT's 30,522-token vocabulary):

- ``attention``: BERT-style blocks, bidirectional softmax attention through
  ``scaled_dot_product_attention`` (``d_model / 64`` heads) and a GELU MLP of ``4 d``, learned
  positions;
- ``m2``: the ``m2_bert-<size>`` preset (``monarch_mixer`` + ``monarch_glu``, learned positions), its
  long-convolution filters as long as the sequence;
- ``hydra``: the ``hydra_bert-<size>`` block (``hydra`` mixer, no MLP, no positions) at the same
  depth (``--hydra-layers`` changes it: Hydra-BERT-base itself has 23 layers, parameter-matched to
  BERT-base).

For each sequence length ``T`` in ``--lengths`` the batch is ``--tokens // T`` (at least 1), so every
call processes the same number of tokens (32768 by default; M2's ``benchmark_fwd.py`` also shrinks the
batch as ``T`` grows). Timed: ``Encoder.forward`` (token ids to hidden states, no MLM head) under
``torch.inference_mode``; on CUDA under bf16 autocast (weights float32; every mixer picks its fast
path, Triton for Hydra's SSD, FlashAttention for SDPA), medians of CUDA-event timings after warm-up;
on CPU in float32, wall-clock medians. A model that runs out of memory at a length is reported as
``OOM`` in its cell and the run goes on.

    python benchmarks/encoder_throughput.py                                   # CUDA, base, 512/4096/32768
    python benchmarks/encoder_throughput.py --size mini --lengths 512,4096 --out enc.json
    python benchmarks/encoder_throughput.py --device cpu --size tiny --lengths 64,128 --tokens 256
    python benchmarks/encoder_throughput.py --models hydra --lengths 4096 --hydra-conv torch \
        --hydra-norm torch                                   # Hydra with PyTorch's conv and norm

``--hydra-conv`` and ``--hydra-norm`` pick Hydra's convolution and gated RMSNorm forms (``conv_mode``,
``norm_mode``: by default the Triton kernels on CUDA and PyTorch on a CPU; ``torch`` or ``triton``
force one); ``--m2-long-conv`` picks M2's long-convolution form (``long_conv_form``). ``--cuda-graph``
times replays of a CUDA graph of each forward instead of eager calls: the GPU's time without the
host's (kernel launches, autocast's weight casts, Python), for every model alike.

Prints a table (tokens/ms per model and length, and each model's speedup over attention) and, as the
last stdout line, one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from subq.layers.monarch_mixer import LONG_CONV_FORMS as M2_LONG_CONV_FORMS
from subq.models import Encoder, EncoderConfig, count_params
from subq.models.hydra_bert import HYDRA_BERT_SIZES, hydra_bert_config
from subq.models.m2_bert import M2_BERT_SIZES, m2_bert_config

MODELS = ("attention", "m2", "hydra")
OOM = "OOM"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"lengths must be integers >= 2, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size", choices=list(M2_BERT_SIZES), default="base", help="default base (d=768, 12 layers)"
    )
    p.add_argument("--lengths", type=_int_list, default=[512, 4096, 32768], help="default 512,4096,32768")
    p.add_argument(
        "--tokens", type=int, default=32768, help="tokens per call; batch = tokens // T (default 32768)"
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--hydra-layers", type=int, default=None, help="Hydra's depth (default: the size's)")
    p.add_argument(
        "--hydra-conv", choices=["auto", "torch", "triton"], default="auto",
        help="Hydra's centred convolution: auto (default: the Triton kernels on CUDA), F.conv1d (torch) "
        "or the Triton short-convolution kernels",
    )  # fmt: skip
    p.add_argument(
        "--hydra-norm", choices=["auto", "torch", "triton"], default="auto",
        help="Hydra's gated RMSNorm: auto (default: the Triton kernels on CUDA), PyTorch or Triton",
    )  # fmt: skip
    p.add_argument(
        "--m2-long-conv", choices=list(M2_LONG_CONV_FORMS), default="auto",
        help="M2's long convolutions (long_conv_form): auto (default: one torch.fft convolution, fp32), "
        "or triton_fp16 / triton_tf32 / triton (the Triton FFT convolution)",
    )  # fmt: skip
    p.add_argument(
        "--cuda-graph", action="store_true",
        help="time replays of a CUDA graph of the forward (no host time; every model alike)",
    )  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls, median reported (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON record here")
    args = p.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if not models or set(models) - set(MODELS):
        p.error(f"--models must be a subset of {','.join(MODELS)}, got {args.models!r}")
    args.models = models
    if args.tokens < 1 or args.warmup < 0 or args.iters < 1:
        p.error("--tokens and --iters must be >= 1, --warmup >= 0")
    if args.hydra_layers is not None and args.hydra_layers < 1:
        p.error(f"--hydra-layers must be >= 1, got {args.hydra_layers}")
    return args


def encoder_config(
    model: str,
    size: str,
    seq_len: int,
    hydra_layers: int | None = None,
    hydra_conv: str = "auto",
    hydra_norm: str = "auto",
    m2_long_conv: str = "auto",
) -> EncoderConfig:
    """The encoder ``model`` of ``size`` for sequences of ``seq_len`` tokens (``hydra_conv``,
    ``hydra_norm``: Hydra's ``conv_mode`` and ``norm_mode``; ``m2_long_conv``: M2's
    ``long_conv_form``)."""
    d, n_layers = M2_BERT_SIZES[size]["d_model"], M2_BERT_SIZES[size]["n_layers"]
    if model == "m2":
        mixer = m2_bert_config(size, max_seq_len=seq_len).mixer
        mixer = {"name": mixer.name, **mixer.kwargs, "long_conv_form": m2_long_conv}
        return m2_bert_config(size, max_seq_len=seq_len, mixer=mixer)
    if model == "hydra":  # the hydra_bert size's mixer settings (the defaults above mini)
        hydra_size = size if size in HYDRA_BERT_SIZES else "base"
        mixer = {"name": "hydra", **HYDRA_BERT_SIZES[hydra_size]["mixer"], "conv_mode": hydra_conv,
                 "norm_mode": hydra_norm}  # fmt: skip
        return hydra_bert_config(
            hydra_size, d_model=d, n_layers=hydra_layers or n_layers, max_seq_len=seq_len, mixer=mixer
        )
    return EncoderConfig(
        vocab_size=m2_bert_config(size).vocab_size,
        d_model=d,
        n_layers=n_layers,
        max_seq_len=seq_len,
        pos_emb="learned",
        norm="layernorm",
        mixer={"name": "attention", "num_heads": max(1, d // 64)},
        channel_mixer={"name": "mlp", "expand": 4.0},
    )


def _is_oom(exc: BaseException) -> bool:
    msg = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)
    )


def _time_ms(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _forward_ms(
    model: str, seq_len: int, batch: int, args: argparse.Namespace, device: torch.device, row: dict
):
    torch.manual_seed(args.seed)
    cfg = encoder_config(
        model, args.size, seq_len, args.hydra_layers, args.hydra_conv, args.hydra_norm, args.m2_long_conv
    )
    enc = Encoder(cfg).to(device).eval()
    row["params"] = count_params(enc)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )

    def forward() -> None:
        with torch.inference_mode(), autocast:
            enc(ids)

    if args.cuda_graph and device.type == "cuda":
        forward = _graphed(forward, args.warmup)
    return _time_ms(forward, device, args.warmup, args.iters)


def _graphed(forward, warmup: int):
    """``forward`` captured in a CUDA graph (after ``max(warmup, 2)`` eager calls on a side stream,
    which compile the kernels and build the plans): replays launch every kernel without host work."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 2)):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def measure(model: str, seq_len: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One cell: ``{"model", "T", "batch", "params", "ms", "tokens_per_ms", "status"}``; ``status`` is
    ``"ok"``, ``"OOM"`` or the error."""
    batch = max(1, args.tokens // seq_len)
    row: dict[str, Any] = {"model": model, "T": seq_len, "batch": batch, "params": None, "ms": None}
    row.update(tokens_per_ms=None, status="ok")
    try:
        ms = _forward_ms(model, seq_len, batch, args, device, row)
        row.update(ms=ms, tokens_per_ms=batch * seq_len / ms)
    except Exception as exc:  # an OOM is a result; anything else is reported in the cell too
        row["status"] = OOM if _is_oom(exc) else f"{type(exc).__name__}: {exc}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{model: {str(T): tokens_per_ms / attention's}}`` for every model but attention."""
    base = {r["T"]: r["tokens_per_ms"] for r in rows if r["model"] == "attention"}
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if r["model"] == "attention":
            continue
        b = base.get(r["T"])
        ok = r["tokens_per_ms"] is not None and b is not None
        out.setdefault(r["model"], {})[str(r["T"])] = r["tokens_per_ms"] / b if ok else None
    return out


def table(rows: list[dict[str, Any]], lengths: list[int], models: tuple[str, ...]) -> str:
    """Plain-text table: one line per model, tokens/ms per length, then the speedups over attention."""
    cell = {(r["model"], r["T"]): r for r in rows}
    sp = speedups(rows)
    head = ["model", "params"] + [f"T={T} tok/ms" for T in lengths]
    if "attention" in models:
        head += [f"T={T} x attn" for T in lengths]
    lines = []
    for m in models:
        params = next((r["params"] for r in rows if r["model"] == m and r["params"]), None)
        line = [m, f"{params / 1e6:.1f}M" if params else "-"]
        for T in lengths:
            r = cell[(m, T)]
            line.append(f"{r['tokens_per_ms']:.1f}" if r["tokens_per_ms"] is not None else r["status"][:12])
        if "attention" in models:
            for T in lengths:
                x = sp.get(m, {}).get(str(T)) if m != "attention" else 1.0
                line.append(f"{x:.2f}x" if x is not None else "-")
        lines.append(line)
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(name)
    rows = []
    for T in args.lengths:
        for m in args.models:
            row = measure(m, T, args, device)
            rows.append(row)
            tput = f"{row['tokens_per_ms']:.1f} tokens/ms" if row["tokens_per_ms"] else row["status"]
            print(f"{m:>9} T={T:<6} batch={row['batch']:<4} {tput}", flush=True)
    print()
    print(table(rows, args.lengths, args.models))
    record = {
        "benchmark": "encoder_throughput",
        "config": {
            "size": args.size,
            "lengths": args.lengths,
            "tokens": args.tokens,
            "models": list(args.models),
            "hydra_layers": args.hydra_layers or M2_BERT_SIZES[args.size]["n_layers"],
            "hydra_conv": args.hydra_conv,
            "hydra_norm": args.hydra_norm,
            "m2_long_conv": args.m2_long_conv,
            "cuda_graph": args.cuda_graph and device.type == "cuda",
            "warmup": args.warmup,
            "iters": args.iters,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        },
        "env": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.machine()})",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "rows": rows,
        "speedup_over_attention": speedups(rows),
    }
    line = json.dumps(record)
    if args.out is not None:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
