"""Crossover lengths: from which benchmarked ``T`` each entry's mode beats the SDPA baseline.

    subq bench --entries combiner,kernelized_rpe --T 1024,4096,16384,65536

The rows of one entry, mode and parameter set at the lengths ``T_1 < ... < T_k`` of a run say, per
``T``, whether the mode was faster than SDPA timed in the same run (forward, and forward+backward):

- faster: the mode's time is a number and SDPA's is a larger number, or SDPA ran out of memory;
- not faster: anything else (slower, the mode out of memory, its gate not passed, an error).

The crossover is the smallest ``T_i`` from which the mode is faster at ``T_i`` and at every larger
benchmarked ``T``; ``None`` when it is not faster at the largest ``T``. It is a property of the
lengths benchmarked: a mode faster at 16k and 64k but out of memory at 256k has no crossover in a
run that includes 256k. :func:`subq.bench.runner.report` prints these next to the results table and
adds them to the JSON record under ``"crossover"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

OOM = "OOM"
PHASES = ("fwd", "fwd_bwd")


def faster_than_sdpa(entry_ms: Any, sdpa_ms: Any) -> bool:
    """Whether a cell beats SDPA: ``entry_ms`` is a number and ``sdpa_ms`` a larger one or ``"OOM"``."""
    if not isinstance(entry_ms, (int, float)) or isinstance(entry_ms, bool):
        return False
    return sdpa_ms == OOM or (isinstance(sdpa_ms, (int, float)) and entry_ms < sdpa_ms)


def crossover_length(faster: Sequence[tuple[int, bool]]) -> int | None:
    """The smallest ``T`` from which every ``(T, faster)`` pair at that or a larger ``T`` is faster;
    ``None`` when the largest ``T`` is not (or there are no pairs)."""
    crossover = None
    for T, ok in sorted(faster, reverse=True):
        if not ok:
            break
        crossover = T
    return crossover


def crossover_lengths(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per entry, mode and parameter set that has an SDPA comparison in ``rows``.

    Returns ``[{"entry", "mode", "params", "T": [lengths], "faster_fwd": [lengths where faster],
    "crossover_fwd": T or None, "faster_fwd_bwd": [...], "crossover_fwd_bwd": T or None}]`` in the
    order the groups first appear. Groups without any SDPA time (modes skipped on this device, entries
    without a baseline) are left out; a phase without SDPA times (``--no-backward``) has
    ``faster_<phase>`` and ``crossover_<phase>`` ``None``.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["entry"], r["mode"], repr(sorted(r["params"].items())))
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        if all(r[f"sdpa_{p}_ms"] is None for r in group for p in PHASES):
            continue
        record: dict[str, Any] = {
            "entry": group[0]["entry"],
            "mode": group[0]["mode"],
            "params": dict(group[0]["params"]),
            "T": sorted(r["T"] for r in group),
        }
        for p in PHASES:
            if all(r[f"sdpa_{p}_ms"] is None for r in group):
                record[f"faster_{p}"], record[f"crossover_{p}"] = None, None
                continue
            faster = [(r["T"], faster_than_sdpa(r[f"{p}_ms"], r[f"sdpa_{p}_ms"])) for r in group]
            record[f"faster_{p}"] = sorted(T for T, ok in faster if ok)
            record[f"crossover_{p}"] = crossover_length(faster)
        out.append(record)
    return out


def _crossover_cell(record: dict[str, Any], phase: str) -> str:
    if record[f"faster_{phase}"] is None:
        return "-"
    T = record[f"crossover_{phase}"]
    return f"T >= {T}" if T is not None else f"none up to {max(record['T'])}"


def crossover_table(records: Sequence[dict[str, Any]]) -> Table:
    """The records of :func:`crossover_lengths` as a rich table."""
    table = Table(
        title="crossover vs SDPA (faster at this and every larger T benchmarked)", title_justify="left"
    )
    for name in (
        "entry",
        "mode",
        "crossover fwd",
        "faster fwd at T",
        "crossover fwd+bwd",
        "faster fwd+bwd at T",
    ):
        table.add_column(name)
    for c in records:
        table.add_row(
            escape(c["entry"] + "".join(f" {k}={v}" for k, v in c["params"].items())),
            c["mode"],
            _crossover_cell(c, "fwd"),
            ", ".join(map(str, c["faster_fwd"] or [])) or "-",
            _crossover_cell(c, "fwd_bwd"),
            ", ".join(map(str, c["faster_fwd_bwd"] or [])) or "-",
        )
    return table
