"""Quadratic neurons: ReLinear starts exactly linear, the forward formula, gradients, the lr split, the
``quadratic`` channel mixer. Run: ``python -m pytest tests/layers/test_quadratic.py -q``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import subq
from subq.layers import ChannelMixerConfig, get_channel_mixer
from subq.layers.channel import MLP
from subq.layers.quadratic import (
    QuadraticConv2d,
    QuadraticLinear,
    QuadraticMLP,
    quadratic_parameters,
    relinear_param_groups,
)
from tests.conftest import assert_close

torch.set_num_threads(1)


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 5, 7)], ids=["x7", "3x7", "2x5x7"])
def test_linear_starts_exactly_linear(shape, bias):
    layer = QuadraticLinear(7, 11, bias=bias)
    x = torch.randn(*shape) * 3
    expected = F.linear(x, layer.r.weight, layer.r.bias)
    out = layer(x)
    assert out.shape == (*shape[:-1], 11)
    assert torch.equal(out, expected), f"max diff {(out - expected).abs().max():.3e}"
    assert layer.r.weight.abs().sum() > 0, "r must be initialised like nn.Linear, not zero"


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)], ids=["s1-p1", "s2-p0"])
def test_conv_starts_exactly_linear(stride, padding):
    layer = QuadraticConv2d(3, 5, 3, stride=stride, padding=padding)
    x = torch.randn(2, 3, 9, 7)
    expected = F.conv2d(x, layer.r.weight, layer.r.bias, stride=stride, padding=padding)
    assert torch.equal(layer(x), expected)


def test_linear_forward_matches_formula():
    layer = QuadraticLinear(6, 4).double()
    _randomise(layer)
    x = torch.randn(5, 6, dtype=torch.float64)
    r, g, b = layer.r, layer.g, layer.b
    expected = (x @ r.weight.T + r.bias) * (x @ g.weight.T + g.bias) + (x * x) @ b.weight.T + b.bias
    assert_close(layer(x), expected, 1e-12, "QuadraticLinear forward")


def test_conv_forward_matches_formula():
    layer = QuadraticConv2d(2, 3, 3, padding=1).double()
    _randomise(layer)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    r, g, b = layer.r, layer.g, layer.b
    expected = F.conv2d(x, r.weight, r.bias, padding=1) * F.conv2d(x, g.weight, g.bias, padding=1)
    expected = expected + F.conv2d(x * x, b.weight, b.bias, padding=1)
    assert_close(layer(x), expected, 1e-12, "QuadraticConv2d forward")


def test_gradients_reach_quadratic_weights_at_relinear_init():
    layer = QuadraticLinear(6, 4).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    v = torch.randn(8, 4, dtype=torch.float64)
    (layer(x) * v).sum().backward()
    r_out = (x @ layer.r.weight.T + layer.r.bias).detach()
    # d/dW_g of sum(v * r(x) * (W_g x + b_g)) = (v * r(x))^T x; d/dW_b = v^T (x * x)
    assert_close(layer.g.weight.grad, (v * r_out).T @ x, 1e-12, "grad W_g")
    assert_close(layer.g.bias.grad, (v * r_out).sum(0), 1e-12, "grad b_g")
    assert_close(layer.b.weight.grad, v.T @ (x * x), 1e-12, "grad W_b")
    assert_close(layer.b.bias.grad, v.sum(0), 1e-12, "grad c")
    assert_close(layer.r.weight.grad, v.T @ x, 1e-12, "grad W_r (g = 1 at init)")


def test_conv_gradients_reach_quadratic_weights():
    layer = QuadraticConv2d(2, 3, 3, padding=1)
    layer(torch.randn(2, 2, 5, 5)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reached {name}"


def test_param_groups_split_exactly_the_quadratic_parameters():
    quad_lin = QuadraticLinear(4, 8)
    quad_conv = QuadraticConv2d(1, 2, 3, bias=False)
    model = nn.ModuleDict({"a": quad_lin, "a_again": quad_lin, "conv": quad_conv, "head": nn.Linear(8, 3)})
    expected_quadratic = {
        id(p) for p in (quad_lin.g.weight, quad_lin.g.bias, quad_lin.b.weight, quad_lin.b.bias)
    } | {id(quad_conv.g.weight), id(quad_conv.g.bias), id(quad_conv.b.weight)}

    groups = relinear_param_groups(model, 0.1)
    assert [g["name"] for g in groups] == ["linear", "quadratic"]
    linear, quadratic = groups
    assert {id(p) for p in quadratic["params"]} == expected_quadratic
    assert len(quadratic["params"]) == len(expected_quadratic), "a shared layer must be listed once"
    assert {id(p) for p in linear["params"]} == {id(p) for p in model.parameters()} - expected_quadratic
    assert linear["lr"] == 0.1
    assert quadratic["lr"] == pytest.approx(1e-5), "reference qtrainer_10_5.py: lr 0.1, lr_gb 1e-5"
    assert relinear_param_groups(model, 0.2, quadratic_lr_scale=0.5)[1]["lr"] == pytest.approx(0.1)
    assert {id(p) for p in quadratic_parameters(model)} == expected_quadratic


def test_param_groups_drive_an_optimizer():
    model = nn.Sequential(QuadraticLinear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    frozen = {id(p): p.detach().clone() for p in quadratic_parameters(model)}
    w_r = model[0].r.weight.detach().clone()
    opt = torch.optim.SGD(relinear_param_groups(model, 0.1, quadratic_lr_scale=0.0), lr=0.1)
    model(torch.randn(16, 4)).square().sum().backward()
    opt.step()
    for p in quadratic_parameters(model):
        assert p.grad.abs().sum() > 0
        assert torch.equal(p, frozen[id(p)]), "quadratic_lr_scale=0 must leave the quadratic weights alone"
    assert not torch.equal(model[0].r.weight, w_r), "the linear part must train at lr"


def test_param_groups_without_quadratic_layers_and_bad_arguments():
    model = nn.Linear(3, 3)
    assert [g["name"] for g in relinear_param_groups(model, 0.1)] == ["linear"]
    with pytest.raises(ValueError, match="quadratic_lr_scale"):
        relinear_param_groups(model, 0.1, quadratic_lr_scale=-1.0)
    with pytest.raises(ValueError, match="lr must be"):
        relinear_param_groups(model, -0.1)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match=r"in_features=4.*\(2, 5\)"):
        QuadraticLinear(4, 3)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"in_channels=2.*\(1, 3, 4, 4\)"):
        QuadraticConv2d(2, 3, 3)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="out_features"):
        QuadraticLinear(4, 0)


def test_quadratic_channel_mixer_contract():
    assert "quadratic" in subq.list_channel_mixers()
    assert get_channel_mixer("quadratic") is QuadraticMLP
    mixer = get_channel_mixer("quadratic")(24, expand=2)
    x = torch.randn(2, 5, 24)
    out = mixer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert ChannelMixerConfig(name="quadratic", expand=2).name == "quadratic"

    mlp = MLP(24, expand=2)
    with torch.no_grad():
        mlp.fc1.weight.copy_(mixer.fc1.r.weight)
        mlp.fc2.weight.copy_(mixer.fc2.weight)
    assert torch.equal(out, mlp(x)), "under ReLinear init the quadratic mixer is the mlp mixer"

    _randomise(mixer.fc1.g)
    assert not torch.allclose(mixer(x), mlp(x)), "the quadratic part must change the output once trained"


def test_quadratic_channel_mixer_in_a_language_model():
    model = subq.LanguageModel(
        subq.LMConfig(vocab_size=31, d_model=16, n_layers=2, channel_mixer="quadratic", max_seq_len=16)
    )
    assert model(torch.randint(31, (2, 9))).shape == (2, 9, 31)
    assert len(quadratic_parameters(model)) == 2 * 3, "per layer: w_g, b_g, w_b (no c without bias)"
