"""Prefix tuning and NTK-Attention ("Towards Infinite-Long Prefix in Transformer", arXiv 2406.14036).

    model = apply_ntk_attention(model, modules_to_save=["classifier"])   # Z [H, D, D], k [H, D] per layer
    model = apply_prefix_tuning(model, prefix_len=10)                     # P_K, P_V [m, H_kv, D] per layer

Both wrap each attention module of a subq model (the ``attention`` / ``sliding_window`` mixers) or of a
BERT-style Hugging Face model (``BertSelfAttention`` and modules laid out like it) in a
:class:`PrefixAttention`, which computes the module's own attention and then adds the trained prefix
and/or the NTK terms through one op, :func:`augmented_attention`; every other weight is frozen. At the
zero init of NTK-Attention (``Z = 0``, ``k = 0``) the wrapped model reproduces the frozen one bit for
bit. The math, and how a prefix of growing length collapses into ``(Z, k)``, is in ``README.md``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from subq.layers.attention import Attention
from subq.ops.attention import attention_mask as position_mask
from subq.ops.common.checks import check_qkv, check_window
from subq.peft.lora import find_target_modules, freeze_base, replace_module

# ---- the op ------------------------------------------------------------------------------------------


def ntk_feature_map(x: Tensor) -> Tensor:
    """The paper's ``phi(x) = ELU(x / D^(1/4)) + 1`` on the last dim ``D`` (positive everywhere)."""
    return F.elu(x / x.shape[-1] ** 0.25) + 1


def _check_adapter_shapes(q, k, v, prefix_k, prefix_v, ntk_z, ntk_k) -> None:
    _, _, H, H_kv, D = check_qkv(q, k, v)
    D_v = v.shape[-1]
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k and prefix_v must be given together")
    if prefix_k is not None:
        if prefix_k.dim() != 3 or prefix_k.shape[1:] != (H_kv, D):
            raise ValueError(f"prefix_k must be [m, H_kv={H_kv}, D={D}], got {tuple(prefix_k.shape)}")
        if prefix_v.shape != (prefix_k.shape[0], H_kv, D_v):
            raise ValueError(
                f"prefix_v must be [m={prefix_k.shape[0]}, H_kv={H_kv}, D_v={D_v}], "
                f"got {tuple(prefix_v.shape)}"
            )
    if (ntk_z is None) != (ntk_k is None):
        raise ValueError("ntk_z and ntk_k must be given together")
    if ntk_z is not None:
        if ntk_z.dim() != 3 or ntk_z.shape[0] != H or ntk_z.shape[2] != D_v:
            raise ValueError(f"ntk_z must be [H={H}, r, D_v={D_v}], got {tuple(ntk_z.shape)}")
        if ntk_k.shape != ntk_z.shape[:2]:
            raise ValueError(f"ntk_k must be [H, r] = {tuple(ntk_z.shape[:2])}, got {tuple(ntk_k.shape)}")


