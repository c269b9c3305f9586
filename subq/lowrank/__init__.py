"""Robust low-rank matrix recovery (not a sequence mixer): l1 matrix sensing solved by SubGM."""

from subq.lowrank.recovery import (
    Problem,
    RecoveryConfig,
    RecoveryResult,
    make_problem,
    recover,
    subgradient_method,
)

__all__ = ["Problem", "RecoveryConfig", "RecoveryResult", "make_problem", "recover", "subgradient_method"]
