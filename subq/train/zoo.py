"""The MQAR recall sweep behind ``subq zoo``: mixers x d_model x (L, K) x learning rates, as Zoology.

    from subq.train.zoo import ZooConfig, run_zoo
    summary = run_zoo(ZooConfig.preset("quick"), out_dir="zoo-out")

Every (mixer, d_model, L, K) cell trains a 2-layer model with no channel mixer for each learning
rate and reports the best test accuracy over learning rates, next to the mixer's state size (the
floats a model keeps per sequence to produce the next token, summed over layers).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from subq.layers import MixerConfig
from subq.models import LanguageModel, LMConfig, count_params
from subq.tasks import MQARConfig
from subq.train.config import OptimConfig, TrainConfig
from subq.train.trainer import train

MIXER_DEFAULTS: dict[str, dict[str, Any]] = {
    "attention": {"num_heads": 1},
    "sliding_window": {"num_heads": 1, "window": 8},
    "based": {"num_heads": 1, "feature_dim": 16},
    "linear_attention": {"num_heads": 1},
    "combiner": {"num_heads": 1, "variant": "axial", "block_size": 8},
    "kernelized_rpe": {"num_heads": 1, "num_features": 64, "max_seq_len": 512},
    "performer": {"num_heads": 1, "num_features": 64},
}
"""Zoo arguments of mixers named on the command line without arguments. Sliding-window attention
gets a window far below the typical query-key distance of MQAR, so that it shows the recall gap.
Combiner gets rows (segments) of 8, about sqrt(L) at the quick lengths (L = 64, 128); the random-
feature mixers get 64 features and a relative-position bias as long as the longest Zoology L."""


class ZooConfig(BaseModel):
    """A sweep grid. ``settings`` are ``(seq_len, num_kv_pairs)`` pairs; ``batch_sizes`` maps a
    sequence length to its batch size (``batch_size`` otherwise)."""

    model_config = ConfigDict(extra="forbid")

    mixers: list[MixerConfig]
    d_models: list[PositiveInt]
    settings: list[tuple[PositiveInt, PositiveInt]]
    lrs: list[PositiveFloat]
    vocab_size: PositiveInt = 8192
    n_layers: PositiveInt = 2
    num_train_examples: PositiveInt = 100_000
    num_test_examples: PositiveInt = 3_000
    batch_size: PositiveInt = 64
    batch_sizes: dict[int, PositiveInt] = Field(default_factory=dict)
    epochs: PositiveFloat = 64
    max_steps: PositiveInt | None = None
    weight_decay: float = Field(0.1, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    embed_dropout: float = Field(0.1, ge=0, lt=1)
    target_accuracy: float = Field(0.99, gt=0, le=1)
    stop_lr_sweep_at_target: bool = True
    eval_every: PositiveInt | None = None
    pos_emb: Literal["learned", "none"] = "learned"
    seed: int = 0
    data_seed: int = 123
    cpu_threads: PositiveInt | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        for L, K in self.settings:
            MQARConfig(vocab_size=self.vocab_size, seq_len=L, num_kv_pairs=K)  # raises on a bad pair
        if not (self.mixers and self.d_models and self.settings and self.lrs):
            raise ValueError("mixers, d_models, settings and lrs must each be non-empty")
        L, K = self.settings[0]
        for mixer in self.mixers:  # every layer built on the meta device: catches bad (nested) arguments
            for d in self.d_models:
                try:
                    self.lm_config(ZooRun(mixer, d, L, K, self.lrs[0]))
                except ValidationError as e:
                    problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                    raise ValueError(f"mixer {mixer.name!r} at d_model={d}: {problems}") from None
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> ZooConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown zoo preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def runs(self) -> list[ZooRun]:
        """Every training run of the grid, cell by cell, learning rates innermost."""
        return [
            ZooRun(mixer, d, L, K, lr)
            for L, K in self.settings
            for mixer in self.mixers
            for d in self.d_models
            for lr in self.lrs
        ]

    def train_config(self, run: ZooRun, *, device: str, out_dir: str | None = None) -> TrainConfig:
        L, K = run.seq_len, run.num_kv_pairs
        return TrainConfig(
            model=self.lm_config(run),
            task=MQARConfig(
                vocab_size=self.vocab_size,
                seq_len=L,
                num_kv_pairs=K,
                num_train_examples=self.num_train_examples,
                num_test_examples=self.num_test_examples,
            ),
            optim=OptimConfig(
                lr=run.lr, weight_decay=self.weight_decay, warmup_fraction=self.warmup_fraction
            ),
            batch_size=self.batch_sizes.get(L, self.batch_size),
            epochs=self.epochs,
            max_steps=self.max_steps,
            eval_every=self.eval_every,
            target_accuracy=self.target_accuracy,
            seed=self.seed,
            data_seed=self.data_seed,
            device=device,
            cpu_threads=self.cpu_threads,
            precision=self.precision,
            out_dir=out_dir,
            progress=False,
        )

    def lm_config(self, run: ZooRun) -> LMConfig:
        """Zoology's MQAR model: ``n_layers`` blocks, no channel mixer, learned positions (``pos_emb``;
        the BASED-paper sweep has none)."""
        return LMConfig(
            vocab_size=self.vocab_size,
            d_model=run.d_model,
            n_layers=self.n_layers,
            mixer=run.mixer,
            channel_mixer="none",
            pos_emb=self.pos_emb,
            max_seq_len=run.seq_len,
            embed_dropout=self.embed_dropout,
        )


@dataclass(frozen=True)
class ZooRun:
    mixer: MixerConfig
    d_model: int
    seq_len: int
    num_kv_pairs: int
    lr: float

    @property
    def cell(self) -> tuple:
        return (
            self.mixer.name,
            json.dumps(plain_kwargs(self.mixer), sort_keys=True),
            self.d_model,
            self.seq_len,
            self.num_kv_pairs,
        )

    def label(self) -> str:
        return (
            f"{mixer_label(self.mixer)} d={self.d_model} L={self.seq_len} K={self.num_kv_pairs} "
            f"lr={self.lr:.2e}"
        )


def plain_kwargs(mixer: MixerConfig) -> dict[str, Any]:
    """A mixer's arguments as JSON data, a hybrid's sub-mixers as ``{"name": ..., ...}`` mappings
    (however they were given), so that equal configs make equal cells."""
    kwargs = {k: v for k, v in mixer.model_dump(mode="json").items() if k != "name"}
    if mixer.name == "hybrid":
        kwargs["mixers"] = [m.model_dump(mode="json") for m in sub_mixers(mixer)]
    return kwargs


def sub_mixers(mixer: MixerConfig) -> list[MixerConfig]:
    """A ``hybrid``'s per-layer pattern; ``[mixer]`` for any other mixer."""
    if mixer.name != "hybrid":
        return [mixer]
    return [
        m if isinstance(m, MixerConfig) else MixerConfig.model_validate(m) for m in mixer.kwargs["mixers"]
    ]


