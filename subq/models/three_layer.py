"""Three-layer network with a width-1 bottleneck, its layer-wise training, and a random-features baseline.

The learner of Wang, Nichani & Lee, "Learning hierarchical polynomials with three-layer neural
networks" (arXiv 2311.13774, ICLR 2024), for targets ``h = g∘p`` (``subq/tasks/hierarchical_poly.py``):

    eta(x) = u^T sigma1(V x + s)                      V (m1, d), s (m1,) random and fixed; u trained first
    f(x)   = c^T relu(a z(x) + b) + c0 z(x) + c_bias  z = (eta - shift) / scale; a, b random and fixed

Stage 1 fits ``u`` on a first data set ``D1``; stage 2 fits ``(c, c0, c_bias)`` on a fresh data set
``D2`` (sample splitting), after setting ``shift`` and ``scale`` to the mean and the largest
deviation of ``eta`` on ``D2`` so that the kinks ``-b/a`` (``b ~ U[-1, 1]``) cover its range.
Each stage is a ridge regression with its penalty picked by exact leave-one-out error: the point
that gradient descent with weight decay on that layer alone converges to.

Checked against the paper's abstract and (through a third-party summary that quotes it) its
experiment section: the target class; the ``O~(d^k)`` versus ``Theta~(d^{kq})`` claim; training by
layer-wise gradient descent on the square loss (the paper's Algorithm 1), whose first stage
recovers ``p``; parameters named ``(u, s, V, a, b, c)``; ``sigma1(z) = z^3`` for a degree-3 feature,
``sigma2 = ReLU``, ``m1 = d^2``, ``m2 = 1000``; the correlation of the learned feature with ``p`` as
the diagnostic. (The paper's own experiment trains all parameters jointly with Adam and muP; the
layer-wise procedure is its theory's.) Not checked, taken from PAPERS.md section 13.2 (marked
unverified there): the skip term ``c0 * eta``, a fixed ``V``, and one ridge-type fit per stage.
This module's own choices: ``sigma1(z) = z^k`` for every ``k``, the rescaling of ``eta`` before
stage 2, and the leave-one-out choice of the penalties.

Run through ``subq repro hpoly`` (``subq/repro/hpoly.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

RIDGE_GRID = tuple(10.0**e for e in range(-8, 3))
"""Ridge penalties tried, relative to the mean eigenvalue of the Gram matrix."""


def ridge_loo(
    features: Tensor, y: Tensor, rel_lambdas: tuple[float, ...] = RIDGE_GRID
) -> tuple[Tensor, float]:
    """Ridge regression with the penalty chosen by exact leave-one-out (LOO) error.

    ``features``: ``(n, m)``, ``y``: ``(n,)``; returns the weights ``(m,)`` and the chosen penalty
    ``lambda`` (absolute). Solves ``min_w |F w - y|^2 + lambda |w|^2`` through one eigendecomposition
    of ``F^T F`` (when ``m <= n``) or ``F F^T`` (when ``m > n``); the LOO residual of sample ``i`` is
    ``(y_i - yhat_i) / (1 - H_ii)`` with ``H`` the hat matrix.
    """
    if features.dim() != 2 or y.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (n, m) and y (n,): got {tuple(features.shape)} and {tuple(y.shape)}"
        )
    f, y = features.double(), y.double()
    n, m = f.shape
    if m <= n:
        evals, q = torch.linalg.eigh(f.T @ f)
        basis = f @ q  # (n, m): F's coordinates in the eigenbasis
    else:
        evals, basis = torch.linalg.eigh(f @ f.T)  # (n,), (n, n)
    evals = evals.clamp_min(0)
    proj = basis.T @ y
    scale = evals.mean().item() or 1.0
    best = (math.inf, 0.0)
    for rel in rel_lambdas:
        lam = rel * scale
        # primal: yhat = B diag(1/(e+lam)) B^T y, B = F Q;  dual: yhat = U diag(e/(e+lam)) U^T y
        shrink = 1 / (evals + lam) if m <= n else evals / (evals + lam)
        fitted = basis @ (shrink * proj)
        leverage = basis.pow(2) @ shrink
        loo = (((y - fitted) / (1 - leverage).clamp_min(1e-12)) ** 2).mean().item()
        if loo < best[0]:
            best = (loo, lam)
    lam = best[1]
    if m <= n:
        weights = q @ (proj / (evals + lam))
    else:
        weights = f.T @ (basis @ (proj / (evals + lam)))
    return weights, lam


def _sphere(rows: int, d: int, generator: torch.Generator) -> Tensor:
    w = torch.randn(rows, d, generator=generator, dtype=torch.float64)
    return w / w.norm(dim=1, keepdim=True)


class ThreeLayerNet(nn.Module):
    """Three-layer network with a scalar bottleneck ``eta``; see the module docstring.

    Args:
        d: input dimension.
        degree: ``k``, the first activation is ``sigma1(z) = z^k``.
        width1: ``m1`` random first-layer units (``V`` rows uniform on the unit sphere, ``s ~ N(0, 1)``);
            ``None``: ``d^k`` as in the paper's experiment.
        width2: ``m2`` random ReLU units of the second hidden layer (``a = ±1``, ``b ~ U[-1, 1]``).
        generator: source of the fixed random weights.
    """

    def __init__(
        self,
        d: int,
        *,
        degree: int,
        width1: int | None = None,
        width2: int = 256,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if d < 1 or degree < 1 or width2 < 1 or (width1 is not None and width1 < 1):
            raise ValueError(
                f"d, degree, width1, width2 must be positive: got {d}, {degree}, {width1}, {width2}"
            )
        gen = generator or torch.Generator().manual_seed(0)
        width1 = width1 or d**degree
        self.d, self.degree = d, degree
        self.register_buffer("V", _sphere(width1, d, gen))  # (m1, d)
        self.register_buffer("s", torch.randn(width1, generator=gen, dtype=torch.float64))  # (m1,)
        self.register_buffer("a", torch.randint(0, 2, (width2,), generator=gen).double() * 2 - 1)  # (m2,)
        self.register_buffer("b", torch.rand(width2, generator=gen, dtype=torch.float64) * 2 - 1)
        self.u = nn.Parameter(torch.zeros(width1, dtype=torch.float64), requires_grad=False)
        # (m2 + 2,): c, then c0, then c_bias
        self.c = nn.Parameter(torch.zeros(width2 + 2, dtype=torch.float64), requires_grad=False)
        self.register_buffer("eta_shift_scale", torch.tensor([0.0, 1.0], dtype=torch.float64))

    def _first_features(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be (n, d={self.d}), got {tuple(x.shape)}")
        return (x.double() @ self.V.T + self.s) ** self.degree  # (n, m1)

    def _second_features(self, eta: Tensor) -> Tensor:
        z = (eta - self.eta_shift_scale[0]) / self.eta_shift_scale[1]  # (n,)
        hidden = torch.relu(z[:, None] * self.a + self.b)  # (n, m2)
        return torch.cat([hidden, z[:, None], torch.ones_like(z)[:, None]], dim=1)  # (n, m2 + 2)

    def feature(self, x: Tensor) -> Tensor:
        """The learned bottleneck ``eta(x)``: ``x`` ``(n, d)`` -> ``(n,)``."""
        return self._first_features(x) @ self.u

    def forward(self, x: Tensor) -> Tensor:
        """``f(x)``: ``x`` ``(n, d)`` -> ``(n,)`` float64."""
        return self._second_features(self.feature(x)) @ self.c

    @torch.no_grad()
    def fit_layerwise(self, x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor) -> dict[str, float]:
        """Stage 1 on ``(x1 (n1, d), y1 (n1,))``, then stage 2 on fresh ``(x2 (n2, d), y2 (n2,))``.

        Returns the chosen ridge penalties ``{"lambda1", "lambda2"}``.
        """
        u, lam1 = ridge_loo(self._first_features(x1), y1)
        self.u.copy_(u)
        eta = self.feature(x2)
        shift = eta.mean()
        self.eta_shift_scale.copy_(torch.stack([shift, (eta - shift).abs().max().clamp_min(1e-12)]))
        c, lam2 = ridge_loo(self._second_features(eta), y2)
        self.c.copy_(c)
        return {"lambda1": lam1, "lambda2": lam2}


class RandomFeaturesRidge(nn.Module):
    """Kernel baseline: ridge regression on ``relu(W x + b)``, ``W`` rows uniform on the unit sphere.

    ``b ~ N(0, 1)``; ``width`` features; the fit is :func:`ridge_loo`. ``x`` ``(n, d)`` -> ``(n,)``.
    """

    def __init__(self, d: int, *, width: int, generator: torch.Generator | None = None):
        super().__init__()
        if d < 1 or width < 1:
            raise ValueError(f"d and width must be positive: got d={d}, width={width}")
        gen = generator or torch.Generator().manual_seed(0)
        self.d = d
        self.register_buffer("W", _sphere(width, d, gen))  # (width, d)
        self.register_buffer("bias", torch.randn(width, generator=gen, dtype=torch.float64))
        self.w = nn.Parameter(torch.zeros(width, dtype=torch.float64), requires_grad=False)

    def _features(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be (n, d={self.d}), got {tuple(x.shape)}")
        return torch.relu(x.double() @ self.W.T + self.bias)  # (n, width)

    def forward(self, x: Tensor) -> Tensor:
        return self._features(x) @ self.w

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Fit on ``x (n, d)``, ``y (n,)``; returns ``{"lambda": chosen penalty}``."""
        w, lam = ridge_loo(self._features(x), y)
        self.w.copy_(w)
        return {"lambda": lam}
