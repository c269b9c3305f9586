"""The training loop behind ``subq train``: a causal LM on a task, AdamW with warmup + cosine, periodic
evaluation with early stop, JSON-lines metrics, atomic checkpoints with exact resume, DDP and FSDP.

    from subq.train import load_config, train
    result = train(load_config("configs/mqar-attention.yaml", ["optim.lr=1e-3"]))
    result.best_accuracy, result.stop_reason

    subq train --config configs/mqar-attention.yaml optim.lr=1e-3
    torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/mqar-attention.yaml
    torchrun --nproc_per_node=2 -m subq.cli.main train --config configs/lm-stdlib-360m.yaml parallel=fsdp

Data: both splits live on the device as ``(N, T)`` tensors. Each epoch draws a permutation from a
``torch.Generator`` seeded with ``seed`` and batches are slices of it (no DataLoader: tiny models on
a CPU are bound by Python overhead); the last incomplete batch of an epoch is dropped. Under DDP
every rank draws the same permutation and takes its own contiguous ``batch_size // world_size`` rows
of each global batch; evaluation is sharded the same way and all-reduced, so all ranks take the same
early-stop decision. Only rank 0 writes files, logs and shows progress. ``cfg.parallel`` picks DDP or
FSDP (:mod:`subq.train.distributed`); the arithmetic is the same, so a run on any number of ranks
follows the one-process run of the same global batch up to floating-point reassociation.

Sequence-length warm-up (``cfg.seqlen_warmup``, off by default): at a stage of ``L`` tokens the
step's batch of ``(b, T)`` sequences is cut into ``(b T / L, L)`` pieces (same data order, same
tokens per step); train rows of ``metrics.jsonl`` then also carry ``seq_len`` and ``batch_size``
(global sequences per step).

Non-finite loss: on CPU the loss (and gradient norm) is read every step, so the run stops before the
optimizer applies a NaN update; on CUDA it is read every ``log_every`` steps and before every
evaluation and checkpoint, so a NaN state is never saved. Either way the last good checkpoint stays.

Files in ``out_dir``: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (train rows: step,
epoch, loss, lr, tokens, elapsed, tokens_per_s over the rows' window and, on CUDA, max_mem_gib, the
peak memory allocated on rank 0's GPU so far; eval rows: step, epoch, test_accuracy, test_loss,
tokens, elapsed) and ``checkpoints/step_*/`` (see :mod:`subq.train.checkpoint`).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

from subq.models import LanguageModel, count_params
from subq.tasks import IGNORE_INDEX
from subq.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_state_from_json,
    optimizer_state_to_json,
    restore_torch_rng,
    save_checkpoint,
    torch_rng_tensors,
)
from subq.train.config import TrainConfig, dump_config
from subq.train.distributed import (
    DistInfo,
    all_reduce_sum,
    close_distributed,
    full_state,
    init_distributed,
    is_sharded,
    load_full_state,
    local_tensor,
    wrap_model,
)

log = logging.getLogger(__name__)

StopReason = Literal["max_steps", "target_accuracy", "nan"]

_RESUME_MUST_MATCH = ("model", "task", "batch_size", "seed", "data_seed", "seqlen_warmup")


@dataclass
class TrainResult:
    """Outcome of a run. ``history`` holds the evaluation rows (``step``, ``test_accuracy``, ...).

    ``final_accuracy`` is the test accuracy of the last evaluation (None if the run never evaluated);
    ``steps`` and ``tokens`` count from the start of training, across resumes; ``wall_time`` is the
    seconds this call took.
    """

    final_accuracy: float | None
    best_accuracy: float | None
    steps: int
    tokens: int
    wall_time: float
    stop_reason: StopReason
    history: list[dict[str, float]] = field(default_factory=list)
    num_params: int = 0
    message: str = ""


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over ``warmup_steps``,
    then cosine decay towards ``min_lr_ratio * lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over supervised positions: ``logits (..., V)``, ``labels (...)``, -100 ignored."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def example_accuracy(
    logits: Tensor, labels: Tensor, positions: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-example accuracy ``(B,)``: mean of ``argmax == label`` over the example's supervised
    positions (Zoology's metric), and a ``(B,)`` mask of the examples that have any.

    ``logits`` is ``(B, T, V)``, or ``(N, V)`` at the ``N`` positions of the bool mask ``positions``
    (``labels != -100``), as :meth:`LanguageModel.forward` returns them with ``positions=``.
    """
    mask = labels != IGNORE_INDEX  # (B, T)
    n = mask.sum(1)
    if positions is None:
        correct = ((logits.argmax(-1) == labels) & mask).sum(1)
    else:
        hit = (logits.argmax(-1) == labels[positions]).to(n.dtype)  # (N,)
        correct = torch.zeros_like(n).index_add_(0, positions.nonzero()[:, 0], hit)
    return correct / n.clamp_min(1), n > 0


