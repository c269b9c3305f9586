"""``subq list``: what is registered — sequence mixers, channel mixers, tasks, model and zoo presets."""

from __future__ import annotations

import inspect

import click
from rich.console import Console
from rich.table import Table

from subq.layers import get_channel_mixer, get_mixer, list_channel_mixers, list_mixers
from subq.models import PRESETS
from subq.tasks import get_task, list_tasks

EPILOG = """
\b
Examples:
  subq list                 # everything
  subq list mixers          # sequence mixers with their forms and decode support
"""

SECTIONS = ("mixers", "channel-mixers", "tasks", "presets")


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").replace("``", "")


@click.command(epilog=EPILOG)
@click.argument("section", required=False, type=click.Choice(SECTIONS))
def command(section):
    """List registered mixers, channel mixers, tasks and presets."""
    console = Console()
    show = SECTIONS if section is None else (section,)
    if "mixers" in show:
        table = Table("mixer", "modes", "decode", "bidirectional", "description", title="sequence mixers")
        for name in list_mixers():
            cls = get_mixer(name)
            table.add_row(
                name,
                ", ".join(("auto", *cls.modes)),
                "yes" if cls.supports_decode else "no",
                "yes" if cls.supports_bidirectional else "no",
                _summary(cls),
            )
        console.print(table)
    if "channel-mixers" in show:
        table = Table("channel mixer", "description", title="channel mixers")
        for name in list_channel_mixers():
            table.add_row(name, _summary(get_channel_mixer(name)))
        console.print(table)
    if "tasks" in show:
        table = Table("task", "description", title="tasks")
        for name in list_tasks():
            table.add_row(name, _summary(get_task(name)))
        console.print(table)
    if "presets" in show:
        from subq.train.zoo import PRESETS as ZOO_PRESETS

        table = Table("preset", "kind", "sizes", title="presets")
        for name, p in PRESETS.items():
            table.add_row(
                name,
                "model (LMConfig/EncoderConfig.from_preset)",
                ", ".join(f"{k}={v}" for k, v in p.items()),
            )
        for name, p in ZOO_PRESETS.items():
            table.add_row(
                name, "zoo (subq zoo --preset)", f"d_models={p['d_models']}, settings={p['settings']}"
            )
        console.print(table)
