"""Paper reproductions behind ``subq repro NAME [--quick]``.

Each reproduction is a module ``subq.repro.<name>`` with

    run(*, quick: bool, out_dir: Path, seed: int = 0, console: rich.console.Console | None = None) -> dict

that trains/solves what it needs, prints a table, writes ``<out_dir>/<name>.json`` (the table and
the settings) and ``<out_dir>/<name>.png`` (the plot), and returns the JSON record. ``quick=True``
finishes on a 2-core CPU in a few minutes and is what the test suite runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REPRODUCTIONS = {
    "quadratic": "subq.repro.quadratic",
    "hpoly": "subq.repro.hpoly",
    "quadattack": "subq.repro.quadattack",
    "subgm": "subq.repro.subgm",
    "combiner": "subq.repro.combiner",
    "hyena_dna": "subq.repro.hyena_dna",
    "lora_limits": "subq.repro.lora_limits",
    "peft_minilm": "subq.repro.peft_minilm",
    "lit": "subq.repro.lit",
    "matrix_mixers": "subq.repro.matrix_mixers",
    "hip_quality": "subq.repro.hip_quality",
}
"""name -> module; every module defines ``run`` and a one-line ``CLAIM`` (the paper's claim)."""


def get_reproduction(name: str) -> ModuleType:
    if name not in REPRODUCTIONS:
        raise KeyError(f"unknown reproduction {name!r}; valid names: {', '.join(REPRODUCTIONS)}")
    return importlib.import_module(REPRODUCTIONS[name])
