"""Crossover lengths against SDPA on synthetic timings, and in the report.

python -m pytest tests/bench/test_crossover.py -q
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from subq.bench.crossover import crossover_length, crossover_lengths, faster_than_sdpa
from subq.bench.runner import report

TS = (1024, 4096, 16384, 65536)


def _rows(entry_fwd, sdpa_fwd, entry_bwd=None, sdpa_bwd=None, *, entry="e", mode="torch", params=None):
    """Rows as the runner writes them, with only the fields the crossover reads filled in."""
    entry_bwd = entry_bwd if entry_bwd is not None else [None] * len(entry_fwd)
    sdpa_bwd = sdpa_bwd if sdpa_bwd is not None else [None] * len(entry_fwd)
    return [
        {
            "entry": entry,
            "mode": mode,
            "T": T,
            "params": dict(params or {}),
            "fwd_ms": ef,
            "sdpa_fwd_ms": sf,
            "fwd_bwd_ms": eb,
            "sdpa_fwd_bwd_ms": sb,
        }
        for T, ef, sf, eb, sb in zip(TS, entry_fwd, sdpa_fwd, entry_bwd, sdpa_bwd, strict=True)
    ]


@pytest.mark.parametrize(
    "entry_ms, sdpa_ms, faster",
    [
        (1.0, 2.0, True),
        (2.0, 1.0, False),
        (1.0, 1.0, False),
        (1.0, "OOM", True),
        ("OOM", 2.0, False),
        ("OOM", "OOM", False),
        (None, 2.0, False),
        (1.0, None, False),
    ],
)
def test_faster_than_sdpa(entry_ms, sdpa_ms, faster):
    assert faster_than_sdpa(entry_ms, sdpa_ms) is faster


@pytest.mark.parametrize(
    "faster, expected",
    [
        ([(1024, False), (4096, False), (16384, True), (65536, True)], 16384),
        ([(1024, True), (4096, True), (16384, True), (65536, True)], 1024),
        ([(1024, True), (4096, False), (16384, True), (65536, True)], 16384),  # not "first faster T"
        ([(1024, False), (4096, True), (16384, True), (65536, False)], None),  # slower at the largest
        ([(65536, True), (1024, False), (16384, True), (4096, False)], 16384),  # order does not matter
        ([], None),
    ],
    ids=["from-16k", "everywhere", "dip-at-4k", "lost-at-64k", "unsorted", "empty"],
)
def test_crossover_length(faster, expected):
    assert crossover_length(faster) == expected


def test_crossover_lengths_fwd_and_fwd_bwd():
    rows = _rows(
        entry_fwd=[5.0, 20.0, 60.0, 250.0],
        sdpa_fwd=[1.0, 15.0, 240.0, 3800.0],  # quadratic SDPA overtaken at 16k
        entry_bwd=[15.0, 60.0, 180.0, 750.0],
        sdpa_bwd=[3.0, 40.0, 170.0, 2700.0],  # the backward only from 64k
    )
    (c,) = crossover_lengths(rows)
    assert c["entry"] == "e" and c["mode"] == "torch" and c["T"] == list(TS)
    assert c["faster_fwd"] == [16384, 65536] and c["crossover_fwd"] == 16384
    assert c["faster_fwd_bwd"] == [65536] and c["crossover_fwd_bwd"] == 65536


def test_oom_cells():
    # SDPA out of memory at 64k while the mode ran: faster there
    (c,) = crossover_lengths(_rows([9.0, 8.0, 7.0, 6.0], [1.0, 2.0, 10.0, "OOM"]))
    assert c["crossover_fwd"] == 16384
    # the mode out of memory at 64k: no crossover in this run, though faster at 16k
    (c,) = crossover_lengths(_rows([9.0, 8.0, 7.0, "OOM"], [1.0, 2.0, 10.0, 40.0]))
    assert c["faster_fwd"] == [16384] and c["crossover_fwd"] is None


def test_groups_by_entry_mode_and_params_and_skips_untimed():
    rows = [
        *_rows([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], entry="a", params={"block_size": 0}),
        *_rows([3.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], entry="a", params={"block_size": 128}),
        *_rows([3.0, 3.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], entry="a", mode="fft"),
        *_rows([None] * 4, [None] * 4, entry="a", mode="triton"),  # skipped: needs CUDA
    ]
    got = [
        (c["mode"], c["params"], c["crossover_fwd"], c["crossover_fwd_bwd"]) for c in crossover_lengths(rows)
    ]
    assert got == [
        ("torch", {"block_size": 0}, 1024, None),  # no fwd+bwd timed: None
        ("torch", {"block_size": 128}, 4096, None),
        ("fft", {}, 16384, None),
    ]
    assert crossover_lengths(rows)[0]["faster_fwd_bwd"] is None


def test_report_prints_crossover_and_puts_it_in_the_json():
    rows = [
        {**r, "gate": None, "error": None, "dtype": "fp32", "device": "cpu", "B": 1, "H": 2, "D": 8}
        | {k: None for k in ("fwd_tflops", "fwd_gbps", "peak_mb", "speedup_fwd", "speedup_fwd_bwd")}
        for r in _rows([5.0, 20.0, 60.0, 250.0], [1.0, 15.0, 240.0, 3800.0], entry="combiner")
    ]
    buf = io.StringIO()
    report(rows, {}, {}, Console(file=buf, width=200))
    lines = buf.getvalue().rstrip("\n").splitlines()
    assert any("crossover" in line for line in lines[:-1])
    assert any("combiner" in line and "T >= 16384" in line for line in lines[:-1])
    record = json.loads(lines[-1])
    assert record["crossover"] == crossover_lengths(rows)
    assert record["crossover"][0]["crossover_fwd"] == 16384
