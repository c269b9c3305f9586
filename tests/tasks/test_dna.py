"""DNA data: tokenizer ids, FASTA parsing, the Markov source's entropies, the copy and motif tasks."""

from __future__ import annotations

import gzip
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from subq.tasks import IGNORE_INDEX, get_task, list_tasks
from subq.tasks.dna import (
    A_ID,
    MOTIF_DECOYS,
    DNAMarkovCopyConfig,
    DNAMotifDistanceConfig,
    MarkovSource,
    NucleotideTokenizer,
    class_labels,
    copy_layout,
    draw_motifs,
    motif_distance_examples,
    read_fasta,
    tokenize_fasta,
)

# HyenaDNA's CharacterTokenizer(characters=['A', 'C', 'G', 'T', 'N']) vocabulary
REFERENCE_VOCAB = {
    "[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6,
    "A": 7, "C": 8, "G": 9, "T": 10, "N": 11,
}  # fmt: skip


# ---- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_ids_match_hyena_dna():
    tok = NucleotideTokenizer()
    assert tok.vocab_size == len(REFERENCE_VOCAB) == 12
    assert tok.padded_vocab_size(8) == 16 and tok.padded_vocab_size(1) == 12
    assert tok.encode("ACGTN").tolist() == [REFERENCE_VOCAB[c] for c in "ACGTN"]
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (4, 1, 6)
    for name, i in REFERENCE_VOCAB.items():
        assert tok.decode([i]) == name


def test_tokenizer_case_insensitive_and_eos():
    tok = NucleotideTokenizer()
    assert torch.equal(tok.encode("acgtn"), tok.encode("ACGTN"))
    ids = tok.encode("gattaca", add_eos=True)
    assert ids.dtype == torch.int64 and ids.tolist()[-1] == 1
    assert tok.decode(ids) == "GATTACA[SEP]" and tok.decode(ids, skip_special=True) == "GATTACA"


def test_tokenizer_reads_other_characters_as_n_and_counts_them():
    tok = NucleotideTokenizer()
    seq = "ACRY-*9 é\tT"  # IUPAC codes, gap, stop, digit, space, non-ASCII, tab
    ids, replaced = tok.encode_with_count(seq)
    assert len(ids) == len(seq)
    assert tok.decode(ids) == "ACNNNNNNNNT" and replaced == 8
    with pytest.warns(UserWarning, match="8 of 11 characters"):
        tok.encode(seq)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("ACGTNacgtn")  # N itself is not a replacement


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="token id 13"):
        NucleotideTokenizer().decode([7, 13])


# ---- FASTA ---------------------------------------------------------------------------------------

FASTA = """\
;an old-style comment
>chr1 first record, wrapped at 5
ACGTA
CGTAC\r
GG

>chr2
nnnnacgt
>chr3 weird characters
ACRYGT*
"""


def test_fasta_records_wrapping_and_headers(tmp_path):
    path = tmp_path / "genome.fa"
    path.write_text(FASTA)
    recs = read_fasta(path)
    assert [r.name for r in recs] == ["chr1", "chr2", "chr3"]
    assert recs[0].description == "chr1 first record, wrapped at 5"
    assert [r.sequence for r in recs] == ["ACGTACGTACGG", "nnnnacgt", "ACRYGT*"]


@pytest.mark.parametrize("name", ["genome.fa.gz", "genome.fasta"], ids=["gz-suffix", "gz-without-suffix"])
def test_fasta_gzip_recognised_by_content(tmp_path, name):
    plain, packed = tmp_path / "plain.fa", tmp_path / name
    plain.write_text(FASTA)
    packed.write_bytes(gzip.compress(FASTA.encode()))
    assert read_fasta(packed) == read_fasta(plain)


def test_tokenize_fasta_counts_replacements_without_stopping(tmp_path):
    path = tmp_path / "genome.fa.gz"
    path.write_bytes(gzip.compress(FASTA.encode() + ">chr4\nAC\xff\xfeGT\n".encode("latin-1")))
    with pytest.warns(UserWarning, match=r"5 characters .* in 2 records: chr3 \(3\), chr4 \(2\)"):
        out = tokenize_fasta(path, add_eos=True)
    tok = NucleotideTokenizer()
    assert [name for name, _ in out] == ["chr1", "chr2", "chr3", "chr4"]
    assert tok.decode(out[1][1]) == "NNNNACGT[SEP]"
    assert tok.decode(out[2][1], skip_special=True) == "ACNNGTN"
    assert tok.decode(out[3][1], skip_special=True) == "ACNNGT"  # each undecodable byte is one N


