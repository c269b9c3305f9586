"""The linear-attention mixers ``based`` and ``linear_attention``: state sizes, the layer math against
the op, bidirectional variants, decoding inside a hybrid LanguageModel."""

from __future__ import annotations

import pytest
import torch

import subq
from subq.models import LanguageModel, LMConfig
from subq.ops.linear_attn import naive_linear_attention
from tests.conftest import assert_close


def test_based_state_size_is_constant():
    mixer = subq.get_mixer("based")(64, feature_dim=16, num_heads=4)
    E = 1 + 16 + 16**2
    expected = 4 * (E * 16 + E)
    assert [mixer.state_size(L) for L in (1, 1000, 10**6)] == [expected] * 3
    S, z = mixer.init_state(3)
    assert S.shape == (3, 4, E, 16) and z.shape == (3, 4, E) and S.dtype == torch.float32
    assert expected == S[0].numel() + z[0].numel()


def test_based_360m_layer_state_matches_the_paper():
    """PAPERS.md 6.5: 16 * 64 * 273 + 16 * 273 = 283,920 per layer at d = 1024."""
    mixer = subq.get_mixer("based")(1024, feature_dim=16, num_heads=16, device="meta")
    assert mixer.state_size(2048) == 283_920


def test_linear_attention_state_size():
    mixer = subq.get_mixer("linear_attention")(32, num_heads=2, conv_size=5)
    assert mixer.state_size(7) == 2 * (16 * 16 + 16) + 4 * 32
    state = mixer.init_state(1)
    assert state.S[0].numel() + state.z[0].numel() + state.conv[0].numel() == mixer.state_size(7)
    assert subq.get_mixer("linear_attention")(32, conv_size=0).state_size(7) == 2 * (16 * 16 + 16)


def test_based_layer_is_taylor_linear_attention():
    mixer = subq.get_mixer("based")(16, feature_dim=4, num_heads=2, dtype=torch.float64)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    q = mixer.proj_q(x).view(2, 30, 2, 4)
    k = mixer.proj_k(x).view(2, 30, 2, 4)
    v = mixer.proj_v(x).view(2, 30, 2, 8)
    # the quadratic form without features: A_ts = 1 + s + s^2 / 2, s = q.k / sqrt(f)
    s = torch.einsum("bthf,bshf->bhts", q, k) / 2.0
    A = (1 + s + s**2 / 2).tril()
    o = torch.einsum("bhts,bshd->bthd", A, v) / (A.sum(-1).transpose(1, 2)[..., None] + 1e-12)
    assert_close(mixer(x), mixer.out_proj(o.flatten(2)), 1e-12, "based layer")


def test_linear_attention_layer_is_relu_attention_plus_conv():
    mixer = subq.get_mixer("linear_attention")(
        16, num_heads=2, conv_size=3, causal=False, dtype=torch.float64
    )
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    q, k, v = mixer.qkv_proj(x).chunk(3, dim=-1)
    o, _ = naive_linear_attention(
        q.view(1, 12, 2, 8), k.view(1, 12, 2, 8), v.view(1, 12, 2, 8), feature_map="relu", causal=False
    )
    w, b = mixer.conv.weight[:, 0], mixer.conv.bias  # [d, 3], [d]
    vp = torch.nn.functional.pad(v, (0, 0, 1, 1))
    conv = sum(vp[:, j : j + 12] * w[:, j] for j in range(3)) + b
    assert_close(mixer(x), mixer.out_proj(o.flatten(2) + conv), 1e-12, "LiT layer")


@pytest.mark.parametrize("name", ["based", "linear_attention"])
def test_bidirectional_uses_the_whole_sequence(name):
    cls = subq.get_mixer(name)
    mixer = cls(32, causal=False, dtype=torch.float64, **cls.example_kwargs)
    x = torch.randn(1, 20, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0  # the last token moves the global sums, hence the first output
    assert (mixer(x)[:, 0] - mixer(x2)[:, 0]).abs().max() > 1e-6
    with pytest.raises(RuntimeError, match="needs a causal mixer"):
        mixer.init_state(1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by num_heads=4"):
        subq.get_mixer("based")(30, num_heads=4)
    with pytest.raises(ValueError, match="feature_dim must be a positive int, got 0"):
        subq.get_mixer("based")(32, feature_dim=0)
    with pytest.raises(ValueError, match="conv_size must be odd .* got 4"):
        subq.get_mixer("linear_attention")(32, conv_size=4, causal=False)
    with pytest.raises(ValueError, match="feature_map must be one of .* got 'gelu'"):
        subq.get_mixer("linear_attention")(32, feature_map="gelu")


@pytest.mark.parametrize(
    "mixer",
    [
        [{"name": "based", "feature_dim": 4, "num_heads": 2}, {"name": "sliding_window", "window": 3}],
        {"name": "linear_attention", "num_heads": 2},
    ],
    ids=["based+swa", "lit"],
)
def test_generate_with_decode_matches_full_forward(mixer):
    cfg = dict(vocab_size=97, d_model=32, n_layers=3, channel_mixer="glu", max_seq_len=64, pos_emb="learned")
    model = LanguageModel(LMConfig(**cfg, mixer=mixer)).double().eval()
    ids = torch.randint(97, (2, 7))
    out = model.generate(ids, 12)
    assert out.shape == (2, 19) and torch.equal(out[:, :7], ids)
    # greedy decoding: each new token is the argmax of the full forward at the previous position
    logits = model(out)
    assert torch.equal(logits[:, 6:-1].argmax(-1), out[:, 7:])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["based", "linear_attention"])
def test_triton_decode_matches_forward_on_gpu(name):
    """On CUDA, forward runs the fused chunked kernel and step the fused recurrent one (in place)."""
    kw = {"feature_dim": 16, "num_heads": 4} if name == "based" else {"num_heads": 4}
    layer = subq.layers.get_mixer(name)(128, **kw).cuda()
    x = torch.randn(2, 70, 128, device="cuda")
    y = layer(x)
    y_pre, state = layer.prefill(x[:, :40])
    steps = []
    for t in range(40, 70):
        y_t, state = layer.step(x[:, t], state)
        steps.append(y_t)
    assert_close(torch.cat([y_pre, torch.stack(steps, 1)], 1), y, 1e-4, "prefill + step vs forward")
