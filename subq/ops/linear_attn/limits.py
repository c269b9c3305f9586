"""What the Triton linear-attention kernels take (importable without Triton, for dispatch)."""

from __future__ import annotations

FEATURE_IDS = {"identity": 0, "relu": 1, "elu_plus_one": 2, "taylor": 3}
MAX_TAYLOR_DIM = 16
"""Largest projection dim ``f`` of the fused Taylor kernel (the quadratic state is ``f^2 x D_v``)."""
MAX_HEAD_DIM = 128
"""Largest ``D`` of the kernel for the elementwise maps, and largest ``D_v`` for all maps."""


def check_fused_chunk_sizes(feature_map: str, D: int, Dv: int) -> None:
    """Raise ``ValueError`` naming the limit when the kernel cannot take these sizes."""
    if feature_map not in FEATURE_IDS:
        raise ValueError(
            f"the Triton linear-attention kernel supports the feature maps {', '.join(FEATURE_IDS)}, "
            f"got {feature_map!r}"
        )
    if feature_map == "taylor" and D > MAX_TAYLOR_DIM:
        raise ValueError(f"the fused Taylor kernel supports feature dims up to {MAX_TAYLOR_DIM}, got D={D}")
    if D > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton linear-attention kernel supports head dims up to {MAX_HEAD_DIM}, got D={D}"
        )
    if Dv > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton linear-attention kernel supports value head dims up to {MAX_HEAD_DIM}, got D_v={Dv}"
        )
