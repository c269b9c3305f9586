"""Entry registration and the built-in entries' FLOP and byte counts.

python -m pytest tests/bench/test_registry.py -q
"""

from __future__ import annotations

import pytest
import torch

from subq.bench import BenchShape, get_bench, list_benches, qkv_inputs, qkvo_bytes, register_bench, registry
from subq.bench.entries import causal_attention_flops, sliding_window_flops
from subq.ops.attention import naive_attention


def _shape(T, window=None, dtype=torch.bfloat16):
    params = {} if window is None else {"window": window}
    return BenchShape(2, T, 4, 64, dtype, torch.device("cpu"), params)


def test_builtin_entries_are_registered():
    assert {"attention", "sliding_window"} <= set(list_benches())
    sw = get_bench("sliding_window")
    assert set(sw.modes) == {"torch", "triton"}
    assert sw.params == {"window": 256}
    assert "triton" in sw.cuda_only


def test_unknown_entry_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: .*attention.*sliding_window"):
        get_bench("no_such_entry")


def test_flop_and_byte_counts():
    assert causal_attention_flops(_shape(1024)) == 4 * 2 * 4 * 64 * 1024 * 1024 / 2
    # the band minus its starting triangle; equals causal attention once the window covers T
    assert sliding_window_flops(_shape(1024, window=256)) == 4 * 2 * 4 * 64 * (1024 * 256 - 256 * 256 / 2)
    assert sliding_window_flops(_shape(1024, window=4096)) == causal_attention_flops(_shape(1024))
    assert qkvo_bytes(_shape(1024)) == 4 * 2 * 1024 * 4 * 64 * 2
    assert qkvo_bytes(_shape(1024, dtype=torch.float32)) == 2 * qkvo_bytes(_shape(1024))


def test_qkv_inputs_follow_the_shape():
    x = qkv_inputs(_shape(10))
    assert sorted(x) == ["k", "q", "v"]
    assert all(t.shape == (2, 10, 4, 64) and t.dtype == torch.bfloat16 for t in x.values())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "Bad-Name"}, ValueError, "lower_snake_case"),
        ({"modes": {}}, ValueError, "modes"),
        ({"params": {"window": None}}, TypeError, r"params\['window'\]"),
        ({"gate_max_T": 0}, ValueError, "gate_max_T"),
        ({"gate_tol": {"nope": 1e-3}}, ValueError, "gate_tol names modes it does not have: nope"),
    ],
    ids=["name", "no-modes", "param-type", "gate-cap", "gate-tol-mode"],
)
def test_register_bench_validates(monkeypatch, kwargs, error, match):
    monkeypatch.setattr(registry, "BENCHES", dict(registry.BENCHES))
    args = {
        "name": "ok_name",
        "modes": {"torch": naive_attention},
        "reference": naive_attention,
        "flops": causal_attention_flops,
        "bytes": qkvo_bytes,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        register_bench(args.pop("name"), **args)(qkv_inputs)


def test_name_clash_is_rejected(monkeypatch):
    monkeypatch.setattr(registry, "BENCHES", dict(registry.BENCHES))
    with pytest.raises(ValueError, match="already registered"):
        register_bench(
            "attention",
            modes={"torch": naive_attention},
            reference=naive_attention,
            flops=causal_attention_flops,
            bytes=qkvo_bytes,
        )(lambda s: qkv_inputs(s))