@pytest.mark.parametrize(
    "text,match",
    [
        (">chr1\nACGT\n>empty one\n\n>chr3\nAC\n", r"record 'empty' \(header on line 3\) has no sequence"),
        (">chr1\nACGT\n>last\n", "record 'last'"),
        ("ACGT\n>chr1\nAC\n", "line 1: sequence data before the first '>' header"),
        (">chr1\nACGT\n>\nAC\n", "line 3: empty FASTA header"),
        ("", "no FASTA records"),
    ],
    ids=["empty-middle", "empty-last", "no-header", "blank-header", "empty-file"],
)
def test_fasta_errors_name_the_record(tmp_path, text, match):
    path = tmp_path / "bad.fa"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_fasta(path)


def test_fasta_max_len_names_the_limit(tmp_path):
    path = tmp_path / "long.fa"
    path.write_text(">short\nACGT\n>long\nACGTACGT\nACGTACGT\n")
    assert len(read_fasta(path, max_len=16)) == 2
    with pytest.raises(ValueError, match=r"record 'long' is longer than max_len=10 bases"):
        read_fasta(path, max_len=10)


# ---- Markov source -------------------------------------------------------------------------------


def _plugin_conditional_entropy(x: np.ndarray, n: int) -> float:
    """Plug-in estimate of H(X_t | previous n bases) from (n+1)-gram counts over the rows of ``x``."""
    codes = np.zeros((x.shape[0], x.shape[1] - n), dtype=np.int64)
    for j in range(n + 1):
        codes = codes * 4 + x[:, j : j + codes.shape[1]]
    counts = np.bincount(codes.ravel(), minlength=4 ** (n + 1)).reshape(-1, 4).astype(float)
    ctx = counts.sum(1)
    p = counts / np.maximum(ctx, 1)[:, None]
    h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    return float((ctx / ctx.sum()) @ h)


@pytest.mark.parametrize("order", [0, 1, 3], ids=lambda k: f"k{k}")
def test_entropy_rate_matches_a_long_sample(order):
    src = MarkovSource.random(order, seed=11, concentration=0.4)
    pi = src.stationary
    assert pi.min() >= 0 and abs(pi.sum() - 1) < 1e-12
    x = src.sample(200, 5000, seed=3)  # 1M bases
    for j in range(order + 2):
        est, exact = _plugin_conditional_entropy(x, j), src.conditional_entropy(j)
        assert abs(est - exact) < 5e-3, f"H(X | {j} previous): sample {est:.5f}, exact {exact:.5f}"
    assert src.conditional_entropy(order + 5) == src.entropy_rate < np.log(4)


def test_stationary_is_invariant_under_one_step():
    src = MarkovSource.random(2, seed=5)
    x = src.sample(4000, 40, seed=1)  # chains start stationary: every window has the same law
    first = np.bincount(x[:, 0] * 4 + x[:, 1], minlength=16) / len(x)
    late = np.bincount(x[:, 30] * 4 + x[:, 31], minlength=16) / len(x)
    assert np.abs(first - src.stationary).max() < 0.02 and np.abs(late - src.stationary).max() < 0.02


# ---- dna_markov_copy -----------------------------------------------------------------------------

COPY = dict(
    seq_len=1024, order=3, copy_distance=512, segment_len=32, copy_period=64, num_train_examples=300,
    num_test_examples=20,
)  # fmt: skip


def _bases(data) -> np.ndarray:
    """``(N, L + 1)`` base codes: the first input then every label."""
    return (torch.cat([data.inputs[:, :1], data.labels], 1) - A_ID).numpy()


def test_copy_task_shapes_and_determinism():
    cfg = DNAMarkovCopyConfig(**COPY)
    a, b = cfg.build("train"), DNAMarkovCopyConfig(**COPY).build("train")
    assert a.inputs.shape == a.labels.shape == (300, 1024) and a.inputs.dtype == torch.int64
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.inputs[:, 1:], a.labels[:, :-1]), "labels are the next base"
    assert ((a.inputs >= A_ID) & (a.inputs < A_ID + 4)).all(), "only A, C, G, T"
    assert not torch.equal(cfg.build("test").inputs, a.inputs[:20])
    assert not torch.equal(cfg.build("train", seed=7).inputs, a.inputs)
    other_source = DNAMarkovCopyConfig(**COPY, source_seed=1).source().transition
    assert not np.allclose(other_source, cfg.source().transition)


