"""``subq bench``: gated speed and memory of the registered entries against SDPA.

    subq bench --quick
    subq bench --entries sliding_window --T 4096,16384,65536 --param window=256 --plot bench.png

Resolves the options into shapes and entries, runs :func:`subq.bench.run_bench`, prints the table
(stdout, JSON last line) and exits 1 when any correctness gate failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch
from rich.console import Console

from subq.bench import get_bench, list_benches
from subq.bench.crossover import crossover_lengths
from subq.bench.plot import plot_times
from subq.bench.runner import DEFAULT_TIMING, DTYPES, QUICK_TIMING, environment, report, run_bench

# (batch, heads, head_dim, sequence lengths) when not given
_SHAPE_DEFAULTS = {
    "cuda": (1, 32, 128, (1024, 4096, 16384)),
    "cpu": (1, 4, 64, (256, 1024, 2048)),
    "quick": (1, 2, 16, (128, 512)),
}


def _comma_list(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"expected a comma-separated list, got {value!r}", param_hint=option)
    return items


def _seq_lens(value: str | None) -> list[int] | None:
    items = _comma_list(value, "--T")
    if items is None:
        return None
    try:
        lens = [int(v) for v in items]
    except ValueError:
        raise click.BadParameter(
            f"expected positive integers like 1024,4096; got {value!r}", param_hint="--T"
        ) from None
    if min(lens) < 1:
        raise click.BadParameter(f"sequence lengths must be >= 1, got {value!r}", param_hint="--T")
    return lens


def _cast(key: str, raw: str, default: object) -> object:
    """``raw`` parsed to the type of the entry's default for ``key``."""
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise click.BadParameter(f"{key}={raw!r}: expected true or false", param_hint="--param")
        return raw.lower() in ("true", "1")
    try:
        return type(default)(raw)
    except ValueError:
        raise click.BadParameter(
            f"{key}={raw!r}: expected {type(default).__name__}", param_hint="--param"
        ) from None


def _entry_params(specs, pairs: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """``--param key=value`` applied to every selected entry that declares ``key``."""
    overrides: dict[str, dict[str, object]] = {spec.name: {} for spec in specs}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        owners = [spec for spec in specs if key in spec.params]
        if not owners:
            known = sorted({k for spec in specs for k in spec.params})
            raise click.BadParameter(
                f"no selected entry takes {key!r}; parameters of the selected entries: "
                f"{', '.join(known) or '(none)'}",
                param_hint="--param",
            )
        for spec in owners:
            overrides[spec.name][key] = _cast(key, raw, spec.params[key])
    return overrides


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            "cuda requested but torch.cuda.is_available() is False", param_hint="--device"
        )
    return torch.device(name)


