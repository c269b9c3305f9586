"""Hierarchical polynomial targets g(p(x)): exact normalisation, labels, seeds, validation; the
layer-wise three-layer learner against the random-features kernel on a small setting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from subq.models.three_layer import RIDGE_GRID, RandomFeaturesRidge, ThreeLayerNet, ridge_loo
from subq.tasks import split_seed
from subq.tasks.hierarchical_poly import HierarchicalPolyConfig, feature_moments, hermite

pytestmark = pytest.mark.usefixtures("one_thread")


def _gauss_grid(d: int, nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product Gauss-Hermite rule for N(0, I_d): points (nodes^d, d), weights (nodes^d,)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    points = np.array(list(itertools.product(z, repeat=d)))
    weights = np.array([math.prod(c) for c in itertools.product(w, repeat=d)])
    return torch.from_numpy(points), torch.from_numpy(weights)


@pytest.mark.parametrize("n", range(7))
def test_hermite_matches_numpy(n):
    z = torch.linspace(-3, 3, 25, dtype=torch.float64)
    expected = np.polynomial.hermite_e.hermeval(z.numpy(), np.eye(n + 1)[n])
    np.testing.assert_allclose(hermite(z, n).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("degree", [2, 3])
def test_feature_moments_match_quadrature(degree):
    coeffs = np.array([0.3, -0.7, 0.5])
    x, w = _gauss_grid(3, 20)  # exact for the degree <= 18 polynomials integrated here
    p = (hermite(x, degree).numpy() * coeffs).sum(1)
    direct = [float(np.sum(w.numpy() * p**r)) for r in range(7)]
    np.testing.assert_allclose(feature_moments(degree, coeffs, 6), direct, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(d=3, feature="quadratic_form", k=2, q=3),
        dict(d=2, feature="hermite_sum", k=3, q=2),
        dict(d=3, feature="hermite_sum", k=2, q=3, link="hermite"),
    ],
    ids=["quadform-d3-q3", "hermsum-d2-k3-q2", "hermsum-d3-k2-hermite-q3"],
)
def test_p_and_h_exactly_normalised(kwargs):
    """Gauss-Hermite quadrature over x (exact for these polynomials): E p = 0, E p^2 = 1, E h = 0, E h^2 = 1,
    in dimensions small enough for p to be far from Gaussian."""
    cfg = HierarchicalPolyConfig(**kwargs)
    x, w = _gauss_grid(cfg.d, cfg.k * cfg.q + 2)
    p, h = cfg.feature_fn(x), cfg.target_fn(x)
    moments = [float(w @ v) for v in (p, p**2, h, h**2)]
    np.testing.assert_allclose(moments, [0.0, 1.0, 0.0, 1.0], atol=1e-9)


@pytest.mark.parametrize("feature,k", [("quadratic_form", 2), ("hermite_sum", 2), ("hermite_sum", 3)])
def test_statistics_over_samples(feature, k):
    cfg = HierarchicalPolyConfig(d=16, k=k, feature=feature, n_test=200_000)
    x, y = cfg.build("test", seed=3)
    p = cfg.feature_fn(x)
    assert abs(p.mean().item()) < 0.01 and abs(p.var().item() - 1) < 0.02, (p.mean().item(), p.var().item())
    if k == 2:  # for k = 3, h is a degree-9 polynomial of x: its sample variance converges too slowly
        mean, var = y.mean().item(), y.var().item()
        assert abs(mean) < 0.03 and abs(var - 1) < 0.1, (mean, var)


def test_quadratic_form_is_a_centred_quadratic():
    """p(x) = (x^T A x - tr A)/c: even in x, and p(x + t e_i) is a quadratic in t."""
    cfg = HierarchicalPolyConfig(d=6)
    x = torch.randn(50, 6, dtype=torch.float64)
    torch.testing.assert_close(cfg.feature_fn(x), cfg.feature_fn(-x))
    e = torch.zeros(6, dtype=torch.float64)
    e[2] = 1.0
    vals = torch.stack([cfg.feature_fn(x + t * e) for t in (0.0, 1.0, 2.0, 3.0)])
    third_difference = vals[3] - 3 * vals[2] + 3 * vals[1] - vals[0]
    assert third_difference.abs().max() < 1e-9


def test_labels_are_g_of_p_and_noise_only_on_train():
    cfg = HierarchicalPolyConfig(d=10, n_train=500, n_test=300)
    x, y = cfg.build("train", seed=1)
    assert x.shape == (500, 10) and y.shape == (500,) and y.dtype == torch.float64
    p = cfg.feature_fn(x)
    assert torch.equal(y, cfg.link_fn(p))
    # monomial link: y is exactly affine in p^3 with a positive slope
    design = torch.stack([p**3, torch.ones_like(p)], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    assert coef[0] > 0 and (design @ coef - y).abs().max() < 1e-9

    noisy = cfg.model_copy(update={"noise": 0.5})
    xn, yn = noisy.build("train", seed=1)
    assert torch.equal(xn, x)
    assert abs((yn - y).std().item() - 0.5) < 0.05
    xt, yt = noisy.build("test", seed=1)
    assert torch.equal(yt, noisy.target_fn(xt)), "test labels must be noiseless"


def test_train_and_test_seeds_disjoint():
    cfg = HierarchicalPolyConfig(d=8, n_train=64, n_test=64)
    assert split_seed(5, "train") != split_seed(5, "test")
    (xa, ya), (xb, yb) = cfg.build("train", 5), cfg.build("train", 5)
    assert torch.equal(xa, xb) and torch.equal(ya, yb), "same split and seed must give the same data"
    xt, _ = cfg.build("test", 5)
    same = torch.isclose(xa[:, None, :], xt[None, :, :]).all(-1)
    assert not same.any(), "a test input equals a train input"
    assert not torch.equal(cfg.build("train", 6)[0], xa)


def test_teacher_depends_on_teacher_seed_only():
    x = torch.randn(20, 8, dtype=torch.float64)
    a, b = HierarchicalPolyConfig(d=8, n_train=3), HierarchicalPolyConfig(d=8, n_train=99)
    assert torch.equal(a.target_fn(x), b.target_fn(x))
    other = HierarchicalPolyConfig(d=8, teacher_seed=1)
    assert not torch.allclose(a.feature_fn(x), other.feature_fn(x))


@pytest.mark.parametrize(
    "field,value",
    [("d", 0), ("k", 0), ("q", 0), ("n_train", 0), ("n_test", -3), ("noise", -0.1), ("teacher_seed", -1)],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        HierarchicalPolyConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_validation_rejects_unknown_keys_and_wrong_degree():
    with pytest.raises(ValidationError, match="extra"):
        HierarchicalPolyConfig(dim=8)
    with pytest.raises(ValidationError, match="k must be 2, got k=3"):
        HierarchicalPolyConfig(feature="quadratic_form", k=3)
    HierarchicalPolyConfig(feature="hermite_sum", k=3)


def test_feature_rejects_wrong_input_shape():
    cfg = HierarchicalPolyConfig(d=8)
    with pytest.raises(ValueError, match=r"x must be \(n, d=8\), got \(5, 7\)"):
        cfg.feature_fn(torch.zeros(5, 7))


@pytest.mark.parametrize("n,m", [(40, 30), (30, 40)], ids=["primal-n40-m30", "dual-n30-m40"])
def test_ridge_loo_solves_ridge_at_the_penalty_with_least_loo_error(n, m):
    """A dense signal under as much noise, so that the best penalty is neither the smallest nor the
    largest; the LOO errors are recomputed by refitting without each sample in turn."""
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(n, m, generator=gen, dtype=torch.float64)
    beta = 0.3 * torch.randn(m, generator=gen, dtype=torch.float64)
    y = f @ beta + torch.randn(n, generator=gen, dtype=torch.float64)
    w, lam = ridge_loo(f, y)
    eye = torch.eye(m, dtype=torch.float64)
    torch.testing.assert_close(w, torch.linalg.solve(f.T @ f + lam * eye, f.T @ y))

    def loo(lam_: float) -> float:
        errs = []
        for i in range(n):
            keep = torch.arange(n) != i
            wi = torch.linalg.solve(f[keep].T @ f[keep] + lam_ * eye, f[keep].T @ y[keep])
            errs.append((f[i] @ wi - y[i]).item() ** 2)
        return sum(errs) / n

    scale = (torch.linalg.eigvalsh(f.T @ f).sum() / min(n, m)).item()  # mean eigenvalue of the smaller Gram
    grid = [r * scale for r in RIDGE_GRID]
    errors = [loo(g) for g in grid]
    best = min(range(len(grid)), key=errors.__getitem__)
    assert 0 < best < len(grid) - 1, "the test problem should have an interior best penalty"
    assert lam == pytest.approx(grid[best]), f"picked {lam:.3g}, brute-force LOO picks {grid[best]:.3g}"


def test_layerwise_net_beats_random_features():
    """d=12, n = 24 d^2 (a fixed seed): the layer-wise net recovers p and beats the kernel clearly."""
    d, n, n2 = 12, 24 * 144, 6 * 144
    cfg = HierarchicalPolyConfig(d=d, n_train=n, n_test=4000)
    x, y = cfg.build("train", seed=0)
    xt, yt = cfg.build("test", seed=0)
    gen = torch.Generator().manual_seed(0)
    net = ThreeLayerNet(d, degree=2, generator=gen)
    net.fit_layerwise(x[: n - n2], y[: n - n2], x[n - n2 :], y[n - n2 :])
    rf = RandomFeaturesRidge(d, width=1024, generator=gen)
    rf.fit(x, y)

    def nmse(pred):
        return ((pred - yt) ** 2).mean().item() / yt.var().item()

    corr = torch.corrcoef(torch.stack([net.feature(xt), cfg.feature_fn(xt)]))[0, 1].item()
    err_net, err_stage1, err_rf = nmse(net(xt)), nmse(net.feature(xt)), nmse(rf(xt))
    assert corr > 0.9, f"stage 1 did not recover p: corr {corr:.3f}"
    assert err_net < 0.6 * err_rf, f"3-layer {err_net:.3f} vs random features {err_rf:.3f}"
    assert err_net < 0.6 * err_stage1, f"3-layer {err_net:.3f} vs its stage 1 alone {err_stage1:.3f}"


def test_learners_reject_wrong_input_shape():
    net = ThreeLayerNet(5, degree=2, width2=8)
    with pytest.raises(ValueError, match=r"\(n, d=5\), got \(3, 4\)"):
        net(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="width=0"):
        RandomFeaturesRidge(5, width=0)
