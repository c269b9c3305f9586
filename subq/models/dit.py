"""A small class-conditional diffusion Transformer (DiT, Peebles & Xie, arXiv 2212.09748) whose
attention is a subq mixer chosen by name, and the Gaussian diffusion it is trained with.

    model = DiT(image_size=16, in_channels=1, d_model=128, depth=4, num_classes=10,
                mixer="attention", mixer_kwargs={"num_heads": 4})
    diffusion = GaussianDiffusion()                   # DiT's: 1000 linear-beta steps, learned variance
    terms = diffusion.training_losses(model, x0, y)   # {"loss", "mse", "vb", "output", "x_t", "t"}
    x = diffusion.sample(model, y, steps=50)          # ancestral sampling on 50 evenly spaced steps

The layout follows DiT's ``models.py``: patchify (a stride-``p`` convolution) plus fixed 2-D sin-cos
positions; the condition ``c`` is a timestep embedding (sinusoid -> MLP) plus a class embedding whose
extra row is the null class of classifier-free guidance; each block computes

    x = x + gate_msa * mixer(modulate(norm1(x), shift_msa, scale_msa))
    x = x + gate_mlp * mlp(modulate(norm2(x), shift_mlp, scale_mlp))

with the six modulation vectors from ``Linear(SiLU(c))`` initialised to zero (adaLN-Zero); a final
adaLN layer maps every token to ``p * p * 2C`` values (the noise and the variance interpolation ``v``
of each pixel). The blocks do not know which mixer they hold: ``mixer="linear_attention"`` builds LiT's
student, and :func:`subq.peft.convert.convert_to_linear_attention` turns a trained ``attention`` DiT
into one. Mixers run bidirectionally (``causal=False``) over the raster order of the patches.

The diffusion is DiT's (improved DDPM, arXiv 2102.09672): linear betas over 1000 steps, epsilon
prediction, learned variance ``log Sigma = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``,
loss ``L_simple + L_vlb`` where ``L_vlb`` sees the predicted mean with its gradient stopped, and
sampling on an evenly respaced subset of the steps with the variance re-derived for that subset.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

import subq.layers  # noqa: F401  (registers the mixers)
from subq.layers.base import Mixer
from subq.layers.registry import get_channel_mixer, get_mixer
from subq.utils import host_to

# ---- the network -------------------------------------------------------------------------------------


def sincos_pos_embed_2d(d_model: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos positions ``[grid_size ** 2, d_model]`` in raster order (DiT/MAE): the first
    half of the channels encode the row, the second half the column."""
    if d_model % 4:
        raise ValueError(f"d_model must be divisible by 4 for 2-D sin-cos positions, got {d_model}")
    omega = 1.0 / 10000 ** (torch.arange(d_model // 4, dtype=torch.float64) / (d_model // 4))
    pos = torch.arange(grid_size, dtype=torch.float64)[:, None] * omega  # [G, d/4]
    emb_1d = torch.cat([pos.sin(), pos.cos()], dim=1)  # [G, d/2]
    rows = emb_1d[:, None].expand(grid_size, grid_size, -1)
    cols = emb_1d[None, :].expand(grid_size, grid_size, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid_size**2, d_model).float()


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``t: [B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x: [B, N, D]``, ``shift, scale: [B, D]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block around a sequence mixer and an MLP (``mlp_ratio * d_model`` hidden units)."""

    def __init__(self, mixer: Mixer, *, mlp_ratio: float = 4.0):
        super().__init__()
        d = mixer.d_model
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = get_channel_mixer("mlp")(d, expand=mlp_ratio, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # x: [B, N, D], c: [B, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate_msa[:, None] * self.mixer(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN then a linear map of each token to its ``patch_size ** 2 * out_channels`` pixel values."""

    def __init__(self, d_model: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d_model, patch_size**2 * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def dit_linear_init_(module: nn.Module) -> None:
    """DiT's initialisation of every ``nn.Linear`` inside ``module``: Xavier-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DiT(nn.Module):
    """Class-conditional DiT on ``[B, in_channels, image_size, image_size]`` images.

    Args:
        image_size: side of the (square) input; divisible by ``patch_size``.
        in_channels: image channels ``C``; the output has ``2C`` (noise and variance interpolation).
        patch_size: side of a patch (default 2): ``(image_size / patch_size) ** 2`` tokens.
        d_model: width (divisible by 4 for the 2-D positions).
        depth: number of blocks.
        num_classes: class labels ``0..num_classes - 1``; label ``num_classes`` is the null class.
        mixer: a registered mixer name (``"attention"``, ``"linear_attention"``, ...), built with
            ``causal=False``.
        mixer_kwargs: keyword arguments of that mixer (e.g. ``{"num_heads": 4}``).
        mlp_ratio: MLP hidden width over ``d_model`` (default 4).

    ``forward(x, t, y)``: ``x: [B, C, H, W]``, ``t: [B]`` (diffusion step), ``y: [B]`` (labels) ->
    ``[B, 2C, H, W]``.
    """

    def __init__(
        self,
        *,
        image_size: int = 16,
        in_channels: int = 1,
        patch_size: int = 2,
        d_model: int = 128,
        depth: int = 4,
        num_classes: int = 10,
        mixer: str = "attention",
        mixer_kwargs: dict[str, Any] | None = None,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        self.config = dict(
            image_size=image_size,
            in_channels=in_channels,
            patch_size=patch_size,
            d_model=d_model,
            depth=depth,
            num_classes=num_classes,
            mixer=mixer,
            mixer_kwargs=dict(mixer_kwargs or {}),
            mlp_ratio=mlp_ratio,
        )
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.out_channels, self.num_classes = 2 * in_channels, num_classes
        self.grid_size = image_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, d_model, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d_model, self.grid_size), persistent=False)
        self.t_embedder = nn.Sequential(nn.Linear(256, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.y_embedder = nn.Embedding(num_classes + 1, d_model)
        mixer_cls = get_mixer(mixer)
        self.blocks = nn.ModuleList(
            DiTBlock(
                mixer_cls(d_model, causal=False, layer_idx=i, **(mixer_kwargs or {})), mlp_ratio=mlp_ratio
            )
            for i in range(depth)
        )
        self.final_layer = FinalLayer(d_model, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def initialize_weights(self) -> None:
        """DiT's: Xavier linears (the patch embedding too), N(0, 0.02) embeddings, zero adaLN and output."""
        dit_linear_init_(self)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        for layer in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1]]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[B, N, p * p * C_out] -> [B, C_out, H, W]``."""
        B, g, p, c = x.shape[0], self.grid_size, self.patch_size, self.out_channels
        x = x.view(B, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(
                f"t and y must be [B] with B={x.shape[0]}, got {tuple(t.shape)} and {tuple(y.shape)}"
            )
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, D]
        c = self.t_embedder(timestep_embedding(t, 256)) + self.y_embedder(y)  # [B, D]
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))  # [B, 2C, H, W]


# ---- the diffusion -----------------------------------------------------------------------------------


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2).square() * (-logvar2).exp()
    )


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-probability of ``x`` in [-1, 1] under a Gaussian discretised to 256 bins (improved DDPM)."""

    def cdf(z: Tensor) -> Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z.pow(3))))

    centred, inv_std = x - mean, (-log_scale).exp()
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1 / 255)), cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    inner = torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    return torch.where(x < -0.999, log_cdf_plus, inner)