def _masked_scores(
    q: Tensor, k: Tensor, scale: float, causal: bool, window: int | None, attn_mask: Tensor | None
) -> Tensor:
    """``scale * q k^T`` ``[B, H, T, S]`` in float32 (or float64), ``-inf`` where a key is masked."""
    T, S, H, H_kv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    kf = k.to(acc).repeat_interleave(H // H_kv, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q.to(acc), kf) * scale
    if causal or window is not None:
        s = s.masked_fill(~position_mask(T, S, causal=causal, window=window, device=q.device), float("-inf"))
    if attn_mask is not None:
        s = (
            s.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else s + attn_mask.to(acc)
        )
    return s


def augmented_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    ntk_z: Tensor | None = None,
    ntk_k: Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    attn_mask: Tensor | None = None,
    base_out: Tensor | None = None,
    feature_map: Callable[[Tensor], Tensor] = ntk_feature_map,
) -> Tensor:
    """Softmax attention over the sequence, plus a trained prefix and/or the NTK-Attention terms.

    For query ``q_i`` (one head; ``s_ij = scale * q_i . k_j``, ``phi`` = :func:`ntk_feature_map`)::

        o_i = [sum_j e^{s_ij} v_j + sum_p e^{scale q_i . P_K,p} P_V,p + phi(q_i) Z]
              / [sum_j e^{s_ij}    + sum_p e^{scale q_i . P_K,p}        + phi(q_i) . |k|]

    The prefix is seen by every query (also when causal) and is not masked by ``attn_mask``.

    Args:
        q: `[B, T, H, D]` queries.
        k: `[B, S, H_kv, D]` keys; ``H`` a multiple of ``H_kv``.
        v: `[B, S, H_kv, D_v]` values.
        prefix_k: `[m, H_kv, D]` trained prefix keys (default None: no prefix).
        prefix_v: `[m, H_kv, D_v]` trained prefix values, given with ``prefix_k``.
        ntk_z: `[H, r, D_v]` the NTK-Attention matrix ``Z`` (default None: no NTK terms); ``r = D``
            for the paper's feature map.
        ntk_k: `[H, r]` the NTK-Attention vector ``k``, given with ``ntk_z``.
        causal: mask keys after the query position (queries are the last ``T`` of the ``S`` keys).
        scale: score scale, default ``D ** -0.5``.
        window: restrict the sequence part to a sliding window (as :func:`subq.ops.attention.attention_mask`).
        attn_mask: `[B|1, H|1, T, S]` key mask on the sequence part: bool (True = attend) or additive
            float (0 / large negative), as Hugging Face builds it (default None).
        base_out: `[B, T, H, D_v]` plain attention over the sequence from the caller's own kernel (the one
            the frozen model uses); when given it is reused, so ``Z = 0, k = 0`` and no prefix return it
            bit for bit. Default None: computed here from the same scores.
        feature_map: ``phi``, `[..., D] -> [..., r]` (default :func:`ntk_feature_map`, the paper's).

    Returns:
        ``o: [B, T, H, D_v]`` in the dtype of ``q`` (computed in float32, or float64 for float64 input).
    """
    _check_adapter_shapes(q, k, v, prefix_k, prefix_v, ntk_z, ntk_k)
    if window is not None:
        check_window(window)
    B, T, H, D = q.shape
    H_kv = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)

    s = _masked_scores(q, k, scale, causal, window, attn_mask)  # [B, H, T, S]
    lse = torch.logsumexp(s, dim=-1)  # [B, H, T]
    if base_out is None:
        vf = v.to(acc).repeat_interleave(H // H_kv, dim=2)
        o = torch.einsum("bhts,bshd->bthd", torch.exp(s - lse[..., None]), vf)
    else:
        o = base_out.to(acc)  # [B, T, H, D_v]
    lse = lse.transpose(1, 2)  # [B, T, H]

    if prefix_k is not None:
        pk = prefix_k.to(acc).repeat_interleave(H // H_kv, dim=1)  # [m, H, D]
        pv = prefix_v.to(acc).repeat_interleave(H // H_kv, dim=1)  # [m, H, D_v]
        sp = torch.einsum("bthd,mhd->bthm", q.to(acc), pk) * scale
        lse_p = torch.logsumexp(sp, dim=-1)  # [B, T, H]
        o_p = torch.einsum("bthm,mhd->bthd", torch.exp(sp - lse_p[..., None]), pv)
        merged = torch.logaddexp(lse, lse_p)
        o = o * torch.exp(lse - merged)[..., None] + o_p * torch.exp(lse_p - merged)[..., None]
        lse = merged

    if ntk_z is not None:
        phi = feature_map(q.to(acc))  # [B, T, H, r]
        num = torch.einsum("bthd,hde->bthe", phi, ntk_z.to(acc))  # phi(q) Z
        den = torch.einsum("bthd,hd->bth", phi, ntk_k.to(acc).abs())  # phi(q) . |k|
        # o = (e^lse o + num) / (e^lse + den), both sides scaled by e^-c; c cancels, so no gradient
        c = torch.maximum(lse, torch.log(den)).detach()
        a, b = torch.exp(lse - c), torch.exp(-c)
        o = (o * a[..., None] + num * b[..., None]) / (a + den * b)[..., None]
    return o.to(q.dtype)


def naive_augmented_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    ntk_z: Tensor | None = None,
    ntk_k: Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    attn_mask: Tensor | None = None,
    feature_map: Callable[[Tensor], Tensor] = ntk_feature_map,
) -> Tensor:
    """Reference for :func:`augmented_attention`: the numerator and denominator written out over the
    concatenated keys ``[prefix; sequence]``, with no max shift (use float64 and moderate scores)."""
    _check_adapter_shapes(q, k, v, prefix_k, prefix_v, ntk_z, ntk_k)
    B, T, H, D = q.shape
    group = H // k.shape[2]
    scale = D**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc)
    weights = torch.exp(_masked_scores(q, k, scale, causal, window, attn_mask))  # [B, H, T, S]
    values = v.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)  # [B, H, S, D_v]
    num = weights @ values  # [B, H, T, D_v]
    den = weights.sum(-1)  # [B, H, T]
    if prefix_k is not None:
        pk = prefix_k.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)  # [H, m, D]
        pv = prefix_v.to(acc).repeat_interleave(group, dim=1).transpose(0, 1)  # [H, m, D_v]
        wp = torch.exp(qf.transpose(1, 2) @ pk.transpose(1, 2) * scale)  # [B, H, T, m]
        num = num + wp @ pv
        den = den + wp.sum(-1)
    if ntk_z is not None:
        phi = feature_map(qf).transpose(1, 2)  # [B, H, T, r]
        num = num + phi @ ntk_z.to(acc)
        den = den + (phi @ ntk_k.to(acc).abs()[..., None])[..., 0]
    return (num / den[..., None]).transpose(1, 2).to(q.dtype)