def test_copy_structure_is_there():
    cfg = DNAMarkovCopyConfig(**COPY)
    x, d = _bases(cfg.build("train")), cfg.copy_distance
    offsets = copy_layout(cfg.seq_len + 1, d, cfg.segment_len, cfg.copy_period)
    copied = np.flatnonzero(offsets >= 0)
    assert copied.min() == d and len(copied) == 8 * 32 + 1  # segments at 512, 576, ..., 960, and 1024
    assert (x[:, copied] == x[:, copied - d]).all()
    fresh = np.flatnonzero(offsets[d:] < 0) + d
    match = (x[:, fresh] == x[:, fresh - d]).mean()
    assert match < 0.45, f"fresh bases repeat the base d back {match:.2f} of the time"


def _stationary_logp(src: MarkovSource, window: np.ndarray) -> np.ndarray:
    """``log P(last base | the others)`` for ``window: (..., n + 1)`` under the stationary chain."""
    n = window.shape[-1] - 1
    if n >= src.order:
        k = src.order
        ctx = window[..., n - k : n].astype(np.int64) @ (4 ** np.arange(k - 1, -1, -1))
        return np.log(src.transition[ctx, window[..., -1]])
    num = window.astype(np.int64) @ (4 ** np.arange(n, -1, -1))
    den = window[..., :-1].astype(np.int64) @ (4 ** np.arange(n - 1, -1, -1))
    return np.log(src.block_probs(n + 1)[num]) - np.log(src.block_probs(n)[den])


def test_entropy_matches_the_oracle_and_short_context_losses():
    cfg = DNAMarkovCopyConfig(**COPY)
    src, ent = cfg.source(), cfg.entropy()
    x = _bases(cfg.build("train"))
    offsets = copy_layout(cfg.seq_len + 1, cfg.copy_distance, cfg.segment_len, cfg.copy_period)
    k = src.order
    optimal = np.zeros((x.shape[0], cfg.seq_len))
    short = np.zeros_like(optimal)
    for t in range(1, cfg.seq_len + 1):
        seen = min(t, k) if offsets[t] < 0 else min(offsets[t], k)  # bases a short model can use
        short[:, t - 1] = -_stationary_logp(src, x[:, t - seen : t + 1])
        if offsets[t] < 0:
            optimal[:, t - 1] = -_stationary_logp(src, x[:, t - min(t, k) : t + 1])
    for what, loss, exact in [("optimal", optimal, ent.optimal), ("short", short, ent.short_context)]:
        per_example = loss.mean(1)
        se = per_example.std() / np.sqrt(len(per_example))
        assert abs(per_example.mean() - exact) < 4 * se + 1e-3, (
            f"{what}: sample {per_example.mean():.4f} vs exact {exact:.4f} (se {se:.4f})"
        )
    assert ent.copy_fraction == pytest.approx(257 / 1024)
    assert ent.optimal < ent.short_context
    assert ent.optimal == pytest.approx(ent.entropy_rate * (1 - ent.copy_fraction), abs=2e-3)
    assert ent.short_context_perplexity == pytest.approx(np.exp(ent.short_context))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(copy_distance=4096), "copy_distance=4096 must be <= seq_len"),
        (dict(copy_distance=1000), "multiple of copy_period"),
        (dict(order=4, segment_len=3), "segment_len=3 must be >= order=4"),
        (dict(segment_len=127), "copy_period=128 must exceed segment_len=127"),
        (dict(vocab_size=8), "vocab_size"),
        (dict(bogus=1), "bogus"),
    ],
)
def test_copy_config_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        DNAMarkovCopyConfig(**kwargs)


def test_copy_distance_100k_builds():
    cfg = DNAMarkovCopyConfig(
        seq_len=131072, copy_distance=98304, segment_len=512, copy_period=1024, num_train_examples=4
    )
    x = _bases(cfg.build("train"))
    assert x.shape == (4, 131073) and (x[:, 98304:98816] == x[:, :512]).all()


# ---- dna_motif_distance --------------------------------------------------------------------------

MOTIF = dict(
    seq_len=512, distance=200, tolerance=3, motif_len=8, num_train_examples=400, num_test_examples=40
)


def _occurrences(ids: torch.Tensor, motif: str) -> list[list[int]]:
    text = ["".join("ACGT"[b] for b in row) for row in (ids - A_ID).tolist()]
    return [[i for i in range(len(t)) if t.startswith(motif, i)] for t in text]


def test_motifs_never_overlap():
    for seed in range(20):
        a, b = draw_motifs(8, seed)
        assert a != b
        for x in (a, b):
            for y in (a, b):
                assert all(x[s:] != y[: 8 - s] for s in range(1, 8)), (x, y)


