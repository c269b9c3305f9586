"""LiT conversion: the weight-inheritance rule of ``convert_to_linear_attention`` and the hybrid
distillation loss.

    python -m pytest tests/peft/test_convert.py -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from subq.layers.attention import Attention, SlidingWindowAttention
from subq.layers.linear_attention import LinearAttention
from subq.models.dit import DiT, GaussianDiffusion, dit_linear_init_
from subq.peft.convert import convert_to_linear_attention, hybrid_distillation_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_like_teacher() -> DiT:
    """A small softmax DiT with every weight moved off its initialisation."""
    model = DiT(
        image_size=8, d_model=32, depth=2, mixer="attention", mixer_kwargs={"num_heads": 4, "bias": True}
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def is_mixer_param(name: str) -> bool:
    return ".mixer." in name


@pytest.mark.parametrize("inherit_attention", [False, True], ids=["lit-rule", "inherit-qkv"])
def test_inheritance_rule(inherit_attention):
    teacher = trained_like_teacher()
    before = {n: p.clone() for n, p in teacher.state_dict().items()}
    student = convert_to_linear_attention(
        teacher, inherit_attention=inherit_attention, num_heads=2, conv_size=5
    )
    # the teacher is untouched
    assert all(isinstance(b.mixer, Attention) for b in teacher.blocks)
    assert all(torch.equal(before[n], p) for n, p in teacher.state_dict().items())
    mixers = [b.mixer for b in student.blocks]
    assert all(type(m) is LinearAttention for m in mixers)
    assert [(m.num_heads, m.conv_size, m.causal, m.layer_idx) for m in mixers] == [
        (2, 5, False, 0),
        (2, 5, False, 1),
    ]
    theirs = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        if not is_mixer_param(name):
            assert torch.equal(p, theirs[name]), f"{name} not inherited"
        elif ".conv." in name:
            assert name not in theirs  # the depthwise convolution is new
        else:  # q/k/v and output projections
            assert torch.equal(p, theirs[name]) == inherit_attention, name
    # the student is a separate model: training it leaves the teacher alone
    student.final_layer.linear.weight.data.add_(1.0)
    assert torch.equal(teacher.final_layer.linear.weight, before["final_layer.linear.weight"])


def test_fresh_mixers_get_the_given_init_and_the_teachers_bias_setting():
    teacher = trained_like_teacher()
    torch.manual_seed(3)
    student = convert_to_linear_attention(teacher, num_heads=2, mixer_init=dit_linear_init_)
    mixer = student.blocks[0].mixer
    assert mixer.qkv_proj.bias is not None and torch.equal(mixer.qkv_proj.bias, torch.zeros(96))
    bound = (6 / (32 + 96)) ** 0.5  # Xavier-uniform on the [96, 32] weight
    assert mixer.qkv_proj.weight.abs().max() <= bound
    no_bias = convert_to_linear_attention(teacher, num_heads=2, bias=False)
    assert no_bias.blocks[0].mixer.qkv_proj.bias is None


def test_converted_student_trains_on_the_hybrid_loss():
    teacher = trained_like_teacher().eval()
    student = convert_to_linear_attention(teacher, num_heads=2, mixer_init=dit_linear_init_)
    diffusion = GaussianDiffusion()
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([1, 2, 3, 10])
    terms = diffusion.training_losses(student, x0, y)
    with torch.no_grad():
        teacher_out = teacher(terms["x_t"], terms["t"], y)
    loss = terms["loss"].mean() + hybrid_distillation_loss(terms["output"], teacher_out, channels=1)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_student_of_a_frozen_teacher_trains_every_parameter():
    teacher = trained_like_teacher().eval().requires_grad_(False)
    student = convert_to_linear_attention(teacher, num_heads=2)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_causal_and_sliding_window_mixers_convert_and_keep_causality():
    model = nn.ModuleDict(
        {"full": Attention(16, num_heads=2), "window": SlidingWindowAttention(16, num_heads=2, window=4)}
    )
    student = convert_to_linear_attention(model, num_heads=1, conv_size=4)
    assert all(type(m) is LinearAttention and m.causal for m in student.values())
    x = torch.randn(2, 7, 16)
    y = student["full"](x)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert torch.equal(student["full"](x2)[:, :-1], y[:, :-1])  # still causal


def test_conversion_errors():
    teacher = trained_like_teacher()
    with pytest.raises(ValueError, match="'d_model' is taken from each attention"):
        convert_to_linear_attention(teacher, d_model=32)
    with pytest.raises(ValueError, match="holds no attention mixer"):
        convert_to_linear_attention(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="rotary"):
        convert_to_linear_attention(nn.Sequential(Attention(16, num_heads=2, rotary=True)))
    gqa = nn.Sequential(Attention(16, num_heads=4, num_kv_heads=2))
    convert_to_linear_attention(gqa)  # the LiT rule does not need the projections
    with pytest.raises(ValueError, match=r"qkv_proj: cannot inherit a \(32, 16\) weight into \(48, 16\)"):
        convert_to_linear_attention(gqa, inherit_attention=True)
    with pytest.raises(ValueError, match="bias=True in the teacher"):
        convert_to_linear_attention(teacher, inherit_attention=True, bias=False)


# ---- the hybrid distillation loss ------------------------------------------------------------------


def test_hybrid_loss_is_lits_formula():
    s, t = torch.randn(3, 6, 4, 4, requires_grad=True), torch.randn(3, 6, 4, 4)
    loss = hybrid_distillation_loss(s, t, channels=3)
    expect = 0.5 * F.mse_loss(s[:, :3], t[:, :3]) + 0.05 * F.mse_loss(s[:, 3:], t[:, 3:])
    torch.testing.assert_close(loss, expect)
    custom = hybrid_distillation_loss(s, t, channels=3, lambda_eps=1.0, lambda_sigma=0.0)
    torch.testing.assert_close(custom, F.mse_loss(s[:, :3], t[:, :3]))
    loss.backward()
    n = s[:, :3].numel()
    torch.testing.assert_close(s.grad[:, :3], 0.5 * 2 * (s - t)[:, :3].detach() / n)
    torch.testing.assert_close(s.grad[:, 3:], 0.05 * 2 * (s - t)[:, 3:].detach() / n)


def test_hybrid_loss_edge_cases():
    s = torch.randn(2, 1, 4, 4)
    assert hybrid_distillation_loss(s, s.clone(), channels=1) == 0
    teacher = torch.randn(2, 2, 4, 4, requires_grad=True)
    student = torch.randn(2, 2, 4, 4, requires_grad=True)
    hybrid_distillation_loss(student, teacher, channels=1).backward()
    assert teacher.grad is None and student.grad is not None
    eps_only = hybrid_distillation_loss(s, torch.zeros_like(s), channels=1)  # no variance channels
    torch.testing.assert_close(eps_only, 0.5 * s.square().mean())
    with pytest.raises(ValueError, match="same shape"):
        hybrid_distillation_loss(s, torch.zeros(2, 2, 4, 4), channels=1)
    with pytest.raises(ValueError, match="expected channels=2 or 2 \\* channels"):
        hybrid_distillation_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), channels=2)
