"""A causal language model built from mixer blocks, readable top to bottom.

cfg = LMConfig(vocab_size=8192, d_model=128, n_layers=2, mixer="attention", channel_mixer="none")
model = LanguageModel(cfg)
logits = model(input_ids)                            # (B, T, vocab)
out = model.generate(prompt, max_new_tokens=32)      # uses prefill/step when every mixer decodes
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.base import State
from subq.models.block import Block, make_norm
from subq.models.config import EncoderConfig, LMConfig, _BackboneConfig

_OUTPUT_PROJECTIONS = ("out_proj", "fc2")


class Backbone(nn.Module):
    """Embedding (+ optional learned positions), blocks, final norm: ids ``(B, T)`` -> ``(B, T, d)``."""

    def __init__(self, cfg: _BackboneConfig, *, causal: bool, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        fk = dict(device=device, dtype=dtype)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, **fk)
        self.pos_embed = (
            nn.Embedding(cfg.max_seq_len, cfg.d_model, **fk) if cfg.pos_emb == "learned" else None
        )
        self.drop = nn.Dropout(cfg.embed_dropout)
        self.blocks = nn.ModuleList(
            Block(
                m.build(cfg.d_model, causal=causal, layer_idx=i, **fk),
                cfg.channel_mixer.build(cfg.d_model, **fk),
                norm=cfg.norm,
                **fk,
            )
            for i, m in enumerate(cfg.mixers)
        )
        self.norm_f = make_norm(cfg.norm, cfg.d_model, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for the weights of every ``nn.Linear`` and ``nn.Embedding`` (output projections
        scaled by 1/sqrt(2 n_layers)), zero linear biases. Other parameters (convolution filters, filter
        networks' special layers, norms) keep the initialisation their own module gives them."""
        std = self.cfg.init_std
        for name, m in self.named_modules():
            if not isinstance(m, (nn.Linear, nn.Embedding)):
                continue
            out_proj = name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS
            nn.init.normal_(m.weight, std=std / math.sqrt(2 * self.cfg.n_layers) if out_proj else std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"input ids must be an integer tensor (B, T), got {ids.dtype} {tuple(ids.shape)}"
            )
        T = ids.shape[1]
        x = self.embed(ids)
        if self.pos_embed is not None:
            if offset + T > self.cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {offset + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}"
                )
            x = x + self.pos_embed(torch.arange(offset, offset + T, device=ids.device))
        return self.drop(x)

    def forward(self, ids: Tensor) -> Tensor:
        x = self._embed(ids)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.norm_f(x)


class LanguageModel(nn.Module):
    """Causal LM with a head tied to the input embedding."""

    def __init__(self, cfg: LMConfig, *, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg, causal=True, device=device, dtype=dtype)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> LanguageModel:
        return cls(LMConfig.from_preset(preset, **overrides))

    def forward(self, ids: Tensor, *, positions: Tensor | None = None) -> Tensor:
        """``ids: (B, T)`` -> logits ``(B, T, vocab)``.

        With a boolean ``positions: (B, T)``, only the selected positions go through the head and
        the result is ``(N, vocab)`` for the ``N`` selected positions in row-major order. Training on
        sparse labels (MQAR supervises K of T positions) then skips most of the head's cost.
        """
        h = self.backbone(ids)  # (B, T, d)
        if positions is not None:
            if positions.shape != ids.shape or positions.dtype != torch.bool:
                raise ValueError(
                    f"positions must be a bool mask of shape {tuple(ids.shape)}, "
                    f"got {positions.dtype} {tuple(positions.shape)}"
                )
            h = h[positions]  # (N, d)
        return F.linear(h, self.backbone.embed.weight)

    def state_size(self, seq_len: int) -> int:
        """Floats of decoding state per sequence, summed over layers."""
        return sum(b.mixer.state_size(seq_len) for b in self.backbone.blocks)

    @property
    def can_decode(self) -> bool:
        return all(b.mixer.supports_decode for b in self.backbone.blocks)

    # ---- decoding ----------------------------------------------------------------------------------
    def prefill(self, ids: Tensor, *, last_only: bool = False) -> tuple[Tensor, list[State]]:
        """Logits for every prompt position (``(B, T, vocab)``; ``last_only``: the last position only,
        ``(B, 1, vocab)``, which is all generation needs) and the per-layer decoding states."""
        x = self.backbone._embed(ids)
        states = []
        for block in self.backbone.blocks:
            x, s = block.prefill(x)
            states.append(s)
        if last_only:
            x = x[:, -1:]
        return F.linear(self.backbone.norm_f(x), self.backbone.embed.weight), states

    def step(self, token: Tensor, states: list[State], position: int) -> tuple[Tensor, list[State]]:
        """``token: (B,)`` at absolute ``position`` -> next-token logits ``(B, vocab)``."""
        x = self.backbone._embed(token[:, None], offset=position)[:, 0]
        new_states = []
        for block, s in zip(self.backbone.blocks, states, strict=True):
            x, s = block.step(x, s)
            new_states.append(s)
        return F.linear(self.backbone.norm_f(x), self.backbone.embed.weight), new_states

    @torch.no_grad()
    def generate(
        self,
        ids: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` tokens to ``ids: (B, T)``; greedy when ``temperature == 0``.

        Uses ``prefill``/``step`` (constant work per token for recurrent mixers) when every mixer can
        decode; otherwise re-runs the full forward on the growing sequence.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        out = [ids]
        if self.can_decode:
            logits, states = self.prefill(ids, last_only=True)
            logits, pos = logits[:, -1], ids.shape[1]
            for _ in range(max_new_tokens):
                nxt = _sample(logits, temperature, top_k, generator)
                out.append(nxt[:, None])
                logits, states = self.step(nxt, states, pos)
                pos += 1
        else:
            seq = ids
            for _ in range(max_new_tokens):
                nxt = _sample(self(seq)[:, -1], temperature, top_k, generator)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                out.append(nxt[:, None])
        self.train(was_training)
        return torch.cat(out, dim=1)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class Encoder(nn.Module):
    """Bidirectional encoder with a tied masked-LM head and an optional classification head."""

    def __init__(self, cfg: EncoderConfig, *, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg, causal=False, device=device, dtype=dtype)
        self.classifier = (
            nn.Linear(cfg.d_model, cfg.num_classes, device=device, dtype=dtype) if cfg.num_classes else None
        )

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> Encoder:
        return cls(EncoderConfig.from_preset(preset, **overrides))

    def forward(self, ids: Tensor) -> Tensor:
        """``ids: (B, T)`` -> hidden states ``(B, T, d)``."""
        return self.backbone(ids)

    def mlm_logits(self, ids: Tensor) -> Tensor:
        """Masked-LM logits ``(B, T, vocab)`` through the tied embedding."""
        return F.linear(self.backbone(ids), self.backbone.embed.weight)

    def classify(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Sequence-classification logits ``(B, num_classes)`` from pooled hidden states."""
        if self.classifier is None:
            raise RuntimeError("this encoder has no classification head: set num_classes in EncoderConfig")
        h = self.backbone(ids)
        if self.cfg.pooling == "first":
            pooled = h[:, 0]
        elif attention_mask is None:
            pooled = h.mean(1)
        else:
            m = attention_mask.to(h.dtype)[..., None]
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return self.classifier(pooled)
