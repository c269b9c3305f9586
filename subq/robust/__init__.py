"""Adversarial robustness: QuadAttack (ordered top-K attacks by quadratic programming) and its CW^K baseline.

    from subq.robust import quadattack, cwk_attack, solve_feature_qp

Reproduction: ``subq repro quadattack --quick``.
"""

from subq.robust.quadattack import (
    AttackResult,
    FeatureQP,
    OrderedTopKQP,
    cwk_attack,
    cwk_loss,
    ordered_topk_constraints,
    ordered_topk_success,
    quadattack,
    solve_feature_qp,
)

__all__ = [
    "AttackResult",
    "FeatureQP",
    "OrderedTopKQP",
    "cwk_attack",
    "cwk_loss",
    "ordered_topk_constraints",
    "ordered_topk_success",
    "quadattack",
    "solve_feature_qp",
]