# ---- the module --------------------------------------------------------------------------------------


def _attention_geometry(module: nn.Module) -> tuple[int, int, int] | None:
    """``(num_heads, num_kv_heads, head_dim)`` of a supported attention module, else None."""
    if isinstance(module, PrefixAttention):
        return module.num_heads, module.num_kv_heads, module.head_dim
    if isinstance(module, Attention):
        return module.num_heads, module.num_kv_heads, module.head_dim
    if _is_hf_self_attention(module):
        return module.num_attention_heads, module.num_attention_heads, module.attention_head_size
    return None


def _is_hf_self_attention(module: nn.Module) -> bool:
    """BERT-style self-attention of transformers >= 5: ``query``/``key``/``value`` projections, an
    attention-interface call and ``forward(hidden_states, attention_mask, ...)``."""
    return (
        type(module).__name__.endswith("SelfAttention")
        and all(isinstance(getattr(module, n, None), nn.Module) for n in ("query", "key", "value"))
        and all(
            hasattr(module, n) for n in ("num_attention_heads", "attention_head_size", "scaling", "config")
        )
    )


class PrefixAttention(nn.Module):
    """An attention module plus a trained prefix (``prefix_k``, ``prefix_v``: ``[m, H_kv, D]``) and/or the
    NTK-Attention parameters (``ntk_z: [H, D, D]``, ``ntk_k: [H, D]``).

    Wraps a subq :class:`~subq.layers.attention.Attention` (forward ``[B, T, d_model] -> [B, T, d_model]``)
    or a BERT-style Hugging Face self-attention (same call and return as the module it wraps). The base
    module's own kernel computes the plain attention; :func:`augmented_attention` adds the rest.
    Decoding (``prefill``/``step``) is not supported.
    """

    supports_decode = False

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        geometry = _attention_geometry(base_layer)
        if geometry is None or isinstance(base_layer, PrefixAttention):
            raise TypeError(
                f"PrefixAttention wraps a subq Attention mixer or a BERT-style Hugging Face self-attention, "
                f"got {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.num_heads, self.num_kv_heads, self.head_dim = geometry
        self.is_subq = isinstance(base_layer, Attention)
        if not self.is_subq:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            if not hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
                raise RuntimeError(
                    f"wrapping {type(base_layer).__name__} needs transformers >= 5 (its attention interface)"
                )
        self.prefix_k: nn.Parameter | None = None
        self.prefix_v: nn.Parameter | None = None
        self.ntk_z: nn.Parameter | None = None
        self.ntk_k: nn.Parameter | None = None

    def _factory(self) -> dict:
        w = next(self.base_layer.parameters())
        return {"device": w.device, "dtype": w.dtype}

    def add_prefix(self, prefix_len: int, init_std: float = 1.0) -> None:
        """Trained prefix of ``prefix_len`` keys and values per key/value head, ``N(0, init_std^2)``."""
        _check_prefix_len(prefix_len)
        if self.prefix_k is not None:
            raise ValueError("this attention already has a prefix")
        _check_init_std(init_std)
        shape = (prefix_len, self.num_kv_heads, self.head_dim)
        self.prefix_k = nn.Parameter(torch.randn(shape, **self._factory()) * init_std)
        self.prefix_v = nn.Parameter(torch.randn(shape, **self._factory()) * init_std)

    def add_ntk(self, init_std: float = 0.0) -> None:
        """NTK-Attention parameters ``Z [H, D, D]`` and ``k [H, D]``, ``N(0, init_std^2)`` (0: zeros)."""
        if self.ntk_z is not None:
            raise ValueError("this attention already has NTK-Attention parameters")
        _check_init_std(init_std)
        H, D = self.num_heads, self.head_dim
        self.ntk_z = nn.Parameter(torch.randn(H, D, D, **self._factory()) * init_std)
        self.ntk_k = nn.Parameter(torch.randn(H, D, **self._factory()) * init_std)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.prefix_k, self.prefix_v, self.ntk_z, self.ntk_k) if p is not None]

    def _augment(self, q, k, v, base_out, **kw) -> Tensor:
        return augmented_attention(
            q,
            k,
            v,
            prefix_k=self.prefix_k,
            prefix_v=self.prefix_v,
            ntk_z=self.ntk_z,
            ntk_k=self.ntk_k,
            base_out=base_out,
            **kw,
        )

    def forward(self, *args, **kwargs):
        return self._forward_subq(*args, **kwargs) if self.is_subq else self._forward_hf(*args, **kwargs)

    def _forward_subq(self, x: Tensor) -> Tensor:
        base: Attention = self.base_layer
        base._check_input(x, "x", ndim=3)
        q, k, v = base._qkv(x)  # [B, T, H, D], [B, T, H_kv, D] x 2
        o = base._attend(q, k, v, base.resolve_mode(x))
        o = self._augment(q, k, v, o, causal=base.causal, window=getattr(base, "window", None))
        return base.out_proj(o.flatten(2))

    def _forward_hf(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        base = self.base_layer
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            raise NotImplementedError("PrefixAttention does not support a KV cache (decoding)")
        if kwargs.get("encoder_hidden_states") is not None:
            raise NotImplementedError("PrefixAttention wraps self-attention, not cross-attention")
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, base.attention_head_size)
        q = base.query(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, H, T, D]
        k = base.key(hidden_states).view(hidden_shape).transpose(1, 2)
        v = base.value(hidden_states).view(hidden_shape).transpose(1, 2)
        eager = getattr(inspect.getmodule(type(base)), "eager_attention_forward", None)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(base.config._attn_implementation, eager)
        if interface is None:
            raise RuntimeError(
                f"no attention function for {type(base).__name__} with "
                f"attn_implementation={base.config._attn_implementation!r}"
            )
        base_out, _ = interface(
            base,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not base.training else base.dropout.p,
            scaling=base.scaling,
            **kwargs,
        )  # [B, T, H, D]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, T, H, D]
        causal = bool(getattr(base, "is_causal", False))
        o = self._augment(q, k, v, base_out, causal=causal, scale=base.scaling, attn_mask=attention_mask)
        return o.reshape(*input_shape, -1).contiguous(), None

    # the mixer contract, for subq models
    def state_size(self, seq_len: int) -> int:
        return self.base_layer.state_size(seq_len)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("d_model", "causal", "layer_idx", "mode", "name"):
                return getattr(self.base_layer, name)
            raise

    def extra_repr(self) -> str:
        m = 0 if self.prefix_k is None else self.prefix_k.shape[0]
        return f"prefix_len={m}, ntk={self.ntk_z is not None}"


