"""The ``subq`` console script: one entry point, one subcommand per job.

subq list                       mixers, channel mixers, tasks, presets
subq zoo                        MQAR recall sweep (the main job)
subq train --config FILE k=v    one training run
subq bench                      speed and memory against SDPA
subq doctor                     versions and available fast paths
subq repro NAME [--quick]       paper reproductions (quadratic, hpoly, quadattack, subgm,
                                peft_minilm, lora_limits, hyena_dna, lit,
                                matrix_mixers)
subq hf generate|bench          HiP attention on a local Hugging Face causal LM
"""

from __future__ import annotations

import importlib

import click

_COMMANDS = {
    "list": "subq.cli.list_cmd",
    "zoo": "subq.cli.zoo",
    "train": "subq.cli.train",
    "bench": "subq.cli.bench",
    "doctor": "subq.cli.doctor",
    "repro": "subq.cli.repro",
    "hf": "subq.cli.hf",
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs (keeps ``subq --help`` fast)."""

    def list_commands(self, ctx):
        return list(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        return importlib.import_module(_COMMANDS[name]).command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="subq")
def main():
    """subq: sub-quadratic sequence mixers, recall sweeps and kernel benchmarks."""


if __name__ == "__main__":
    main()
