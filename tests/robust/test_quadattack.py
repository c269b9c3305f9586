"""QuadAttack: the feature-space QP checked against constraints and KKT conditions built here (not by
the library), infeasible orders, the data-space attacks on an easy model, and input validation.

    pytest tests/robust/test_quadattack.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from subq.robust import cwk_attack, cwk_loss, quadattack, solve_feature_qp

torch.set_num_threads(1)
TOL = 1e-5


def rows_and_bounds(weight: torch.Tensor, bias: torch.Tensor, targets: list[int], margin: float):
    """The ordered top-K constraints ``G z >= h`` written out one pair at a time."""
    g, h = [], []
    pairs = list(zip(targets[:-1], targets[1:], strict=True))
    pairs += [(targets[-1], c) for c in range(weight.shape[0]) if c not in targets]
    for hi, lo in pairs:
        g.append((weight[hi] - weight[lo]).numpy())
        h.append(margin - float(bias[hi] - bias[lo]))
    return np.array(g).reshape(len(pairs), weight.shape[1]), np.array(h)


def check_order(logits: torch.Tensor, targets: list[int], margin: float, tol: float = TOL) -> None:
    k = len(targets)
    top = logits.argsort(descending=True)[:k].tolist()
    assert top == targets, f"top-{k} of the logits is {top}, wanted {targets}"
    for a, b in zip(targets[:-1], targets[1:], strict=True):
        gap = float(logits[a] - logits[b])
        assert gap >= margin - tol, f"logit gap {a} over {b} is {gap:.6f} < margin {margin}"
    others = [c for c in range(len(logits)) if c not in targets]
    if others:
        gap = float(logits[targets[-1]] - logits[others].max())
        assert gap >= margin - tol, f"gap of t_K over the best non-target is {gap:.6f} < margin {margin}"


def random_head(c: int, f: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c, f, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    z = 3 * torch.randn(f, generator=gen, dtype=torch.float64)
    return w, b, z


@pytest.mark.parametrize(
    "c,f,targets,margin",
    [
        (10, 16, [7], 0.2),
        (10, 16, [3, 9, 0], 0.2),
        (10, 16, [2, 5, 8, 1, 0, 6, 4, 3, 9, 7], 0.5),
        (10, 6, [4, 1, 8, 2, 0], 0.2),  # F < C: W has a null space on the left
    ],
    ids=["C10-F16-K1", "C10-F16-K3", "C10-F16-K10-m0.5", "C10-F6-K5"],
)
def test_qp_solution_meets_the_order_and_is_optimal(c, f, targets, margin):
    w, b, z = random_head(c, f, seed=len(targets) + f)
    res = solve_feature_qp(z, w, b, targets, margin=margin)
    assert res.status == "solved", res.solver_status
    check_order(w @ res.z + b, targets, margin)
    assert abs(res.objective - float((res.z - z).square().sum())) < 1e-9

    # KKT, checked here: z* - z = G^T lam / 2 with lam >= 0 supported on the active constraints.
    g, h = rows_and_bounds(w, b, targets, margin)
    slack = g @ res.z.numpy() - h
    assert slack.min() >= -TOL
    active = slack < 1e-4
    scale = float((res.z - z).norm())
    resid = nnls(g[active].T / 2, (res.z - z).numpy())[1] if active.any() else scale
    assert resid <= 1e-5 * max(1.0, scale), f"KKT residual {resid:.2e} (step {scale:.3f})"


def test_qp_is_closer_than_another_feasible_point():
    c, f, targets, margin = 10, 16, [6, 2, 9, 4], 0.2
    w, b, z = random_head(c, f, seed=1)
    res = solve_feature_qp(z, w, b, targets, margin=margin)
    # Another feasible point: shift the features so the logits become exactly a wanted vector.
    logits = w @ z + b
    wanted = logits.clone()
    top = float(logits.max())
    for i, t in enumerate(targets):
        wanted[t] = top + 1.0 * (len(targets) - i)
    other = z + torch.linalg.lstsq(w, (wanted - logits).unsqueeze(1)).solution.squeeze(1)
    check_order(w @ other + b, targets, margin)
    d_star, d_other = float((res.z - z).norm()), float((other - z).norm())
    assert d_star < d_other, f"QP point at distance {d_star:.4f}, another feasible point at {d_other:.4f}"
    for s in (0.25, 0.5, 0.75):  # the segment between them stays feasible and no closer than z*
        mid = res.z + s * (other - res.z)
        check_order(w @ mid + b, targets, margin)
        assert float((mid - z).norm()) >= d_star - 1e-9


def test_qp_feasible_anchor_is_its_own_projection():
    w, b, _ = random_head(5, 8, seed=2)
    z = torch.linalg.lstsq(w, (torch.tensor([4.0, 3.0, 0.0, 0.0, 0.0], dtype=torch.float64) - b)[:, None])
    z = z.solution.squeeze(1)
    res = solve_feature_qp(z, w, b, [0, 1], margin=0.2)
    assert res.status == "solved" and res.objective == 0.0
    torch.testing.assert_close(res.z, z)


def farkas_check(certificate: torch.Tensor, g: np.ndarray, h: np.ndarray) -> None:
    """``lam >= 0, G^T lam = 0, h^T lam > 0`` proves ``G z >= h`` has no solution."""
    lam = certificate.numpy()
    assert lam.min() >= -1e-6, lam
    assert np.abs(g.T @ lam).max() <= 1e-5 * max(1.0, np.abs(lam).max()), g.T @ lam
    assert h @ lam > 1e-3, h @ lam


def test_qp_infeasible_order_with_one_feature():
    # logits z, 2z, 3z: class 1 over class 0 needs z > 0, class 0 over class 2 needs z < 0.
    w = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    res = solve_feature_qp(torch.zeros(1, dtype=torch.float64), w, b, [1, 0, 2], margin=0.2)
    assert res.status == "infeasible" and not res.feasible
    assert res.z is None and np.isnan(res.objective)
    farkas_check(res.certificate, *rows_and_bounds(w, b, [1, 0, 2], 0.2))
    # the monotone order of the same head is reachable
    ok = solve_feature_qp(torch.zeros(1, dtype=torch.float64), w, b, [2, 1, 0], margin=0.2)
    assert ok.status == "solved"
    check_order(w @ ok.z + b, [2, 1, 0], 0.2)


def test_qp_infeasible_bias_only_head_and_huge_margin():
    w = torch.zeros(5, 4, dtype=torch.float64)
    b = torch.arange(5, dtype=torch.float64)
    z = torch.randn(4, dtype=torch.float64)
    res = solve_feature_qp(z, w, b, [0], margin=0.2)  # the lowest bias cannot come first
    assert res.status == "infeasible"
    farkas_check(res.certificate, *rows_and_bounds(w, b, [0], 0.2))
    assert solve_feature_qp(z, w, b, [4, 3], margin=0.2).status == "solved"
    assert solve_feature_qp(z, w, b, [4, 3], margin=1.5).status == "infeasible"  # gaps are exactly 1


class LinearFeatures(torch.nn.Module):
    """An easy target: ``features(x) = tanh(x A)``, a random linear head on top."""

    def __init__(self, d: int, f: int, c: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(d, f, generator=gen) / d**0.5, requires_grad=False)
        self.head = torch.nn.Linear(f, c)  # left trainable: the attacks must not touch its .grad

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.a)


@pytest.mark.parametrize("attack", [quadattack, cwk_attack], ids=["quadattack", "cwk"])
@pytest.mark.parametrize("stop", [False, True], ids=["full-budget", "stop-on-success"])
def test_attack_succeeds_on_an_easy_model(attack, stop):
    torch.manual_seed(0)
    model = LinearFeatures(d=32, f=16, c=6, seed=0)
    x = torch.rand(4, 32)
    targets = torch.tensor([[1, 4], [0, 5], [3, 2], [5, 1]])
    res = attack(
        model.features, model.head.weight, model.head.bias, x, targets,
        iterations=80, lr=0.05, stop_on_success=stop, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert res.success.all(), f"success {res.success.tolist()}, first success at {res.first_success.tolist()}"
    adv = x + res.delta
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        logits = model.head(model.features(adv))
    for row in range(4):
        top = logits[row].argsort(descending=True)[:2].tolist()
        assert top == targets[row].tolist(), f"row {row}: top-2 {top}, wanted {targets[row].tolist()}"
    torch.testing.assert_close(res.l2, res.delta.flatten(1).norm(dim=-1))
    assert not res.qp_infeasible.any()
    assert model.head.weight.grad is None and model.head.bias.grad is None
    if stop:
        assert res.iterations == int(res.first_success.max()), "should stop at the last first success"


def test_cwk_loss_is_zero_exactly_when_the_order_holds():
    targets = torch.tensor([[2, 0, 3]])
    good = torch.tensor([[5.0, -1.0, 6.0, 4.0, 0.0]])
    swapped = torch.tensor([[6.0, -1.0, 5.0, 4.0, 0.0]])
    beaten = torch.tensor([[5.0, 4.5, 6.0, 4.0, 0.0]])  # a non-target above t_K
    assert cwk_loss(good, targets).item() == 0.0
    assert cwk_loss(swapped, targets).item() > 0.0
    assert cwk_loss(beaten, targets).item() == pytest.approx(0.5 / 3)


def test_bad_inputs_raise_naming_the_argument_and_sizes():
    w, b, z = random_head(10, 16, seed=3)
    with pytest.raises(ValueError, match=r"targets.*K=11.*C=10"):
        solve_feature_qp(z, w, b, list(range(10)) + [3])
    with pytest.raises(ValueError, match=r"targets must be distinct.*\[3, 5, 3\]"):
        solve_feature_qp(z, w, b, [3, 5, 3])
    with pytest.raises(ValueError, match=r"features must have shape \[F\]=\[16\].*\(15,\)"):
        solve_feature_qp(z[:15], w, b, [1, 2])
    with pytest.raises(ValueError, match=r"bias must have shape \[C\]=\[10\].*\(9,\)"):
        solve_feature_qp(z, w, b[:9], [1, 2])
    with pytest.raises(ValueError, match=r"margin must be .*>= 0"):
        solve_feature_qp(z, w, b, [1, 2], margin=-0.1)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        solve_feature_qp(z, w, b, [1, 10])
    x = torch.rand(3, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"targets must have shape \[B, K\] with B=3.*\(2, 2\)"):
        quadattack(lambda v: v, w, b, x, torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"features\(x\) must return \[B, F\]=\[3, 16\].*\(3, 15\)"):
        cwk_attack(lambda v: v[:, :15], w, b, x, torch.tensor([[1], [2], [3]]), iterations=1)