# ---- applying to a model -----------------------------------------------------------------------------


def _check_prefix_len(prefix_len: int) -> None:
    if not isinstance(prefix_len, int) or isinstance(prefix_len, bool) or prefix_len < 1:
        raise ValueError(f"prefix_len must be a positive int, got {prefix_len!r}")


def _check_init_std(init_std: float) -> None:
    if not (math.isfinite(init_std) and init_std >= 0):
        raise ValueError(f"init_std must be finite and >= 0, got {init_std}")


def _wrap_attention(model: nn.Module, targets: list[str] | None) -> list[PrefixAttention]:
    def supported(module: nn.Module) -> bool:
        return _attention_geometry(module) is not None

    found = find_target_modules(model, targets, supported, kind="attention module")
    wrapped = []
    for name, module in found:
        if not isinstance(module, PrefixAttention):
            module = PrefixAttention(module)
            replace_module(model, name, module)
        wrapped.append(module)
    return wrapped


def apply_prefix_tuning(
    model: nn.Module,
    prefix_len: int = 10,
    *,
    targets: list[str] | None = None,
    init_std: float = 1.0,
    modules_to_save: list[str] | tuple[str, ...] = (),
) -> nn.Module:
    """Prefix tuning: ``prefix_len`` trained keys and values per key/value head in each attention.

    Args:
        model: a subq model or a BERT-style Hugging Face model; changed in place and returned.
        prefix_len: ``m``, prefix tokens per layer (``2 * m * H_kv * D`` parameters per layer).
        targets: module-name suffixes of the attention modules to adapt (default None: every
            supported attention module).
        init_std: the prefix starts ``N(0, init_std^2)`` (default 1, as peft's prefix embedding).
        modules_to_save: module-name suffixes (e.g. ``"classifier"``) that stay trainable.

    Every other parameter is frozen (``requires_grad=False``).
    """
    _check_prefix_len(prefix_len)
    _check_init_std(init_std)
    for module in _wrap_attention(model, targets):
        module.add_prefix(prefix_len, init_std)
    freeze_base(model, modules_to_save)
    return model


def apply_ntk_attention(
    model: nn.Module,
    *,
    targets: list[str] | None = None,
    init_std: float = 0.0,
    modules_to_save: list[str] | tuple[str, ...] = (),
) -> nn.Module:
    """NTK-Attention: ``Z [H, D, D]`` and ``k [H, D]`` (``D^2 + D`` per head) in each attention.

    Args:
        model: a subq model or a BERT-style Hugging Face model; changed in place and returned.
        targets: module-name suffixes of the attention modules to adapt (default None: every
            supported attention module).
        init_std: ``Z`` and ``k`` start ``N(0, init_std^2)``; the default 0 (zeros, as in the paper's
            ViT runs) reproduces the frozen model exactly. Note ``d|k|/dk = 0`` at ``k = 0``, so a
            zero ``k`` stays zero under gradient descent; the paper's ChatGLM runs use ``1e-4``.
        modules_to_save: module-name suffixes (e.g. ``"classifier"``) that stay trainable.

    Every other parameter is frozen (``requires_grad=False``).
    """
    _check_init_std(init_std)
    for module in _wrap_attention(model, targets):
        module.add_ntk(init_std)
    freeze_base(model, modules_to_save)
    return model