def resolve_total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, ``ceil(epochs * steps_per_epoch)``, or the smaller."""
    candidates = []
    if cfg.max_steps is not None:
        candidates.append(cfg.max_steps)
    if cfg.epochs is not None:
        candidates.append(max(1, math.ceil(cfg.epochs * steps_per_epoch)))
    return min(candidates)


def _device_type(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use device=cpu or device=auto")
    return device


class Trainer:
    """Builds the model, data and optimizer for ``cfg`` (joining the process group under ``torchrun``).

    ``fit(resume=...)`` runs the loop; ``evaluate()`` gives test metrics at any point; ``close()``
    leaves the process group if this trainer created it. ``train(cfg)`` does all three.
    """

    def __init__(self, cfg: TrainConfig, *, console: Console | None = None):
        self.cfg = cfg
        self.console = console if console is not None else Console(stderr=True)
        device_type = _device_type(cfg.device)
        self._threads_before = torch.get_num_threads()
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        self.dist: DistInfo = init_distributed(device_type)
        try:
            self._setup(device_type)
        except BaseException:
            self.close()
            raise

    def _setup(self, device_type: str) -> None:
        cfg, world = self.cfg, self.dist.world_size
        if cfg.task.kind != "lm":
            raise ValueError(f"task {cfg.task.name!r} has kind {cfg.task.kind!r}; only 'lm' is trained")
        if cfg.batch_size % world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by WORLD_SIZE={world}")
        index = self.dist.local_rank if device_type == "cuda" and self.dist.enabled else None
        self.device = torch.device(device_type, index)
        if device_type == "cuda":
            torch.set_float32_matmul_precision("high")
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device_type == "cuda")
        self.autocast = partial(torch.autocast, device_type, dtype=torch.bfloat16) if bf16 else nullcontext

        torch.manual_seed(cfg.seed)  # same init and dropout stream on every rank
        self.model = LanguageModel(cfg.model).to(self.device)
        self.num_params = count_params(self.model)
        self.ddp_model = wrap_model(self.model, self.dist, cfg.parallel, self.device, cfg.comm_dtype)
        self.train_data = cfg.task.build("train", cfg.data_seed).to(self.device)
        self.test_data = cfg.task.build("test", cfg.data_seed).to(self.device)
        n = len(self.train_data)
        self.steps_per_epoch = n // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={cfg.batch_size} exceeds the {n} training examples of {cfg.task.describe()}"
            )
        self.total_steps = resolve_total_steps(cfg, self.steps_per_epoch)
        self.seqlen_warmup = (
            cfg.seqlen_warmup.schedule(cfg.batch_size, self.train_data.inputs.shape[1])
            if cfg.seqlen_warmup is not None
            else None
        )
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.warmup_steps = cfg.optim.num_warmup_steps(self.total_steps)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        self.data_rng = torch.Generator().manual_seed(cfg.seed)
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None

        # position in the run (all of it goes into checkpoints)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # global batches of the current epoch already consumed
        self.tokens = 0
        self.elapsed = 0.0  # training seconds, summed over resumes
        self.history: list[dict[str, float]] = []
        self._perm: Tensor | None = None  # (N,) order of the current epoch, on the device
        self._epoch_rng_state: Tensor | None = None  # data_rng state that drew _perm

    @property
    def checkpoint_root(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    # ---- data ----------------------------------------------------------------------------------------

    def _draw_permutation(self) -> None:
        self._epoch_rng_state = self.data_rng.get_state()
        self._perm = torch.randperm(len(self.train_data), generator=self.data_rng).to(self.device)

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """This rank's slice of the next global batch: inputs and labels ``(batch_size // world, T)``."""
        if self._perm is None or self.batch_in_epoch == self.steps_per_epoch:
            if self._perm is not None:
                self.epoch += 1
                self.batch_in_epoch = 0
            self._draw_permutation()
        local = self.cfg.batch_size // self.dist.world_size
        start = self.batch_in_epoch * self.cfg.batch_size + self.dist.rank * local
        idx = self._perm[start : start + local]
        self.batch_in_epoch += 1
        return self.train_data.inputs[idx], self.train_data.labels[idx]

    def _warmup_pieces(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(b, T)`` -> ``(b T / L, L)`` at a warm-up stage of ``L`` tokens (unchanged without warm-up)."""
        if self.seqlen_warmup is None:
            return x, y
        L = self.seqlen_warmup.at_step(self.step)[0]
        return x.reshape(-1, L), y.reshape(-1, L)

    # ---- evaluation ----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test accuracy (per example over supervised positions, then averaged over examples) and test
        loss (per supervised token), each rank scoring a contiguous shard of the test set."""
        was_training = self.model.training
        self.model.eval()
        data, world, rank = self.test_data, self.dist.world_size, self.dist.rank
        lo, hi = len(data) * rank // world, len(data) * (rank + 1) // world
        bs = self.cfg.eval_batch_size or self.cfg.batch_size
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # acc, examples, loss, tokens
        # every rank runs the same number of forwards (a sharded model gathers its weights in each)
        for b in range(math.ceil(math.ceil(len(data) / world) / bs)):
            i = lo + b * bs
            if i >= hi:  # this rank's shard is shorter: a forward on one row, not counted
                with self.autocast():
                    self.model(data.inputs[:1])
                continue
            x, y = data.inputs[i : min(i + bs, hi)], data.labels[i : min(i + bs, hi)]
            sel = y != IGNORE_INDEX  # (b, T): only supervised positions go through the head
            with self.autocast():
                logits = self.model(x, positions=sel)  # (N, V)
            acc, has = example_accuracy(logits, y, sel)
            sums[0] += acc[has].sum()
            sums[1] += has.sum()
            sums[2] += F.cross_entropy(logits.float(), y[sel], reduction="sum")
            sums[3] += sel.sum()
        all_reduce_sum(sums, self.dist)
        self.model.train(was_training)
        acc, examples, loss, tokens = sums.tolist()
        return {"test_accuracy": acc / max(examples, 1), "test_loss": loss / max(tokens, 1)}

    # ---- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write the full training state to ``out_dir/checkpoints/step_<step>/``. Every rank calls it
        (a sharded model is gathered collectively); rank 0 writes and returns the path, others None."""
        if self.checkpoint_root is None:
            raise ValueError("save_checkpoint needs cfg.out_dir")
        weights, optim = full_state(self.model, self.optimizer)
        if not self.dist.is_main:
            return None
        optim_state, optim_tensors = optimizer_state_to_json(optim)
        tensors = {**optim_tensors, **torch_rng_tensors()}
        if self._epoch_rng_state is not None:
            tensors["rng.data_epoch_start"] = self._epoch_rng_state
        state = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "history": self.history,
            "optimizer": optim_state,
            "config": self.cfg.model_dump(mode="json"),
        }
        return save_checkpoint(
            self.checkpoint_root,
            self.step,
            weights=weights,
            tensors=tensors,
            state=state,
            keep=self.cfg.keep_checkpoints,
        )

    def load_checkpoint(self, ckpt: Checkpoint) -> None:
        """Restore weights, optimizer, RNG states and data position from a loaded checkpoint."""
        self._check_compatible(ckpt)
        s = ckpt.state
        try:
            optim = optimizer_state_from_json(s["optimizer"], ckpt.tensors)
            load_full_state(self.model, self.optimizer, ckpt.weights, optim)
            restore_torch_rng(ckpt.tensors)
            self.step, self.epoch, self.batch_in_epoch = s["step"], s["epoch"], s["batch_in_epoch"]
            self.tokens, self.elapsed, self.history = s["tokens"], s["elapsed"], s["history"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{ckpt.path}: cannot restore the run ({type(e).__name__}: {e})") from None
        self._perm = self._epoch_rng_state = None
        if "rng.data_epoch_start" in ckpt.tensors:
            self.data_rng.set_state(ckpt.tensors["rng.data_epoch_start"])
            self._draw_permutation()

    def _check_compatible(self, ckpt: Checkpoint) -> None:
        saved, current = ckpt.state.get("config", {}), self.cfg.model_dump(mode="json")
        for key in _RESUME_MUST_MATCH:
            if saved.get(key) != current[key]:
                raise CheckpointError(
                    f"{ckpt.path}: written by a run with a different {key} ({saved.get(key)!r}, now "
                    f"{current[key]!r}); resume with the config in {ckpt.path / 'state.json'}"
                )

    def _resume(self) -> None:
        root = self.checkpoint_root
        if root is None:
            raise CheckpointError("resume needs out_dir: checkpoints are read from <out_dir>/checkpoints")
        path = latest_checkpoint(root)
        if path is None:
            raise CheckpointError(f"{root}: no checkpoint to resume from")
        self.load_checkpoint(load_checkpoint(path))
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    # ---- the loop ------------------------------------------------------------------------------------

    def _is_sync_step(self, step: int) -> bool:
        """Steps after which the loss is read back (and checked) before the optimizer step."""
        ckpt = self.cfg.checkpoint_every
        return (
            self.device.type == "cpu"
            or step % self.cfg.log_every == 0
            or step % self.eval_every == 0
            or step == self.total_steps
            or (ckpt is not None and step % ckpt == 0)
        )

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train to ``total_steps``, the target accuracy or a non-finite loss; ``resume`` first loads the
        latest checkpoint in ``out_dir`` (a :class:`CheckpointError` if there is none or it is bad)."""
        cfg, main = self.cfg, self.dist.is_main
        t0 = time.perf_counter()
        if resume:
            self._resume()
        elif self.checkpoint_root is not None and list_checkpoints(self.checkpoint_root):
            raise FileExistsError(
                f"{self.checkpoint_root} already holds checkpoints: resume (--resume) or pick another out_dir"
            )
        elapsed0 = self.elapsed
        metrics = self._open_metrics(resume) if main and self.out_dir is not None else None
        if main:
            log.info(
                "training %s on %s: %d parameters, %d steps (%d per epoch), %s x %d",
                "+".join(m.name for m in cfg.model.mixers),
                cfg.task.describe(),
                self.num_params,
                self.total_steps,
                self.steps_per_epoch,
                self.device,
                self.dist.world_size,
            )

        stop: StopReason = "max_steps"
        message = f"reached {self.total_steps} steps"
        target = cfg.target_accuracy
        last = self.history[-1] if self.history else {"step": -1, "test_accuracy": 0.0}
        if target is not None and last["step"] == self.step and last["test_accuracy"] >= target:
            stop = "target_accuracy"  # resumed from a run that had already reached its target
            message = f"test accuracy {last['test_accuracy']:.4f} >= target {target} at step {self.step}"
        zero = partial(torch.zeros, (), dtype=torch.float32, device=self.device)
        loss_sum, gnorm_sum, window = zero(), zero(), 0
        window_start = (self.tokens, self.elapsed)  # tokens/s of each log row's window
        params, clip = list(self.model.parameters()), cfg.optim.grad_clip
        progress = self._progress()
        bar = progress.add_task("train", total=self.total_steps, completed=self.step, loss="-", acc="-")
        try:
            with progress:
                while stop == "max_steps" and self.step < self.total_steps:
                    x, y = self._warmup_pieces(*self._next_batch())  # (b, T), or (b T / L, L)
                    sel = y != IGNORE_INDEX  # (b, T): the head runs only where there is a label
                    with self.autocast():
                        logits = self.ddp_model(x, positions=sel)  # (N, V)
                    loss = lm_loss(logits, y[sel])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    loss_sum += loss.detach()
                    window += 1
                    if clip is not None:  # a sharded model's norm is a DTensor: its full value
                        gnorm_sum += local_tensor(torch.nn.utils.clip_grad_norm_(params, clip))
                    nxt = self.step + 1
                    if self._is_sync_step(nxt):
                        totals = all_reduce_sum(torch.stack([loss_sum, gnorm_sum]).double(), self.dist)
                        if not torch.isfinite(totals).all():
                            stop = "nan"
                            message = (
                                f"non-finite loss or gradient norm at step {nxt}: stopped before "
                                f"applying it; the last good checkpoint is kept"
                            )
                            if main:
                                log.error(message)
                            break
                    lr = lr_at(
                        self.step,
                        lr=cfg.optim.lr,
                        warmup_steps=self.warmup_steps,
                        total_steps=self.total_steps,
                        min_lr_ratio=cfg.optim.min_lr_ratio,
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    self.optimizer.step()
                    self.step = nxt
                    self.tokens += x.numel() * self.dist.world_size
                    self.elapsed = elapsed0 + time.perf_counter() - t0

                    if nxt % cfg.log_every == 0 or nxt == self.total_steps:
                        mean_loss = totals[0].item() / (window * self.dist.world_size)
                        seconds = self.elapsed - window_start[1]
                        row = {
                            "step": nxt,
                            "epoch": self.epoch,
                            "loss": mean_loss,
                            "lr": lr,
                            "tokens": self.tokens,
                            "elapsed": self.elapsed,
                            "tokens_per_s": (self.tokens - window_start[0]) / seconds if seconds > 0 else 0.0,
                        }
                        if self.device.type == "cuda":
                            row["max_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                        if self.seqlen_warmup is not None:
                            row["seq_len"], row["batch_size"] = x.shape[1], x.shape[0] * self.dist.world_size
                        self._write(metrics, row)
                        progress.update(bar, completed=nxt, loss=f"{mean_loss:.4f}")
                        loss_sum, gnorm_sum, window = zero(), zero(), 0
                        window_start = (self.tokens, self.elapsed)
                    if nxt % self.eval_every == 0 or nxt == self.total_steps:
                        row = {
                            "step": nxt,
                            "epoch": self.epoch,
                            **self.evaluate(),
                            "tokens": self.tokens,
                            "elapsed": self.elapsed,
                        }
                        self.history.append(row)
                        self._write(metrics, row)
                        acc = row["test_accuracy"]
                        progress.update(bar, completed=nxt, acc=f"{acc:.4f}")
                        if target is not None and acc >= target:
                            stop = "target_accuracy"
                            message = f"test accuracy {acc:.4f} >= target {target} at step {nxt}"
                    every = cfg.checkpoint_every
                    periodic = every is not None and nxt % every == 0
                    final = stop != "max_steps" or nxt == self.total_steps
                    if self.out_dir is not None and cfg.checkpoints and (final or periodic):
                        self.save_checkpoint()
                    if stop != "max_steps":
                        break
        finally:
            if metrics is not None:
                metrics.close()
        if main and stop != "nan":
            log.info("stopped: %s", message)
        accs = [row["test_accuracy"] for row in self.history]
        return TrainResult(
            final_accuracy=accs[-1] if accs else None,
            best_accuracy=max(accs) if accs else None,
            steps=self.step,
            tokens=self.tokens,
            wall_time=time.perf_counter() - t0,
            stop_reason=stop,
            history=list(self.history),
            num_params=self.num_params,
            message=message,
        )

    def close(self) -> None:
        """Leave the process group if this trainer joined it; restore torch's CPU thread count.

        A sharded (FSDP) model is released first: its parameters and hooks hold the process group and,
        on CUDA, the streams and events of its collectives, which must not outlive the group. The
        trainer's model and optimizer are unusable afterwards in that case.
        """
        if getattr(self, "model", None) is not None and is_sharded(self.model):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.optimizer = self.model = self.ddp_model = None  # type: ignore[assignment]
            gc.collect()
        close_distributed(self.dist)
        torch.set_num_threads(self._threads_before)

    # ---- output --------------------------------------------------------------------------------------

    def _progress(self) -> Progress:
        enabled = self.cfg.progress and self.dist.is_main and self.console.is_terminal
        return Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )

    def _open_metrics(self, resume: bool) -> IO[str]:
        """Open ``metrics.jsonl`` (and write ``config.yaml``); on resume drop rows past the checkpoint."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(dump_config(self.cfg))
        path = self.out_dir / "metrics.jsonl"
        if not (resume and path.exists()):
            return open(path, "w")
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by the interrupted run
        path.write_text("".join(kept))
        return open(path, "a")

    @staticmethod
    def _write(metrics: IO[str] | None, row: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()


def train(cfg: TrainConfig, *, resume: bool = False, console: Console | None = None) -> TrainResult:
    """Run one training job end to end (see :class:`Trainer`)."""
    trainer = Trainer(cfg, console=console)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.close()
