"""``subq repro NAME [--quick]``: run one paper reproduction, print its table, write JSON and a plot."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import torch
from rich.console import Console

from subq.repro import REPRODUCTIONS, get_reproduction

EPILOG = """
\b
Examples:
  subq repro quadratic --quick            # quadratic vs conventional nets on load_digits (ReLinear)
  subq repro hpoly --quick                # hierarchical polynomials: 3-layer net vs kernel
  subq repro quadattack --quick --out r   # ordered top-K attacks on a digits MLP and a tiny ViT
  subq repro subgm                        # robust low-rank recovery, full sweep
"""


@click.command(epilog=EPILOG)
@click.argument("name", type=click.Choice(list(REPRODUCTIONS)))
@click.option("--quick", is_flag=True, help="The small version: a 2-core CPU in a few minutes.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="repro-out",
    show_default=True,
    help=(
        "Folder for NAME.json and NAME.png (lit and peft_minilm also keep what they finished there, "
        "and a rerun resumes from it)."
    ),
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch CPU threads (these models are small: one thread is fastest).",
)
def command(name, quick, out_dir, seed, threads):
    """Reproduce a paper's claim at small scale (NAME: any of the choices above; `--quick` for a CPU)."""
    console = Console(width=None if sys.stdout.isatty() else 140)
    if threads < 1:
        raise click.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
    torch.set_num_threads(threads)
    module = get_reproduction(name)
    console.print(f"[bold]subq repro {name}[/]{' --quick' if quick else ''}: {module.CLAIM}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    module.run(quick=quick, out_dir=out, seed=seed, console=console)
    console.print(
        f"done in {time.perf_counter() - t0:.0f}s; wrote {out / (name + '.json')} and {out / (name + '.png')}"
    )
