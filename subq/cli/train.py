"""``subq train``: one training run from a YAML/JSON config plus dotted ``key=value`` overrides.

subq train --config configs/mqar-attention.yaml optim.lr=1e-3 model.d_model=64
subq train --config configs/mqar-attention.yaml --resume
torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml
"""

from __future__ import annotations

import logging
import os

import click
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from subq.train import (
    CheckpointError,
    Trainer,
    TrainResult,
    dump_config,
    format_validation_error,
    load_config,
)

EPILOG = """
\b
Examples:
  # attention on MQAR, with the example config
  subq train --config configs/mqar-attention.yaml
  # the same with a higher learning rate and a wider model
  subq train --config configs/mqar-attention.yaml optim.lr=1e-3 model.d_model=64
  # another mixer and a longer sequence (the model is re-sized from the task)
  subq train --config configs/mqar-attention.yaml model.mixer.name=sliding_window \\
      model.mixer.window=16 task.seq_len=128 task.num_kv_pairs=8
  # no file: defaults plus overrides
  subq train task.vocab_size=256 task.seq_len=32 max_steps=500 device=cpu cpu_threads=1
  # continue the run in out_dir from its latest checkpoint
  subq train --config configs/mqar-attention.yaml --resume
  # show the resolved config without training
  subq train --config configs/mqar-attention.yaml --print-config
  # two data-parallel processes (gloo on CPU, nccl on CUDA)
  torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml

\b
Overrides are parsed as YAML: numbers, true/false, null and [lists] work.
"""


@click.command("train", epilog=EPILOG)
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON training config (TrainConfig); defaults are used when omitted.",
)
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in out_dir.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def command(config_path: str | None, resume: bool, print_config: bool, overrides: tuple[str, ...]) -> None:
    """Train one model on one task: AdamW + cosine, eval, early stop, checkpoints."""
    try:
        cfg = load_config(config_path, list(overrides))
    except ValidationError as e:
        raise click.ClickException(f"invalid config:\n{format_validation_error(e)}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    out = Console()
    if print_config:
        out.print(dump_config(cfg), end="", markup=False, highlight=False)
        return
    main_rank = int(os.environ.get("RANK", "0")) == 0
    err = Console(stderr=True)
    handler = RichHandler(console=err, show_path=False, level=logging.INFO if main_rank else logging.WARNING)
    logger = logging.getLogger("subq")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            trainer = Trainer(cfg, console=err)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        try:
            result = trainer.fit(resume=resume)
        except (CheckpointError, FileExistsError) as e:
            raise click.ClickException(str(e)) from None
        finally:
            trainer.close()
    finally:
        logger.removeHandler(handler)
    if main_rank:
        out.print(
            summary_table(
                cfg.task.describe(), "+".join(m.name for m in cfg.model.mixers), result, cfg.out_dir
            )
        )
    if result.stop_reason == "nan":
        raise click.ClickException(result.message)


def summary_table(task: str, mixer: str, result: TrainResult, out_dir: str | None) -> Table:
    """The end-of-run summary printed by ``subq train``."""
    table = Table(title="subq train", show_header=False)
    table.add_column(style="bold")
    table.add_column()

    def fmt(acc: float | None) -> str:
        return "-" if acc is None else f"{acc:.4f}"

    rows = [
        ("task", task),
        ("mixer", mixer),
        ("parameters", f"{result.num_params:,}"),
        ("steps", f"{result.steps:,}"),
        ("tokens", f"{result.tokens:,}"),
        ("final accuracy", fmt(result.final_accuracy)),
        ("best accuracy", fmt(result.best_accuracy)),
        ("stop", f"{result.stop_reason}: {result.message}"),
        ("wall time", f"{result.wall_time:.1f} s"),
        ("out_dir", out_dir or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