def mixer_label(mixer: MixerConfig) -> str:
    """``sliding_window(window=8)``, ``hybrid(base_conv(kernel_size=3), based(feature_dim=8))``;
    ``num_heads=1`` (the zoo default) is omitted. No square brackets: rich reads them as markup."""
    if mixer.name == "hybrid":
        return f"hybrid({', '.join(mixer_label(m) for m in sub_mixers(mixer))})"
    shown = {k: v for k, v in mixer.kwargs.items() if not (k == "num_heads" and v == 1)}
    return mixer.name + (f"({', '.join(f'{k}={v}' for k, v in sorted(shown.items()))})" if shown else "")


def mixer_family(mixer: MixerConfig) -> str:
    """The plot series a mixer belongs to: its name, or a hybrid's sub-mixer names (``base_conv+based``)."""
    return "+".join(m.name for m in sub_mixers(mixer))


def mixers_from_names(names: list[str]) -> list[MixerConfig]:
    """Mixer configs for names given on the command line, with the zoo's default arguments."""
    return [MixerConfig(name=n, **MIXER_DEFAULTS.get(n, {})) for n in names]


def _conv_hybrid(mixer: dict[str, Any]) -> dict[str, Any]:
    """Zoology's ``Hybrid[BaseConv(kernel_size=3), mixer]``: ``base_conv`` in even layers, ``mixer`` in
    odd ones. A plain mapping, validated when a preset is built (not at import)."""
    return {"name": "hybrid", "mixers": [{"name": "base_conv", "kernel_size": 3}, mixer]}


