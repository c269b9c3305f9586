"""The small DiT and its Gaussian diffusion: shapes, adaLN-Zero at init, the mixer swap, the schedule
against closed forms, the variational term, and sampling.

    python -m pytest tests/models/test_dit.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from subq.layers.attention import Attention
from subq.layers.linear_attention import LinearAttention
from subq.models.dit import DiT, GaussianDiffusion, _Schedule, sincos_pos_embed_2d, timestep_embedding
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

MIXERS = {
    "attention": {"num_heads": 4, "bias": True},
    "linear_attention": {"num_heads": 2, "bias": True},
}


def tiny_dit(mixer: str = "attention", **kwargs) -> DiT:
    config = dict(image_size=8, d_model=32, depth=2, mixer=mixer, mixer_kwargs=MIXERS[mixer]) | kwargs
    return DiT(**config)


def randomize(model: nn.Module) -> nn.Module:
    """Perturb every parameter, so the zero-initialised adaLN and output layers stop hiding the mixers."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_forward_shape_and_bidirectional_mixer(mixer):
    model = tiny_dit(mixer, in_channels=3)
    mixers = [b.mixer for b in model.blocks]
    assert all(isinstance(m, Attention if mixer == "attention" else LinearAttention) for m in mixers)
    assert all(not m.causal for m in mixers) and [m.layer_idx for m in mixers] == [0, 1]
    x, t, y = torch.randn(5, 3, 8, 8), torch.randint(0, 1000, (5,)), torch.randint(0, 11, (5,))
    assert model(x, t, y).shape == (5, 6, 8, 8)
    assert model.grid_size == 4 and model.null_class == 10


def test_adaln_zero_init_makes_blocks_identity_and_output_zero():
    model = tiny_dit()
    x, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    out = model(torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([0, 5, 10]))
    assert torch.equal(out, torch.zeros_like(out))


def test_every_token_sees_every_other_token():
    """Bidirectional mixing: changing the last patch changes the output at the first pixel."""
    for mixer in MIXERS:
        model = randomize(tiny_dit(mixer)).eval()
        x, t, y = torch.randn(1, 1, 8, 8), torch.tensor([100]), torch.tensor([3])
        x2 = x.clone()
        x2[..., -2:, -2:] += 1.0
        assert (model(x, t, y) - model(x2, t, y))[..., 0, 0].abs().max() > 1e-6, mixer


def test_examples_are_independent_and_depend_on_t_and_y():
    model = randomize(tiny_dit()).eval()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 200, 500, 999]), torch.tensor([0, 1, 2, 10])
    out = model(x, t, y)
    perm = torch.tensor([2, 0, 3, 1])
    assert_close(model(x[perm], t[perm], y[perm]), out[perm], 1e-5, "batch permutation")
    assert not torch.allclose(model(x, t.flip(0), y), out)
    assert not torch.allclose(model(x, t, y.flip(0)), out)