def _mean_flat(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)


class _Schedule:
    """Per-step constants of a chain with cumulative products ``alphas_cumprod: [S]`` (float64)."""

    def __init__(self, alphas_cumprod: Tensor):
        ac = alphas_cumprod
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        self.betas = 1.0 - ac / ac_prev
        self.sqrt_ac, self.sqrt_one_minus_ac = ac.sqrt(), (1.0 - ac).sqrt()
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = (1.0 / ac).sqrt(), (1.0 / ac - 1.0).sqrt()
        post_var = self.betas * (1.0 - ac_prev) / (1.0 - ac)
        # the posterior variance is 0 at the first step: clip its log to the second step's
        self.post_log_var = torch.cat([post_var[1:2], post_var[1:]]).log()
        self.post_coef_x0 = self.betas * ac_prev.sqrt() / (1.0 - ac)
        self.post_coef_xt = (1.0 - ac_prev) * (1.0 - self.betas).sqrt() / (1.0 - ac)
        self.log_betas = self.betas.log()
        self._copies: dict[torch.device, _Schedule] = {}

    def to(self, device: torch.device | str) -> _Schedule:
        """The same schedule on ``device``, copied once and kept (a copy per lookup would make every
        training step wait for the GPU)."""
        device = torch.device(device)
        if self.betas.device == device:
            return self
        if device not in self._copies:
            moved = object.__new__(_Schedule)
            moved.__dict__ = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, Tensor)}
            moved._copies = {}
            self._copies[device] = moved
        return self._copies[device]

    @staticmethod
    def at(a: Tensor, i: Tensor, like: Tensor) -> Tensor:
        """``a[i]`` as ``[B, 1, 1, 1]`` in the dtype and device of ``like``."""
        return a.to(like.device)[i].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion:
    """DiT's diffusion: linear betas (``1e-4 .. 0.02`` scaled to ``num_timesteps``), epsilon prediction,
    learned variance, loss ``L_simple + L_vlb``.

    Args:
        num_timesteps: length of the forward chain (default 1000).
        beta_start, beta_end: the linear schedule at 1000 steps (DiT's ``get_named_beta_schedule``).
    """

    def __init__(self, num_timesteps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        s = 1000 / num_timesteps
        betas = torch.linspace(s * beta_start, s * beta_end, num_timesteps, dtype=torch.float64)
        self.num_timesteps = num_timesteps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.schedule = _Schedule(self.alphas_cumprod)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        s = self.schedule.to(x0.device)
        return s.at(s.sqrt_ac, t, x0) * x0 + s.at(s.sqrt_one_minus_ac, t, x0) * noise

    @staticmethod
    def p_mean_variance(
        schedule: _Schedule, output: Tensor, x_t: Tensor, i: Tensor, *, clip: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log-variance and predicted ``x0`` of ``p(x_{i-1} | x_i)`` from a model
        ``output: [B, 2C, ...]`` at step indices ``i: [B]`` of ``schedule``."""
        eps, v = output.chunk(2, dim=1)
        schedule, at = schedule.to(x_t.device), _Schedule.at
        frac = (v + 1) / 2
        log_var = frac * at(schedule.log_betas, i, x_t) + (1 - frac) * at(schedule.post_log_var, i, x_t)
        x0 = at(schedule.sqrt_recip_ac, i, x_t) * x_t - at(schedule.sqrt_recipm1_ac, i, x_t) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = at(schedule.post_coef_x0, i, x_t) * x0 + at(schedule.post_coef_xt, i, x_t) * x_t
        return mean, log_var, x0

    def training_losses(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-example ``loss = mse + vb`` (``[B]``) plus ``mse``, ``vb``, the model ``output`` and its inputs
        ``x_t``, ``t`` (so a distillation loss can query a teacher on the same input).

        ``t`` (default uniform over the chain) and ``noise`` (default standard normal) can be fixed.
        """
        B = x0.shape[0]
        if t is None:
            t = host_to(torch.randint(0, self.num_timesteps, (B,), generator=generator), x0.device)
        if noise is None:
            noise = host_to(torch.randn(x0.shape, generator=generator), x0.device).to(x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t, y)
        eps, v = output.chunk(2, dim=1)
        mse = _mean_flat((noise - eps).square())
        # L_vlb trains only the variance: the mean comes from the eps prediction with its gradient stopped
        s = self.schedule.to(x0.device)
        mean, log_var, _ = self.p_mean_variance(s, torch.cat([eps.detach(), v], 1), x_t, t, clip=False)
        true_mean = s.at(s.post_coef_x0, t, x0) * x0 + s.at(s.post_coef_xt, t, x0) * x_t
        true_log_var = s.at(s.post_log_var, t, x0)
        kl = _mean_flat(_normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -_mean_flat(_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "output": output, "x_t": x_t, "t": t}

    def sample_timesteps(self, steps: int) -> Tensor:
        """``steps`` evenly spaced chain indices, 0 to ``num_timesteps - 1`` (DiT's ``space_timesteps``)."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must lie in [1, {self.num_timesteps}], got {steps}")
        if steps == 1:
            return torch.tensor([self.num_timesteps - 1])
        return torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long()

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        y: Tensor,
        *,
        steps: int = 50,
        cfg_scale: float = 1.0,
        clip: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ancestral sampling of ``[B, C, H, W]`` images for labels ``y: [B]`` on ``steps`` respaced steps.

        ``cfg_scale > 1`` applies classifier-free guidance to the noise (the variance comes from the
        conditional half, as in DiT); ``clip`` clamps the predicted ``x0`` to [-1, 1] at every step.
        """
        ts = self.sample_timesteps(steps)
        schedule = _Schedule(self.alphas_cumprod[ts])
        B, device = y.shape[0], y.device
        shape = (B, model.in_channels, model.image_size, model.image_size)
        x = host_to(torch.randn(shape, generator=generator), device)
        guided = cfg_scale != 1.0
        null = torch.full_like(y, model.null_class)
        for i in reversed(range(steps)):
            t = torch.full((B,), int(ts[i]), device=device, dtype=torch.long)
            if guided:
                out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
                (eps_c, v), (eps_u, _) = out_c.chunk(2, dim=1), out_u.chunk(2, dim=1)
                output = torch.cat([eps_u + cfg_scale * (eps_c - eps_u), v], dim=1)
            else:
                output = model(x, t, y)
            idx = torch.full((B,), i, device=device, dtype=torch.long)
            mean, log_var, _ = self.p_mean_variance(schedule, output, x, idx, clip=clip)
            x = mean
            if i > 0:
                x = x + (0.5 * log_var).exp() * host_to(torch.randn(shape, generator=generator), device).to(x)
        return x
