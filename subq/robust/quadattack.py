"""QuadAttack: ordered top-K targeted attacks by quadratic programming (Paniagua, Grainger and Wu,
NeurIPS 2023, arXiv 2312.11510), and the CW^K margin-loss baseline it is compared with.

A white-box attack that makes a classifier rank K chosen classes ``t_1 > t_2 > ... > t_K`` on top,
in that order. Two stages:

1. **Feature-space QP.** With penultimate features ``f`` (``[F]``) and the final linear layer
   ``logits = W f + b`` (``W: [C, F]``), find the closest feature vector whose logits carry the
   order with margin ``m``::

       z* = argmin_z ||z - f||^2   s.t.   (w_{t_i} - w_{t_{i+1}}) z + b_{t_i} - b_{t_{i+1}} >= m,  i < K
                                          (w_{t_K} - w_c) z + b_{t_K} - b_c >= m,  c not a target

   (the reference's ``Q = 2I, p = -2f, G = -DW, h = -(m - Db)``: the same problem).
2. **Data-space perturbation.** Adam(W) on the input perturbation ``delta`` with the loss
   ``coef_b * ||f(x + delta) - z*||^2 + ||delta||^2`` (``z*`` re-solved at every step for the
   current features; its gradient in ``f`` is ``2 (f - z*)`` whether or not ``z*`` is detached),
   keeping the smallest successful ``delta`` per sample and shrinking ``coef_b`` by 0.75 each time
   the sample improves.

Used by ``subq repro quadattack [--quick]`` (:mod:`subq.repro.quadattack`).

Why OSQP for the QP: the problem is tiny per sample (F variables, C - 1 constraints) but solved at
every attack step for every sample, with only the linear term changing. OSQP (an ADMM solver for
sparse QPs, one small compiled dependency with no modelling layer) factors the KKT matrix once per
target order and then re-solves after ``update(q=...)`` warm-started from the previous answer
(about 0.1 ms for F = 64, C = 10); and when the margins cannot be met it returns a primal
infeasibility certificate instead of a garbage point. cvxpy would re-canonicalise the
problem at every call (or need a parametrised problem) and pull in several solvers; qpsolvers is
only a front end over solvers like OSQP; qpth (the reference's choice) is a batched GPU
interior-point method that the reference notes is unstable at batch size 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import signature

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_OSQP_STATUS = {
    "solved": "solved",
    "solved inaccurate": "solved_inaccurate",
    "primal infeasible": "infeasible",
    "primal infeasible inaccurate": "infeasible",
    "maximum iterations reached": "max_iter",
}


def _import_osqp():
    try:
        import osqp
        import scipy.sparse
    except ImportError as err:
        raise ImportError(
            "QuadAttack's feature-space QP needs osqp and scipy: install them with pip install 'subq[repro]'"
        ) from err
    return osqp, scipy.sparse


def _check_head(weight: Tensor, bias: Tensor | None) -> None:
    if weight.dim() != 2 or weight.shape[0] < 2:
        raise ValueError(f"weight must be [C, F] with C >= 2 classes, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias must have shape [C]=[{weight.shape[0]}] to match weight {tuple(weight.shape)}, "
            f"got {tuple(bias.shape)}"
        )


def _check_targets(targets: Tensor | Sequence[int], num_classes: int, batch: int | None = None) -> Tensor:
    """Targets as a LongTensor ``[K]`` (``batch`` None) or ``[B, K]``; distinct, in range, K <= C."""
    t = torch.as_tensor(targets)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    want = 1 if batch is None else 2
    if t.dim() != want or (batch is not None and t.shape[0] != batch) or t.shape[-1] == 0:
        expect = "[K]" if batch is None else f"[B, K] with B={batch}"
        raise ValueError(f"targets must have shape {expect} and K >= 1, got {tuple(t.shape)}")
    k = t.shape[-1]
    if k > num_classes:
        raise ValueError(f"targets asks for K={k} ordered classes but the classifier has C={num_classes}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), got min {t.min()} and max {t.max()}")
    rows = t.view(-1, k)
    dup = (rows.sort(dim=1).values.diff(dim=1) == 0).any(dim=1)
    if dup.any():
        i = int(dup.nonzero()[0])
        raise ValueError(
            f"targets must be distinct classes; row {i} of shape {tuple(t.shape)}: {rows[i].tolist()}"
        )
    return t


def ordered_topk_constraints(
    weight: Tensor, bias: Tensor | None, targets: Tensor | Sequence[int], margin: float
) -> tuple[Tensor, Tensor]:
    """The QP's constraints as ``G z >= h``.

    Args:
        weight: ``[C, F]`` final linear layer; bias: ``[C]`` or None.
        targets: ``[K]`` distinct classes, most wanted first.
        margin: required logit gap ``m``.

    Returns:
        ``G: [C - 1, F]`` and ``h: [C - 1]``. Rows ``0 .. K-2`` ask ``t_i`` over ``t_{i+1}``; the
        remaining ``C - K`` rows ask ``t_K`` over each non-target class in increasing index order.
    """
    _check_head(weight, bias)
    c = weight.shape[0]
    t = _check_targets(targets, c)
    bias = torch.zeros(c, dtype=weight.dtype, device=weight.device) if bias is None else bias
    mask = torch.ones(c, dtype=torch.bool, device=weight.device)
    mask[t] = False
    others = mask.nonzero().squeeze(1)
    hi = torch.cat([t[:-1], t[-1].expand(len(others))])  # the class that must be larger
    lo = torch.cat([t[1:], others])
    g = weight[hi] - weight[lo]
    h = margin - (bias[hi] - bias[lo])
    return g, h


@dataclass
class FeatureQP:
    """Result of one feature-space QP.

    Attributes:
        z: ``[F]`` the projected features ``z*`` (the last iterate when ``status == "max_iter"``);
            None when infeasible.
        status: ``"solved"``, ``"solved_inaccurate"``, ``"infeasible"`` (no feature vector meets the
            order with this margin), ``"max_iter"``, or OSQP's own words for anything else.
        solver_status: OSQP's status string (``"anchor feasible"`` when ``f`` already meets the
            constraints, ``z* = f`` and OSQP is not called).
        iterations: ADMM iterations.
        objective: ``||z* - f||^2`` (NaN when infeasible).
        solve_time: seconds in OSQP.
        certificate: ``[C - 1]`` when infeasible: non-negative weights ``y`` on the constraint rows of
            :func:`ordered_topk_constraints` with ``G^T y ~ 0`` and ``h^T y > 0`` (Farkas), i.e. the
            constraints that contradict each other; None otherwise.
    """

    z: Tensor | None
    status: str
    solver_status: str
    iterations: int
    objective: float
    solve_time: float
    certificate: Tensor | None = None

    @property
    def feasible(self) -> bool:
        return self.status in ("solved", "solved_inaccurate")


class OrderedTopKQP:
    """The feature-space QP for one target order, set up once and re-solved for new anchors.

    Args:
        weight: ``[C, F]`` final linear layer (C >= 2).
        bias: ``[C]`` or None.
        targets: ``[K]`` distinct classes, most wanted first (``1 <= K <= C``).
        margin: logit gap between consecutive targets and between ``t_K`` and every other class
            (default 0.2, the reference's ``cvx_proj_margin``); must be >= 0.
        eps: OSQP absolute and relative tolerance (default 1e-8: margins hold to about 1e-6).
        max_iter: ADMM iteration cap (default 20000).

    ``project(f)`` warm-starts from the previous solution: consecutive attack steps move ``f``
    only a little, so later solves take few iterations.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor | Sequence[int],
        *,
        margin: float = 0.2,
        eps: float = 1e-8,
        max_iter: int = 20000,
    ):
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        osqp, sparse = _import_osqp()
        bias = None if bias is None else bias.detach()
        g, h = ordered_topk_constraints(weight.detach(), bias, targets, margin)
        self.num_features = weight.shape[1]
        self.targets = _check_targets(targets, weight.shape[0])
        self.margin = float(margin)
        self._g, self._h = g.double().cpu().numpy(), h.double().cpu().numpy()
        self._solver = osqp.OSQP()
        # osqp >= 1.0 warns unless told whether a non-"solved" status should raise (it should not)
        self._solve_kwargs = (
            {"raise_error": False} if "raise_error" in signature(self._solver.solve).parameters else {}
        )
        self._solver.setup(
            P=sparse.identity(self.num_features, format="csc") * 2.0,
            q=np.zeros(self.num_features),
            A=sparse.csc_matrix(self._g),
            l=self._h,
            u=np.full(len(self._h), np.inf),
            verbose=False,
            eps_abs=eps,
            eps_rel=eps,
            max_iter=max_iter,
            # warm starting is on by default. No solution polishing: osqp 1.x prints to stdout whenever
            # a polish finds no active set, whatever `verbose` says (osqp/osqp#785); a tight eps gives
            # the accuracy instead.
        )

    def project(self, f: Tensor) -> FeatureQP:
        """Solve ``min ||z - f||^2`` over the ordered top-K polytope. ``f: [F]`` -> :class:`FeatureQP`
        (``z`` in ``f``'s dtype and device)."""
        if tuple(f.shape) != (self.num_features,):
            raise ValueError(
                f"features must have shape [F]=[{self.num_features}] (weight is [C, F]), got {tuple(f.shape)}"
            )
        anchor = f.detach().double().cpu().numpy()
        if np.all(self._g @ anchor >= self._h):  # already in the polytope: z* = f
            return FeatureQP(
                z=f.detach().clone(), status="solved", solver_status="anchor feasible",
                iterations=0, objective=0.0, solve_time=0.0,
            )  # fmt: skip
        self._solver.update(q=-2.0 * anchor)
        res = self._solver.solve(**self._solve_kwargs)
        raw = res.info.status
        status = _OSQP_STATUS.get(raw, raw.replace(" ", "_"))
        z, objective, certificate = None, float("nan"), None
        if status == "infeasible":
            y = -np.asarray(res.prim_inf_cert, dtype=np.float64)
            certificate = torch.from_numpy(y / max(np.abs(y).max(), 1e-300))
        elif res.x is not None and np.all(np.isfinite(res.x)):
            z = torch.from_numpy(np.array(res.x)).to(dtype=f.dtype, device=f.device)
            objective = float(np.sum((res.x - anchor) ** 2))
        return FeatureQP(
            z=z,
            status=status,
            solver_status=raw,
            iterations=int(res.info.iter),
            objective=objective,
            solve_time=float(res.info.solve_time),
            certificate=certificate,
        )


