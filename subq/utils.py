"""Small helpers shared across subq."""

from __future__ import annotations

import torch
from torch import Tensor


def host_to(x: Tensor, device: torch.device) -> Tensor:
    """``x.to(device)`` for a tensor freshly made on the host: to a GPU through pinned memory, without
    blocking, since a copy from pageable memory first waits for the GPU to finish its queued work (a
    training loop that copies its batch that way cannot run ahead of the GPU)."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
