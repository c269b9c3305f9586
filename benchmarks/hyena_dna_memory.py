"""Peak memory and time of one HyenaDNA training step at a million tokens.

The model is the ``large-1m`` preset of :mod:`subq.models.hyena_dna` (``d_model=256``, 8 Hyena blocks,
HyenaDNA's layer hyperparameters, ~6.6M parameters) with ``max_seq_len`` set to ``--T``, so that every
long-convolution filter is as long as the sequence. One training step is: forward of ``--batch``
random nucleotide sequences of ``--T`` tokens, next-token cross-entropy over every position,
backward, ``AdamW.step()``. On CUDA the forward runs under bf16 autocast (weights, gradients and
optimizer state in float32, as ``subq train`` does); on CPU in float32.

``--steps`` steps run back to back (the first also builds FFT plans and allocator pools); each is
synchronised and timed. Reported: the step times, ``torch.cuda.max_memory_allocated`` over all steps
(the peak the step needs, parameters and optimizer state included), ``max_memory_reserved``, the
device's total memory and whether the peak fits in it. ``--checkpoint-blocks`` recomputes each block
in the backward (activation checkpointing, as the reference's ``checkpoint_mixer``/``checkpoint_mlp``
options do) instead of keeping its activations: without it, the tensors autograd keeps grow as about
190 KB per token (counted under bf16 autocast, ``fft`` form), some 185 GiB at 2^20 tokens;
``--long-conv-form`` picks the Hyena layers' long convolution (``fft``: one FFT per convolution;
``chunk``: the bitwise-causal dyadic form).

    python benchmarks/hyena_dna_memory.py                                  # CUDA, T = 2^20, batch 1
    python benchmarks/hyena_dna_memory.py --checkpoint-blocks --out hyena_dna_memory.json
    python benchmarks/hyena_dna_memory.py --device cpu --T 512 --steps 1   # smoke test

Prints one line per step and, as the last stdout line, one JSON object. Exit status 1 when the step
runs out of memory (the JSON says so), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from subq.layers.hyena import LONG_CONV_FORMS
from subq.models import LanguageModel, count_params
from subq.models.hyena_dna import HYENA_DNA_SIZES, hyena_dna_config
from subq.tasks.dna import NucleotideTokenizer

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(HYENA_DNA_SIZES), default="large-1m", help="default large-1m")
    p.add_argument("--T", type=int, default=2**20, help="tokens per sequence (default 1048576)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--steps", type=int, default=2, help="training steps to run and time (default 2)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto")
    p.add_argument("--long-conv-form", choices=LONG_CONV_FORMS, default="fft", help="default fft")
    p.add_argument("--checkpoint-blocks", action="store_true", help="recompute each block in the backward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON record here")
    args = p.parse_args(argv)
    for name in ("T", "batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.T < 2:
        p.error(f"--T must be >= 2, got {args.T}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


class CheckpointedBlock(nn.Module):
    """A block whose activations are recomputed in the backward instead of kept."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.block, x, use_reentrant=False)


def build_model(args: argparse.Namespace, device: torch.device) -> LanguageModel:
    """HyenaDNA of ``args.size`` with filters of ``args.T`` taps, the chosen long-convolution form and,
    optionally, checkpointed blocks."""
    preset = hyena_dna_config(args.size, max_seq_len=args.T)
    mixer = {"name": preset.mixer.name, **preset.mixer.kwargs, "long_conv_form": args.long_conv_form}
    model = LanguageModel(hyena_dna_config(args.size, max_seq_len=args.T, mixer=mixer), device=device)
    if args.checkpoint_blocks:
        blocks = model.backbone.blocks
        for i in range(len(blocks)):
            blocks[i] = CheckpointedBlock(blocks[i])
    return model


def random_batch(
    batch: int, T: int, device: torch.device, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)``, each ``(batch, T)``: ``T + 1`` uniform random bases A, C, G, T, shifted
    by one."""
    bases = NucleotideTokenizer().encode("ACGT").to(device)  # (4,)
    seq = bases[torch.randint(4, (batch, T + 1), generator=generator).to(device)]
    return seq[:, :-1], seq[:, 1:]


def training_step(
    model: LanguageModel, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, autocast
) -> float:
    """Forward, loss, backward, optimizer step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    loss.backward()
    optimizer.step()
    return loss.item()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_type)
    cuda = device.type == "cuda"
    if cuda:
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(args.seed)
    model = build_model(args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    generator = torch.Generator().manual_seed(args.seed)
    record: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "env": {
            "argv": ["benchmarks/hyena_dna_memory.py", *sys.argv[1:]],
            "torch": torch.__version__,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "precision": "bf16 autocast" if cuda else "fp32",
        },
        "params": count_params(model),
        "tokens_per_step": args.batch * args.T,
        "status": "ok",
        "step_s": [],
        "loss": [],
        "peak_allocated_gib": None,
        "peak_reserved_gib": None,
        "device_total_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None,
        "fits": None,
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for step in range(args.steps):
            x, y = random_batch(args.batch, args.T, device, generator)
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = training_step(model, optimizer, x, y, autocast)
            if cuda:
                torch.cuda.synchronize(device)
            record["step_s"].append(time.perf_counter() - start)
            record["loss"].append(loss)
            peak = f", peak {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB" if cuda else ""
            print(f"step {step}: {record['step_s'][-1]:.3f} s, loss {loss:.4f}{peak}", flush=True)
    except torch.OutOfMemoryError as exc:
        record["status"] = "OOM"
        record["error"] = str(exc).splitlines()[0]
        print(f"out of memory: {record['error']}", flush=True)
    if cuda:
        record["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        record["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        record["fits"] = record["status"] == "ok"
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = run(args)
    line = json.dumps(record)
    if args.out is not None:
        args.out.write_text(line + "\n")
    print(line)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
