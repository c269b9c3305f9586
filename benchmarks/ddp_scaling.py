"""Data-parallel scaling of ``subq train``: one process vs ``--gpus`` ranks (DDP and FSDP) at the same
global batch, same data order and same initialisation, one run after the other.

For every preset in ``--presets`` the script runs, one after the other:

- ``python -m subq.cli.main train --config CONFIG model.preset=P ...`` on one GPU;
- ``python -m torch.distributed.run --standalone --nproc_per_node=G -m subq.cli.main train ... parallel=X``
  for every ``X`` in ``--parallel``,

each with ``max_steps=--steps``, evaluation only at the end and no checkpoints, writing
``metrics.jsonl`` under ``--out/<preset>-<layout>/``. From those it reports, per run:

- throughput: tokens per second over the steps after the first ``--skip`` (the first steps build
  kernels and allocator pools), from the trainer's own ``tokens`` and ``elapsed`` columns;
- scaling: that throughput over the one-GPU run's (``G`` is perfect);
- peak memory: ``torch.cuda.max_memory_allocated`` on rank 0 at the end of training;
- the loss curve's largest gap to the one-GPU run (every ``log_every`` steps, each point the mean
  over its window) and the final test loss. Same batch, data and init: any gap comes from
  floating-point reassociation (bf16 autocast, all-reduce order) and from kernels that are not
  deterministic (atomics in an attention backward), amplified by training. ``--repeat-baseline``
  runs the one-GPU baseline a second time: that gap is the noise floor to compare against.

Writes ``summary.json``, ``summary.md`` (a table for BENCHMARKS.md) and, with matplotlib, ``loss.png``
(the curves, one panel per preset) under ``--out``. NCCL's NVLink multicast stays off
(``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1`` are set for
the runs unless already set).

    python benchmarks/ddp_scaling.py --gpus 2 --out ddp_scaling
    python benchmarks/ddp_scaling.py --gpus 2 --presets based-attn-360m --parallel ddp --steps 100
    python benchmarks/ddp_scaling.py --device cpu --gpus 2 --presets based-attn-tiny --steps 20 \\
        --set task.seq_len=64 batch_size=8     # smoke test: gloo on the CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(cmd: list[str], out: Path, env: dict[str, str], steps: int, grace: float = 90.0) -> dict[str, Any]:
    """Run one training command, its output to ``out/log.txt``; returns its wall time and whether it
    had to be stopped after its last evaluation (it finished training but did not exit within
    ``grace`` seconds: reported, not hidden)."""
    out.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    metrics = out / "metrics.jsonl"
    t0 = time.perf_counter()
    finished_at = None
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        while proc.poll() is None:
            time.sleep(1.0)
            if finished_at is None and metrics.is_file():
                done = any(r.get("step") == steps and "test_loss" in r for r in _rows(metrics))
                finished_at = time.perf_counter() if done else None
            if finished_at is not None and time.perf_counter() - finished_at > grace:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"  stopped: training was done but the process had not exited {grace:.0f} s later")
                return {"wall_s": time.perf_counter() - t0, "exit_hang": True}
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = (out / "log.txt").read_text()[-3000:]
        raise SystemExit(f"run failed (exit {proc.returncode}) after {wall:.0f} s:\n{tail}")
    return {"wall_s": wall, "exit_hang": False}


def summarise(rows: list[dict[str, Any]], skip: int) -> dict[str, Any]:
    """Throughput after step ``skip``, peak memory, the loss curve and the final test loss of one run."""
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "test_loss" in r]
    start = next((r for r in train if r["step"] >= skip), train[0])
    end = train[-1]
    seconds = end["elapsed"] - start["elapsed"]
    losses = [r["loss"] for r in train]
    return {
        "steps": end["step"],
        "timed_steps": end["step"] - start["step"],
        "tokens_per_s": (end["tokens"] - start["tokens"]) / seconds if seconds > 0 else float("nan"),
        "step_ms": 1e3 * seconds / max(1, end["step"] - start["step"]),
        "max_mem_gib": end.get("max_mem_gib"),
        "curve": [(r["step"], r["loss"]) for r in train],
        "final_train_loss": losses[-1],
        "test_loss": evals[-1]["test_loss"] if evals else None,
        # the loss's own spread: typical gap between neighbouring points of the curve
        "loss_step_spread": statistics.median(abs(b - a) for a, b in itertools.pairwise(losses))
        if len(losses) > 2
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/lm-stdlib-360m.yaml")
    p.add_argument("--presets", default="based-attn-360m,based-360m", help="comma-separated model presets")
    p.add_argument("--gpus", type=int, default=2, help="ranks of the multi-process runs")
    p.add_argument("--parallel", default="ddp,fsdp", help="multi-process layouts ('none': only one process)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--skip", type=int, default=30, help="steps left out of the throughput")
    p.add_argument(
        "--repeat-baseline",
        action="store_true",
        help="run the one-process baseline twice: its loss gap is the noise floor (nondeterministic kernels)",
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--out", type=Path, default=Path("ddp_scaling"))
    args = p.parse_args(argv)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in NO_MULTICAST.items():
        env.setdefault(key, value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    common = [
        f"max_steps={args.steps}",
        f"eval_every={args.steps}",
        "checkpoints=false",
        "progress=false",
        f"device={args.device}",
        *args.set,
    ]
    train = ["-m", "subq.cli.main", "train", "--config", args.config]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.gpus}",
    ]
    results: dict[str, dict[str, Any]] = {}
    py = "python"
    for preset in args.presets.split(","):
        layouts = {"1": [sys.executable, *train]}
        if args.repeat_baseline:  # the same one-process run again: the run-to-run noise floor
            layouts["1-repeat"] = [sys.executable, *train]
        for x in [x for x in args.parallel.split(",") if x not in ("", "none")]:
            layouts[f"{args.gpus}-{x}"] = [*launcher, *train, f"parallel={x}"]
        for layout, cmd in layouts.items():
            out = args.out / f"{preset}-{layout}"
            outcome = run([*cmd, f"model.preset={preset}", f"out_dir={out}", *common], out, env, args.steps)
            results[f"{preset}/{layout}"] = {
                "preset": preset,
                "ranks": int(layout.split("-")[0]),
                "parallel": layout.split("-")[1] if "-" in layout else "-",
                **outcome,
                "command": " ".join([*cmd, f"model.preset={preset}", *common]).replace(sys.executable, py),
                **summarise(_rows(out / "metrics.jsonl"), args.skip),
            }
            r = results[f"{preset}/{layout}"]
            print(
                f"  {preset} {layout}: {r['tokens_per_s']:,.0f} tok/s, {r['step_ms']:.1f} ms/step, "
                f"peak {r['max_mem_gib'] or 0:.1f} GiB, final loss {r['final_train_loss']:.4f}",
                flush=True,
            )
    for r in results.values():
        one = results[f"{r['preset']}/1"]
        r["scaling"] = r["tokens_per_s"] / one["tokens_per_s"]
        gaps = [abs(a[1] - b[1]) for a, b in zip(r["curve"], one["curve"], strict=True)]
        r["max_loss_gap"] = max(gaps)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    lines = [
        "| model | ranks | layout | tokens/s | ms/step | scaling vs 1 GPU | peak GiB/GPU "
        "| max loss gap to 1 GPU | loss step spread | final train loss | test loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        test = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        mem = f"{r['max_mem_gib']:.1f}" if r["max_mem_gib"] is not None else "-"
        lines.append(
            f"| {r['preset']} | {r['ranks']} | {r['parallel']}{' (exit hung)' if r['exit_hang'] else ''} "
            f"| {r['tokens_per_s']:,.0f} "
            f"| {r['step_ms']:.1f} "
            f"| {r['scaling']:.2f}x | {mem} | {r['max_loss_gap']:.4f} | {r['loss_step_spread'] or 0:.4f} "
            f"| {r['final_train_loss']:.4f} | {test} |"
        )
    table = "\n".join(lines)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    _plot(results, args.out / "loss.png")
    return 0


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    presets = sorted({r["preset"] for r in results.values()})
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4), squeeze=False)
    for ax, preset in zip(axes[0], presets, strict=True):
        for r in results.values():
            if r["preset"] == preset:
                steps, losses = zip(*r["curve"], strict=True)
                label = (
                    "one process"
                    if r["parallel"] in ("-", "repeat")
                    else f"torchrun x{r['ranks']}, {r['parallel'].upper()}"
                )
                label += " (again)" if r["parallel"] == "repeat" else ""
                ax.plot(steps, losses, label=label, lw=1.2, ls="-" if r["ranks"] == 1 else "--")
        ax.set(title=preset, xlabel="optimizer step", ylabel="train loss (window mean)", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
