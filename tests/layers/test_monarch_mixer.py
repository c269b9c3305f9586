"""The M2 sequence mixer (``monarch_mixer``) and dimension mixer (``monarch_glu``): every long-convolution
form against the reference, a restatement of M2-BERT's forward (2L-point FFT of the two-sided kernel),
causality of the Monarch evaluation/interpolation form by the Jacobian, the block-diagonal GLU
against its dense equivalent. The generic contract is in ``test_mixer_contract.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import subq
from subq.layers.monarch_glu import BlockdiagLinear, MonarchGLU
from subq.layers.monarch_mixer import MonarchMixer
from tests.conftest import assert_close

D = 16


def mixer(causal: bool, **kw) -> MonarchMixer:
    kw = {"filter_order": 8, "max_seq_len": 64, **kw}
    return MonarchMixer(D, causal=causal, dtype=torch.float64, **kw).eval()


@pytest.mark.parametrize("form", ["fft", "chunk", "monarch"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("T", [1, 12, 48, 100])
def test_every_form_matches_naive(form, causal, T):
    fast = mixer(causal, long_conv_form=form)
    ref = mixer(causal, mode="naive")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, T, D, dtype=torch.float64, requires_grad=True)
    y, y_ref = fast(x), ref(x)
    assert_close(y, y_ref, 1e-10, "forward")
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *fast.parameters()], g)
    want = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    names = ["x", *(n for n, _ in fast.named_parameters())]
    for name, a, b in zip(names, got, want, strict=True):
        assert_close(a, b, 1e-10, f"d{name}")


def _m2_fftconv(v: torch.Tensor, k_fwd: torch.Tensor, k_rev: torch.Tensor, bias: torch.Tensor):
    """M2-BERT's ``HyenaFilter.forward`` with ``fftconv_ref``: ``v [B, d, L]``, taps ``[d, L]``."""
    L = v.shape[-1]
    k = F.pad(k_fwd, (0, L)) + F.pad(k_rev.flip(-1), (L, 0))  # [d, 2L]
    y = torch.fft.irfft(torch.fft.rfft(v, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    return y + v * bias[:, None]


def test_restates_m2_bert_forward():
    T = 20
    m = mixer(False, max_seq_len=T)
    u = torch.randn(2, T, D, dtype=torch.float64)
    # the reference, written out on [B, d, L]
    p = m.in_linear(u).transpose(1, 2)  # [B, 3d, L]
    w = m.short_filter_weight[:, None, :]
    uc = F.conv1d(p, w, m.short_filter_bias, padding=w.shape[-1] - 1, groups=3 * D)[..., :T]
    x1, x2, v = uc.split(D, dim=1)
    pos = torch.arange(T)
    k = m.filter(pos).transpose(-1, -2)  # [2, d, L]
    y = _m2_fftconv(v * x1, k[0], k[1], m.filter_bias) * x2
    k2 = m.filter2(pos).transpose(-1, -2)
    y = y + _m2_fftconv(u.transpose(1, 2), k2[0], k2[1], m.filter2_bias)
    expected = m.out_linear(y.transpose(1, 2))
    assert_close(m(u), expected, 1e-12)


def test_causal_monarch_form_by_jacobian():
    """Output t of the causal mixer (Monarch evaluation/interpolation form) is independent of inputs
    after t: the Jacobian d y_t / d x_s vanishes for s > t (to rounding) and not for s <= t."""
    T = 16
    m = mixer(True, long_conv_form="monarch")
    x = torch.randn(T, D, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda z: m(z[None])[0], x)  # [T, D, T, D]
    J = J.abs().sum((1, 3))  # [T (out), T (in)]
    assert torch.triu(J, diagonal=1).max() < 1e-12 * J.max()
    assert (torch.tril(J) > 0).sum() == T * (T + 1) // 2
    x2 = x.clone()
    x2[9:] += torch.randn(T - 9, D, dtype=torch.float64)
    assert_close(m(x2[None])[0, :9], m(x[None])[0, :9], 1e-13, "perturbing t >= 9")


def test_residual_long_conv_off_and_state_size():
    m = mixer(True, residual_long_conv=False)
    assert not hasattr(m, "filter2")
    assert m.state_size(10) == 3 * D * 3 + D * 10
    assert mixer(True).state_size(1000) == 3 * D * 3 + 2 * D * 63


def test_bad_arguments():
    with pytest.raises(ValueError, match="long_conv_form must be one of"):
        mixer(True, long_conv_form="dense")
    with pytest.raises(ValueError, match="emb_dim must be an odd int"):
        mixer(True, emb_dim=4)
    with pytest.raises(ValueError, match="short_conv_mode must be 'auto', 'torch' or 'triton'"):
        mixer(True, short_conv_mode="cuda")


def _check_triton_form(causal: bool, T: int, tol: float, filter_tol: float | None = None, **form) -> None:
    """A mixer with a Triton ``form`` (in Triton's interpreter on a CPU), float32, against the naive
    layer with the same weights: forward and every gradient (the filters' with ``filter_tol`` when
    given; the filters are PyTorch's unless ``form`` names ``filter_mode``)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"filter_order": 8, "max_seq_len": 64, "device": device}
    fast = MonarchMixer(D, causal=causal, **{"filter_mode": "torch", **form}, **kw).eval()
    ref = MonarchMixer(D, causal=causal, mode="naive", **kw).eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, T, D, device=device, requires_grad=True)
    g = torch.randn(2, T, D, device=device)
    names = ["y", "dx", *(f"d{n}" for n, _ in ref.named_parameters())]

    def outputs_and_grads(m):
        y = m(x)
        return (y, *torch.autograd.grad(y, [x, *m.parameters()], g))

    for name, a, r in zip(names, outputs_and_grads(fast), outputs_and_grads(ref), strict=True):
        filt = filter_tol is not None and name.startswith(("dfilter.", "dfilter2."))
        assert_close(a, r, filter_tol if filt else tol, name)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_triton_filter_matches_naive(causal, one_thread):
    """``filter_mode="triton"``: the fused filter kernels for both filters (and the reverse taps'
    MLP when bidirectional). On a GPU the filter's backward dots run in single TF32
    (``subq/ops/hyena_filter/triton_filter.py``)."""
    filter_tol = 1e-5 if not torch.cuda.is_available() else 5e-3
    _check_triton_form(causal, 40, 1e-5, filter_tol, filter_mode="triton")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_triton_short_convolution_matches_naive(causal, one_thread):
    _check_triton_form(causal, 40, 1e-4, short_conv_mode="triton")
    assert mixer(causal).short_conv_mode == "auto"


@pytest.mark.parametrize(
    "form, tol, causal",
    [
        pytest.param("triton", 1e-4, False, id="tf32x3-bidir"),
        pytest.param("triton_fp16", 3e-3, True, id="fp16-causal", marks=pytest.mark.gpu),  # slow interpreted
    ],
)
def test_triton_long_convolution_matches_naive(form, tol, causal, one_thread):
    """``long_conv_form="triton*"``: the Triton FFT convolution (two-sided as one circular one)."""
    _check_triton_form(causal, 20, tol, long_conv_form=form)


# ---- monarch_glu ----------------------------------------------------------------------------------
def test_blockdiag_linear_is_a_block_diagonal_dense_layer():
    lin = BlockdiagLinear(12, 8, nblocks=4, bias=True, dtype=torch.float64)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    dense = torch.block_diag(*lin.weight)
    assert_close(lin(x), x @ dense.T + lin.bias, 1e-14)
    bound = 1 / (12 / 4) ** 0.5
    assert lin.weight.abs().max() <= bound
    with pytest.raises(ValueError, match="nblocks=5 must divide in_features=12"):
        BlockdiagLinear(12, 8, nblocks=5, bias=False)


def test_monarch_glu_matches_m2_glu_with_dense_equivalents():
    glu = subq.get_channel_mixer("monarch_glu")(D, dtype=torch.float64)
    assert isinstance(glu, MonarchGLU) and glu.d_ff == 4 * D
    x = torch.randn(2, 7, D, dtype=torch.float64)
    w_in = torch.block_diag(*glu.gate_up.weight)  # [2 d_ff, d]
    w_out = torch.block_diag(*glu.fc2.weight)  # [d, d_ff]
    h = x @ w_in.T
    expected = (F.gelu(h[..., : 4 * D]) * h[..., 4 * D :]) @ w_out.T + glu.fc2.bias
    assert_close(glu(x), expected, 1e-13)
    # 4 blocks: a quarter of the dense parameters in the weights
    assert glu.gate_up.weight.numel() == 2 * 4 * D * D // 4
    with pytest.raises(ValueError, match="dividing d_model=16"):
        MonarchGLU(D, nblocks=3)


def test_monarch_glu_with_any_sequence_mixer():
    cfg = subq.models.config.LMConfig(
        vocab_size=50,
        d_model=D,
        n_layers=1,
        mixer={"name": "attention", "num_heads": 2},
        channel_mixer={"name": "monarch_glu", "nblocks": 2},
    )
    lm = subq.models.language_model.LanguageModel(cfg)
    assert lm(torch.randint(0, 50, (2, 9))).shape == (2, 9, 50)
