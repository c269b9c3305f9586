"""End-to-end generation throughput: the BASED hybrid against a same-size attention Transformer.

Both models come from ``subq.models.based`` (``based_config(size)`` and ``attention_config(size)``,
parameter counts within a few percent) with random weights. For each model and batch size:

1. a random prompt of ``--prompt-len`` tokens goes through ``prefill``, ``--prefill-batch`` rows at a
   time (the prefill activations of a whole large batch would not fit where its decoding state
   does); only the last position goes through the head; the per-layer states of the chunks are
   copied into one full-batch state. The attention model's KV cache is allocated there at its final
   capacity, ``prompt_len + new_tokens``, so decoding never regrows it;
2. ``--new-tokens`` tokens are decoded greedily: the first from the prefill logits, the rest by
   ``LanguageModel.step`` (BASED: fixed-size states; attention: the KV cache).

Prefill and decode are timed apart, synchronised, under ``torch.inference_mode()`` (on CUDA with
SDPA's cuDNN backend off, see ``sdpa_backends``), after an untimed warm-up (one prefill chunk and
two steps: compiles FlexAttention for the chunk shape). The sweep of a model stops at its first
out-of-memory batch (recorded as ``OOM``). Before timing, each model passes a correctness gate:
decode logits (prefill + steps over a short sequence) against the parallel forward, by relative
RMS (next to it, the error of steps that start from empty states, which the gate must not allow).

    python benchmarks/generation.py --size 360m                  # CUDA, bf16, prompt 2048, 1024 new
    python benchmarks/generation.py --size 360m --batches 1,64,512 --out generation.json
    python benchmarks/generation.py --size tiny --device cpu --prompt-len 16 --new-tokens 4 --batches 1,2

Prints a table, then one JSON line (the last line of stdout). Exit status 1 if a gate fails or a
run raises anything but out-of-memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
import time
from typing import Any

import torch
from torch import Tensor

from subq.models import LanguageModel, count_params
from subq.models.based import BASED_SIZES, attention_config, based_config

CONFIGS = {"based": based_config, "attention": attention_config}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GATE_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-4}
GATE_PROMPT, GATE_NEW = 32, 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(BASED_SIZES), default="360m", help="model size (default 360m)")
    p.add_argument("--models", default="based,attention", help="comma-separated: based, attention")
    p.add_argument("--prompt-len", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--new-tokens", type=int, default=1024, help="generated tokens (default 1024)")
    p.add_argument(
        "--batches",
        default="1,8,32,64,128,256,512,1024,2048",
        help="batch sizes, ascending (default up to 2048)",
    )
    p.add_argument("--prefill-batch", type=int, default=16, help="prompt rows per prefill call (default 16)")
    p.add_argument("--vocab-size", type=int, default=50304, help="vocabulary (default 50304)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA if present"
    )
    p.add_argument(
        "--dtype", choices=list(DTYPES), default=None, help="weights (default bf16 on CUDA, else fp32)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON record to this file")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in CONFIGS:
            p.error(f"--models: unknown model {m!r}; valid: {', '.join(CONFIGS)}")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        p.error(f"--batches must be comma-separated ints, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1 or args.batches != sorted(args.batches):
        p.error(f"--batches must be positive and ascending, got {args.batches}")
    for name in ("prompt_len", "new_tokens", "prefill_batch", "vocab_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    args.dtype = (
        DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    )
    return args


# ---- decoding states as data: allocate a full batch, copy chunks into it, count bytes ------------------
def _full_batch_like(state: Any, batch: int, capacity: int | None) -> Any:
    """An all-zero state shaped like ``state`` with ``batch`` rows; KV caches get ``capacity`` slots."""
    if isinstance(state, Tensor):
        return state.new_zeros((batch, *state.shape[1:]))
    if isinstance(state, (tuple, list)):
        return type(state)(_full_batch_like(s, batch, capacity) for s in state)
    if dataclasses.is_dataclass(state):  # KVCache: k, v [B, capacity, H_kv, D] and the int length
        fields = {}
        for f in dataclasses.fields(state):
            v = getattr(state, f.name)
            if isinstance(v, Tensor):
                slots = max(v.shape[1], capacity) if capacity is not None else v.shape[1]
                fields[f.name] = v.new_zeros((batch, slots, *v.shape[2:]))
        return dataclasses.replace(state, **fields)
    return state


def _copy_rows(dst: Any, src: Any, lo: int) -> None:
    """Copy the chunk state ``src`` into rows ``lo : lo + len(src)`` of ``dst`` (KV slots from 0)."""
    if isinstance(dst, Tensor):
        rows = dst[lo : lo + src.shape[0]]
        if dst.dim() > 1 and dst.shape[1] != src.shape[1]:
            rows = rows[:, : src.shape[1]]
        rows.copy_(src)
    elif isinstance(dst, (tuple, list)):
        for d, s in zip(dst, src, strict=True):
            _copy_rows(d, s, lo)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            if isinstance(getattr(dst, f.name), Tensor):
                _copy_rows(getattr(dst, f.name), getattr(src, f.name), lo)


def state_bytes(state: Any) -> int:
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(s) for s in state)
    if dataclasses.is_dataclass(state):
        return sum(state_bytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    return 0


# ---- prefill and decode ---------------------------------------------------------------------------
def chunked_prefill(model: LanguageModel, ids: Tensor, chunk: int, kv_capacity: int) -> tuple[Tensor, list]:
    """Prefill ``chunk`` rows at a time into one full-batch state; growing KV caches (the
    ``attention`` mixer's) are allocated with ``kv_capacity`` slots."""
    B = ids.shape[0]
    growing = [b.mixer.name == "attention" for b in model.backbone.blocks]
    logits, full = [], None
    for lo in range(0, B, chunk):
        last, states = model.prefill(ids[lo : lo + chunk], last_only=True)
        if full is None:
            full = [
                _full_batch_like(s, B, kv_capacity if g else None)
                for s, g in zip(states, growing, strict=True)
            ]
        for dst, src in zip(full, states, strict=True):
            _copy_rows(dst, src, lo)
        logits.append(last[:, -1])
        del states
    return torch.cat(logits), full


def greedy_decode(model: LanguageModel, logits: Tensor, states: list, start: int, n_new: int):
    """``n_new`` greedy tokens: the first from ``logits``, the others through ``n_new - 1`` steps."""
    out = torch.empty(logits.shape[0], n_new, dtype=torch.long, device=logits.device)
    tok = logits.argmax(-1)
    out[:, 0] = tok
    for i in range(1, n_new):
        logits, states = model.step(tok, states, start + i - 1)
        tok = logits.argmax(-1)
        out[:, i] = tok
    return out, states


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rel_rms(a: Tensor, b: Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def gate(model: LanguageModel, args: argparse.Namespace, gen: torch.Generator) -> dict[str, Any]:
    """Decode logits (prefill + steps, teacher-forced) vs the parallel forward, by relative RMS.

    ``context_rel_rms`` is the same comparison for steps that start from empty states instead of
    the prefill's: how far off a decoder that loses its context would be. It must exceed the
    tolerance, or the gate could not tell a broken decoder from a working one."""
    T, n = min(GATE_PROMPT, args.prompt_len), GATE_NEW
    ids = torch.randint(args.vocab_size, (2, T + n), device=args.device, generator=gen)
    want = model(ids)[:, T - 1 : T + n - 1]  # (2, n, V)
    logits, states = chunked_prefill(model, ids[:, :T], args.prefill_batch, T + n)
    got, lost = [logits], []
    empty = [b.mixer.init_state(2) for b in model.backbone.blocks]
    for pos in range(T, T + n - 1):
        logits, states = model.step(ids[:, pos], states, pos)
        got.append(logits)
        logits, empty = model.step(ids[:, pos], empty, pos)
        lost.append(logits)
    err, context = _rel_rms(torch.stack(got, 1), want), _rel_rms(torch.stack(lost, 1), want[:, 1:])
    tol = GATE_TOLERANCE[args.dtype]
    return {"rel_rms": err, "tolerance": tol, "context_rel_rms": context, "passed": err <= tol < context}


def run_one(
    model: LanguageModel, batch: int, args: argparse.Namespace, gen: torch.Generator
) -> dict[str, Any]:
    dev, P, N = args.device, args.prompt_len, args.new_tokens
    ids = torch.randint(args.vocab_size, (batch, P), device=dev, generator=gen)
    # warm-up, untimed: one prefill chunk (compiles its shape) and two steps
    logits, states = chunked_prefill(model, ids[: args.prefill_batch], args.prefill_batch, P + 2)
    greedy_decode(model, logits, states, P, 2)
    del logits, states
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _sync(dev)
    t0 = time.perf_counter()
    logits, states = chunked_prefill(model, ids, args.prefill_batch, P + N)
    _sync(dev)
    t1 = time.perf_counter()
    _, states = greedy_decode(model, logits, states, P, N)
    _sync(dev)
    t2 = time.perf_counter()
    prefill_s, decode_s = t1 - t0, t2 - t1
    return {
        "status": "ok",
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "prefill_tok_s": batch * P / prefill_s,
        "decode_tok_s": batch * (N - 1) / decode_s if N > 1 else None,
        "e2e_tok_s": batch * N / (prefill_s + decode_s),
        "state_mb_per_seq": state_bytes(states) / batch / 2**20,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
    }


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def sdpa_backends(device: str):
    """On CUDA, SDPA's FlashAttention, memory-efficient and math backends, not cuDNN: cuDNN builds
    a new plan for every new key length, about 2 ms of CPU per call, i.e. per layer and decode step
    (H200, PyTorch 2.11). FlashAttention is also the baseline of the BASED paper."""
    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def run(args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "benchmark": "generation",
        "size": args.size,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": str(args.dtype).removeprefix("torch."),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prefill_batch": args.prefill_batch,
        "sdpa_backends": "flash,efficient,math" if args.device == "cuda" else "default",
        "params": {},
        "layers": {},
        "gate": {},
        "results": [],
    }
    for name in args.models:
        gen = torch.Generator(args.device).manual_seed(args.seed)
        torch.manual_seed(args.seed)
        cfg = CONFIGS[name](args.size, args.vocab_size)
        model = LanguageModel(cfg, device=args.device, dtype=args.dtype).eval()
        record["params"][name] = count_params(model)
        record["layers"][name] = cfg.n_layers
        with torch.inference_mode(), sdpa_backends(args.device):
            record["gate"][name] = gate(model, args, gen)
            if not record["gate"][name]["passed"]:
                del model
                _free(args.device)
                continue
            for batch in args.batches:
                row: dict[str, Any] = {"model": name, "batch": batch}
                oom = False
                try:
                    row.update(run_one(model, batch, args, gen))
                except torch.cuda.OutOfMemoryError:
                    oom = True
                except Exception as e:  # recorded; the exit status reports it
                    row.update(status="error", error=f"{type(e).__name__}: {e}")
                if oom:
                    row["status"] = "OOM"
                _free(args.device)  # after the except block, so the traceback's frames are gone
                record["results"].append(row)
                print(f"{name} batch {batch}: {row['status']}", file=sys.stderr, flush=True)
                if row["status"] != "ok":
                    break
        del model
        _free(args.device)
    best = {}
    for name in args.models:
        ok = [r for r in record["results"] if r["model"] == name and r["status"] == "ok"]
        if ok:
            top = max(ok, key=lambda r: r["e2e_tok_s"])
            best[name] = {"batch": top["batch"], "e2e_tok_s": top["e2e_tok_s"], "max_batch": ok[-1]["batch"]}
    record["best"] = best
    if "based" in best and "attention" in best:
        record["best_e2e_speedup"] = best["based"]["e2e_tok_s"] / best["attention"]["e2e_tok_s"]
    return record


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(record: dict[str, Any]) -> None:
    print(
        f"generation: size {record['size']}, {record['device']}, {record['dtype']}, "
        f"prompt {record['prompt_len']}, new tokens {record['new_tokens']}"
    )
    for name, n in record["params"].items():
        g = record["gate"].get(name, {})
        verdict = "pass" if g.get("passed") else "FAIL"
        print(
            f"  {name}: {n / 1e6:.1f}M params, {record['layers'][name]} layers, "
            f"gate rel-RMS {g.get('rel_rms', float('nan')):.2e} (<= {g.get('tolerance')}) {verdict}; "
            f"from empty states {g.get('context_rel_rms', float('nan')):.2e}"
        )
    head = (
        f"{'model':<10}{'batch':>7}{'status':>8}{'prefill s':>11}{'prefill tok/s':>15}{'decode s':>10}"
        f"{'decode tok/s':>14}{'e2e new tok/s':>15}{'state MB/seq':>14}{'peak GB':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in record["results"]:
        print(
            f"{r['model']:<10}{r['batch']:>7}{r['status']:>8}{_fmt(r.get('prefill_s'), '.3f'):>11}"
            f"{_fmt(r.get('prefill_tok_s'), ',.0f'):>15}{_fmt(r.get('decode_s'), '.3f'):>10}"
            f"{_fmt(r.get('decode_tok_s'), ',.0f'):>14}{_fmt(r.get('e2e_tok_s'), ',.0f'):>15}"
            f"{_fmt(r.get('state_mb_per_seq'), '.2f'):>14}{_fmt(r.get('peak_gb'), '.1f'):>9}"
        )
        if r["status"] == "error":
            print(f"    {r['error']}")
    if "best_e2e_speedup" in record:
        b, a = record["best"]["based"], record["best"]["attention"]
        print(
            f"best end-to-end: based {b['e2e_tok_s']:,.0f} tok/s (batch {b['batch']}), attention "
            f"{a['e2e_tok_s']:,.0f} tok/s (batch {a['batch']}): {record['best_e2e_speedup']:.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = run(args)
    print_table(record)
    line = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)
    failed = any(not g["passed"] for g in record["gate"].values()) or any(
        r["status"] == "error" for r in record["results"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