PRESETS: dict[str, dict[str, Any]] = {
    # a 2-core CPU in a few minutes: attention recalls, a small-window mixer does not
    "quick": dict(
        mixers=[MixerConfig(name=n, **MIXER_DEFAULTS[n]) for n in ("attention", "sliding_window")],
        d_models=[128],
        settings=[(64, 4), (128, 8)],
        lrs=[3e-3, 1e-3],
        vocab_size=1024,
        num_train_examples=20_000,
        num_test_examples=1_000,
        batch_size=64,
        epochs=4,
        eval_every=150,
        cpu_threads=1,
    ),
    # Combiner (NeurIPS 2021) and kernelized attention with RPE (NeurIPS 2021) next to attention, as
    # `quick` but one learning rate (7 mixers): every Combiner variant (blocks of 8), kernelized_rpe
    # and performer (64 random features). kernelized_rpe runs its explicit-Toeplitz form
    # (mode="naive", the same function): on a CPU at L <= 128 the FFT form's B*m*(D+1) transform
    # channels make it far slower.
    "combiner": dict(
        mixers=[MixerConfig(name="attention", **MIXER_DEFAULTS["attention"])]
        + [
            MixerConfig(name="combiner", **{**MIXER_DEFAULTS["combiner"], "variant": v})
            for v in ("fixed", "logsparse", "axial", "mixture")
        ]
        + [
            MixerConfig(name="kernelized_rpe", **MIXER_DEFAULTS["kernelized_rpe"], mode="naive"),
            MixerConfig(name="performer", **MIXER_DEFAULTS["performer"]),
        ],
        d_models=[128],
        settings=[(64, 4), (128, 8)],
        lrs=[3e-3],
        vocab_size=1024,
        num_train_examples=20_000,
        num_test_examples=1_000,
        batch_size=64,
        epochs=4,
        eval_every=150,
        cpu_threads=1,
    ),
    # Zoology Figure 2 (ICLR 2024): V=8192, 100k/3k examples, 64 epochs, lr logspace(-4, -2, 4)
    "zoology": dict(
        mixers=[MixerConfig(name=n, **MIXER_DEFAULTS[n]) for n in ("attention", "sliding_window")],
        d_models=[64, 128, 256, 512],
        settings=[(64, 4), (128, 8), (256, 16), (512, 64)],
        lrs=[float(x) for x in np.logspace(-4, -2, 4)],
        vocab_size=8192,
        num_train_examples=100_000,
        num_test_examples=3_000,
        batch_sizes={64: 512, 128: 512, 256: 256, 512: 128},
        epochs=64,
    ),
    # BASED paper Figure 2 (zoology/experiments/arxiv24_based_figure2): accuracy against state size
    # of 2-layer models, a short convolution in layer 0 and the mixer in layer 1 (attention too, as
    # there), no MLP, no positional embedding, V=8192, batch 256, 20k train / 1k test examples.
    # Cut to about 8 H200-minutes: Zoology trains each model on a mix of (64, 4), (128, 8) and
    # (256, 16/32/64) and tests on seven (L, K) up to (1024, 256); here one cell trains and tests on
    # (256, 16) of that mix. d_model 48 and windows 8..1024 except 16/64/128 dropped; lrs 3e-3, 1e-3
    # (Zoology: logspace(-3, -1.5, 4)); 24 epochs (1,872 steps; Zoology: 32 epochs of its mix).
    # base_conv is BASED's gated convolution (expand 4), not Zoology's d -> d BaseConv.
    "based": dict(
        mixers=[_conv_hybrid({"name": "based", "feature_dim": f, "num_heads": 1}) for f in (8, 16, 24)]
        + [_conv_hybrid({"name": "sliding_window", "window": w, "num_heads": 1}) for w in (16, 64, 128)]
        + [_conv_hybrid({"name": "attention", "num_heads": 1})],
        d_models=[64, 128],
        settings=[(256, 16)],
        lrs=[3e-3, 1e-3],
        vocab_size=8192,
        num_train_examples=20_000,
        num_test_examples=1_000,
        batch_size=256,
        epochs=24,
        pos_emb="none",
    ),
}


