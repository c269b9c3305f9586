"""``subq hf``: HiP attention on a local Hugging Face causal LM: generate text, time prefill and decode.

    subq hf generate --model ./llama --attn subq_hip --k 512 --prompt-file prompt.txt --max-new-tokens 64
    subq hf bench --model ./llama --lengths 1024,4096 --attn sdpa,subq_hip

``--model`` is a folder written by ``save_pretrained`` (nothing is downloaded). Needs the ``[hf]`` extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

EPILOG_GENERATE = """
\b
Examples:
  subq hf generate --model ./llama --prompt-file long.txt                    # HiP, k=512, 3 dense layers
  subq hf generate --model ./llama --attn sdpa --prompt-file long.txt        # the dense reference
  subq hf generate --model ./llama --k 1024 --block-size-q 32 --prompt-ids 1,15043,29892
"""

EPILOG_BENCH = """
\b
Examples:
  subq hf bench --model ./llama --lengths 1024,4096                   # sdpa vs subq_hip
  subq hf bench --model ./llama --lengths 32768 --attn sdpa,subq_hip --k 512 --decode-steps 32
  python benchmarks/make_random_llama.py random_llama     # no weights at hand: a random Llama to time
"""


def _hip_options(f):
    """The HiP hyperparameters shared by ``generate`` and ``bench`` (defaults: ``HIP_DEFAULTS``)."""
    options = [
        click.option(
            "--k", "mask_k", type=int, default=512, show_default=True, help="Key budget per query block."
        ),
        click.option("--block-size-q", type=int, default=64, show_default=True),
        click.option("--block-stride-q", type=int, default=2, show_default=True),
        click.option("--block-size-k", type=int, default=2, show_default=True),
        click.option("--block-stride-k", type=int, default=1, show_default=True),
        click.option("--sink-size", type=int, default=16, show_default=True),
        click.option("--window", type=int, default=256, show_default=True, help="Sliding window."),
        click.option(
            "--dense-layers", type=int, default=3, show_default=True, help="First layers kept dense."
        ),
        click.option(
            "--refresh-interval", type=int, default=8, show_default=True, help="Decode steps per mask search."
        ),
        click.option(
            "--mode", type=click.Choice(["auto", "torch", "triton"]), default="auto", show_default=True
        ),
        click.option("--device", default=None, help="Default: cuda when available, else cpu."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help="auto: bfloat16 on CUDA, float32 on CPU.",
        ),
        click.option(
            "--model",
            "model_path",
            required=True,
            type=click.Path(exists=True, file_okay=False),
            help="Local save_pretrained folder.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_HIP_NAMES = (
    "mask_k", "block_size_q", "block_stride_q", "block_size_k", "block_stride_k", "sink_size", "window",
    "dense_layers", "refresh_interval", "mode",
)  # fmt: skip


def _split_hip(kwargs: dict) -> dict:
    return {n: kwargs.pop(n) for n in _HIP_NAMES}


def _hf():
    try:
        import subq.hf  # noqa: F401  (registers subq_hip)
        from subq.hf import runtime
    except ImportError as e:
        raise click.ClickException(f"{e}") from None
    from transformers.utils import logging

    logging.disable_progress_bar()  # keeps stdout a table and a JSON line
    return runtime


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 140)


EPILOG_GROUP = """
\b
Examples:
  subq hf generate --model ./llama --prompt-file long.txt     # HiP attention, k=512
  subq hf bench --model ./llama --lengths 4096,32768          # prefill and decode, dense vs HiP
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG_GROUP)
def command():
    """HiP attention on local Hugging Face causal LMs: generate, bench."""


