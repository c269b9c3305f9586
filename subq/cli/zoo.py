"""``subq zoo``: the MQAR recall sweep — table, ``results.jsonl`` and an accuracy-vs-state-size plot."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from subq.layers import list_mixers
from subq.train.zoo import (
    PRESETS,
    ZooConfig,
    best_over_lrs,
    mixer_label,
    mixers_from_names,
    plot_accuracy_vs_state,
    run_zoo,
)

EPILOG = """
\b
Examples:
  subq zoo                                     # quick preset: CPU, a few minutes
  subq zoo --mixers attention --d-models 64,128
  subq zoo --preset zoology --mixers attention --device cuda --out zoo-h200
  subq zoo --preset zoology --dry-run          # print the grid, train nothing
  subq zoo --settings 64:4,256:16 --lrs 1e-3,3e-3 --epochs 8
"""


def _csv(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return [kind(v) for v in value.split(",") if v.strip()]
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return parse


def _settings(ctx, param, value):
    if value is None:
        return None
    try:
        return [tuple(int(x) for x in pair.split(":")) for pair in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected L:K pairs such as 64:4,128:8, got {value!r}") from None


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return name


@click.command(epilog=EPILOG)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="quick",
    show_default=True,
    help="quick: 2-core CPU in minutes. zoology: the paper's Figure 2 grid (GPU).",
)
@click.option("--mixers", callback=_csv(str), help="Comma-separated mixer names (default: the preset's).")
@click.option("--d-models", callback=_csv(int), help="Comma-separated model widths.")
@click.option(
    "--settings", callback=_settings, help="Comma-separated L:K pairs (sequence length : key-value pairs)."
)
@click.option("--lrs", callback=_csv(float), help="Comma-separated learning rates.")
@click.option("--epochs", type=float, help="Epochs per run (early stop at the target accuracy).")
@click.option("--max-steps", type=int, help="Cap on optimizer steps per run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    help="auto: bf16 autocast on CUDA, fp32 on CPU.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="zoo-out",
    show_default=True,
    help="Folder for results.jsonl, summary.json and accuracy_vs_state.png.",
)
@click.option(
    "--jobs",
    type=int,
    help="Cells trained at once in separate processes (default: one per CPU core on CPU, 1 on CUDA).",
)
@click.option("--dry-run", is_flag=True, help="Print the grid and exit without training.")
def command(
    preset, mixers, d_models, settings, lrs, epochs, max_steps, device, precision, out_dir, jobs, dry_run
):
    """Train small models on multi-query associative recall (MQAR) and compare recall against state size.

    Each (mixer, d_model, L, K) cell trains a 2-layer model per learning rate and reports the best
    test accuracy; a learning rate that reaches the target accuracy ends that cell's sweep.
    """
    console = Console(width=None if sys.stdout.isatty() else 140)
    overrides = {}
    if mixers:
        unknown = [m for m in mixers if m not in list_mixers()]
        if unknown:
            raise click.BadParameter(
                f"unknown mixer(s) {', '.join(unknown)}; valid names: {', '.join(list_mixers())}",
                param_hint="--mixers",
            )
        overrides["mixers"] = mixers_from_names(mixers)
    for key, value in (
        ("d_models", d_models),
        ("settings", settings),
        ("lrs", lrs),
        ("epochs", epochs),
        ("max_steps", max_steps),
        ("precision", precision),
    ):
        if value is not None:
            overrides[key] = value
    try:
        cfg = ZooConfig.preset(preset, **overrides)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    dev = _device(device)
    runs = cfg.runs()
    n_cells = len({r.cell for r in runs})
    if jobs is None:
        jobs = min(os.cpu_count() or 1, n_cells) if dev == "cpu" else 1
    if jobs < 1:
        raise click.BadParameter(f"must be >= 1, got {jobs}", param_hint="--jobs")

    console.print(
        f"[bold]subq zoo[/] preset={preset} device={dev}: {len(runs)} runs "
        f"({len(cfg.mixers)} mixers x {len(cfg.d_models)} widths x {len(cfg.settings)} (L, K) x "
        f"{len(cfg.lrs)} lrs) on {jobs} process(es), V={cfg.vocab_size}, "
        f"{cfg.num_train_examples} train examples, "
        f"up to {cfg.epochs:g} epochs, target {cfg.target_accuracy}"
    )
    if dry_run:
        table = Table("mixer", "d_model", "L", "K", "lr", "batch")
        for r in runs:
            table.add_row(
                mixer_label(r.mixer),
                str(r.d_model),
                str(r.seq_len),
                str(r.num_kv_pairs),
                f"{r.lr:.2e}",
                str(cfg.batch_sizes.get(r.seq_len, cfg.batch_size)),
            )
        console.print(table)
        return

    out = Path(out_dir)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=len(runs))

        if jobs > 1:
            progress.update(task, description=f"training {n_cells} cells, {jobs} at a time")

        def start(run):
            progress.update(task, description=f"training {run.label()}")

        def end(row):
            progress.advance(task)
            if not row.skipped:
                progress.console.print(
                    f"  {row.label:<28} d={row.d_model:<4} L={row.seq_len:<4} K={row.num_kv_pairs:<3}"
                    f" lr={row.lr:.2e}  acc={row.accuracy:.3f}  steps={row.steps:<6}"
                    f" {row.seconds:6.1f}s  ({row.stop_reason})"
                )

        rows = run_zoo(cfg, device=dev, out_dir=out, jobs=jobs, on_run_start=start, on_row=end)

    cells = best_over_lrs(rows)
    table = Table(
        "mixer",
        "d_model",
        "L",
        "K",
        "state size",
        "params",
        "accuracy",
        "best lr",
        "time (s)",
        title="MQAR test accuracy (best over learning rates)",
    )
    for c in cells:
        acc = c["accuracy"]
        style = "green" if acc >= cfg.target_accuracy else ("yellow" if acc >= 0.5 else "red")
        table.add_row(
            c["mixer"],
            str(c["d_model"]),
            str(c["seq_len"]),
            str(c["num_kv_pairs"]),
            f"{c['state_size']:,}",
            f"{c['params']:,}",
            f"[{style}]{acc:.3f}[/]",
            f"{c['lr']:.2e}" if c["lr"] else "-",
            f"{c['seconds']:.1f}",
        )
    console.print(table)
    (out / "summary.json").write_text(
        json.dumps(
            {"preset": preset, "device": dev, "config": cfg.model_dump(mode="json"), "cells": cells}, indent=1
        )
    )
    plot = plot_accuracy_vs_state(cells, out / "accuracy_vs_state.png")
    console.print(
        f"{len(rows)} runs in {time.perf_counter() - t0:.0f}s; wrote {out / 'results.jsonl'}, "
        f"{out / 'summary.json'}, {plot}"
    )