def solve_feature_qp(
    f: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor | Sequence[int],
    *,
    margin: float = 0.2,
    eps: float = 1e-8,
    max_iter: int = 20000,
) -> FeatureQP:
    """One feature-space QP: the features closest to ``f: [F]`` whose logits ``weight @ z + bias``
    rank ``targets: [K]`` on top in order with gaps >= ``margin``. See :class:`OrderedTopKQP`.

    An unmeetable order (e.g. a rank-deficient ``weight`` that cannot separate the targets, or a
    bias-only head) returns ``status="infeasible"`` with a certificate; it does not raise.
    """
    return OrderedTopKQP(weight, bias, targets, margin=margin, eps=eps, max_iter=max_iter).project(f)


def ordered_topk_success(logits: Tensor, targets: Tensor) -> Tensor:
    """``logits: [B, C]``, ``targets: [B, K]`` -> bool ``[B]``: the top-K classes are ``targets`` in order."""
    k = targets.shape[-1]
    return (logits.topk(k, dim=-1).indices == targets).all(dim=-1)


def cwk_loss(logits: Tensor, targets: Tensor, confidence: float = 0.0) -> Tensor:
    """CW^K, the top-K extension of the Carlini-Wagner margin loss (the paper's baseline).

    For each i = 1..K it hinges ``max_{c not in t_<i} z_c - min_{j<i} z_{t_j} + confidence``, then
    ``max_{c not a target} z_c - min_j z_{t_j} + confidence``, and divides the sum by K: zero exactly
    when every prefix ``t_1..t_i`` is the top-i set, i.e. when the order is achieved.

    Args:
        logits: ``[B, C]``; targets: ``[B, K]``; confidence: the hinge margin (reference: 0).

    Returns:
        ``[B]`` per-sample loss.
    """
    b, k = targets.shape
    rows = torch.arange(b, device=logits.device)
    taken = torch.zeros_like(logits, dtype=torch.bool)
    smallest = logits.new_full((b,), float("inf"))
    loss = logits.new_zeros(b)
    for i in range(k + 1):
        if i > 0:
            other = logits.masked_fill(taken, float("-inf")).amax(dim=-1)
            loss = loss + (other - smallest + confidence).clamp(min=0)
        if i < k:
            taken = taken.scatter(1, targets[:, i : i + 1], True)
            smallest = torch.minimum(smallest, logits[rows, targets[:, i]])
    return loss / k


