"""Masked-LM pretraining and sequence-classification fine-tuning of an :class:`~subq.models.Encoder`
(M2-BERT and other bidirectional backbones), on the ``mlm`` / ``classify`` tasks of ``subq.tasks``.

    enc = Encoder.from_preset("m2_bert-tiny", vocab_size=260, max_seq_len=64, num_classes=2)
    pretrain_mlm(enc, StdlibMLMConfig(seq_len=64).build("train"), steps=200)
    finetune_classifier(enc, StdlibClassificationConfig(seq_len=64).build("train"), steps=100)
    accuracy = classification_accuracy(enc, StdlibClassificationConfig(seq_len=64).build("test"))

A small AdamW loop with linear warm-up and linear decay (M2-BERT's schedule shape), gradient clipping
at 1; for CPU-sized runs and tests. ``subq train`` trains causal LMs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from subq.models.language_model import Encoder
from subq.tasks.base import IGNORE_INDEX, SequenceDataset


def mlm_loss(encoder: Encoder, inputs: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the masked-LM head over the positions whose label is not ``-100``."""
    logits = encoder.mlm_logits(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def _attention_mask(encoder: Encoder, inputs: Tensor, pad_id: int | None) -> Tensor | None:
    return None if pad_id is None else (inputs != pad_id).long()


def classification_loss(
    encoder: Encoder, inputs: Tensor, labels: Tensor, pad_id: int | None = None
) -> Tensor:
    """Cross-entropy of the classification head; the class is the last position of ``labels``."""
    logits = encoder.classify(inputs, _attention_mask(encoder, inputs, pad_id))
    return F.cross_entropy(logits.float(), labels[:, -1])


def _train(encoder, data, loss_fn, *, steps, lr, batch_size, warmup, weight_decay, seed) -> list[float]:
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    device = next(encoder.parameters()).device
    opt = torch.optim.AdamW(
        encoder.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay
    )
    warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.02, (steps - s) / max(1, steps - warm))
    )
    g = torch.Generator().manual_seed(seed)
    encoder.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        loss = loss_fn(encoder, data.inputs[idx].to(device), data.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    encoder.eval()
    return losses


def pretrain_mlm(
    encoder: Encoder,
    data: SequenceDataset,
    *,
    steps: int,
    lr: float = 8e-4,
    batch_size: int = 32,
    warmup: float = 0.06,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> list[float]:
    """Masked-LM training on ``data`` (an ``mlm`` task's dataset); returns the loss of every step.
    Defaults are M2-BERT's pretraining settings (lr 8e-4, betas (0.9, 0.98), 6% warm-up)."""
    return _train(
        encoder, data, mlm_loss, steps=steps, lr=lr, batch_size=batch_size, warmup=warmup,
        weight_decay=weight_decay, seed=seed,
    )  # fmt: skip


def finetune_classifier(
    encoder: Encoder,
    data: SequenceDataset,
    *,
    steps: int,
    lr: float = 5e-5,
    batch_size: int = 16,
    warmup: float = 0.06,
    weight_decay: float = 0.01,
    pad_id: int | None = None,
    seed: int = 0,
) -> list[float]:
    """Fine-tune the encoder and its classification head (``EncoderConfig.num_classes``) on ``data``
    (a ``classify`` task's dataset, class at the last label position); ``pad_id`` masks padding out
    of the pooling. Returns the loss of every step."""
    if encoder.classifier is None:
        raise RuntimeError("the encoder has no classification head: set num_classes in its EncoderConfig")
    return _train(
        encoder, data, lambda e, x, y: classification_loss(e, x, y, pad_id), steps=steps, lr=lr,
        batch_size=batch_size, warmup=warmup, weight_decay=weight_decay, seed=seed,
    )  # fmt: skip


@torch.no_grad()
def classification_accuracy(
    encoder: Encoder, data: SequenceDataset, *, batch_size: int = 64, pad_id: int | None = None
) -> float:
    """Fraction of ``data``'s examples whose predicted class equals the last-position label."""
    encoder.eval()
    device = next(encoder.parameters()).device
    correct = 0
    for i in range(0, len(data), batch_size):
        x, y = data.inputs[i : i + batch_size].to(device), data.labels[i : i + batch_size, -1].to(device)
        correct += (encoder.classify(x, _attention_mask(encoder, x, pad_id)).argmax(-1) == y).sum().item()
    return correct / len(data)
