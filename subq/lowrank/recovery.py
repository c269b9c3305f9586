"""Robust low-rank matrix sensing with the l1 loss, solved by the sub-gradient method (SubGM).

Ma & Fattahi, "Global convergence of sub-gradient method for robust matrix recovery: small
initialization, noisy measurements, and over-parameterization" (JMLR 2023, arXiv 2202.08788).

    cfg = RecoveryConfig(d=30, r=2, r_prime=30, m=1200, outlier_fraction=0.2, alpha=1e-7)
    result = recover(cfg, seed=0)            # make_problem + subgradient_method, about a second
    result.final_error                       # ||U U^T - X*||_F / ||X*||_F after the last step: ~1e-5

The reproduction that sweeps alpha, r' and the outlier fraction is ``subq repro subgm --quick``
(``subq/repro/subgm.py``).

Model. ``X* = U* U*^T`` (``d x d``, rank ``r``, PSD, scaled to ``||X*||_F = 1``) is measured as
``y_i = <A_i, X*> + s_i``, ``i = 1..m``. The search variable is ``U`` in ``R^{d x r'}`` with
``r <= r' <= d`` (over-parameterised when ``r' > r``) and the loss is

    f(U) = (1/m) sum_i |<A_i, U U^T> - y_i|.

SubGM starts from ``U_0 = alpha * B`` and steps ``U_{t+1} = U_t - eta_t G_t`` with

    G_t = (1/m) sum_i sign(<A_i, U_t U_t^T> - y_i) (A_i + A_i^T) U_t       (sign(0) = 0)
    eta_t = eta0 * rho^t.

What is taken from the paper and what is not. Checked against the paper's abstract and
introduction (the only parts the search tool returned): the measurement model ``y = A(X*) + s``
with PSD rank-r ``X*``; the factorised l1 objective over ``U`` in ``R^{d x r'}`` with the rank
over-estimated; SubGM with *small initialisation*; the two noise models (a fraction of arbitrarily
large, dense outliers, or Gaussian noise); that the sample count for Gaussian measurements does
not depend on ``r'``. Not verified (taken from the project's notes, written from memory): the
un-normalised geometric step ``eta_t = eta0 * rho^t`` (no division by ``||G_t||`` or ``f``), the
form ``U_0 = alpha * B`` with ``B`` random and ``||B||_2 = 1``, and the i.i.d. ``N(0, 1)``
measurement matrices. Symmetric or not does not matter here: ``<A, X>`` for symmetric ``X`` only
sees ``(A + A^T) / 2``, so :func:`make_problem` stores that symmetric part and the measurements
and sub-gradients are those of the i.i.d. Gaussian ``A_i``. Outliers are drawn as in the outlier
model: each ``s_i`` is nonzero with probability ``outlier_fraction``, then ``N(0, outlier_scale^2)``
(``||X*||_F = 1``, so clean measurements have unit standard deviation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch import Tensor

DTYPE = torch.float64


class RecoveryConfig(BaseModel):
    """One robust recovery run: the problem (``d, r, m``, noise) and SubGM's settings.

    ``r_prime`` must satisfy ``r <= r_prime <= d``: below ``r`` no ``U U^T`` can equal ``X*``
    (exact recovery is impossible, which is not the paper's setting), above ``d`` the extra columns
    add nothing ``r_prime = d`` cannot express.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: PositiveInt = 30
    r: PositiveInt = 2
    r_prime: PositiveInt = 2
    m: PositiveInt = 1200
    outlier_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    outlier_scale: NonNegativeFloat = 100.0
    noise: NonNegativeFloat = 0.0
    alpha: PositiveFloat = 1e-7
    eta0: PositiveFloat = 0.2
    rho: float = Field(0.995, gt=0.0, le=1.0)
    iters: PositiveInt = 2000

    @model_validator(mode="after")
    def _check_ranks(self):
        if self.r > self.d:
            raise ValueError(f"r={self.r} exceeds d={self.d}: X* is d x d, so its rank is at most d")
        if not self.r <= self.r_prime <= self.d:
            raise ValueError(f"r_prime={self.r_prime} must satisfy r={self.r} <= r_prime <= d={self.d}")
        return self


@dataclass(frozen=True)
class Problem:
    """A planted instance: ``A: [m, d, d]`` (symmetric), ``y: [m]``, ``X_star: [d, d]``,
    ``U_star: [d, r]`` and ``outliers: [m]`` (bool, where ``s_i`` is a gross outlier)."""

    A: Tensor
    y: Tensor
    X_star: Tensor
    U_star: Tensor
    outliers: Tensor

    @property
    def d(self) -> int:
        return self.X_star.shape[0]

    @property
    def r(self) -> int:
        return self.U_star.shape[1]

    @property
    def m(self) -> int:
        return self.y.shape[0]

    def measure(self, X: Tensor) -> Tensor:
        """``A(X) = [<A_1, X>, ..., <A_m, X>]``: ``X: [d, d]`` -> ``[m]``."""
        return self.A.reshape(self.m, -1) @ X.reshape(-1)

    def residual(self, U: Tensor) -> Tensor:
        """``A(U U^T) - y``: ``U: [d, r']`` -> ``[m]``."""
        return self.measure(U @ U.T) - self.y

    def loss(self, U: Tensor) -> Tensor:
        """``f(U) = (1/m) ||A(U U^T) - y||_1`` (a scalar tensor)."""
        return self.residual(U).abs().mean()

    def subgradient(self, U: Tensor) -> Tensor:
        """A sub-gradient of ``f`` at ``U: [d, r']`` (``sign(0) = 0``); ``[d, r']``."""
        return _subgradient(self.A, self.residual(U), U)

    def relative_error(self, U: Tensor) -> float:
        """``||U U^T - X*||_F / ||X*||_F``."""
        err = torch.linalg.matrix_norm(U @ U.T - self.X_star) / torch.linalg.matrix_norm(self.X_star)
        return err.item()


def _subgradient(A: Tensor, residual: Tensor, U: Tensor) -> Tensor:
    m, d, _ = A.shape
    Q = (residual.sign() @ A.reshape(m, d * d)).reshape(d, d) / m  # [d, d], symmetric
    return 2.0 * Q @ U  # A_i symmetric: A_i + A_i^T = 2 A_i


@dataclass
class RecoveryResult:
    """``U: [d, r']`` after the last step; ``errors`` and ``losses`` hold ``iters + 1`` values
    (before the first step, then after each), fewer if the iterate overflowed to inf/NaN."""

    U: Tensor
    errors: list[float]
    losses: list[float]

    @property
    def final_error(self) -> float:
        return self.errors[-1]


def make_problem(cfg: RecoveryConfig, seed: int) -> Problem:
    """Draw ``X*``, the Gaussian ``A_i``, the outliers and the noise of ``cfg`` from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    d, r, m = cfg.d, cfg.r, cfg.m
    U_star = torch.randn(d, r, generator=g, dtype=DTYPE)
    X = U_star @ U_star.T
    scale = torch.linalg.matrix_norm(X).sqrt()
    U_star, X = U_star / scale, X / scale**2  # ||X*||_F = 1
    A = torch.randn(m, d, d, generator=g, dtype=DTYPE)
    A = (A + A.transpose(1, 2)) / 2  # same <A_i, X> for symmetric X
    outliers = torch.rand(m, generator=g, dtype=DTYPE) < cfg.outlier_fraction
    s = torch.where(outliers, cfg.outlier_scale * torch.randn(m, generator=g, dtype=DTYPE), 0.0)
    s = s + cfg.noise * torch.randn(m, generator=g, dtype=DTYPE)
    y = A.reshape(m, -1) @ X.reshape(-1) + s
    return Problem(A=A, y=y, X_star=X, U_star=U_star, outliers=outliers)


def subgradient_method(
    problem: Problem, *, r_prime: int, alpha: float, eta0: float, rho: float, iters: int, seed: int = 0
) -> RecoveryResult:
    """SubGM on ``f(U)`` from ``U_0 = alpha * B`` (``B: [d, r_prime]`` Gaussian with spectral norm 1,
    drawn from ``seed``), ``iters`` steps of size ``eta0 * rho^t``."""
    d, r = problem.d, problem.r
    if not r <= r_prime <= d:
        raise ValueError(f"r_prime={r_prime} must satisfy r={r} <= r_prime <= d={d}")
    for name, value in (("alpha", alpha), ("eta0", eta0)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, r_prime, generator=g, dtype=DTYPE)
    U = alpha * B / torch.linalg.matrix_norm(B, ord=2)
    x_norm = torch.linalg.matrix_norm(problem.X_star).item()
    errors, losses = [], []
    for t in range(iters + 1):
        res = problem.residual(U)
        errors.append(torch.linalg.matrix_norm(U @ U.T - problem.X_star).item() / x_norm)
        losses.append(res.abs().mean().item())
        if t == iters or not math.isfinite(errors[-1]):
            break
        U = U - eta0 * rho**t * _subgradient(problem.A, res, U)
    return RecoveryResult(U=U, errors=errors, losses=losses)


def recover(cfg: RecoveryConfig, seed: int = 0) -> RecoveryResult:
    """``subgradient_method(make_problem(cfg, seed), ...)`` with the solver settings of ``cfg``."""
    return subgradient_method(
        make_problem(cfg, seed),
        r_prime=cfg.r_prime,
        alpha=cfg.alpha,
        eta0=cfg.eta0,
        rho=cfg.rho,
        iters=cfg.iters,
        seed=seed,
    )