def test_unpatchify_inverts_patchify():
    model = tiny_dit(in_channels=2)
    img = torch.randn(3, 4, 8, 8)  # 2C channels
    p, g = model.patch_size, model.grid_size
    tokens = img.view(3, 4, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(3, g * g, p * p * 4)
    assert torch.equal(model.unpatchify(tokens), img)


def test_sincos_positions_match_dit():
    """Restates DiT's ``get_2d_sincos_pos_embed`` (row half, then column half)."""
    d, g = 16, 3
    emb = sincos_pos_embed_2d(d, g)
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    for r in range(g):
        for c in range(g):
            expect = torch.cat([(r * omega).sin(), (r * omega).cos(), (c * omega).sin(), (c * omega).cos()])
            assert_close(emb[r * g + c], expect.float(), 1e-6, f"position ({r}, {c})")
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, 2)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 7]), 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    assert_close(e[1], torch.cat([(7 * freqs).cos(), (7 * freqs).sin()]), 1e-6, "t = 7")
    assert torch.equal(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_input_validation():
    model = tiny_dit()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 8, 8\]"):
        model(torch.randn(2, 1, 6, 6), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="t and y must be"):
        model(torch.randn(2, 1, 8, 8), torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        tiny_dit(image_size=9)
    with pytest.raises(KeyError, match="unknown mixer"):
        DiT(image_size=8, d_model=32, depth=1, mixer="nope")


# ---- the diffusion ---------------------------------------------------------------------------------


def test_schedule_matches_closed_forms():
    diffusion = GaussianDiffusion()
    s = diffusion.schedule
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert_close(s.betas, betas, 1e-12, "betas")
    ac = torch.cumprod(1 - betas, 0)
    for t in (1, 10, 500, 999):
        var = betas[t] * (1 - ac[t - 1]) / (1 - ac[t])
        assert_close(s.post_log_var[t], var.log(), 1e-12, f"posterior log-variance t={t}")
        # the posterior mean is the combination of x0 and x_t that q(x_{t-1} | x_t, x0) gives
        assert_close(s.post_coef_x0[t], betas[t] * ac[t - 1].sqrt() / (1 - ac[t]), 1e-12, "coef x0")
        assert_close(s.post_coef_xt[t], (1 - ac[t - 1]) * (1 - betas[t]).sqrt() / (1 - ac[t]), 1e-12, "xt")
    assert s.post_log_var[0] == s.post_log_var[1]  # clipped: the true value is log 0


def test_respaced_schedule_keeps_the_marginals():
    diffusion = GaussianDiffusion()
    ts = diffusion.sample_timesteps(10)
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 10 and (ts.diff() > 0).all()
    respaced = _Schedule(diffusion.alphas_cumprod[ts])
    assert_close(respaced.sqrt_ac, diffusion.schedule.sqrt_ac[ts], 1e-12, "sqrt abar")
    # steps = num_timesteps is the original chain
    full = _Schedule(diffusion.alphas_cumprod[diffusion.sample_timesteps(1000)])
    assert_close(full.betas, diffusion.schedule.betas, 1e-12, "betas")
    with pytest.raises(ValueError, match="steps must lie"):
        diffusion.sample_timesteps(0)


class _Oracle(nn.Module):
    """Predicts the true noise and ``v = -1`` (the variance is the true posterior's)."""

    in_channels, image_size, null_class = 1, 8, 10

    def __init__(self, noise: torch.Tensor):
        super().__init__()
        self.noise = noise
        self.v = nn.Parameter(-torch.ones_like(noise))
        self.eps = nn.Parameter(noise.clone())

    def forward(self, x, t, y):
        return torch.cat([self.eps, self.v], dim=1)


def test_training_losses_mse_and_vlb():
    diffusion = GaussianDiffusion()
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 5, 100, 500, 999])
    oracle = _Oracle(noise)
    terms = diffusion.training_losses(oracle, x0, torch.zeros(6, dtype=torch.long), t=t, noise=noise)
    assert_close(terms["x_t"], diffusion.q_sample(x0, t, noise), 0, "x_t")
    assert torch.equal(terms["mse"], torch.zeros(6))
    # with the true noise and the posterior variance, p(x_{t-1} | x_t) is the posterior: KL = 0
    assert terms["vb"][1:].abs().max() < 1e-4, terms["vb"]
    assert terms["vb"][0] > 0  # t = 0: the decoder's negative log-likelihood
    # L_vlb trains the variance only: no gradient reaches the noise prediction through it
    with torch.no_grad():
        oracle.v.fill_(0.3)
        oracle.eps.add_(0.1)
    terms = diffusion.training_losses(oracle, x0, torch.zeros(6, dtype=torch.long), t=t, noise=noise)
    assert (terms["vb"][1:] > 0).all()
    terms["vb"].sum().backward()
    assert torch.equal(oracle.eps.grad, torch.zeros_like(noise)) and oracle.v.grad.abs().sum() > 0


def test_a_tiny_dit_learns_a_batch():
    torch.manual_seed(0)
    model, diffusion = tiny_dit(d_model=32), GaussianDiffusion()
    x0, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    t, noise = torch.randint(0, 1000, (16,)), torch.randn(16, 1, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = diffusion.training_losses(model, x0, y, t=t, noise=noise)["mse"].mean().item()
    for _ in range(40):
        loss = diffusion.training_losses(model, x0, y, t=t, noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = diffusion.training_losses(model, x0, y, t=t, noise=noise)["mse"].mean().item()
    assert first > 0.9 and last < 0.5 * first, (first, last)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["cfg1", "cfg3"])
def test_sample_is_seeded_and_clipped(cfg_scale):
    model, diffusion = randomize(tiny_dit()).eval(), GaussianDiffusion()
    y = torch.tensor([0, 3, 9])

    def draw():
        return diffusion.sample(
            model, y, steps=4, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(1)
        )

    x = draw()
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.equal(x, draw())
    # the last step adds no noise: the output is the clipped-x0 posterior mean at the first step (x0)
    assert x.abs().max() <= 1.0 + 1e-6


def test_guidance_changes_samples():
    model, diffusion = randomize(tiny_dit()).eval(), GaussianDiffusion()
    y = torch.tensor([0, 3])
    a, b = (
        diffusion.sample(model, y, steps=3, cfg_scale=s, generator=torch.Generator().manual_seed(1))
        for s in (1.0, 4.0)
    )
    assert not torch.allclose(a, b)


def test_schedule_is_copied_to_a_device_once_with_every_constant():
    schedule = GaussianDiffusion(num_timesteps=10).schedule
    assert schedule.to("cpu") is schedule
    moved = schedule.to("meta")
    assert moved is schedule.to("meta") and moved.to("meta") is moved
    constants = {k for k, v in vars(schedule).items() if isinstance(v, torch.Tensor)}
    assert constants == {k for k, v in vars(moved).items() if isinstance(v, torch.Tensor)}
    assert all(getattr(moved, k).is_meta and getattr(moved, k).shape == (10,) for k in constants)