@click.command(
    "bench",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option("--entries", help="Comma list of entries (default: all registered).")
@click.option(
    "--T",
    "seq_lens",
    help="Comma list of sequence lengths (default 1024,4096,16384 on CUDA, 256,1024,2048 on CPU).",
)
@click.option("--batch", type=click.IntRange(min=1), help="Batch size B (default 1).")
@click.option("--heads", type=click.IntRange(min=1), help="Heads H (default 32 on CUDA, 4 on CPU).")
@click.option("--head-dim", type=click.IntRange(min=1), help="Head dim D (default 128 on CUDA, 64 on CPU).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), help="Default bf16 on CUDA, fp32 on CPU.")
@click.option(
    "--device", "device_name", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--modes", help="Comma list of modes to run, e.g. torch,triton (default: all of each entry).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Entry parameter, repeatable, e.g. --param window=512.",
)
@click.option("--no-backward", is_flag=True, help="Gate and time the forward only.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a log-log PNG of time vs T.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON record to this file.",
)
@click.option("--quick", is_flag=True, help="Tiny shapes and short timings (B=1, H=2, D=16, T=128,512).")
def command(
    entries,
    seq_lens,
    batch,
    heads,
    head_dim,
    dtype,
    device_name,
    modes,
    params,
    no_backward,
    plot_path,
    json_path,
    quick,
):
    """Benchmark fast forms against their naive references and against SDPA.

    For every entry, mode and T: a correctness gate against the entry's naive
    reference (forward and input gradients, relative RMS; run at
    min(T, 2048) because the reference is O(T^2)), then median forward and forward+backward
    times, TFLOP/s, GB/s, peak CUDA memory, and the ratio to PyTorch's
    default-dispatch scaled_dot_product_attention (causal) timed in the same
    run (speedup > 1: faster than SDPA), and per mode the crossover length:
    the smallest T from which it beats SDPA at every larger T benchmarked.
    A failing gate prints no timings and makes the exit status 1. The last
    stdout line is one JSON object.

    \b
    Examples:
      subq bench --quick                                # seconds, any machine
      subq bench --entries attention --T 4096,16384     # runner sanity check: ~1.0x
      subq bench --entries sliding_window --T 4096,16384,65536 \\
          --param window=256 --plot bench.png
      subq bench --modes torch --dtype fp32 --no-backward --json bench.json
      subq bench --entries combiner,kernelized_rpe,performer --heads 16 \\
          --head-dim 64 --T 1024,4096,16384,65536     # crossover vs SDPA
    """
    device = _device(device_name)
    names = _comma_list(entries, "--entries") or list_benches()
    unknown = [n for n in names if n not in list_benches()]
    if unknown:
        raise click.BadParameter(
            f"unknown entry {unknown[0]!r}; valid names: {', '.join(list_benches())}", param_hint="--entries"
        )
    specs = [get_bench(n) for n in names]
    mode_list = _comma_list(modes, "--modes")
    if mode_list is not None:
        valid = sorted({m for spec in specs for m in spec.modes})
        missing = [m for m in mode_list if m not in valid]
        if missing:
            raise click.BadParameter(
                f"unknown mode {missing[0]!r}; modes of the selected entries: {', '.join(valid)}",
                param_hint="--modes",
            )
    B, H, D, Ts = _SHAPE_DEFAULTS["quick" if quick else device.type]
    config = {
        "entries": names,
        "T": _seq_lens(seq_lens) or list(Ts),
        "batch": batch or B,
        "heads": heads or H,
        "head_dim": head_dim or D,
        "dtype": dtype or ("bf16" if device.type == "cuda" else "fp32"),
        "device": str(device),
        "modes": mode_list,
        "params": _entry_params(specs, params),
        "backward": not no_backward,
        "quick": quick,
    }
    err = Console(stderr=True)
    rows = run_bench(
        specs,
        config["T"],
        batch=config["batch"],
        heads=config["heads"],
        head_dim=config["head_dim"],
        dtype=DTYPES[config["dtype"]],
        device=device,
        modes=mode_list,
        params=config["params"],
        backward=config["backward"],
        timing=QUICK_TIMING if quick else DEFAULT_TIMING,
        log=lambda line: err.print(f"[dim]{line}[/]"),
    )
    env = environment(["subq", *sys.argv[1:]], device)
    out = Console(width=None if sys.stdout.isatty() else 200)
    report(rows, env, config, out)
    if json_path is not None:
        record = {"env": env, "config": config, "rows": rows, "crossover": crossover_lengths(rows)}
        json_path.write_text(json.dumps(record, indent=1) + "\n")
    if plot_path is not None:
        plot_times(
            rows,
            plot_path,
            title=f"B={config['batch']} H={config['heads']} D={config['head_dim']} "
            f"{config['dtype']} {env['gpu'] or env['device']}",
        )
    failed = [r for r in rows if (r["gate"] or {}).get("status") in ("FAIL", "error") or r["error"]]
    if failed:
        err.print(
            f"[bold red]{len(failed)} row(s) failed the correctness gate or raised; see the gate column[/]"
        )
        click.get_current_context().exit(1)