@dataclass
class ZooRow:
    """One training run's outcome (a line of ``results.jsonl``)."""

    mixer: str
    mixer_kwargs: dict[str, Any]
    d_model: int
    seq_len: int
    num_kv_pairs: int
    lr: float
    state_size: int
    params: int
    accuracy: float
    final_accuracy: float
    steps: int
    seconds: float
    stop_reason: str
    skipped: bool = False

    @property
    def config(self) -> MixerConfig:
        return MixerConfig(name=self.mixer, **self.mixer_kwargs)

    @property
    def label(self) -> str:
        return mixer_label(self.config)


def model_sizes(cfg: ZooConfig, run: ZooRun) -> tuple[int, int]:
    """``(state_size(L), parameter count)`` of a run's model, built on the meta device."""
    model = LanguageModel(cfg.lm_config(run), device="meta")
    return model.state_size(run.seq_len), count_params(model)


def _run_cell(
    cfg: ZooConfig, runs: list[ZooRun], device: str, on_run_start: Callable[[ZooRun], None] | None = None
) -> list[ZooRow]:
    """The learning-rate sweep of one (mixer, d_model, L, K) cell; once a learning rate reaches the
    target (and ``stop_lr_sweep_at_target``), the remaining ones are recorded as skipped."""
    rows, solved = [], False
    for run in runs:
        state_size, params = model_sizes(cfg, run)
        if solved:
            rows.append(
                ZooRow(
                    run.mixer.name,
                    plain_kwargs(run.mixer),
                    run.d_model,
                    run.seq_len,
                    run.num_kv_pairs,
                    run.lr,
                    state_size,
                    params,
                    math.nan,
                    math.nan,
                    0,
                    0.0,
                    "skipped",
                    skipped=True,
                )
            )
            continue
        if on_run_start is not None:
            on_run_start(run)
        t0 = time.perf_counter()
        result = train(cfg.train_config(run, device=device))
        row = ZooRow(
            run.mixer.name,
            plain_kwargs(run.mixer),
            run.d_model,
            run.seq_len,
            run.num_kv_pairs,
            run.lr,
            state_size,
            params,
            float(result.best_accuracy or 0.0),
            float(result.final_accuracy or 0.0),
            result.steps,
            time.perf_counter() - t0,
            result.stop_reason,
        )
        rows.append(row)
        solved = cfg.stop_lr_sweep_at_target and row.accuracy >= cfg.target_accuracy
    return rows


def run_zoo(
    cfg: ZooConfig,
    *,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    jobs: int = 1,
    on_run_start: Callable[[ZooRun], None] | None = None,
    on_row: Callable[[ZooRow], None] | None = None,
) -> list[ZooRow]:
    """Train every run of the grid; returns one row per run, in grid order (``skipped`` rows for
    learning rates not tried because another already reached the target). Rows are appended to
    ``out_dir/results.jsonl`` as they finish.

    ``jobs > 1`` trains that many cells at once in separate processes (CPU: each with
    ``cpu_threads`` threads, default ``cpu_count // jobs``); ``on_run_start`` is then not called.
    """
    results_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / "results.jsonl"
        results_path.write_text("")

    def record(rows: list[ZooRow]) -> None:
        for row in rows:
            if results_path is not None:
                with results_path.open("a") as f:
                    f.write(json.dumps(asdict(row)) + "\n")
            if on_row is not None:
                on_row(row)

    cells: dict[tuple, list[ZooRun]] = {}
    for run in cfg.runs():
        cells.setdefault(run.cell, []).append(run)
    done: dict[tuple, list[ZooRow]] = {}
    if jobs <= 1:
        for key, runs in cells.items():
            done[key] = _run_cell(cfg, runs, device, on_run_start)
            record(done[key])
    else:
        if device == "cpu" and cfg.cpu_threads is None:
            cfg = cfg.model_copy(update={"cpu_threads": max(1, (os.cpu_count() or 1) // jobs)})
        # longest cells first, so that the last ones to finish are short
        order = sorted(cells, key=lambda k: (-k[3] * k[2], list(cells).index(k)))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, cfg, cells[k], device): k for k in order}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                record(done[futures[future]])
    return [row for key in cells for row in done[key]]


def best_over_lrs(rows: list[ZooRow]) -> list[dict[str, Any]]:
    """One record per (mixer, d_model, L, K) cell: the best accuracy over learning rates, with that
    learning rate and the total training time of the cell (plus the mixer's config and plot family)."""
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r.label, r.d_model, r.seq_len, r.num_kv_pairs)
        cell = cells.setdefault(
            key,
            {
                "mixer": r.label,
                "family": mixer_family(r.config),
                "mixer_config": {"name": r.mixer, **r.mixer_kwargs},
                "d_model": r.d_model,
                "seq_len": r.seq_len,
                "num_kv_pairs": r.num_kv_pairs,
                "state_size": r.state_size,
                "params": r.params,
                "accuracy": -1.0,
                "lr": None,
                "seconds": 0.0,
                "runs": 0,
            },
        )
        if r.skipped:
            continue
        cell["seconds"] += r.seconds
        cell["runs"] += 1
        if r.accuracy > cell["accuracy"]:
            cell["accuracy"], cell["lr"] = r.accuracy, r.lr
    return list(cells.values())