@dataclass
class AttackResult:
    """Outcome of a data-space attack on a batch of B inputs.

    Attributes:
        delta: ``x``-shaped perturbation: the smallest-L2 successful one per sample, or the last
            iterate where the attack never succeeded.
        success: bool ``[B]``: ``x + delta`` has the targets as its ordered top-K.
        l1, l2, linf: ``[B]`` norms of ``delta``.
        first_success: long ``[B]``: iteration of the first success, -1 if none.
        qp_infeasible: bool ``[B]``: the feature-space QP had no solution at some step (QuadAttack only).
        iterations: forward/backward passes run.
    """

    delta: Tensor
    success: Tensor
    l1: Tensor
    l2: Tensor
    linf: Tensor
    first_success: Tensor
    qp_infeasible: Tensor
    iterations: int


def _check_attack_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, targets) -> Tensor:
    _check_head(weight, bias)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch [B, ...] with B >= 1, got shape {tuple(x.shape)}")
    return _check_targets(targets, weight.shape[0], batch=x.shape[0]).to(x.device)


def _perturbation_search(
    features: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor | None,
    x: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    coef: float,
    iterations: int,
    lr: float,
    coef_decay: float,
    warmup_its: int,
    init_std: float,
    bounds: tuple[float, float] | None,
    stop_on_success: bool,
    generator: torch.Generator | None,
    qp_infeasible: Tensor,
) -> AttackResult:
    """The reference's optimisation loop (``guides/unguided.py``), shared by both attacks.

    ``loss_fn(f, logits) -> [B]`` is the per-sample attack loss.
    """
    if iterations < 1 or lr <= 0 or coef <= 0 or init_std < 0:
        raise ValueError(
            f"need iterations >= 1, lr > 0, coef > 0, init_std >= 0; got iterations={iterations}, "
            f"lr={lr}, coef={coef}, init_std={init_std}"
        )
    b = x.shape[0]
    x, weight = x.detach(), weight.detach()  # gradients flow to delta only
    bias = None if bias is None else bias.detach()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    delta = (noise * init_std).requires_grad_(True)
    coefs = torch.full((b,), float(coef), dtype=x.dtype, device=x.device)
    best = torch.zeros_like(x)
    best_l2 = torch.full((b,), float("inf"), device=x.device)
    first = torch.full((b,), -1, dtype=torch.long, device=x.device)
    optimizer = torch.optim.AdamW([delta], lr=lr)
    it = 0
    for it in range(1, iterations + 1):
        if it == warmup_its + 1:
            optimizer = torch.optim.AdamW([delta], lr=lr)  # the reference resets the state after warm-up
        f = features(x + delta)  # [B, F]
        if f.dim() != 2 or tuple(f.shape) != (b, weight.shape[1]):
            raise ValueError(
                f"features(x) must return [B, F]=[{b}, {weight.shape[1]}] to match weight "
                f"{tuple(weight.shape)}, got {tuple(f.shape)}"
            )
        logits = F.linear(f, weight, bias)  # [B, C]
        with torch.no_grad():
            ok = ordered_topk_success(logits, targets)
            l2 = delta.flatten(1).norm(dim=-1)
            improved = ok & (l2 <= best_l2)
            best[improved] = delta[improved]
            best_l2[improved] = l2[improved]
            first[ok & (first < 0)] = it
        done = first >= 0
        if stop_on_success and done.all():
            break
        loss = (coefs * loss_fn(f, logits)).sum() + delta.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            coefs[improved] *= coef_decay
            if bounds is not None:
                delta.copy_((x + delta).clamp(*bounds) - x)
            if stop_on_success:
                delta[done] = best[done]
    success = first >= 0
    out = torch.where(success.view(-1, *([1] * (x.dim() - 1))), best, delta.detach())
    flat = out.flatten(1)
    return AttackResult(
        delta=out,
        success=success,
        l1=flat.norm(p=1, dim=-1),
        l2=flat.norm(dim=-1),
        linf=flat.abs().amax(dim=-1),
        first_success=first,
        qp_infeasible=qp_infeasible,
        iterations=it,
    )


