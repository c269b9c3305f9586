"""Sequence classification on a causal backbone: pooled hidden states through a linear head.

    clf = SequenceClassifier(LMConfig.from_preset("hyena_dna-tiny-1k"), num_classes=2)
    logits = clf(ids)                                   # (B, 2)
    clf = SequenceClassifier.from_language_model(lm, num_classes=2)   # fine-tune a pretrained LM

Pooling follows HyenaDNA's ``SequenceDecoder`` (``HazyResearch/hyena-dna``, ``src/tasks/decoders.py``):
``"mean"`` is its ``mode: pool``, the mean over every position, which the GenomicBenchmarks configs use
(``configs/pipeline/genomic_benchmark.yaml``); ``"last"`` is its ``mode: last``, the final position,
the only one that has seen the whole sequence in a causal model. With an ``attention_mask``, padded
positions are left out of the mean and ``"last"`` takes the last unmasked position, so left and right
padding both work (the reference pads on the left and, without ``use_lengths``, averages the pads too).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from subq.models.config import LMConfig
from subq.models.language_model import Backbone, LanguageModel

Pooling = Literal["mean", "last"]


class SequenceClassifier(nn.Module):
    """A causal :class:`Backbone` (embedding, blocks, final norm) and ``Linear(d_model, num_classes)``
    on the pooled hidden states.

    Args:
        cfg: the backbone's :class:`LMConfig`.
        num_classes: default 2.
        pooling: ``"mean"`` (default, HyenaDNA's GenomicBenchmarks head) or ``"last"``.
    """

    def __init__(
        self, cfg: LMConfig, num_classes: int = 2, *, pooling: Pooling = "mean", device=None, dtype=None
    ):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.cfg, self.pooling = cfg, pooling
        self.backbone = Backbone(cfg, causal=True, device=device, dtype=dtype)
        self.head = nn.Linear(cfg.d_model, num_classes, device=device, dtype=dtype)

    @classmethod
    def from_language_model(
        cls, lm: LanguageModel, num_classes: int = 2, *, pooling: Pooling = "mean"
    ) -> SequenceClassifier:
        """A classifier that shares ``lm``'s backbone (its weights, not a copy) and has a new head."""
        p = next(lm.parameters())
        clf = cls(lm.cfg, num_classes, pooling=pooling, device="meta")
        clf.backbone = lm.backbone
        clf.head = nn.Linear(lm.cfg.d_model, num_classes, device=p.device, dtype=p.dtype)
        return clf

    def pool(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``h: (B, T, d)`` -> ``(B, d)``; ``attention_mask: (B, T)``, 1 = token, 0 = pad (None: no pads)."""
        if attention_mask is None:
            return h.mean(1) if self.pooling == "mean" else h[:, -1]
        if attention_mask.shape != h.shape[:2]:
            raise ValueError(
                f"attention_mask must be (B, T) = {tuple(h.shape[:2])}, got {tuple(attention_mask.shape)}"
            )
        keep = attention_mask.bool()
        if not keep.any(1).all():
            raise ValueError("every row of attention_mask needs at least one token")
        if self.pooling == "mean":
            m = keep.to(h.dtype)[..., None]
            return (h * m).sum(1) / m.sum(1)
        pos = torch.arange(h.shape[1], device=h.device)
        last = torch.where(keep, pos, -1).amax(1)  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``ids: (B, T)`` -> class logits ``(B, num_classes)``."""
        return self.head(self.pool(self.backbone(ids), attention_mask))