@command.command(epilog=EPILOG_GENERATE)
@_hip_options
@click.option(
    "--attn", type=click.Choice(["subq_hip", "eager", "sdpa"]), default="subq_hip", show_default=True
)
@click.option(
    "--prompt-file", type=click.Path(exists=True, dir_okay=False), default=None, help="UTF-8 prompt."
)
@click.option("--prompt-ids", default=None, help="Comma-separated token ids instead of --prompt-file.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON line (ids, text, settings) instead of text."
)
def generate(model_path, attn, prompt_file, prompt_ids, max_new_tokens, as_json, device, dtype, **kwargs):
    """Greedy continuation of a prompt with HiP (or dense) attention."""
    hip = _split_hip(kwargs)
    if (prompt_file is None) == (prompt_ids is None):
        raise click.UsageError("give exactly one of --prompt-file and --prompt-ids")
    if max_new_tokens < 1:
        raise click.BadParameter(f"must be >= 1, got {max_new_tokens}", param_hint="--max-new-tokens")
    runtime = _hf()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = runtime.load_causal_lm(model_path, attn=attn, device=device, dtype=dtype, **hip)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    tokenizer = None
    if prompt_ids is not None:
        try:
            ids = [int(t) for t in prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise click.BadParameter(
                f"expected integers like 1,2,3; got {prompt_ids!r}", param_hint="--prompt-ids"
            ) from None
    else:
        tokenizer = runtime.load_tokenizer(model_path)
        ids = tokenizer(Path(prompt_file).read_text(encoding="utf-8"))["input_ids"]
    if not ids:
        raise click.UsageError("the prompt is empty")
    new = runtime.generate_ids(model, torch.tensor([ids]), max_new_tokens=max_new_tokens)[0].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else None
    if as_json:
        record = {"attn": attn, "prompt_tokens": len(ids), "new_ids": new, "text": text}
        if attn == "subq_hip":
            record["hip"] = hip
        click.echo(json.dumps(record))
    else:
        click.echo(text if text is not None else ",".join(map(str, new)))


@command.command(epilog=EPILOG_BENCH)
@_hip_options
@click.option("--lengths", required=True, help="Prompt lengths in tokens, e.g. 1024,4096.")
@click.option("--attn", "attns", default="sdpa,subq_hip", show_default=True, help="Attentions to compare.")
@click.option(
    "--decode-steps",
    type=int,
    default=16,
    show_default=True,
    help="Timed decode steps per run (after one untimed warm-up step).",
)
@click.option("--repeats", type=int, default=3, show_default=True, help="Prefill runs (median).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here."
)
def bench(model_path, lengths, attns, decode_steps, repeats, seed, out_path, device, dtype, **kwargs):
    """Prefill latency and per-token decode latency, dense vs HiP in the same run (table, JSON last line)."""
    hip = _split_hip(kwargs)
    try:
        lens = [int(v) for v in lengths.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 1024,4096; got {lengths!r}", param_hint="--lengths"
        ) from None
    if not lens or min(lens) < 1:
        raise click.BadParameter(f"expected positive lengths, got {lengths!r}", param_hint="--lengths")
    names = [a.strip() for a in attns.split(",") if a.strip()]
    bad = [a for a in names if a not in ("subq_hip", "eager", "sdpa")]
    if bad or not names:
        raise click.BadParameter(f"choose from subq_hip, eager, sdpa; got {attns!r}", param_hint="--attn")
    if decode_steps < 0 or repeats < 1:
        raise click.BadParameter("--decode-steps must be >= 0 and --repeats >= 1")
    runtime = _hf()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = runtime.load_causal_lm(model_path, attn=names[0], device=device, dtype=dtype, **hip)
        console = _console()

        def progress(r):
            done = (
                r.get("error")
                or f"prefill {r['prefill_ms']:.2f} ms, decode {r['decode_ms_per_token']:.3f} ms/token"
            )
            console.print(f"T={r['T']} {r['attn']}: {done}", style="dim")

        rows = runtime.bench_attentions(
            model,
            lens,
            names,
            decode_steps=decode_steps,
            repeats=repeats,
            seed=seed,
            hip=hip,
            progress=progress,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    title = f"{type(model).__name__}, {device}, {next(model.parameters()).dtype}, HiP k={hip['mask_k']}"
    table = Table(title=title)
    cols = ("T", "attn", "prefill ms", "decode ms/token", "prefill speedup", "decode speedup", "peak MiB")
    for col in cols:
        table.add_column(col, justify="left" if col == "attn" else "right")
    for r in rows:
        failed = "error" in r
        table.add_row(
            str(r["T"]),
            r["attn"],
            r["error"] if failed else f"{r['prefill_ms']:.2f}",
            "-" if failed else f"{r['decode_ms_per_token']:.3f}",
            f"{r['prefill_speedup']:.2f}x" if "prefill_speedup" in r else "-",
            f"{r['decode_speedup']:.2f}x" if "decode_speedup" in r else "-",
            f"{r['peak_mib']:,.0f}" if "peak_mib" in r else "-",
        )
    console.print(table)
    record = {
        "model": str(model_path),
        "model_class": type(model).__name__,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "dtype": str(next(model.parameters()).dtype),
        "torch": torch.__version__,
        "hip": hip,
        "decode_steps": decode_steps,
        "repeats": repeats,
        "rows": rows,
    }
    if out_path:
        Path(out_path).write_text(json.dumps(record, indent=1))
    click.echo(json.dumps(record))
