"""The benchmark runner: correctness gate, timings, peak memory and the SDPA baseline of every entry.

    subq bench --entries attention,sliding_window --T 1024,4096,16384

For each entry, mode and sequence length, :func:`run_bench`

1. checks the fast form against the entry's naive reference (forward output and the gradient of
   every floating-point input) at ``T_gate = min(T, spec.gate_max_T)`` by relative RMS with a
   dtype-aware tolerance (:data:`GATE_TOL`); a row whose gate does not pass carries no timings;
2. times the forward (under ``no_grad``) and the forward+backward (backward of a fixed random
   output gradient): medians of ``triton.testing.do_bench`` on CUDA (CUDA events when Triton is
   missing), synchronized wall-clock medians after warmup on CPU; a call slower than
   ``Timing.single_call_ms`` (judged by the warm-up call) is timed once instead (SDPA at 1M tokens);
3. records peak memory on CUDA: ``max_memory_allocated`` during one forward+backward (forward
   with ``backward=False``) minus what was allocated before it (the inputs and the output
   gradient), i.e. the extra memory the op needs; ``None`` on CPU;
4. times ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's default dispatch
   (causal, ``[B, H, T, D]``, same B, H, T, D, dtype; ``spec.sdpa_layers`` calls in sequence, none
   when 0) in the same run and reports ``speedup = sdpa_ms / entry_ms`` (> 1: faster than SDPA).

A measurement that runs out of memory reads ``"OOM"``; any other exception in a timing is kept in
the row's ``error``. :func:`report` prints a rich table, the crossover length of every mode against
SDPA (:mod:`subq.bench.crossover`) and, as the last stdout line, one JSON object
``{"env": ..., "config": ..., "rows": [...], "crossover": [...]}``.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from subq.bench.crossover import crossover_lengths, crossover_table
from subq.bench.registry import BenchShape, BenchSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

GATE_TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3, torch.float32: 1e-4}
"""Relative-RMS bound of the gate per benchmark dtype (a few units of the format's rounding)."""

OOM = "OOM"


@dataclass(frozen=True)
class Timing:
    """How long to measure: on CUDA the ``do_bench`` budgets in ms, on CPU iteration counts.

    A call whose warm-up run takes longer than ``single_call_ms`` is timed once more, alone, and that
    time is the result (``None``: never): at lengths where one call takes seconds, a median of many
    adds nothing but minutes.
    """

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cpu_warmup: int = 2
    cpu_reps: int = 5
    single_call_ms: float | None = 1000.0


DEFAULT_TIMING = Timing()
QUICK_TIMING = Timing(warmup_ms=5.0, rep_ms=20.0, cpu_warmup=1, cpu_reps=3)


@dataclass
class Gate:
    """Outcome of the correctness gate of one entry and mode.

    ``status``: ``"pass"``, ``"FAIL"`` (an error above ``tol``), ``"error"`` (the fast form or the
    reference raised), ``"OOM"`` or ``"skipped"`` (mode unavailable on this device).
    ``errors``: relative RMS of ``o`` and of each gradient (``dq``, ...); ``None`` when not finite.
    """

    status: str
    T: int | None = None
    tol: float | None = None
    errors: dict[str, float | None] = field(default_factory=dict)
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def rel_rms(actual: Tensor, expected: Tensor) -> float:
    """``rms(actual - expected) / rms(expected)`` in float64 (the absolute RMS when expected is 0)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.pow(2).mean().sqrt().item()
    num = (a - e).pow(2).mean().sqrt().item()
    return num / denom if denom > 0 else num


def _output(result: Any) -> Tensor:
    """Ops return ``(o, final_state)``; a plain tensor is accepted too."""
    return result[0] if isinstance(result, tuple) else result


def _float_inputs(inputs: dict[str, Any]) -> list[str]:
    return [n for n, t in inputs.items() if isinstance(t, Tensor) and t.is_floating_point()]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gate_errors(spec: BenchSpec, mode: str, shape: BenchShape, *, backward: bool) -> dict[str, float]:
    """Relative RMS of the fast form against the reference: ``o``, then ``d<name>`` per input."""
    torch.manual_seed(0)
    inputs = spec.make_inputs(shape)
    names = _float_inputs(inputs)
    fast = {n: t.detach().requires_grad_(backward) if n in names else t for n, t in inputs.items()}
    ref = {n: t.detach().float().requires_grad_(backward) if n in names else t for n, t in inputs.items()}
    o = _output(spec.modes[mode](**fast, **shape.params))
    o_ref = _output(spec.reference(**ref, **shape.params))
    got, want = {"o": o}, {"o": o_ref}
    if backward:
        do = torch.randn_like(o_ref)
        o.backward(do.to(o.dtype))
        o_ref.backward(do)
        for n in names:
            got["d" + n], want["d" + n] = fast[n].grad, ref[n].grad
    for what, t in got.items():
        if t is None or t.shape != want[what].shape:
            got_shape = None if t is None else tuple(t.shape)
            raise ValueError(f"{what}: shape {got_shape} != reference {tuple(want[what].shape)}")
    return {what: rel_rms(got[what], want[what]) for what in got}


def check_gate(spec: BenchSpec, mode: str, shape: BenchShape, *, backward: bool) -> Gate:
    """Compare ``spec.modes[mode]`` with ``spec.reference`` at ``T = min(shape.T, spec.gate_max_T)``.

    The fast form runs in the benchmark dtype, the reference on float32 copies of the same inputs;
    with ``backward`` both are differentiated with the same random output gradient. The tolerance is
    the dtype's (:data:`GATE_TOL`), or the entry's ``gate_tol`` for the mode where that is larger.
    """
    gate_shape = shape.replace(T=min(shape.T, spec.gate_max_T))
    tol = max(GATE_TOL[shape.dtype], spec.gate_tol.get(mode, 0.0))
    failure = None
    try:
        errors = _gate_errors(spec, mode, gate_shape, backward=backward)
    except Exception as exc:  # the gate reports any failure of the fast form or the reference
        failure = OOM if _is_oom(exc) else f"{type(exc).__name__}: {exc}"
    if failure == OOM:
        _free_memory()
        return Gate(OOM, T=gate_shape.T, tol=tol, message=f"out of memory at T={gate_shape.T}")
    if failure is not None:
        return Gate("error", T=gate_shape.T, tol=tol, message=failure)
    finite = {what: (e if math.isfinite(e) else None) for what, e in errors.items()}
    bad = {what: e for what, e in errors.items() if not e <= tol}  # NaN is bad
    if bad:
        worst = max(bad, key=lambda what: bad[what] if math.isfinite(bad[what]) else math.inf)
        message = f"{worst} rel-RMS {bad[worst]:.2e} > {tol:.1e}"
        return Gate("FAIL", T=gate_shape.T, tol=tol, errors=finite, message=message)
    message = f"max rel-RMS {max(errors.values()):.1e}"
    return Gate("pass", T=gate_shape.T, tol=tol, errors=finite, message=message)


def time_ms(
    fn: Callable[[], Any], device: torch.device, timing: Timing, grads: Sequence[Tensor] = ()
) -> float:
    """Median milliseconds of ``fn()``; ``grads``' ``.grad`` is cleared before every call.

    The first call is a warm-up; when it takes longer than ``timing.single_call_ms``, one more call is
    timed and returned instead of a median.
    """
    first = _single_call_ms(fn, device, grads)
    if timing.single_call_ms is not None and first > timing.single_call_ms:
        return _single_call_ms(fn, device, grads)
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _cuda_event_ms(fn, timing, grads)
        return float(
            do_bench(
                fn,
                warmup=timing.warmup_ms,
                rep=timing.rep_ms,
                grad_to_none=list(grads) or None,
                return_mode="median",
            )
        )
    for _ in range(timing.cpu_warmup):
        fn()
    times = []
    for _ in range(timing.cpu_reps):
        for t in grads:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _single_call_ms(fn: Callable[[], Any], device: torch.device, grads: Sequence[Tensor]) -> float:
    """Synchronized wall-clock milliseconds of one ``fn()``."""
    for t in grads:
        t.grad = None
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _cuda_event_ms(fn: Callable[[], Any], timing: Timing, grads: Sequence[Tensor]) -> float:
    """``do_bench`` without Triton: CUDA-event median, iteration counts from a 5-call estimate
    (no L2 flush between calls)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(timing.warmup_ms / estimate))):
        fn()
    n = max(1, int(timing.rep_ms / estimate))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in events:
        for t in grads:
            t.grad = None
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device, grads: Sequence[Tensor] = ()) -> float | None:
    """Extra CUDA memory (MiB) one ``fn()`` allocates above what is allocated before it; ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    for t in grads:
        t.grad = None
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _guarded(measure: Callable[[], float | None]) -> float | str | None:
    """``measure()``, or ``"OOM"`` when it runs out of memory."""
    try:
        return measure()
    except Exception as exc:
        if not _is_oom(exc):
            raise
    _free_memory()
    return OOM


def measure(
    call: Callable[..., Any],
    make_inputs: Callable[[BenchShape], dict[str, Any]],
    shape: BenchShape,
    *,
    backward: bool,
    timing: Timing,
) -> dict[str, float | str | None]:
    """``fwd_ms``, ``fwd_bwd_ms`` (``None`` without ``backward``) and ``peak_mb`` of
    ``call(**make_inputs(shape))``; each is ``"OOM"`` when it runs out of memory."""
    result: dict[str, float | str | None] = {
        "fwd_ms": OOM,
        "fwd_bwd_ms": OOM if backward else None,
        "peak_mb": OOM,
    }

    def run() -> None:
        torch.manual_seed(0)
        inputs = make_inputs(shape)
        leaves = [inputs[n] for n in _float_inputs(inputs)]

        def fwd() -> None:
            with torch.no_grad():
                call(**inputs)

        with torch.no_grad():
            do = torch.randn_like(_output(call(**inputs)))
        result["fwd_ms"] = _guarded(lambda: time_ms(fwd, shape.device, timing))
        if not backward:
            result["peak_mb"] = _guarded(lambda: peak_memory_mb(fwd, shape.device))
            return
        for t in leaves:
            t.requires_grad_(True)

        def fwd_bwd() -> None:
            _output(call(**inputs)).backward(do)

        result["fwd_bwd_ms"] = _guarded(lambda: time_ms(fwd_bwd, shape.device, timing, leaves))
        result["peak_mb"] = _guarded(lambda: peak_memory_mb(fwd_bwd, shape.device, leaves))

    _guarded(run)  # an OOM while making inputs leaves every measurement at "OOM"
    return result


def sdpa_inputs(s: BenchShape) -> dict[str, Tensor]:
    """Baseline inputs ``query, key, value: [B, H, T, D]`` (SDPA's own layout)."""
    return {
        name: torch.randn(s.B, s.H, s.T, s.D, dtype=s.dtype, device=s.device)
        for name in ("query", "key", "value")
    }


def sdpa_baseline(query: Tensor, key: Tensor, value: Tensor, *, layers: int = 1) -> Tensor:
    """Causal ``scaled_dot_product_attention`` with PyTorch's default backend choice, ``layers`` times
    in sequence (each call's output is the next call's query)."""
    o = query
    for _ in range(layers):
        o = F.scaled_dot_product_attention(o, key, value, is_causal=True)
    return o


def _ratio(base: Any, ms: Any) -> float | None:
    ok = isinstance(base, float) and isinstance(ms, float) and ms > 0
    return base / ms if ok else None


def _per_s(amount: float, ms: Any, unit: float) -> float | None:
    return amount / (ms * 1e-3) / unit if isinstance(ms, float) and ms > 0 else None


def run_bench(
    specs: Iterable[BenchSpec],
    seq_lens: Sequence[int],
    *,
    batch: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    modes: Sequence[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    backward: bool = True,
    timing: Timing = DEFAULT_TIMING,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per entry, mode and ``T`` (see the module docstring for what is measured).

    Args:
        specs: the entries to run.
        seq_lens: sequence lengths ``T``.
        batch, heads, head_dim, dtype, device: the rest of every shape.
        modes: restrict to these modes (default: every mode of each entry).
        params: per-entry overrides ``{entry name: {key: value}}`` of the entries' defaults.
        backward: gate gradients and time forward+backward (entries without backward skip it).
        timing: measurement budgets.
        log: receives one progress line per step.
    """
    if dtype not in GATE_TOL:
        raise ValueError(f"dtype must be one of {', '.join(map(str, GATE_TOL))}; got {dtype}")
    log = log or (lambda line: None)
    gates: dict[tuple[str, str, int], Gate] = {}
    baselines: dict[tuple[int, int], dict[str, float | str | None]] = {}
    rows = []
    for spec in specs:
        entry_params = {**spec.params, **(params or {}).get(spec.name, {})}
        entry_backward = backward and spec.backward
        for mode in spec.modes:
            if modes is not None and mode not in modes:
                continue
            for T in seq_lens:
                shape = BenchShape(batch, T, heads, head_dim, dtype, device, entry_params)
                row = _empty_row(spec, mode, shape)
                rows.append(row)
                if mode in spec.cuda_only and device.type != "cuda":
                    row["gate"] = asdict(Gate("skipped", message="needs CUDA"))
                    continue
                key = (spec.name, mode, min(T, spec.gate_max_T))
                if key not in gates:
                    log(f"gate  {spec.name}/{mode} T={key[2]}")
                    gates[key] = check_gate(spec, mode, shape, backward=entry_backward)
                gate = gates[key]
                row["gate"] = asdict(gate)
                if not gate.passed:
                    continue
                base_key = (T, spec.sdpa_layers)
                if spec.sdpa_layers == 0:
                    baselines[base_key] = {"fwd_ms": None, "fwd_bwd_ms": None}
                elif base_key not in baselines:
                    log(f"time  sdpa x{spec.sdpa_layers} T={T}")
                    baselines[base_key] = measure(
                        functools.partial(sdpa_baseline, layers=spec.sdpa_layers),
                        sdpa_inputs,
                        shape,
                        backward=backward,
                        timing=timing,
                    )
                base = baselines[base_key]
                log(f"time  {spec.name}/{mode} T={T}")
                try:
                    call = functools.partial(spec.modes[mode], **shape.params)
                    got = measure(call, spec.make_inputs, shape, backward=entry_backward, timing=timing)
                except Exception as exc:  # kept in the row; the other rows still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    continue
                row.update(got)
                row["fwd_tflops"] = _per_s(row["flops_fwd"], got["fwd_ms"], 1e12)
                row["fwd_gbps"] = _per_s(row["bytes_fwd"], got["fwd_ms"], 1e9)
                row["sdpa_fwd_ms"], row["sdpa_fwd_bwd_ms"] = base["fwd_ms"], base["fwd_bwd_ms"]
                row["speedup_fwd"] = _ratio(base["fwd_ms"], got["fwd_ms"])
                row["speedup_fwd_bwd"] = _ratio(base["fwd_bwd_ms"], got["fwd_bwd_ms"])
    return rows


def _empty_row(spec: BenchSpec, mode: str, s: BenchShape) -> dict[str, Any]:
    return {
        "entry": spec.name,
        "mode": mode,
        "B": s.B,
        "T": s.T,
        "H": s.H,
        "D": s.D,
        "dtype": DTYPE_NAMES[s.dtype],
        "device": str(s.device),
        "params": dict(s.params),
        "flops_fwd": float(spec.flops(s)),
        "bytes_fwd": float(spec.bytes(s)),
        "gate": None,
        "fwd_ms": None,
        "fwd_tflops": None,
        "fwd_gbps": None,
        "fwd_bwd_ms": None,
        "peak_mb": None,
        "sdpa_fwd_ms": None,
        "sdpa_fwd_bwd_ms": None,
        "speedup_fwd": None,
        "speedup_fwd_bwd": None,
        "error": None,
    }


def environment(argv: Sequence[str], device: torch.device) -> dict[str, Any]:
    """Versions, device, UTC date and the exact command line, for the JSON record."""
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def _fmt(value: Any, spec: str = ".3g", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:{spec}}{suffix}"


def _gate_cell(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "-"
    style = {"pass": "green", "skipped": "dim"}.get(gate["status"], "bold red")
    return f"[{style}]{gate['status']}[/] {escape(gate['message'])}"


def results_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The rows as a rich table (times in ms, memory in MiB, speedups as SDPA time / entry time)."""
    table = Table(title="subq bench", title_justify="left")
    for name in (
        "entry",
        "mode",
        "T",
        "fwd ms",
        "fwd TFLOP/s",
        "fwd GB/s",
        "fwd+bwd ms",
        "peak MB",
        "SDPA fwd ms",
        "speedup fwd",
        "speedup fwd+bwd",
        "gate",
    ):
        numeric = name not in ("entry", "mode", "gate")
        table.add_column(name, justify="right" if numeric else "left")
    for r in rows:
        entry = escape(r["entry"] + "".join(f" {k}={v}" for k, v in r["params"].items()))
        gate = _gate_cell(r["gate"])
        if r["error"]:
            gate += f" [bold red]error[/] {escape(r['error'])}"
        table.add_row(
            entry,
            r["mode"],
            str(r["T"]),
            _fmt(r["fwd_ms"], ".4g"),
            _fmt(r["fwd_tflops"], ".3g"),
            _fmt(r["fwd_gbps"], ".3g"),
            _fmt(r["fwd_bwd_ms"], ".4g"),
            _fmt(r["peak_mb"], ".1f"),
            _fmt(r["sdpa_fwd_ms"], ".4g"),
            _fmt(r["speedup_fwd"], ".2f", "x"),
            _fmt(r["speedup_fwd_bwd"], ".2f", "x"),
            gate,
        )
    return table


def report(
    rows: Sequence[dict[str, Any]], env: dict[str, Any], config: dict[str, Any], console: Console
) -> None:
    """Print the table and the crossover lengths (:mod:`subq.bench.crossover`), then the JSON record
    ``{"env", "config", "rows", "crossover"}`` as the last line."""
    console.print(results_table(rows))
    crossover = crossover_lengths(rows)
    if crossover:
        console.print(crossover_table(crossover))
    record = {"env": env, "config": config, "rows": list(rows), "crossover": crossover}
    console.out(json.dumps(record, allow_nan=False), highlight=False)
