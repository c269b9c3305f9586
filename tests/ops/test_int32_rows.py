"""The guard for kernels that index one sequence with 32-bit offsets: a clear error (or, under
``mode="auto"``, the PyTorch form) instead of an out-of-range address."""

from __future__ import annotations

import pytest
import torch

from subq.ops.common.checks import INT32_ROWS_LIMIT, check_int32_rows, fits_int32_rows


def _big(T: int, H: int, D: int, B: int = 2) -> torch.Tensor:
    """A ``[B, T, H, D]`` tensor on the meta device: shapes of any size without memory."""
    return torch.empty(B, T, H, D, device="meta")


def test_limit_is_per_sequence():
    at = _big(2**20, 32, 64)  # 2^31 elements in each sequence
    below = _big(2**20, 32, 64)[:, :-1]
    assert at[0].numel() == INT32_ROWS_LIMIT
    with pytest.raises(ValueError, match=r"fewer than 2\^31 elements; got q \(2, 1048576, 32, 64\)"):
        check_int32_rows("op", q=at)
    check_int32_rows("op", q=below)  # the batch does not count: its offset is 64-bit
    assert not fits_int32_rows(below, at)
    assert fits_int32_rows(below, torch.zeros(0, 4), torch.tensor(1.0))


def test_linear_attention_kernels_refuse_too_long_sequences():
    pytest.importorskip("triton")
    from subq.ops.linear_attn.triton_blocks import kernel_inputs

    q = _big(2**24, 32, 4)  # 2^29 elements per sequence: q and k fit
    v = _big(2**24, 32, 128)  # 2^33: v does not
    with pytest.raises(ValueError, match="linear_attention: the Triton kernels index one sequence"):
        kernel_inputs(q, q, v, "relu", None, 1e-6, None)


def test_ssd_kernels_refuse_too_long_sequences():
    pytest.importorskip("triton")
    from subq.ops.ssd.fused_chunk import fused_chunk_ssd

    T = 2**22  # x: T x 16 heads x 64 = 2^32 elements per sequence
    x, dt, A = _big(T, 16, 64, B=1), torch.empty(1, T, 16, device="meta"), torch.empty(16, device="meta")
    B = C = _big(T, 1, 64, B=1)
    with pytest.raises(ValueError, match="ssd: the Triton kernels index one sequence"):
        fused_chunk_ssd(x, dt, A, B, C)