def test_motif_task_balance_and_determinism():
    cfg = DNAMotifDistanceConfig(**MOTIF)
    ex = cfg.examples("train")
    assert ex.ids.shape == (400, 512) and ex.label.shape == (400,)
    assert ex.label.sum() == 200
    assert Counter(ex.kind) == {"positive": 200, **{k: 50 for k in MOTIF_DECOYS}}
    assert [k == "positive" for k in ex.kind] == ex.label.bool().tolist()
    again = DNAMotifDistanceConfig(**MOTIF).examples("train")
    assert torch.equal(again.ids, ex.ids) and torch.equal(again.label, ex.label)
    assert not torch.equal(cfg.examples("test").ids, ex.ids[:40])
    data = cfg.build("train")
    assert data.inputs.shape == data.labels.shape == (400, 512)
    assert torch.equal(class_labels(data), ex.label)
    assert (data.labels[:, :-1] == IGNORE_INDEX).all()
    assert cfg.kind == "classify" and cfg.num_classes == 2


def test_motif_placement_matches_the_label():
    cfg = DNAMotifDistanceConfig(**MOTIF)
    ex = cfg.examples("train")
    motif_a, motif_b = cfg.motifs()
    occ_a, occ_b = _occurrences(ex.ids, motif_a), _occurrences(ex.ids, motif_b)
    lo, hi = cfg.distance - cfg.tolerance, cfg.distance + cfg.tolerance
    near_misses = 0
    for i, kind in enumerate(ex.kind):
        sa, sb = int(ex.start_a[i]), int(ex.start_b[i])
        assert occ_a[i] == ([sa] if sa >= 0 else []), f"example {i} ({kind}): A at {occ_a[i]}"
        assert occ_b[i] == ([sb] if sb >= 0 else []), f"example {i} ({kind}): B at {occ_b[i]}"
        if kind == "positive":
            assert lo <= sb - sa <= hi
        elif kind == "wrong_distance":
            assert sb - sa >= cfg.motif_len and not lo <= sb - sa <= hi
            near_misses += abs(sb - sa - cfg.distance) <= cfg.tolerance + cfg.motif_len
        elif kind == "swapped":
            assert lo <= sa - sb <= hi
        else:
            assert (sa < 0) == (kind == "only_b") and (sb < 0) == (kind == "only_a")
    assert 10 <= near_misses <= 45, f"{near_misses} of 50 wrong-distance decoys are near misses"


def test_motif_distance_100k():
    motifs = draw_motifs(10, seed=0)
    ex = motif_distance_examples(16, 131072, motifs, distance=100_000, tolerance=0, seed=1)
    pos = ex.label.bool()
    assert (ex.start_b[pos] - ex.start_a[pos] == 100_000).all()
    assert ex.label.sum() == 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(distance=6), "distance - tolerance = 6 must be >= motif_len=8"),
        (dict(distance=1020), "must be <= seq_len - motif_len = 1016"),
        (dict(seq_len=32, distance=16, tolerance=8), "covers every distance"),
        (dict(motif_len=1), "motif_len"),
    ],
)
def test_motif_config_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        DNAMotifDistanceConfig(**kwargs)


# ---- registry and trainer ------------------------------------------------------------------------


def test_registered():
    assert {"dna_markov_copy", "dna_motif_distance"} <= set(list_tasks())
    assert get_task("dna_markov_copy") is DNAMarkovCopyConfig
    assert get_task("dna_motif_distance") is DNAMotifDistanceConfig


def test_trainer_runs_the_copy_task_and_refuses_classification(one_thread):
    from subq.train import TrainConfig, train

    small = dict(seq_len=64, order=2, copy_distance=32, segment_len=8, copy_period=16)
    cfg = TrainConfig(
        model={"d_model": 32, "n_layers": 1, "mixer": "attention"},
        task={"name": "dna_markov_copy", **small, "num_train_examples": 32, "num_test_examples": 8},
        batch_size=8, max_steps=2, device="cpu", progress=False,
    )  # fmt: skip
    assert cfg.model.vocab_size == 12
    result = train(cfg)
    assert result.steps == 2 and result.final_accuracy is not None
    motif = TrainConfig(
        model={"d_model": 32, "n_layers": 1}, task={"name": "dna_motif_distance"}, max_steps=1, device="cpu"
    )
    with pytest.raises(ValueError, match="kind 'classify'"):
        train(motif)