def quadattack(
    features: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor | None,
    x: Tensor,
    targets: Tensor,
    *,
    margin: float = 0.2,
    coef: float = 10.0,
    iterations: int = 60,
    lr: float = 2.2e-3,
    coef_decay: float = 0.75,
    warmup_its: int = 5,
    init_std: float = 2e-3,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    stop_on_success: bool = False,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """QuadAttack on a batch: move each ``x_b`` so its features approach the QP projection ``z*_b``.

    Args:
        features: maps inputs ``[B, ...]`` to penultimate features ``[B, F]``, differentiably (put
            the model in eval mode first).
        weight: ``[C, F]`` and bias: ``[C]`` or None: the final linear layer, ``logits = f W^T + b``.
        x: ``[B, ...]`` clean inputs.
        targets: ``[B, K]`` distinct classes per row, most wanted first.
        margin: QP logit margin (reference ``cvx_proj_margin`` 0.2).
        coef: initial weight of the feature loss; the reference's single binary-search step over
            ``[0, topk_loss_coef_upper = 20]`` evaluates the midpoint, 10.
        iterations: forward/backward passes (reference: 30, or 60 for the "1x60" budget).
        lr: AdamW learning rate (reference ``unguided_lr`` 2.2e-3, tuned for 224x224 ImageNet).
        coef_decay: factor on ``coef_b`` each time sample b finds a smaller successful ``delta``.
        warmup_its: the optimiser state is reset after this many steps (reference ``opt_warmup_its``).
        init_std: std of the random initial ``delta`` (reference 2e-3).
        bounds: ``x + delta`` is clamped into this box after every step; None for no box.
        stop_on_success: freeze each sample at its first success and stop once all have succeeded
            (the reference keeps going to shrink ``delta``; that is the default).
        generator: for the initial noise.

    Returns:
        :class:`AttackResult`.
    """
    t = _check_attack_inputs(x, weight, bias, targets)
    w, bb = weight.detach(), None if bias is None else bias.detach()
    projectors = [OrderedTopKQP(w, bb, row, margin=margin) for row in t.cpu()]
    infeasible = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def feature_loss(f: Tensor, logits: Tensor) -> Tensor:
        z_star = f.detach().clone()  # an infeasible sample gets zero feature loss
        for i, qp in enumerate(projectors):
            res = qp.project(f[i].detach())
            if res.z is None:
                infeasible[i] = True
            else:
                z_star[i] = res.z
        return (f - z_star).square().sum(dim=-1)

    return _perturbation_search(
        features, weight, bias, x, t, feature_loss,
        coef=coef, iterations=iterations, lr=lr, coef_decay=coef_decay, warmup_its=warmup_its,
        init_std=init_std, bounds=bounds, stop_on_success=stop_on_success, generator=generator,
        qp_infeasible=infeasible,
    )  # fmt: skip


def cwk_attack(
    features: Callable[[Tensor], Tensor],
    weight: Tensor,
    bias: Tensor | None,
    x: Tensor,
    targets: Tensor,
    *,
    confidence: float = 0.0,
    coef: float = 10.0,
    iterations: int = 60,
    lr: float = 2.2e-3,
    coef_decay: float = 0.75,
    warmup_its: int = 5,
    init_std: float = 2e-3,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    stop_on_success: bool = False,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """The CW^K baseline: the same loop and budget as :func:`quadattack` with :func:`cwk_loss` on
    the logits in place of the feature-space QP loss. Arguments as :func:`quadattack`;
    ``confidence`` is the hinge margin (reference 0)."""
    t = _check_attack_inputs(x, weight, bias, targets)
    return _perturbation_search(
        features, weight, bias, x, t, lambda f, logits: cwk_loss(logits, t, confidence),
        coef=coef, iterations=iterations, lr=lr, coef_decay=coef_decay, warmup_its=warmup_its,
        init_std=init_std, bounds=bounds, stop_on_success=stop_on_success, generator=generator,
        qp_infeasible=torch.zeros(x.shape[0], dtype=torch.bool, device=x.device),
    )  # fmt: skip
