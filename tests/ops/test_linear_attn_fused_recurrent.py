"""The fused recurrent (decode) Triton kernel against ``naive_recurrent_linear_attention``: every feature
map, odd head dims, several value blocks, the in-place state, NaN-filled outputs, bad sizes.

Runs on CUDA when there is a device, else on CPU through the Triton interpreter::

    TRITON_INTERPRET=1 python -m pytest -q -n 0 tests/ops/test_linear_attn_fused_recurrent.py
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from subq.ops.linear_attn import FEATURE_MAPS, feature_dim, naive_recurrent_linear_attention  # noqa: E402
from subq.ops.linear_attn.fused_recurrent import (  # noqa: E402
    fused_recurrent_linear_attention,
    fused_recurrent_linear_attention_step,
)
from tests.conftest import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.interpret,
    pytest.mark.skipif(
        DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
        reason="needs CUDA, or TRITON_INTERPRET=1 to run the kernel through the Triton interpreter",
    ),
    pytest.mark.usefixtures("one_thread"),
]
TOL_O = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-5}
TOL_STATE = 1e-5  # float32 accumulation for every input dtype


def _inputs(B, T, H, D, Dv, fm, dtype, positive=False):
    """q, k, v `[B, T, H, *]` and a float32 initial state with ``z_0 >= 1`` (normaliser away from 0)."""
    q, k, v = (torch.randn(B, T, H, d, device=DEVICE).to(dtype) for d in (D, D, Dv))
    if positive:
        q, k = q.abs(), k.abs()
    E = feature_dim(fm, D)
    S0 = torch.randn(B, H, E, Dv, device=DEVICE)
    z0 = torch.rand(B, H, E, device=DEVICE) + 1.0
    return q, k, v, (S0, z0)


def _check(q, k, v, state, what, **kw):
    """The looped fused step against the recurrent reference: o, the final state, the caller's state."""
    S0, z0 = (x.clone() for x in state)
    o, (S, z) = fused_recurrent_linear_attention(q, k, v, initial_state=state, output_final_state=True, **kw)
    ref_o, (ref_S, ref_z) = naive_recurrent_linear_attention(
        q, k, v, initial_state=state, output_final_state=True, **kw
    )
    assert o.dtype == q.dtype and S.dtype == z.dtype == torch.float32
    assert_close(o, ref_o, TOL_O[q.dtype], f"{what}: o")
    assert_close(S, ref_S, TOL_STATE, f"{what}: S")
    assert_close(z, ref_z, TOL_STATE, f"{what}: z")
    assert torch.equal(state[0], S0) and torch.equal(state[1], z0), f"{what}: initial_state was modified"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 3], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("Dv", [3, 8, 64], ids=lambda d: f"Dv{d}")
