"""Load a local causal LM with a chosen attention, generate, and time prefill and decode.

The functions behind ``subq hf generate`` and ``subq hf bench``. Models are read from a local folder
only (``local_files_only=True``: nothing is downloaded). A model is loaded once (with SDPA, or eager
if asked) and switched with ``set_attn_implementation``, so dense and HiP timings in one run share the
weights.
"""

from __future__ import annotations

import inspect
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from subq.hf.hip import HIP_DEFAULTS, NAME, check_hip_support, configure_hip

ATTENTIONS = ("subq_hip", "eager", "sdpa")
"""``--attn`` choices: HiP, and the two dense implementations of ``transformers``."""


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` (bfloat16 on CUDA, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"dtype must be auto or one of {sorted(choices)}, got {dtype!r}")
    return choices[dtype]


def set_attention(model, attn: str, **hip) -> None:
    """Switch ``model`` to ``attn`` (one of :data:`ATTENTIONS`); for ``subq_hip`` check that the model
    supports it and set the HiP hyperparameters ``hip`` (names of ``HIP_DEFAULTS``)."""
    if attn not in ATTENTIONS:
        raise ValueError(f"attn must be one of {', '.join(ATTENTIONS)}, got {attn!r}")
    if attn == NAME:
        check_hip_support(model)
        configure_hip(model, **hip)
    model.set_attn_implementation(attn)


def load_causal_lm(path: str | Path, *, attn: str = NAME, device: str = "cpu", dtype: str = "auto", **hip):
    """``AutoModelForCausalLM`` from the local folder ``path`` with attention ``attn``, in eval mode.

    Args:
        path: a folder written by ``save_pretrained`` (no hub download).
        attn: ``subq_hip``, ``eager`` or ``sdpa``.
        device, dtype: where and in which precision (``resolve_dtype``).
        hip: HiP hyperparameters (``mask_k``, ``block_size_q``, ``dense_layers``, ...), for ``subq_hip``.
    """
    from transformers import AutoModelForCausalLM

    unknown = set(hip) - set(HIP_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown HiP arguments {sorted(unknown)}; valid: {sorted(HIP_DEFAULTS)}")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model folder not found: {path} (a local save_pretrained folder)")
    # SDPA unless eager is asked for or the model has no SDPA path: on some transformers versions a model
    # loaded eager keeps building the full [T, T] mask after a switch to SDPA, which then runs unfused
    load = dict(dtype=resolve_dtype(dtype, device), local_files_only=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="eager" if attn == "eager" else "sdpa", **load
        )
    except ValueError:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **load)
    set_attention(model, attn, **hip)
    return model.to(device).eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved in ``path`` (``AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@torch.no_grad()
def generate_ids(model, ids: Tensor, *, max_new_tokens: int) -> Tensor:
    """Greedy continuation of ``ids: [1, T]`` -> the new ids ``[1, <= max_new_tokens]``."""
    ids = ids.to(next(model.parameters()).device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
    )
    return out[:, ids.shape[1] :].cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kwarg(model) -> str:
    """The name under which ``model.forward`` takes the KV cache: ``cache`` in recent ``transformers``,
    ``past_key_values`` before it was renamed."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    """The KV cache a forward pass returned, under either of its ``transformers`` names."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def time_prefill_decode(model, ids: Tensor, *, decode_steps: int = 16, repeats: int = 3) -> dict:
    """Latency of one prompt ``ids: [1, T]``: prefill (median of ``repeats`` forward passes that fill
    a fresh KV cache, logits of the last position only) and greedy decode (mean over ``decode_steps``
    steps after one untimed warm-up step, which compiles kernels; with HiP the mean spans mask
    searches and cached-mask steps).

    Returns ``{"prefill_ms", "decode_ms_per_token", "prefill_runs_ms", "decode_steps_ms",
    "decode_warmup_ms"}``.
    """
    device = next(model.parameters()).device
    ids = ids.to(device)
    prefill, out = [], None
    for _ in range(repeats):
        out = None  # the previous run's cache is freed before the next fills its own
        _sync(device)
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        _sync(device)
        prefill.append(1e3 * (time.perf_counter() - t0))
    cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    cache_kwarg = _cache_kwarg(model)
    steps = []
    for _ in range(decode_steps + 1 if decode_steps else 0):
        _sync(device)
        t0 = time.perf_counter()
        out = model(token, use_cache=True, **{cache_kwarg: cache})
        _sync(device)
        steps.append(1e3 * (time.perf_counter() - t0))
        cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    warmup, steps = (steps[0], steps[1:]) if steps else (float("nan"), [])
    return {
        "prefill_ms": statistics.median(prefill),
        "decode_ms_per_token": statistics.fmean(steps) if steps else float("nan"),
        "prefill_runs_ms": prefill,
        "decode_steps_ms": steps,
        "decode_warmup_ms": warmup,
    }


def bench_attentions(
    model,
    lengths: list[int],
    attns: list[str],
    *,
    decode_steps: int = 16,
    repeats: int = 3,
    seed: int = 0,
    hip: dict | None = None,
    progress=None,
) -> list[dict]:
    """Every length x attention on the same model (switched in place), the same random prompt per
    length (ids drawn from the vocabulary with ``seed``). Rows carry the speedups over the first
    dense attention in ``attns`` at the same length and, on CUDA, the peak memory (``peak_mib``); a
    row that runs out of memory has ``error`` instead of timings. ``progress(row)`` is called after
    each row."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    rows = []
    for T in lengths:
        ids = torch.randint(0, vocab, (1, T), generator=gen)
        base = None
        for attn in attns:
            set_attention(model, attn, **(hip or {}))
            r = {"T": T, "attn": attn}
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                r.update(time_prefill_decode(model, ids, decode_steps=decode_steps, repeats=repeats))
            except torch.OutOfMemoryError:  # a row that does not fit is reported, the others still run
                r["error"] = "out of memory"
            if device.type == "cuda":
                r["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if attn != NAME and base is None and "error" not in r:
                base = r
            rows.append(r)
            if progress is not None:
                progress(r)
        for r in rows[-len(attns) :]:
            if base is not None and "error" not in r:
                r["prefill_speedup"] = base["prefill_ms"] / r["prefill_ms"]
                r["decode_speedup"] = base["decode_ms_per_token"] / r["decode_ms_per_token"]
    return rows
