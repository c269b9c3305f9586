"""Reproduction of LiT (Wang et al., "LiT: Delving into a Simplified Linear Diffusion Transformer for
Image Generation", arXiv 2501.12976) at CPU scale on scikit-learn's ``load_digits``.

    subq repro lit --quick   # 8x8 digits (16 tokens), d 64, 4 blocks; teacher 2.5k steps, students 1k
    subq repro lit           # 16x16 (64 tokens), d 192, 6 blocks; teacher 20k, students 5k: for a GPU

A softmax DiT (:class:`~subq.models.dit.DiT`: patch 2, adaLN-Zero, learned variance, DiT's diffusion)
is trained first; its EMA weights are the teacher. Then LiT students, the same DiT with every attention
swapped for ``linear_attention`` (ReLU kernel, 2 heads, depthwise convolution of width 5 along the
raster order of the patches: LiT's is 5x5 on the patch grid), train for equal steps on the same
batches:

- ``scratch``: a fresh linear DiT;
- ``inherit``: :func:`~subq.peft.convert.convert_to_linear_attention` of the teacher (all weights but the
  attention; LiT's guidelines 3-4);
- ``inherit + distill``: the same plus LiT's hybrid distillation (``lambda_eps = 0.5``,
  ``lambda_sigma = 0.05``; guideline 5);
- ``inherit q/k/v + distill`` (full run): also inheriting the attention projections, which LiT's
  ablation reports as slightly worse.

Every model is evaluated along its run on: the denoising loss ``L_simple`` on the held-out digits (fixed
timesteps and noise), and two sample-quality proxies on class-conditional samples (the same starting
noise for every model): the accuracy of a small CNN, trained on real digits, at recognising the class
the sample was asked for, and the Frechet distance between samples and half of the held-out digits in
that CNN's 64-d feature space ("FD", an FID stand-in; the FD of the other half of the held-out digits
is printed as the floor). Samples use 25 respaced steps (50 in the full preset) and no guidance.

Every finished model is kept in ``out_dir``: the evaluation classifier in ``lit_classifier.safetensors``,
the teacher's EMA weights in ``lit_teacher.safetensors``, and each model's evaluation curve and last
samples in ``lit_<name>_samples.safetensors``. A later run with the same settings and seed loads what
is there instead of training it again, so an interrupted run resumes after its last finished model
(students trained after a loaded teacher train exactly as they would have, and are scored by the same
classifier). Delete the files to retrain.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from subq.models.dit import DiT, GaussianDiffusion, dit_linear_init_
from subq.peft.convert import convert_to_linear_attention, hybrid_distillation_loss
from subq.utils import host_to

CLAIM = (
    "A DiT whose softmax attention is swapped for simplified linear attention (ReLU, few heads, depthwise "
    "conv), initialised from the trained DiT except for the attention and trained with hybrid "
    "distillation, reaches the DiT's sample quality in far fewer steps than training from scratch."
)

STUDENTS = ("scratch", "inherit", "inherit_distill", "inherit_qkv_distill")
STUDENT_LABELS = {
    "scratch": "linear, from scratch",
    "inherit": "linear, inherit",
    "inherit_distill": "linear, inherit + distill",
    "inherit_qkv_distill": "linear, inherit q/k/v + distill",
}


class LitConfig(BaseModel):
    """Sizes and budgets of the reproduction (the defaults are the quick preset).

    Teacher and students share the DiT size (``d_model``, ``depth``), batch, constant AdamW learning
    rate and EMA decay; ``evals`` evaluations are spread evenly over each run (plus step 0).
    ``lambda_eps`` and ``lambda_sigma`` weight the hybrid distillation terms; ``cfg_scale`` is the
    classifier-free guidance of the evaluation samples (1: none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: PositiveInt = 8
    d_model: PositiveInt = 64
    depth: PositiveInt = 4
    teacher_heads: PositiveInt = 4
    student_heads: PositiveInt = 2
    conv_size: PositiveInt = 5
    batch_size: PositiveInt = 64
    lr: float = Field(2e-3, gt=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    label_dropout: float = Field(0.1, ge=0, lt=1)
    teacher_steps: PositiveInt = 2500
    student_steps: PositiveInt = 1000
    evals: PositiveInt = 5
    students: tuple[str, ...] = ("scratch", "inherit", "inherit_distill")
    lambda_eps: float = 0.5
    lambda_sigma: float = 0.05
    samples_per_class: PositiveInt = 20
    sample_steps: PositiveInt = 25
    cfg_scale: float = Field(1.0, ge=1)
    classifier_epochs: PositiveInt = 15

    @field_validator("students")
    @classmethod
    def _known_students(cls, students: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(students) - set(STUDENTS)
        if unknown:
            raise ValueError(f"unknown students {sorted(unknown)}; valid: {', '.join(STUDENTS)}")
        return students


QUICK = LitConfig()
FULL = LitConfig(
    image_size=16,
    d_model=192,
    depth=6,
    teacher_heads=6,
    batch_size=128,
    lr=5e-4,
    ema_decay=0.999,
    teacher_steps=20_000,
    student_steps=5_000,
    evals=10,
    students=STUDENTS,
    samples_per_class=100,
    sample_steps=50,
    classifier_epochs=30,
)


# ---- data and the evaluation classifier ----------------------------------------------------------------


def load_digit_images(image_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``load_digits`` in [-1, 1], bilinearly resized to ``image_size``: stratified 75/25 split
    (``random_state=0``) as ``x_train [N, 1, S, S], y_train [N], x_test, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 8.0 - 1.0  # pixel values 0..16
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    y = torch.tensor(y)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


class DigitClassifier(nn.Module):
    """``[B, 1, S, S] -> [B, 10]`` CNN; :meth:`features` is its 64-d penultimate layer (for the FD)."""

    def __init__(self, image_size: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(32 * (image_size // 4) ** 2, 64)
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(x: Tensor, y: Tensor, *, epochs: int, seed: int) -> DigitClassifier:
    torch.manual_seed(seed)
    model = DigitClassifier(x.shape[-1]).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` of two ``[N, d]`` feature sets (float64)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
    # tr (S_a S_b)^{1/2} = tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}, a symmetric PSD matrix
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


class Evaluator:
    """Denoising loss on the held-out digits and sample quality, with every random draw fixed up front
    so all models and steps are compared on the same noise.

    The FD reference is the odd-indexed half of the held-out digits; the floor is the FD of the other
    half (also unseen by the classifier, which is trained on the training split) to that reference.
    """

    def __init__(
        self, cfg: LitConfig, data, classifier: DigitClassifier, diffusion: GaussianDiffusion, seed: int
    ):
        _, _, x_te, y_te = data
        self.cfg, self.classifier, self.diffusion = cfg, classifier, diffusion
        gen = torch.Generator().manual_seed(seed + 1)
        self.x_te, self.y_te = x_te, y_te
        self.t_te = torch.randint(0, diffusion.num_timesteps, (len(y_te),), generator=gen).to(x_te.device)
        self.noise_te = torch.randn(x_te.shape, generator=gen).to(x_te)
        self.labels = torch.arange(10).repeat_interleave(cfg.samples_per_class).to(x_te.device)
        self.sample_seed = seed + 2
        with torch.no_grad():
            features = classifier.features(x_te).double().cpu().numpy()
            self.real = features[1::2]
            self.floor = frechet_distance(features[::2], self.real)
            self.classifier_acc = (classifier(x_te).argmax(-1) == y_te).float().mean().item()

    @torch.no_grad()
    def __call__(self, model: DiT) -> dict:
        was_training = model.training
        model.eval()
        terms = self.diffusion.training_losses(model, self.x_te, self.y_te, t=self.t_te, noise=self.noise_te)
        gen = torch.Generator().manual_seed(self.sample_seed)
        samples = self.diffusion.sample(
            model, self.labels, steps=self.cfg.sample_steps, cfg_scale=self.cfg.cfg_scale, generator=gen
        )
        logits = self.classifier(samples)
        model.train(was_training)
        return {
            "mse": terms["mse"].mean().item(),
            "vb": terms["vb"].mean().item(),
            "acc": (logits.argmax(-1) == self.labels).float().mean().item(),
            "fd": frechet_distance(self.classifier.features(samples).double().cpu().numpy(), self.real),
            "samples": samples,
        }


# ---- training ------------------------------------------------------------------------------------------


def _eval_steps(steps: int, evals: int) -> list[int]:
    return sorted({round(steps * i / evals) for i in range(evals + 1)})


def train_dit(
    model: DiT,
    steps: int,
    *,
    cfg: LitConfig,
    data,
    diffusion: GaussianDiffusion,
    evaluate: Evaluator,
    seed: int,
    teacher: DiT | None = None,
    log=None,
) -> tuple[list[dict], Tensor, DiT]:
    """AdamW (constant ``cfg.lr``) on ``L_simple + L_vlb`` (+ the hybrid distillation loss when a
    ``teacher`` is given), keeping an EMA of the weights (decay ``cfg.ema_decay``, warmed up as
    ``min(decay, (1 + n) / (10 + n))``), which is what gets evaluated, as in DiT. Batches, timesteps,
    noise and label drops come from ``seed``, so runs with the same seed see the same data.

    Returns the evaluation curve, the last samples and the EMA model.
    """
    x_tr, y_tr = data[0], data[1]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ema_params, params = list(ema.parameters()), list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    checkpoints = _eval_steps(steps, cfg.evals)
    curve, samples, t0, step = [], None, time.perf_counter(), 0
    model.train()
    while True:
        if step in checkpoints:
            train_time = time.perf_counter() - t0
            result = evaluate(ema)
            samples = result.pop("samples")
            curve.append({"step": step, **result, "train_s": round(train_time, 1)})
            if log is not None:
                log(curve[-1])
            t0 = time.perf_counter() - train_time
        if step == steps:
            return curve, samples, ema
        idx = host_to(torch.randint(0, len(y_tr), (cfg.batch_size,), generator=gen), x_tr.device)
        x0, y = x_tr[idx], y_tr[idx]
        drop = host_to(torch.rand(len(y), generator=gen) < cfg.label_dropout, y.device)
        y = torch.where(drop, torch.full_like(y, model.null_class), y)
        terms = diffusion.training_losses(model, x0, y, generator=gen)
        loss = terms["loss"].mean()
        if teacher is not None:
            with torch.no_grad():
                teacher_out = teacher(terms["x_t"], terms["t"], y)
            loss = loss + hybrid_distillation_loss(
                terms["output"],
                teacher_out,
                channels=model.in_channels,
                lambda_eps=cfg.lambda_eps,
                lambda_sigma=cfg.lambda_sigma,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():  # one multi-tensor launch, not one per parameter
            torch._foreach_lerp_(ema_params, params, 1 - decay)


def build_student(name: str, teacher: DiT, cfg: LitConfig, seed: int) -> DiT:
    """The LiT student ``name`` (see ``STUDENTS``), seeded so fresh mixers are the same across students."""
    kwargs = {"num_heads": cfg.student_heads, "conv_size": cfg.conv_size, "bias": True}
    torch.manual_seed(seed)
    if name == "scratch":
        config = teacher.config | {"mixer": "linear_attention", "mixer_kwargs": kwargs}
        return DiT(**config).to(teacher.pos_embed.device)
    inherit_attention = name == "inherit_qkv_distill"
    return convert_to_linear_attention(
        teacher, inherit_attention=inherit_attention, mixer_init=dit_linear_init_, **kwargs
    )


def inherited_fraction(student: nn.Module, teacher: nn.Module) -> float:
    """Fraction of the student's parameters equal to the teacher's parameter of the same name."""
    theirs = dict(teacher.named_parameters())
    same = sum(
        p.numel()
        for n, p in student.named_parameters()
        if n in theirs and theirs[n].shape == p.shape and torch.equal(theirs[n], p)
    )
    return same / sum(p.numel() for p in student.parameters())


# ---- reporting -----------------------------------------------------------------------------------------


def _first_step_at_most(curve: list[dict], key: str, target: float) -> int | None:
    return next((point["step"] for point in curve if point[key] <= target), None)


def _verdicts(rows: list[dict], tolerance: float = 1.25) -> list[str]:
    """Steps each student needs to bring its FD within ``tolerance`` x the teacher's final FD, next to the
    steps the softmax teacher itself needed from scratch."""
    teacher = rows[0]
    target = tolerance * teacher["curve"][-1]["fd"]
    lines = []
    own = _first_step_at_most(teacher["curve"], "fd", target)
    lines.append(
        f"target FD <= {target:.2f} ({tolerance:g} x the teacher's final {teacher['curve'][-1]['fd']:.2f}): "
        f"softmax DiT from scratch reached it at step {own}"
    )
    for row in rows[1:]:
        step = _first_step_at_most(row["curve"], "fd", target)
        best = min(p["fd"] for p in row["curve"])
        reached = f"step {step}" if step is not None else f"not within {row['curve'][-1]['step']} steps"
        lines.append(
            f"{row['label']}: {reached} (best FD {best:.2f}, final accuracy {row['curve'][-1]['acc']:.2f})"
        )
    return lines


def _table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "step", "L_simple (test)", "L_vlb (test)", "sample acc", "FD"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        for i, p in enumerate(row["curve"]):
            table.add_row(
                row["label"] if i == 0 else "",
                f"{p['step']:,}",
                f"{p['mse']:.4f}",
                f"{p['vb']:.4f}",
                f"{p['acc']:.3f}",
                f"{p['fd']:.2f}",
                end_section=i == len(row["curve"]) - 1,
            )
    return table


def _plot(rows: list[dict], samples: dict[str, Tensor], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    ends = [row["curve"][-1]["step"] for row in rows]
    longest, shortest = max(ends), min(ends)
    first = min((p["step"] for row in rows for p in row["curve"] if p["step"] > 0), default=1)
    fig = plt.figure(figsize=(4.2 * max(3, n), 7.6))
    grid = fig.add_gridspec(2, max(3, n), height_ratios=(1.0, 1.05))
    metrics = (
        ("mse", "denoising loss L_simple (test)"),
        ("acc", "sample accuracy"),
        ("fd", "Frechet distance"),
    )
    for col, (key, title) in enumerate(metrics):
        ax = fig.add_subplot(grid[0, col])
        for row in rows:
            steps = [p["step"] for p in row["curve"]]
            style = {"ls": "--", "color": "k"} if row["name"] == "teacher" else {"marker": "o", "ms": 3}
            ax.plot(steps, [p[key] for p in row["curve"]], label=row["label"], **style)
        if key == "fd":
            ax.axhline(floor, color="gray", lw=0.8, ls=":", label="real vs real")
        if key != "acc":
            ax.set_yscale("log")
        if longest > 2 * shortest:  # the teacher trains longer: keep the students' start legible
            ax.set_xscale("symlog", linthresh=first, linscale=0.5)
            ax.set_xlim(0, 1.1 * longest)
            decades = range(math.ceil(math.log10(first)), math.floor(math.log10(longest)) + 1)
            ax.set_xticks([0, *(10**k for k in decades)])
        ax.set(title=title, xlabel="training step")
        ax.grid(alpha=0.3)
        if col == 2:
            ax.legend(fontsize=7)
    for col, row in enumerate(rows):
        ax = fig.add_subplot(grid[1, col])
        imgs = samples[row["name"]].view(10, -1, *samples[row["name"]].shape[-2:])[:, :6]  # [10, k, S, S]
        k, s = imgs.shape[1], imgs.shape[-1]
        tiles = imgs.permute(1, 2, 0, 3).reshape(k * s, 10 * s)  # one class per column
        ax.imshow(tiles.clamp(-1, 1).cpu().numpy(), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{row['label']}, step {row['curve'][-1]['step']:,}", fontsize=8)
        ax.axis("off")
    size = samples["teacher"].shape[-1]
    title = f"LiT on load_digits ({size}x{size}): softmax DiT teacher vs linear-attention students"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    config: LitConfig | None = None,
    device: str | None = None,
) -> dict:
    """Train the teacher and the students, print the table, write ``lit.json`` and ``lit.png``.

    Args:
        quick: the ``QUICK`` preset (a 2-core CPU in minutes) instead of ``FULL`` (a GPU).
        out_dir: folder for the outputs (created if missing).
        seed: seeds the classifier, the teacher, the students' fresh weights and the shared batches.
        console: where the table goes (a new ``Console()`` if None).
        config: overrides the preset (tests use tiny sizes).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).

    Returns the JSON record: settings, the classifier's test accuracy, the real-vs-real FD floor, each
    model's curve (step, test ``L_simple`` and ``L_vlb``, sample accuracy, FD, training seconds) and
    the verdict lines.
    """
    console = console if console is not None else Console()
    cfg = config or (QUICK if quick else FULL)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = tuple(t.to(device) for t in load_digit_images(cfg.image_size))
    classifier = load_classifier(out_dir, cfg, seed, device)
    if classifier is None:  # kept, since on a GPU a retrained one differs in the last bits
        classifier = train_classifier(data[0], data[1], epochs=cfg.classifier_epochs, seed=seed)
        save_classifier(out_dir, cfg, seed, classifier)
    diffusion = GaussianDiffusion()
    evaluate = Evaluator(cfg, data, classifier, diffusion, seed)
    console.print(
        f"classifier test accuracy {evaluate.classifier_acc:.3f}; FD of {len(evaluate.labels)} samples "
        f"to {len(evaluate.real)} held-out digits; floor (the other {len(data[3]) - len(evaluate.real)} "
        f"held-out digits): {evaluate.floor:.2f}",
        highlight=False,
    )

    def log(name: str):
        def line(p: dict) -> None:
            console.print(
                f"{name:32s} step {p['step']:6d}  L_simple {p['mse']:.4f}  acc {p['acc']:.3f}  "
                f"FD {p['fd']:7.2f}  ({p['train_s']:.0f}s)",
                highlight=False,
            )

        return line

    torch.manual_seed(seed)
    teacher = DiT(
        image_size=cfg.image_size,
        d_model=cfg.d_model,
        depth=cfg.depth,
        mixer="attention",
        mixer_kwargs={"num_heads": cfg.teacher_heads, "bias": True},
    ).to(device)
    common = dict(cfg=cfg, data=data, diffusion=diffusion, evaluate=evaluate)
    teacher_label = "softmax DiT (teacher)"
    cached = load_run(out_dir, "teacher", cfg, seed, teacher)
    if cached is not None:
        curve, last = cached
        console.print(
            f"{teacher_label}: loaded from {out_dir / run_file('teacher')} (same settings and seed)"
        )
    else:
        curve, last, teacher = train_dit(
            teacher, cfg.teacher_steps, seed=seed, log=log(teacher_label), **common
        )
        save_run(out_dir, "teacher", cfg, seed, curve, last, teacher)
    rows = [{"name": "teacher", "label": teacher_label, "params": _params(teacher), "curve": curve}]
    samples = {"teacher": last}
    teacher.eval().requires_grad_(False)
    for name in cfg.students:
        student = build_student(name, teacher, cfg, seed + 10)
        label, inherited = STUDENT_LABELS[name], inherited_fraction(student, teacher)
        distill = teacher if name.endswith("distill") else None
        cached = load_run(out_dir, name, cfg, seed)
        if cached is not None:
            curve, samples[name] = cached
            console.print(
                f"{label}: loaded from {out_dir / run_file(name, 'samples')} (same settings and seed)"
            )
        else:
            curve, samples[name], _ = train_dit(
                student, cfg.student_steps, seed=seed + 20, teacher=distill, log=log(label), **common
            )
            save_run(out_dir, name, cfg, seed, curve, samples[name])
        rows.append(
            {
                "name": name,
                "label": label,
                "params": _params(student),
                "inherited_fraction": inherited,
                "curve": curve,
            }
        )

    size = f"{cfg.image_size}x{cfg.image_size}"
    console.print(_table(rows, f"load_digits {size}, d_model {cfg.d_model}, {cfg.depth} blocks"))
    verdicts = _verdicts(rows)
    for line in verdicts:
        console.print(line, highlight=False)
    record = {
        "name": "lit",
        "claim": CLAIM,
        "quick": quick,
        "seed": seed,
        "settings": cfg.model_dump() | {"device": str(device), "torch": torch.__version__},
        "classifier_test_acc": evaluate.classifier_acc,
        "fd_real_vs_real": evaluate.floor,
        "rows": rows,
        "verdicts": verdicts,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    (out_dir / "lit.json").write_text(json.dumps(record, indent=1))
    _plot(rows, samples, evaluate.floor, out_dir / "lit.png")
    return record


def run_file(name: str, kind: str = "weights") -> str:
    """File name of a finished model's ``weights`` (EMA, the teacher's only) or ``samples`` (its curve and
    last samples) in ``out_dir``: ``lit_teacher.safetensors``, ``lit_inherit_samples.safetensors``, ..."""
    return f"lit_{name}.safetensors" if kind == "weights" else f"lit_{name}_samples.safetensors"


def _run_key(cfg: LitConfig, seed: int) -> str:
    return json.dumps({"settings": cfg.model_dump(mode="json"), "seed": seed}, sort_keys=True)


def save_run(
    out_dir: Path,
    name: str,
    cfg: LitConfig,
    seed: int,
    curve: list,
    samples: Tensor,
    model: DiT | None = None,
) -> None:
    """Keep a finished model's curve and last samples (and, given ``model``, its EMA weights) for
    :func:`load_run`, so an interrupted run resumes after the last finished model."""
    from safetensors.torch import save_file

    meta = {"key": _run_key(cfg, seed), "curve": json.dumps(curve)}
    if model is not None:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out_dir / run_file(name)), metadata=meta)
    save_file(
        {"samples": samples.detach().cpu().contiguous()},
        str(out_dir / run_file(name, "samples")),
        metadata=meta,
    )


def save_classifier(out_dir: Path, cfg: LitConfig, seed: int, classifier: DigitClassifier) -> None:
    """Keep the evaluation classifier, so a resumed run scores every model with the same one."""
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(weights, str(out_dir / run_file("classifier")), metadata={"key": _run_key(cfg, seed)})


def load_classifier(out_dir: Path, cfg: LitConfig, seed: int, device: torch.device) -> DigitClassifier | None:
    """The classifier saved by :func:`save_classifier` under the same settings and seed, or None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out_dir / run_file("classifier")
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("key") != _run_key(cfg, seed):
            return None
    classifier = DigitClassifier(cfg.image_size).to(device)
    classifier.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
    return classifier.eval()


def load_run(
    out_dir: Path, name: str, cfg: LitConfig, seed: int, model: DiT | None = None
) -> tuple[list, Tensor] | None:
    """The curve and last samples saved by :func:`save_run` under the same settings and seed (loading
    the weights into ``model`` when given), or None when there are none or they came from other settings."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    paths = [out_dir / run_file(name, "samples")] + ([out_dir / run_file(name)] if model is not None else [])
    if not all(p.is_file() for p in paths):
        return None
    key = _run_key(cfg, seed)
    for path in paths:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
    with safe_open(str(paths[0]), "pt") as f:
        curve = json.loads(f.metadata()["curve"])
    if model is not None:
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in load_file(str(paths[1])).items()})
    return curve, load_file(str(paths[0]))["samples"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