def _legend_names(family: str, configs: list[dict[str, Any]]) -> list[str]:
    """Legend text of a family's variants: the family plus the arguments that differ between them
    (``base_conv+based: feature_dim=8``)."""
    flat = [
        {
            (i, k): v
            for i, m in enumerate(sub_mixers(MixerConfig.model_validate(c)))
            for k, v in m.kwargs.items()
        }
        for c in configs
    ]
    varying = [
        k for k in sorted({k for f in flat for k in f}) if any(f.get(k) != flat[0].get(k) for f in flat)
    ]
    return [
        family + (": " + ", ".join(f"{k[1]}={f[k]}" for k in varying if k in f) if varying else "")
        for f in flat
    ]


@dataclass(frozen=True)
class PlotSeries:
    """One line of the accuracy-vs-state plot: a mixer (its ``label``) drawn with its family's marker
    and colour map, in a shade that tells the family's variants apart."""

    mixer: str
    family: str
    legend: str
    marker: str
    cmap: str
    shade: float


def plot_series(cells: list[dict[str, Any]]) -> list[PlotSeries]:
    """The lines of :func:`plot_accuracy_vs_state`: one marker and colour map per mixer family (a
    hybrid's family is its sub-mixers, ``base_conv+based``), one line per variant of the family,
    labelled by the arguments that differ within the family (``base_conv+based: feature_dim=8``)."""
    cmaps, markers = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"), "osD^vP*X"
    series = []
    for fi, family in enumerate(dict.fromkeys(c["family"] for c in cells)):
        mixers = list(dict.fromkeys(c["mixer"] for c in cells if c["family"] == family))
        configs = [next(c["mixer_config"] for c in cells if c["mixer"] == m) for m in mixers]
        for j, (m, legend) in enumerate(zip(mixers, _legend_names(family, configs), strict=True)):
            shade = 0.8 if len(mixers) == 1 else 0.45 + 0.5 * j / (len(mixers) - 1)
            series.append(
                PlotSeries(m, family, legend, markers[fi % len(markers)], cmaps[fi % len(cmaps)], shade)
            )
    return series


def plot_accuracy_vs_state(cells: list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy against state size (log x), one panel per (L, K), one line per :func:`plot_series`
    entry with one point per ``d_model``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    settings = sorted({(c["seq_len"], c["num_kv_pairs"]) for c in cells})
    series = plot_series(cells)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False, sharey=True)
    for ax, (L, K) in zip(axes[0], settings, strict=True):
        for line in series:
            pts = sorted(
                (c["state_size"], c["accuracy"])
                for c in cells
                if c["mixer"] == line.mixer and (c["seq_len"], c["num_kv_pairs"]) == (L, K)
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                color = plt.get_cmap(line.cmap)(line.shade)
                ax.plot(xs, ys, marker=line.marker, color=color, label=line.legend)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short decades
        ax.axhline(0.99, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"MQAR  L={L}, K={K}")
        ax.set_xlabel("state size (floats per sequence)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (best lr)")
    fig.tight_layout()
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        title="one point per d_model",
    )
    path = Path(path)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