@pytest.mark.parametrize("D", [4, 5, 16], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("fm", list(FEATURE_MAPS))
def test_matches_recurrent_reference(fm, D, Dv, T, dtype):
    B, H = 2, 2
    q, k, v, state = _inputs(B, T, H, D, Dv, fm, dtype)
    # identity features can put phi(q).z near zero: compare it unnormalised (test_normalize_false too)
    _check(q, k, v, state, f"{fm} B{B}-T{T}-H{H}-D{D}-Dv{Dv}", feature_map=fm, normalize=fm != "identity")


@pytest.mark.parametrize("fm", list(FEATURE_MAPS))
def test_normalize_false_and_zero_state(fm):
    q, k, v, _ = _inputs(1, 3, 3, 5, 7, fm, torch.float32)
    o, (S, z) = fused_recurrent_linear_attention(
        q, k, v, feature_map=fm, normalize=False, output_final_state=True
    )
    ref_o, (ref_S, ref_z) = naive_recurrent_linear_attention(
        q, k, v, feature_map=fm, normalize=False, output_final_state=True
    )
    assert_close(o, ref_o, TOL_O[torch.float32], f"{fm}: o")
    assert_close(S, ref_S, TOL_STATE, f"{fm}: S")
    assert_close(z, ref_z, TOL_STATE, f"{fm}: z")


@pytest.mark.parametrize("fm", list(FEATURE_MAPS))
def test_scale_and_eps(fm):
    q, k, v, state = _inputs(2, 2, 2, 5, 8, fm, torch.float32, positive=fm == "identity")
    _check(q, k, v, state, fm, feature_map=fm, scale=0.37, eps=0.5)


def test_identity_normalized_positive_inputs():
    q, k, v, state = _inputs(2, 3, 2, 16, 8, "identity", torch.float32, positive=True)
    _check(q, k, v, state, "identity", feature_map="identity")


@pytest.mark.parametrize(
    "fm, D, Dv, block_v",
    [("taylor", 5, 8, 4), ("taylor", 4, 200, None), ("elu_plus_one", 16, 130, 32), ("relu", 5, 8, 1)],
    ids=lambda x: str(x),
)
def test_several_value_blocks(fm, D, Dv, block_v):
    """``D_v`` split over programs: ``z`` is then updated by the second kernel, once."""
    B, H = 2, 2
    q, k, v, state = _inputs(B, 1, H, D, Dv, fm, torch.float32)
    S, z = (x.clone() for x in state)
    out = torch.full((B, H, Dv), float("nan"), device=DEVICE)
    o, _ = fused_recurrent_linear_attention_step(
        q[:, 0], k[:, 0], v[:, 0], (S, z), feature_map=fm, block_v=block_v, out=out
    )
    ref_o, (ref_S, ref_z) = naive_recurrent_linear_attention(
        q, k, v, feature_map=fm, initial_state=state, output_final_state=True
    )
    assert o is out
    assert_close(o, ref_o[:, 0], TOL_O[torch.float32], "o")
    assert_close(S, ref_S, TOL_STATE, "S")
    assert_close(z, ref_z, TOL_STATE, "z")


@pytest.mark.parametrize("fm", list(FEATURE_MAPS))
def test_step_updates_state_in_place_and_writes_every_output(fm):
    B, H, D, Dv = 3, 2, 5, 9
    q, k, v, state = _inputs(B, 1, H, D, Dv, fm, torch.bfloat16, positive=fm == "identity")
    S, z = (x.clone() for x in state)
    out = torch.full((B, H, Dv), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    o, (S_ret, z_ret) = fused_recurrent_linear_attention_step(
        q[:, 0], k[:, 0], v[:, 0], (S, z), feature_map=fm, out=out
    )
    assert o is out and S_ret is S and z_ret is z
    ref_o, (ref_S, ref_z) = naive_recurrent_linear_attention(
        q, k, v, feature_map=fm, initial_state=state, output_final_state=True
    )
    assert_close(o, ref_o[:, 0], TOL_O[torch.bfloat16], "o")
    assert_close(S, ref_S, TOL_STATE, "S in place")
    assert_close(z, ref_z, TOL_STATE, "z in place")
    # a second step continues from the updated state; o is allocated by the op this time
    q2, k2, v2, _ = _inputs(B, 1, H, D, Dv, fm, torch.bfloat16, positive=fm == "identity")
    o2, _ = fused_recurrent_linear_attention_step(q2[:, 0], k2[:, 0], v2[:, 0], (S, z), feature_map=fm)
    ref_o2, _ = naive_recurrent_linear_attention(q2, k2, v2, feature_map=fm, initial_state=(ref_S, ref_z))
    assert_close(o2, ref_o2[:, 0], TOL_O[torch.bfloat16], "second step o")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
def test_other_input_dtypes(dtype):
    q, k, v, state = _inputs(1, 2, 2, 4, 6, "taylor", dtype)
    _check(q, k, v, state, str(dtype), feature_map="taylor")


@pytest.mark.parametrize(
    "fm, D, Dv", [("taylor", 32, 5), ("relu", 128, 256)], ids=["taylor-D32", "relu-D128-Dv256"]
)
def test_largest_sizes(fm, D, Dv):
    q, k, v, state = _inputs(1, 1, 1, D, Dv, fm, torch.float32)
    _check(q, k, v, state, f"{fm} D{D} Dv{Dv}", feature_map=fm)


def test_bad_sizes_raise():
    def step(D=4, Dv=8, fm="taylor", B=1, H=2, state=None, **kw):
        q, k, v = (torch.randn(B, H, d, device=DEVICE) for d in (D, D, Dv))
        E = feature_dim(fm, D)
        if state is None:
            state = (torch.zeros(B, H, E, Dv, device=DEVICE), torch.zeros(B, H, E, device=DEVICE))
        return fused_recurrent_linear_attention_step(q, k, v, state, feature_map=fm, **kw)

    with pytest.raises(ValueError, match="D <= 32"):
        step(D=33)
    for fm in ("relu", "elu_plus_one", "identity"):
        with pytest.raises(ValueError, match="D <= 128"):
            step(D=129, fm=fm)
    with pytest.raises(ValueError, match="D_v <= 256"):
        step(Dv=257)
    with pytest.raises(ValueError, match="feature_map"):
        step(fm=torch.exp)
    with pytest.raises(ValueError, match="state S must have shape"):
        step(state=(torch.zeros(1, 2, 20, 8, device=DEVICE), torch.zeros(1, 2, 21, device=DEVICE)))
    with pytest.raises(ValueError, match="float32"):
        step(state=(torch.zeros(1, 2, 21, 8, device=DEVICE).bfloat16(), torch.zeros(1, 2, 21, device=DEVICE)))
    with pytest.raises(ValueError, match="contiguous"):
        S = torch.zeros(1, 2, 8, 21, device=DEVICE).transpose(-1, -2)
        step(state=(S, torch.zeros(1, 2, 21, device=DEVICE)))
    with pytest.raises(ValueError, match="out must be"):
        step(out=torch.empty(1, 2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="block_v"):
        step(block_v=48)
    with pytest.raises(ValueError, match=r"\[B, H, D\]"):
        fused_recurrent_linear_attention_step(*(torch.randn(1, 1, 2, 4),) * 3, (None, None))
    with pytest.raises(ValueError, match="D_v <= 256"):
        fused_recurrent_linear_attention(*(torch.randn(1, 2, 1, 4),) * 2, torch.randn(1, 2, 1, 300))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "fm, B, H, D, Dv", [("taylor", 8, 16, 16, 64), ("taylor", 2, 4, 32, 256), ("relu", 4, 8, 128, 100)]
)
def test_model_sizes_on_gpu(fm, B, H, D, Dv):
    q, k, v, state = _inputs(B, 4, H, D, Dv, fm, torch.bfloat16)
    _check(q, k, v, state, f"{fm} B{B}-H{H}-D{D}-Dv{Dv}", feature_map=fm)
