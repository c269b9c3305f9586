"""Hierarchical polynomial targets ``h(x) = g(p(x))`` on Gaussian inputs (Wang, Nichani, Lee, ICLR 2024).

``x ~ N(0, I_d)``; ``p`` is a degree-``k`` polynomial feature with ``E p = 0`` and ``E p^2 = 1``;
``g`` is a degree-``q`` univariate link, shifted and scaled so that ``E h = 0`` and ``E h^2 = 1``
*exactly* (computed from the cumulants of ``p``, not from a Gaussian approximation of ``p``):

- ``feature="quadratic_form"`` (k = 2): ``p(x) = (x^T A x - tr A) / (sqrt(2) ||A||_F)`` for a random
  symmetric ``A`` (PAPERS.md section 13.3);
- ``feature="hermite_sum"`` (any k): ``p(x) = sum_i lambda_i He_k(x_i) / sqrt(k! d)`` with
  ``lambda_i`` uniform on ``{-1, +1}`` (the paper's experiment uses this with k = 3);
- ``link="monomial"``: ``g(z) ∝ z^q - E p^q`` (the paper's experiment: ``g(z) = C_d z^3``);
  ``link="hermite"``: ``g(z) ∝ He_q(z)`` shifted to mean zero. For ``q >= 2`` and nearly Gaussian
  ``p`` this link has almost no degree-1 Hermite component, so ``g∘p`` is nearly orthogonal to
  ``p`` and the degree-k projection that the first training stage relies on almost vanishes:
  a negative control, not the paper's setting.

The teacher (``A`` or the signs ``lambda``) is drawn from ``teacher_seed`` and shared by both
splits; the inputs of a split come from :func:`subq.tasks.split_seed`, so train and test inputs
never share a seed. ``noise`` adds ``N(0, noise^2)`` to the train labels only: test labels are
noiseless, so the test MSE is the excess risk and the zero predictor scores 1.

Used by ``subq repro hpoly`` (``subq/repro/hpoly.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, model_validator
from torch import Tensor

from subq.tasks.base import Split, split_seed

FeatureKind = Literal["quadratic_form", "hermite_sum"]
LinkKind = Literal["monomial", "hermite"]


def hermite(z: Tensor, n: int) -> Tensor:
    """Probabilists' Hermite polynomial ``He_n(z)`` (``E He_n(Z)^2 = n!`` for ``Z ~ N(0, 1)``).

    ``z``: any shape; returns the same shape. Three-term recurrence
    ``He_{j+1} = z He_j - j He_{j-1}``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    prev, cur = torch.ones_like(z), z
    if n == 0:
        return prev
    for j in range(1, n):
        prev, cur = cur, z * cur - j * prev
    return cur


def _moments_from_cumulants(kappa: list[float]) -> list[float]:
    """``[E X^0, ..., E X^R]`` from the cumulants ``kappa = [κ_1, ..., κ_R]``."""
    m = [1.0]
    for r in range(1, len(kappa) + 1):
        m.append(sum(math.comb(r - 1, j - 1) * kappa[j - 1] * m[r - j] for j in range(1, r + 1)))
    return m


def _cumulants_from_moments(m: list[float]) -> list[float]:
    """``[κ_1, ..., κ_R]`` from the moments ``m = [E X^0, ..., E X^R]``."""
    kappa: list[float] = []
    for r in range(1, len(m)):
        kappa.append(m[r] - sum(math.comb(r - 1, j - 1) * kappa[j - 1] * m[r - j] for j in range(1, r)))
    return kappa


