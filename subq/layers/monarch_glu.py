"""M2's dimension mixer (``monarch_glu``): a GELU-gated GLU whose two linears are block-diagonal.

As ``BertGatedLinearUnitMLP`` with ``use_monarch_mlp`` in ``HazyResearch/m2``
(``bert/src/bert_layers.py``, ``bert/src/mm/blockdiag_linear.py``): ``h = W_in x`` with
``W_in: d -> 2 d_ff`` block-diagonal without bias, ``h = GELU(h[..., :d_ff]) * h[..., d_ff:]``,
dropout, ``W_out: d_ff -> d`` block-diagonal with bias. The blocks carry no permutation (M2's
``BlockdiagLinear``), so with ``nblocks`` blocks each output sees ``d / nblocks`` inputs; mixing across
blocks comes from the sequence mixer and the residual stream. The residual and the norm are the
block's (``subq.models.block``); the reference's post-LayerNorm ``LN(W_out h + x)`` is not here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from subq.layers.channel import ChannelMixer
from subq.layers.registry import register_channel_mixer
from subq.ops.gelu_gate import gelu_gate
from subq.ops.monarch import blockdiag_multiply


class BlockdiagLinear(nn.Module):
    """``y = blockdiag(W_1 .. W_nblocks) x + b``: weight ``[nblocks, out / nblocks, in / nblocks]``.

    Initialised as a dense ``nn.Linear`` rescaled by ``sqrt(dense numel / block-diagonal numel)``
    (M2's ``BlockdiagLinear``): each block ``U(-1/sqrt(in / nblocks), 1/sqrt(in / nblocks))``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, nblocks: int, bias: bool, device=None, dtype=None
    ):
        super().__init__()
        if not isinstance(nblocks, int) or nblocks < 1:
            raise ValueError(f"nblocks must be a positive int, got {nblocks!r}")
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"nblocks={nblocks} must divide in_features={in_features} and out_features={out_features}"
            )
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(nblocks, out_features // nblocks, in_features // nblocks, **fk)
        )
        self.bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features // self.nblocks)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))

    def forward(self, x: Tensor) -> Tensor:  # [..., in] -> [..., out]
        w = self.weight
        if torch.is_autocast_enabled(x.device.type):  # run the bmm in the autocast dtype, as nn.Linear
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
        y = blockdiag_multiply(x, w)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}"


@register_channel_mixer("monarch_glu")
class MonarchGLU(ChannelMixer):
    """M2's block-diagonal GLU: ``W_out(dropout(GELU(a) * b))``, ``[a, b] = W_in x``.

    Args:
        d_model: model width ``d``.
        expand: ``d_ff = expand * d`` (default 4, M2-BERT's ``intermediate_size = 4 d``).
        nblocks: blocks of both linears (default 4, M2's ``monarch_mlp_nblocks``); must divide ``d``.
        dropout: on the gated hidden state (default 0).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        d_model: int,
        *,
        expand: float = 4.0,
        nblocks: int = 4,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(d_model)
        if expand <= 0:
            raise ValueError(f"expand must be > 0, got {expand}")
        if not isinstance(nblocks, int) or nblocks < 1 or d_model % nblocks:
            raise ValueError(f"nblocks must be a positive int dividing d_model={d_model}, got {nblocks!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        step = math.lcm(8, nblocks)
        self.d_ff = max(step, -(-int(expand * d_model) // step) * step)
        fk = {"device": device, "dtype": dtype}
        self.gate_up = BlockdiagLinear(d_model, 2 * self.d_ff, nblocks=nblocks, bias=False, **fk)
        self.fc2 = BlockdiagLinear(self.d_ff, d_model, nblocks=nblocks, bias=True, **fk)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, d] -> [B, T, d]
        h = gelu_gate(self.gate_up(x))  # GELU(h[..., :d_ff]) * h[..., d_ff:], one pass on CUDA
        return self.fc2(self.dropout(h))
