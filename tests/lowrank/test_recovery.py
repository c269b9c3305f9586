"""SubGM for robust low-rank recovery: the planted problem, the sub-gradient against autograd,
recovery in the quick reproduction's setting, and the config's validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from subq.lowrank import RecoveryConfig, make_problem, recover, subgradient_method
from subq.repro.subgm import QUICK
from tests.conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def _solve(m: int, outlier_fraction: float, r_prime: int, alpha: float, seed: int) -> float:
    """Final relative error with the quick reproduction's d, r and step schedule."""
    cfg = QUICK.cell(m, outlier_fraction, r_prime, alpha)
    return recover(cfg, seed=seed).final_error


def test_planted_problem():
    cfg = RecoveryConfig(d=7, r=2, r_prime=2, m=500, outlier_fraction=0.3, outlier_scale=50.0)
    prob = make_problem(cfg, seed=3)
    assert prob.A.shape == (500, 7, 7) and prob.y.shape == (500,) and prob.U_star.shape == (7, 2)
    assert torch.equal(prob.A, prob.A.transpose(1, 2)), "measurement matrices are stored symmetric"
    assert_close(prob.X_star, prob.U_star @ prob.U_star.T, 1e-14, "X* = U* U*^T")
    eig = torch.linalg.eigvalsh(prob.X_star)
    assert eig[:-2].abs().max() < 1e-12 and eig[-2:].min() > 1e-3, f"X* is PSD of rank 2, eigenvalues {eig}"
    assert abs(torch.linalg.matrix_norm(prob.X_star).item() - 1.0) < 1e-12
    clean = ~prob.outliers
    assert_close(prob.y[clean], prob.measure(prob.X_star)[clean], 1e-12, "noise-free measurements are exact")
    gross = (prob.y - prob.measure(prob.X_star))[prob.outliers].abs()
    assert 0.2 < prob.outliers.float().mean() < 0.4, f"outlier fraction {prob.outliers.float().mean():.2f}"
    assert gross.median() > 10.0, f"outliers are gross: median |s_i| {gross.median():.2f} (measurements ~1)"
    assert torch.equal(make_problem(cfg, seed=3).y, prob.y), "the seed fixes the problem"


@pytest.mark.parametrize("r_prime", [1, 3, 5], ids=lambda r: f"rprime{r}")
def test_subgradient_matches_autograd(r_prime):
    cfg = RecoveryConfig(d=5, r=1, r_prime=r_prime, m=40, outlier_fraction=0.25, noise=0.1)
    prob = make_problem(cfg, seed=1)
    U = torch.randn(5, r_prime, dtype=torch.float64, requires_grad=True)
    assert prob.residual(U).abs().min() > 1e-8, "f must be differentiable at the test point"
    prob.loss(U).backward()
    assert_close(prob.subgradient(U.detach()), U.grad, 1e-12, "sub-gradient vs autograd")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("r_prime", [QUICK.r, QUICK.d], ids=lambda r: f"rprime{r}")
def test_recovers_rank2_without_outliers(r_prime, seed):
    err = _solve(min(QUICK.ms), 0.0, r_prime, 1e-7, seed)
    assert err < 1e-3, f"r'={r_prime}, seed {seed}: relative error {err:.2e} (measured ~1e-5)"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("r_prime", [QUICK.r, QUICK.d], ids=lambda r: f"rprime{r}")
def test_recovers_with_outliers_from_small_init(r_prime, seed):
    err = _solve(max(QUICK.ms), 0.2, r_prime, 1e-7, seed)
    assert err < 1e-3, f"20% outliers, r'={r_prime}, seed {seed}: error {err:.2e} (measured <= 3.3e-5)"


@pytest.mark.parametrize("seed", [0, 1])
def test_large_init_overfits_outliers_when_over_parameterized(seed):
    m = min(QUICK.ms)  # below d (d + 1) / 2: a full-rank U U^T can fit the outliers
    large, small = (_solve(m, 0.2, QUICK.d, alpha, seed) for alpha in (1.0, 1e-7))
    assert large > 1.0, f"alpha=1, r'=d: relative error {large:.2e} (measured 4.7 to 13 over six seeds)"
    assert small < large / 100, f"alpha=1e-7 gives {small:.2e}, not 100x below alpha=1's {large:.2e}"


def test_errors_recorded_per_iteration():
    prob = make_problem(RecoveryConfig(d=6, r=1, m=60), seed=0)
    res = subgradient_method(prob, r_prime=3, alpha=1e-3, eta0=0.2, rho=0.99, iters=25, seed=0)
    assert len(res.errors) == len(res.losses) == 26
    assert res.errors[-1] == pytest.approx(prob.relative_error(res.U), rel=1e-12)
    assert res.losses[-1] == pytest.approx(prob.loss(res.U).item(), rel=1e-12)
    assert res.errors[0] == pytest.approx(1.0, abs=1e-5), "U_0 U_0^T ~ alpha^2 is ~0 next to X*"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d=4, r=5, r_prime=5), r"r=5 exceeds d=4"),
        (dict(d=10, r=3, r_prime=2), r"r_prime=2 must satisfy r=3 <= r_prime <= d=10"),
        (dict(d=10, r=3, r_prime=11), r"r_prime=11 must satisfy r=3 <= r_prime <= d=10"),
        (dict(m=0), r"m\n"),
        (dict(outlier_fraction=1.0), r"outlier_fraction\n"),
        (dict(outlier_fraction=-0.1), r"outlier_fraction\n"),
        (dict(alpha=0.0), r"alpha\n"),
        (dict(rho=1.5), r"rho\n"),
        (dict(bogus=1), r"bogus\n"),
    ],
    ids=["r>d", "rprime<r", "rprime>d", "m0", "p1", "p-neg", "alpha0", "rho>1", "unknown-key"],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        RecoveryConfig(**kwargs)


def test_solver_validation_names_the_argument():
    prob = make_problem(RecoveryConfig(d=6, r=2, r_prime=2, m=30), seed=0)
    kw = dict(alpha=1e-3, eta0=0.1, rho=0.99, iters=5)
    with pytest.raises(ValueError, match=r"r_prime=7 must satisfy r=2 <= r_prime <= d=6"):
        subgradient_method(prob, r_prime=7, **kw)
    with pytest.raises(ValueError, match=r"r_prime=1 must satisfy"):
        subgradient_method(prob, r_prime=1, **kw)
    with pytest.raises(ValueError, match=r"eta0 must be > 0, got -0.1"):
        subgradient_method(prob, r_prime=2, **{**kw, "eta0": -0.1})
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\], got 0"):
        subgradient_method(prob, r_prime=2, **{**kw, "rho": 0.0})