def feature_moments(phi_degree: int, coeffs: np.ndarray, order: int) -> list[float]:
    """Exact moments ``E p^r``, ``r = 0..order``, of ``p = sum_i coeffs[i] He_{phi_degree}(z_i)``.

    ``z_i`` i.i.d. ``N(0, 1)``; ``coeffs``: ``(n,)``. Cumulants of a sum of independent terms add:
    ``κ_r(p) = κ_r(He_j(Z)) sum_i coeffs[i]^r``; the moments of ``He_j(Z)`` come from
    Gauss-Hermite quadrature, exact for polynomials of degree ``< 2 * nodes``.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(phi_degree * order // 2 + 1)
    weights = weights / weights.sum()
    values = hermite(torch.from_numpy(nodes), phi_degree).numpy()
    phi_moments = [float(np.sum(weights * values**r)) for r in range(order + 1)]
    kappa = _cumulants_from_moments(phi_moments)
    return _moments_from_cumulants([kappa[r - 1] * float(np.sum(coeffs**r)) for r in range(1, order + 1)])


class HierarchicalPolyConfig(BaseModel):
    """Regression task ``y = g(p(x))`` (+ train noise): ``build(split, seed) -> (x, y)``.

    ``x``: ``(n, d)`` float64, ``y``: ``(n,)`` float64; ``n`` is ``n_train`` or ``n_test``.
    Fields: ``d`` input dimension; ``k`` degree of ``p``; ``q`` degree of ``g``; ``noise`` standard
    deviation of the train-label noise; ``feature`` and ``link`` (module docstring);
    ``teacher_seed`` draws ``A`` or the signs ``lambda``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: PositiveInt = 16
    k: PositiveInt = 2
    q: PositiveInt = 3
    n_train: PositiveInt = 1024
    n_test: PositiveInt = 2048
    noise: NonNegativeFloat = 0.0
    feature: FeatureKind = "quadratic_form"
    link: LinkKind = "monomial"
    teacher_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.feature == "quadratic_form" and self.k != 2:
            raise ValueError(f"feature='quadratic_form' is a degree-2 feature: k must be 2, got k={self.k}")
        return self

    def feature_fn(self, x: Tensor) -> Tensor:
        """The normalised feature ``p(x)``: ``x`` ``(n, d)`` -> ``(n,)`` float64."""
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be (n, d={self.d}), got {tuple(x.shape)}")
        teacher, _ = _teacher(self)
        x = x.double()
        if self.feature == "quadratic_form":
            quad = torch.einsum("ni,ij,nj->n", x, teacher, x) - teacher.diagonal().sum()
            return quad / (math.sqrt(2.0) * torch.linalg.matrix_norm(teacher))
        return hermite(x, self.k) @ teacher / math.sqrt(math.factorial(self.k) * self.d)

    def link_fn(self, z: Tensor) -> Tensor:
        """The normalised link ``g(z)``: any shape, elementwise, float64."""
        _, (shift, scale) = _teacher(self)
        z = z.double()
        raw = z**self.q if self.link == "monomial" else hermite(z, self.q)
        return (raw - shift) / scale

    def target_fn(self, x: Tensor) -> Tensor:
        """Noiseless ``h(x) = g(p(x))``: ``x`` ``(n, d)`` -> ``(n,)`` float64."""
        return self.link_fn(self.feature_fn(x))

    def build(self, split: Split = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
        """Inputs ``x`` ``(n, d)`` and labels ``y`` ``(n,)`` of ``split`` for base seed ``seed``."""
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        n = self.n_train if split == "train" else self.n_test
        x = torch.randn(n, self.d, generator=gen, dtype=torch.float64)
        y = self.target_fn(x)
        if split == "train" and self.noise > 0:
            y = y + self.noise * torch.randn(n, generator=gen, dtype=torch.float64)
        return x, y


@functools.lru_cache(maxsize=16)
def _teacher(cfg: HierarchicalPolyConfig) -> tuple[Tensor, tuple[float, float]]:
    """The teacher (``A`` ``(d, d)`` or signs ``(d,)``) and the link's ``(shift, scale)``."""
    gen = torch.Generator().manual_seed(cfg.teacher_seed)
    if cfg.feature == "quadratic_form":
        b = torch.randn(cfg.d, cfg.d, generator=gen, dtype=torch.float64)
        teacher = (b + b.T) / 2
        # x^T A x - tr A = sum_i mu_i He_2(z_i) with z = Q^T x, A = Q diag(mu) Q^T
        mu = torch.linalg.eigvalsh(teacher).numpy()
        coeffs, phi_degree = mu / (math.sqrt(2.0) * np.linalg.norm(mu)), 2
    else:
        teacher = torch.randint(0, 2, (cfg.d,), generator=gen).double() * 2 - 1
        coeffs, phi_degree = teacher.numpy() / math.sqrt(math.factorial(cfg.k) * cfg.d), cfg.k
    m = feature_moments(phi_degree, coeffs, 2 * cfg.q)
    if cfg.link == "monomial":
        raw = np.zeros(cfg.q + 1)
        raw[cfg.q] = 1.0
    else:
        raw = np.polynomial.hermite_e.herme2poly(np.eye(cfg.q + 1)[cfg.q])
    mean = float(sum(c * m[j] for j, c in enumerate(raw)))
    second = float(sum(c * m[j] for j, c in enumerate(np.polynomial.polynomial.polymul(raw, raw))))
    return teacher, (mean, math.sqrt(second - mean**2))
