"""Nucleotide data: HyenaDNA's single-nucleotide tokenizer, a FASTA reader, and two synthetic genome
tasks with planted long-range structure (deterministic by seed, nothing downloaded).

    tok = NucleotideTokenizer()
    tok.encode("ACGTN")                                   # tensor([ 7,  8,  9, 10, 11])
    records = read_fasta("genome.fa.gz", max_len=1_000_000)
    task = DNAMarkovCopyConfig(seq_len=2048, copy_distance=1024)
    data = task.build("train")                            # inputs, labels: (2000, 2048)
    task.entropy()                                        # what long and short context can reach

Token ids are those of HyenaDNA's ``CharacterTokenizer`` (``HazyResearch/hyena-dna``,
``src/dataloaders/datasets/hg38_char_tokenizer.py``, built with ``characters=['A', 'C', 'G', 'T',
'N']``): ``[CLS]=0, [SEP]=1, [BOS]=2, [MASK]=3, [PAD]=4, [RESERVED]=5, [UNK]=6``, then ``A=7, C=8,
G=9, T=10, N=11``; EOS is ``[SEP]``. Two deliberate differences: the reference is case-sensitive and
maps every other character to ``[UNK]``, while :class:`NucleotideTokenizer` reads lower case as upper
case (soft-masked repeats in genome FASTA files are lower case) and reads any other character as
``N``, counting the replacements.

Tasks:

- ``dna_markov_copy`` (:class:`DNAMarkovCopyConfig`): next-base prediction on a random order-k
  Markov source in which fixed segments repeat bases from ``copy_distance`` positions back;
  :meth:`DNAMarkovCopyConfig.entropy` gives the exact loss of a model with perfect recall and of the
  best short-context model.
- ``dna_motif_distance`` (:class:`DNAMotifDistanceConfig`): sequence classification, label 1 iff
  motif B starts ``distance`` (± ``tolerance``) bases after motif A, balanced, with decoys.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from subq.tasks.base import IGNORE_INDEX, SequenceDataset, Split, TaskConfig, register_task, split_seed

# ---- tokenizer ---------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(len(SPECIAL_TOKENS))
EOS_ID = SEP_ID
NUCLEOTIDES = "ACGTN"
A_ID = len(SPECIAL_TOKENS)  # A, C, G, T, N are 7..11: a base code b in 0..3 is token A_ID + b
N_ID = A_ID + NUCLEOTIDES.index("N")
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(NUCLEOTIDES)  # 12

_CHAR_TO_ID = np.full(256, N_ID, dtype=np.int64)
_KNOWN = np.zeros(256, dtype=bool)
for _i, _c in enumerate(NUCLEOTIDES):
    for _b in (ord(_c), ord(_c.lower())):
        _CHAR_TO_ID[_b], _KNOWN[_b] = A_ID + _i, True


class NucleotideTokenizer:
    """One token per base with HyenaDNA's ids (see the module docstring); case-insensitive.

    Characters other than ``ACGTN`` (either case) become ``N``: :meth:`encode_with_count` returns how
    many, :meth:`encode` warns with the count. Nothing is added unless ``add_eos=True`` (appends
    ``[SEP]``, as the reference's ``add_eos`` does).
    """

    vocab_size: int = VOCAB_SIZE
    pad_id, eos_id, unk_id, n_id = PAD_ID, EOS_ID, UNK_ID, N_ID

    def encode_with_count(self, seq: str, *, add_eos: bool = False) -> tuple[Tensor, int]:
        """``seq`` -> token ids ``(len(seq) + add_eos,)`` int64 and the number of characters read as N."""
        raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)  # 1 byte per char
        ids = _CHAR_TO_ID[raw]
        replaced = int(raw.size - np.count_nonzero(_KNOWN[raw]))
        if add_eos:
            ids = np.append(ids, EOS_ID)
        return torch.from_numpy(ids), replaced

    def encode(self, seq: str, *, add_eos: bool = False) -> Tensor:
        """``seq`` -> token ids ``(len(seq) + add_eos,)``; warns when characters were read as N."""
        ids, replaced = self.encode_with_count(seq, add_eos=add_eos)
        if replaced:
            warnings.warn(f"{replaced} of {len(seq)} characters are not A/C/G/T/N: read as N", stacklevel=2)
        return ids

    def decode(self, ids: Tensor | Sequence[int], *, skip_special: bool = False) -> str:
        """Token ids -> text: bases as letters, specials as ``[PAD]`` etc. (dropped with ``skip_special``)."""
        out = []
        for i in torch.as_tensor(ids).reshape(-1).tolist():
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
            if i >= A_ID:
                out.append(NUCLEOTIDES[i - A_ID])
            elif not skip_special:
                out.append(SPECIAL_TOKENS[i])
        return "".join(out)

    @staticmethod
    def padded_vocab_size(multiple: int = 8) -> int:
        """The vocabulary rounded up to ``multiple`` (HyenaDNA's ``pad_vocab_size_multiple: 8`` gives 16)."""
        return -(-VOCAB_SIZE // multiple) * multiple


# ---- FASTA -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record: ``name`` is the header up to the first whitespace, ``description`` the whole
    header after ``>``, ``sequence`` the bases with line breaks and whitespace removed (case kept)."""

    name: str
    description: str
    sequence: str


def _open_text(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def iter_fasta(path: str | os.PathLike, *, max_len: int | None = None) -> Iterator[FastaRecord]:
    """Records of a FASTA file, plain text or gzip (recognised by content, whatever the suffix).

    Blank lines and ``;`` comment lines are skipped; sequence lines may wrap at any width. Raises
    ``ValueError`` naming the file, line and record for sequence data before the first header, an
    empty header, a record without bases, or a record longer than ``max_len`` bases (checked while
    reading, so an oversized chromosome is not read whole). Characters are not checked here:
    :class:`NucleotideTokenizer` reads anything unexpected as N.
    """
    path = Path(path)
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    name = description = None
    chunks: list[str] = []
    length = header_line = 0

    def finish() -> FastaRecord:
        if length == 0:
            raise ValueError(f"{path}: record {name!r} (header on line {header_line}) has no sequence")
        return FastaRecord(name, description, "".join(chunks))

    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith(">"):
                if name is not None:
                    yield finish()
                description = line[1:].strip()
                if not description:
                    raise ValueError(f"{path}: line {lineno}: empty FASTA header")
                name, chunks, length, header_line = description.split()[0], [], 0, lineno
                continue
            if line.startswith(";"):
                continue
            bases = "".join(line.split())
            if not bases:
                continue
            if name is None:
                raise ValueError(f"{path}: line {lineno}: sequence data before the first '>' header")
            chunks.append(bases)
            length += len(bases)
            if max_len is not None and length > max_len:
                raise ValueError(
                    f"{path}: record {name!r} is longer than max_len={max_len:,} bases "
                    f"(over {length - len(bases):,} by line {lineno})"
                )
    if name is None:
        raise ValueError(f"{path}: no FASTA records (no line starts with '>')")
    yield finish()


def read_fasta(path: str | os.PathLike, *, max_len: int | None = None) -> list[FastaRecord]:
    """All records of a FASTA file (see :func:`iter_fasta`)."""
    return list(iter_fasta(path, max_len=max_len))


def tokenize_fasta(
    path: str | os.PathLike, *, max_len: int | None = None, add_eos: bool = False
) -> list[tuple[str, Tensor]]:
    """``(name, ids)`` per record, ids as :meth:`NucleotideTokenizer.encode`; one warning per file gives
    the number of characters read as N and the records that held them."""
    tok = NucleotideTokenizer()
    out, replaced = [], {}
    for rec in iter_fasta(path, max_len=max_len):
        ids, n = tok.encode_with_count(rec.sequence, add_eos=add_eos)
        out.append((rec.name, ids))
        if n:
            replaced[rec.name] = n
    if replaced:
        names = ", ".join(f"{k} ({v})" for k, v in list(replaced.items())[:5])
        more = "" if len(replaced) <= 5 else f" and {len(replaced) - 5} more"
        warnings.warn(
            f"{path}: {sum(replaced.values())} characters that are not A/C/G/T/N read as N in "
            f"{len(replaced)} records: {names}{more}",
            stacklevel=2,
        )
    return out


# ---- Markov source -----------------------------------------------------------------------------------


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis)


@dataclass(frozen=True, eq=False)
class MarkovSource:
    """An order-``k`` Markov chain over the bases A, C, G, T (codes 0..3).

    ``transition: (4**k, 4)``: row ``s`` is the next-base distribution after the context ``s``, the
    last ``k`` bases read as a base-4 number with the oldest base most significant.
    """

    order: int
    transition: np.ndarray

    @classmethod
    def random(cls, order: int, seed: int, concentration: float = 0.5) -> MarkovSource:
        """Rows drawn from a symmetric Dirichlet(``concentration``): lower is more predictable."""
        if not 0 <= order <= 8:
            raise ValueError(f"order must be in [0, 8], got {order}")
        rng = np.random.default_rng(seed)
        return cls(order, rng.dirichlet([concentration] * 4, size=4**order))

    @property
    def num_contexts(self) -> int:
        return 4**self.order

    @functools.cached_property
    def stationary(self) -> np.ndarray:
        """``(4**k,)`` stationary distribution of the context (k consecutive bases), by power iteration."""
        S = self.num_contexts
        if S == 1:
            return np.ones(1)
        nxt = (np.arange(S)[:, None] * 4) % S + np.arange(4)  # (S, 4) context after base y
        pi = np.full(S, 1.0 / S)
        for _ in range(100_000):
            new = np.bincount(nxt.ravel(), weights=(pi[:, None] * self.transition).ravel(), minlength=S)
            if np.abs(new - pi).max() < 1e-15:
                return new
            pi = new
        raise RuntimeError(f"the stationary distribution of the order-{self.order} chain did not converge")

    def block_probs(self, n: int) -> np.ndarray:
        """``(4**n,)`` stationary probability of ``n`` consecutive bases (``n <= k``), oldest base first."""
        if not 0 <= n <= self.order:
            raise ValueError(f"n must be in [0, order={self.order}], got {n}")
        if n == 0:
            return np.ones(1)
        blocks = self.stationary.reshape((4,) * self.order)
        return blocks.sum(axis=tuple(range(n, self.order))).reshape(-1)

    @property
    def entropy_rate(self) -> float:
        """``H(X_t | X_{t-k..t-1})`` in nats per base under the stationary distribution."""
        return float(self.stationary @ _entropy(self.transition))

    def conditional_entropy(self, j: int) -> float:
        """``H(X_j | X_0..X_{j-1})`` in nats for a stationary chain: the loss of the best predictor that
        sees ``j`` previous bases; ``j >= k`` gives the entropy rate."""
        if j < 0:
            raise ValueError(f"j must be >= 0, got {j}")
        if j >= self.order:
            return self.entropy_rate
        return float(_entropy(self.block_probs(j + 1)) - _entropy(self.block_probs(j)))

    def sample(self, num: int, length: int, seed: int) -> np.ndarray:
        """``(num, length)`` int8 base codes of stationary chains (no copies)."""
        return _generate(self, num, np.full(length, -1), 0, np.random.default_rng(seed))


def _generate(
    source: MarkovSource, num: int, offsets: np.ndarray, distance: int, rng: np.random.Generator
) -> np.ndarray:
    """``(num, len(offsets))`` base codes: the first ``k`` from the stationary context distribution,
    then position ``t`` repeats ``t - distance`` where ``offsets[t] >= 0`` and is drawn from the chain
    given the previous ``k`` bases elsewhere."""
    k, S, L = source.order, source.num_contexts, len(offsets)
    if L < k:
        raise ValueError(f"need at least order={k} positions, got {L}")
    if (offsets[:k] >= 0).any():
        raise ValueError("the first `order` positions cannot be copies")
    cdf = np.cumsum(source.transition, axis=1)[:, :3]  # (S, 3): base = #{i : cdf_i <= u}
    powers = 4 ** np.arange(k - 1, -1, -1)  # oldest base most significant
    x = np.empty((num, L), dtype=np.int8)
    ctx = rng.choice(S, size=num, p=source.stationary)  # (num,)
    x[:, :k] = (ctx[:, None] // powers) % 4
    copied = offsets >= 0
    t = k
    while t < L:
        end = t
        while end < L and copied[end] == copied[t]:
            end += 1
        if copied[t]:
            x[:, t:end] = x[:, t - distance : end - distance]
            ctx = x[:, end - k : end].astype(np.int64) @ powers if k else ctx
        else:
            u = rng.random((num, end - t))
            for i in range(end - t):
                base = (u[:, i, None] >= cdf[ctx]).sum(1)
                x[:, t + i] = base
                ctx = (ctx * 4 + base) % S
        t = end
    return x


# ---- dna_markov_copy ---------------------------------------------------------------------------------


def copy_layout(length: int, copy_distance: int, segment_len: int, copy_period: int) -> np.ndarray:
    """``(length,)`` int: ``-1`` at freshly drawn positions, else the offset inside a copied segment.

    Segments of ``segment_len`` positions start at ``copy_distance + i * copy_period``; position ``t``
    of a segment repeats ``t - copy_distance``. With ``copy_distance % copy_period == 0`` every segment
    copies an earlier segment or a stretch of the fresh first ``copy_distance`` positions, aligned.
    """
    offsets = np.full(length, -1)
    for start in range(copy_distance, length, copy_period):
        stop = min(start + segment_len, length)
        offsets[start:stop] = np.arange(stop - start)
    return offsets


@dataclass(frozen=True)
class CopyTaskEntropy:
    """Per-token losses (nats, averaged over the supervised targets) of ``dna_markov_copy``.

    ``optimal``: the Bayes loss of a model that knows the source and recalls bases ``copy_distance``
    back (0 on copied targets, the chain's conditional entropy elsewhere). ``short_context``: the best
    model that knows the source and the layout but sees only the last ``order`` bases.
    """

    optimal: float
    short_context: float
    entropy_rate: float
    copy_fraction: float

    @property
    def optimal_perplexity(self) -> float:
        return math.exp(self.optimal)

    @property
    def short_context_perplexity(self) -> float:
        return math.exp(self.short_context)


def markov_copy_entropy(
    source: MarkovSource, seq_len: int, copy_distance: int, segment_len: int, copy_period: int
) -> CopyTaskEntropy:
    """Exact expected losses of the two reference predictors on ``dna_markov_copy`` sequences.

    Targets are bases ``1..seq_len`` (the labels of inputs ``0..seq_len-1``). For target ``t`` let
    ``h_j = source.conditional_entropy(j)``:

    - optimal: fresh ``t`` costs ``h_t`` (``= H`` the entropy rate once ``t >= k``); copied costs 0.
      Every fresh base is drawn from the chain given its ``k`` predecessors, whose distribution is
      stationary (segments are at least ``k`` long), so this is exact.
    - short context: fresh ``t`` costs ``h_min(t, k)``; a copied base at offset ``j`` in its segment
      costs ``h_min(j, k)``: its ``j`` copied predecessors are the only bases in view that share its
      past. This treats the ``copy_period - segment_len`` fresh bases between segments as long enough
      for the chain to forget (exact as that gap grows; any leftover dependence only lowers the best
      short-context loss).
    """
    offsets = copy_layout(seq_len + 1, copy_distance, segment_len, copy_period)[1:]
    k = source.order
    h = np.array([source.conditional_entropy(j) for j in range(k + 1)])
    pos = np.arange(1, seq_len + 1)
    fresh = offsets < 0
    fresh_cost = h[np.minimum(pos, k)]
    optimal = np.where(fresh, fresh_cost, 0.0)
    short = np.where(fresh, fresh_cost, h[np.minimum(np.maximum(offsets, 0), k)])
    return CopyTaskEntropy(
        optimal=float(optimal.mean()),
        short_context=float(short.mean()),
        entropy_rate=source.entropy_rate,
        copy_fraction=float((~fresh).mean()),
    )


def markov_copy_sequences(
    source: MarkovSource,
    num_examples: int,
    seq_len: int,
    copy_distance: int,
    segment_len: int,
    copy_period: int,
    seed: int,
) -> SequenceDataset:
    """``num_examples`` sequences of ``seq_len + 1`` bases laid out by :func:`copy_layout`, as token ids:
    ``inputs = bases[:-1]``, ``labels = bases[1:]`` (every position supervised), both ``(N, seq_len)``."""
    offsets = copy_layout(seq_len + 1, copy_distance, segment_len, copy_period)
    x = _generate(source, num_examples, offsets, copy_distance, np.random.default_rng(seed))
    ids = torch.from_numpy(x.astype(np.int64) + A_ID)
    return SequenceDataset(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())


@register_task("dna_markov_copy")
class DNAMarkovCopyConfig(TaskConfig):
    """Next-base prediction on a random order-k Markov genome whose segments repeat bases from far back.

    The source (Dirichlet(``concentration``) transition rows) comes from ``source_seed`` and is shared
    by both splits. Every sequence is ``seq_len + 1`` bases: fresh bases from the chain, except
    segments of ``segment_len`` starting at ``copy_distance + i * copy_period`` that repeat the bases
    ``copy_distance`` back. A model that can reach ``copy_distance`` back predicts those exactly;
    :meth:`entropy` gives the loss it can reach and the loss of the best short-context model.
    """

    name: Literal["dna_markov_copy"] = "dna_markov_copy"
    vocab_size: int = Field(VOCAB_SIZE, ge=VOCAB_SIZE)
    seq_len: PositiveInt = 2048
    order: int = Field(2, ge=0, le=8)
    concentration: PositiveFloat = 0.5
    copy_distance: PositiveInt = 1024
    segment_len: PositiveInt = 64
    copy_period: PositiveInt = 128
    source_seed: int = 0
    num_train_examples: PositiveInt = 2000
    num_test_examples: PositiveInt = 200

    @model_validator(mode="after")
    def _check(self):
        if self.copy_distance > self.seq_len:
            raise ValueError(
                f"copy_distance={self.copy_distance} must be <= seq_len={self.seq_len} (or no copy fits)"
            )
        if self.copy_distance % self.copy_period:
            raise ValueError(
                f"copy_distance={self.copy_distance} must be a multiple of copy_period={self.copy_period} "
                "(segments then copy whole earlier segments or fresh bases)"
            )
        if self.segment_len < self.order:
            raise ValueError(f"segment_len={self.segment_len} must be >= order={self.order}")
        if self.copy_period - self.segment_len < max(1, self.order):
            raise ValueError(
                f"copy_period={self.copy_period} must exceed segment_len={self.segment_len} by at least "
                f"max(1, order={self.order}) fresh bases"
            )
        return self

    def source(self) -> MarkovSource:
        """The Markov chain of this task (from ``source_seed``)."""
        return _source_cached(self.order, self.concentration, self.source_seed)

    def entropy(self) -> CopyTaskEntropy:
        """Loss reachable with perfect recall and with short context (see :func:`markov_copy_entropy`)."""
        return markov_copy_entropy(
            self.source(), self.seq_len, self.copy_distance, self.segment_len, self.copy_period
        )

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        """The ``split`` of this task for base seed ``seed`` (cached: sweeps rebuild the same data)."""
        return _build_copy_cached(self, split, seed)

    def describe(self) -> str:
        return (
            f"dna_markov_copy(L={self.seq_len}, k={self.order}, d={self.copy_distance}, "
            f"seg={self.segment_len}/{self.copy_period})"
        )


@functools.lru_cache(maxsize=8)
def _source_cached(order: int, concentration: float, seed: int) -> MarkovSource:
    return MarkovSource.random(order, seed, concentration)


@functools.lru_cache(maxsize=4)
def _build_copy_cached(cfg: DNAMarkovCopyConfig, split: Split, seed: int) -> SequenceDataset:
    n = cfg.num_train_examples if split == "train" else cfg.num_test_examples
    return markov_copy_sequences(
        cfg.source(),
        n,
        cfg.seq_len,
        cfg.copy_distance,
        cfg.segment_len,
        cfg.copy_period,
        split_seed(seed, split),
    )


# ---- dna_motif_distance ------------------------------------------------------------------------------

MOTIF_DECOYS = ("wrong_distance", "swapped", "only_a", "only_b")
"""Negative kinds, equally many of each: A then B at a distance outside the window (half of them
within ``motif_len`` of it), B then A at a distance inside the window, A alone, B alone."""


def _overlaps(x: str, y: str) -> bool:
    """Whether a proper suffix of ``x`` is a prefix of ``y`` (occurrences could overlap)."""
    return any(x[s:] == y[: len(y) - s] for s in range(1, len(x)))


def draw_motifs(motif_len: int, seed: int) -> tuple[str, str]:
    """Two distinct motifs of ``motif_len`` bases, neither able to overlap itself or the other, so a
    planted occurrence never shares a base with any other occurrence."""
    if motif_len < 2:
        raise ValueError(f"motif_len must be >= 2, got {motif_len}")
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        a, b = ("".join("ACGT"[i] for i in rng.integers(0, 4, motif_len)) for _ in range(2))
        if a != b and not any(_overlaps(x, y) for x in (a, b) for y in (a, b)):
            return a, b
    raise RuntimeError(f"no pair of non-overlapping motifs of length {motif_len} found")


def _kmer_codes(x: np.ndarray, m: int) -> np.ndarray:
    """``(N, L - m + 1)`` int64: the ``m``-mer starting at each position as a base-4 number."""
    codes = np.zeros((x.shape[0], x.shape[1] - m + 1), dtype=np.int64)
    for j in range(m):
        codes = codes * 4 + x[:, j : j + codes.shape[1]]
    return codes


@dataclass
class MotifDistanceExamples:
    """``ids: (N, L)`` token ids; ``label: (N,)`` 1 iff B starts within the distance window after A;
    ``kind``: ``"positive"`` or a name from :data:`MOTIF_DECOYS` per example; ``start_a``,
    ``start_b``: ``(N,)`` where each motif was planted (-1: absent). No other occurrence of either
    motif is in the sequence."""

    ids: Tensor
    label: Tensor
    kind: list[str]
    start_a: Tensor
    start_b: Tensor

    def dataset(self) -> SequenceDataset:
        """As a :class:`SequenceDataset`: ``labels`` holds the class at the last position, -100 elsewhere."""
        labels = torch.full_like(self.ids, IGNORE_INDEX)
        labels[:, -1] = self.label
        return SequenceDataset(self.ids, labels)


def motif_distance_examples(
    num_examples: int,
    seq_len: int,
    motifs: tuple[str, str],
    distance: int,
    tolerance: int,
    seed: int,
) -> MotifDistanceExamples:
    """Uniform random bases with motifs planted: ``num_examples // 2`` positives (B starts ``s`` after
    A, ``|s - distance| <= tolerance``), the rest decoys from :data:`MOTIF_DECOYS` in equal shares.
    Chance occurrences of either motif are mutated away (one base each, until none is left)."""
    m = len(motifs[0])
    lo, hi = distance - tolerance, distance + tolerance
    if lo < m or hi > seq_len - m:
        raise ValueError(
            f"distance window [{lo}, {hi}] must lie in [motif_len={m}, seq_len - motif_len={seq_len - m}]"
        )
    wrong = np.concatenate([np.arange(m, lo), np.arange(hi + 1, seq_len - m + 1)])
    if wrong.size == 0:
        raise ValueError(f"no distance in [{m}, {seq_len - m}] lies outside the window [{lo}, {hi}]")
    rng = np.random.default_rng(seed)
    N = num_examples
    n_pos = N // 2
    decoy = np.arange(N - n_pos) % len(MOTIF_DECOYS)
    kind_idx = rng.permutation(np.concatenate([np.full(n_pos, -1), decoy]))  # -1: positive

    # separation s = (start of the later motif) - (start of the earlier one)
    sep = rng.integers(lo, hi + 1, size=N)
    is_wrong = kind_idx == MOTIF_DECOYS.index("wrong_distance")
    far = rng.choice(wrong, size=N)
    near = hi + rng.integers(1, m + 1, size=N)
    near = np.where(rng.random(N) < 0.5, near, lo - (near - hi))  # either side of the window
    near_ok = (near >= m) & (near <= seq_len - m)
    use_near = (rng.random(N) < 0.5) & near_ok
    sep = np.where(is_wrong, np.where(use_near, near, far), sep)
    single = np.isin(kind_idx, [MOTIF_DECOYS.index("only_a"), MOTIF_DECOYS.index("only_b")])
    span = np.where(single, m, sep + m)  # bases from the first motif's start to the last one's end
    first = rng.integers(0, seq_len - span + 1)
    swapped = kind_idx == MOTIF_DECOYS.index("swapped")
    only_a, only_b = kind_idx == MOTIF_DECOYS.index("only_a"), kind_idx == MOTIF_DECOYS.index("only_b")
    start_a = np.where(only_b, -1, np.where(swapped, first + sep, first))
    start_b = np.where(only_a, -1, np.where(swapped | only_b, first, first + sep))

    x = rng.integers(0, 4, size=(N, seq_len), dtype=np.int8)
    codes = [np.array(["ACGT".index(c) for c in motif], dtype=np.int8) for motif in motifs]
    for code, start in zip(codes, (start_a, start_b), strict=True):
        rows = np.flatnonzero(start >= 0)
        x[rows[:, None], start[rows, None] + np.arange(m)] = code
    planted = np.zeros((N, seq_len - m + 1), dtype=bool)
    for start in (start_a, start_b):
        rows = np.flatnonzero(start >= 0)
        planted[rows, start[rows]] = True
    targets = np.array([int(c @ (4 ** np.arange(m - 1, -1, -1))) for c in codes])
    chunk = max(1, 2**22 // seq_len)
    for r in range(0, N, chunk):
        xs, ps = x[r : r + chunk], planted[r : r + chunk]
        while True:  # the motifs cannot overlap, so a chance hit's first base is never a planted one
            hit = np.isin(_kmer_codes(xs, m), targets) & ~ps
            if not hit.any():
                break
            rows, cols = np.nonzero(hit)
            xs[rows, cols] = (xs[rows, cols] + rng.integers(1, 4, size=rows.size)) % 4

    kinds = ["positive" if i < 0 else MOTIF_DECOYS[i] for i in kind_idx]
    return MotifDistanceExamples(
        ids=torch.from_numpy(x.astype(np.int64) + A_ID),
        label=torch.from_numpy((kind_idx < 0).astype(np.int64)),
        kind=kinds,
        start_a=torch.from_numpy(start_a.astype(np.int64)),
        start_b=torch.from_numpy(start_b.astype(np.int64)),
    )


@register_task("dna_motif_distance")
class DNAMotifDistanceConfig(TaskConfig):
    """Sequence classification: is motif B ``distance`` (± ``tolerance``) bases after motif A?

    Balanced classes; negatives are equal shares of the decoys in ``MOTIF_DECOYS`` (wrong distance,
    swapped order, a single motif). The two motifs come from ``source_seed`` (shared by both splits);
    ``distance`` can be swept up to ``seq_len - motif_len``. ``build`` puts the class (0/1) at the
    last position of ``labels``; :meth:`examples` also gives where each motif was planted.
    """

    kind: ClassVar[str] = "classify"
    num_classes: ClassVar[int] = 2

    name: Literal["dna_motif_distance"] = "dna_motif_distance"
    vocab_size: int = Field(VOCAB_SIZE, ge=VOCAB_SIZE)
    seq_len: PositiveInt = 1024
    distance: PositiveInt = 256
    tolerance: NonNegativeInt = 0
    motif_len: int = Field(8, ge=2, le=24)
    source_seed: int = 0
    num_train_examples: PositiveInt = 2000
    num_test_examples: PositiveInt = 400

    @model_validator(mode="after")
    def _check(self):
        m, lo, hi = self.motif_len, self.distance - self.tolerance, self.distance + self.tolerance
        if lo < m:
            raise ValueError(f"distance - tolerance = {lo} must be >= motif_len={m} (motifs may not overlap)")
        if hi > self.seq_len - m:
            raise ValueError(
                f"distance + tolerance = {hi} must be <= seq_len - motif_len = {self.seq_len - m}"
            )
        if lo == m and hi == self.seq_len - m:
            raise ValueError("the distance window covers every distance: no wrong-distance decoy fits")
        return self

    def motifs(self) -> tuple[str, str]:
        """Motifs A and B (from ``source_seed``)."""
        return draw_motifs(self.motif_len, self.source_seed)

    def examples(self, split: Split = "train", seed: int = 123) -> MotifDistanceExamples:
        """The ``split`` with labels ``(N,)``, decoy kinds and motif positions (cached)."""
        return _motif_cached(self, split, seed)

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        return self.examples(split, seed).dataset()

    def describe(self) -> str:
        tol = f"±{self.tolerance}" if self.tolerance else ""
        return f"dna_motif_distance(L={self.seq_len}, d={self.distance}{tol}, m={self.motif_len})"


@functools.lru_cache(maxsize=4)
def _motif_cached(cfg: DNAMotifDistanceConfig, split: Split, seed: int) -> MotifDistanceExamples:
    n = cfg.num_train_examples if split == "train" else cfg.num_test_examples
    return motif_distance_examples(
        n, cfg.seq_len, cfg.motifs(), cfg.distance, cfg.tolerance, split_seed(seed, split)
    )


def class_labels(data: SequenceDataset) -> Tensor:
    """``(N,)`` classes of a classification task's dataset (stored at the last position of ``labels``)."""
    return data.labels[:, -1]
