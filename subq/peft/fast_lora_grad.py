"""Exact and almost-linear LoRA gradients for one attention head (Hu, Su, Kuo, Song, Liu, ICLR 2025,
"Computational Limits of Low-Rank Adaptation (LoRA) Fine-Tuning for Transformer Models", arXiv 2406.03136).

    adapters = {"q": LoRAFactors(b, a), "v": LoRAFactors(b_v, a_v)}
    grads = exact_lora_grad(x, y, w_q, w_k, w_v, adapters, alpha=8.0)              # Theta(T^2 d)
    approx = fast_lora_grad(x, y, w_q, w_k, w_v, adapters, alpha=8.0, degree=4)    # O(T k1 d^2)
    grads["q"].a, grads["q"].b                                                     # dL/dA_q, dL/dB_q

The experiment that sweeps the entry bound is ``subq repro lora_limits --quick``
(``subq/repro/lora_limits.py``).

Setting (the paper's Def. 1.1-1.2, one head, a batch of ``B`` examples summed). For ``x`` in
``R^{T x d}`` (the paper's ``L`` is ``T``) and a LoRA adapter on any of the three weights,

    W_n = W*_n + (alpha / r) B_n A_n       B_n: [d, r], A_n: [r, d_n]       n in {q, k, v}
    Q = x W_q, K = x W_k, V = x W_v        S = softmax(scale * Q K^T) (rows)  [T, T]
    loss = sum_batch 1/2 ||S V - y||_F^2

``scale`` is the paper's ``beta``: its loss has ``beta = 1`` (any ``1/sqrt(d)`` absorbed into the
weights); :mod:`subq.repro.lora_limits` uses ``1/d_k`` as Alman & Song do, so that ``|scale * q.k|``
is at most ``Gamma^2`` when every entry of ``Q`` and ``K`` is at most ``Gamma``. Partial adaptation
(the paper's case C1) is ``{"q", "v"}``; full adaptation (Appendix A) is ``{"q", "k", "v"}``.

Exact gradient, the closed form of the paper's Lemma 3.1/3.2 (its ``C1 = (alpha/r) x``, ``C2 = K``,
``C3 = V``, ``W = (r/alpha) W*_q + B A``). With ``c = S V - y`` ``[T, d_v]``, ``G = c V^T`` (rank
``d_v``), ``r_j = sum_k S_jk G_jk`` and ``p = S o G - diag(r) S`` (the gradient of the loss with
respect to the pre-softmax scores, up to ``scale``):

    dL/dW_q = scale * x^T p K        dL/dW_k = scale * x^T p^T Q        dL/dW_v = x^T S^T c
    dL/dA_n = (alpha/r) B_n^T dL/dW_n                dL/dB_n = (alpha/r) dL/dW_n A_n^T

:func:`exact_lora_grad` computes this in row blocks of ``S`` (``Theta(T^2)`` time, ``O(block * T)``
memory); :func:`autograd_lora_grad` differentiates :func:`lora_attention_loss` and is the reference.

Almost-linear algorithm (the paper's Section 3.3, Theorem 3.1). Step 1: ``exp(<q, k>)`` is replaced
by its Taylor polynomial of degree ``g``, ``sum_{j <= g} <q, k>^j / j! = <U(q), U(k)>`` with the
feature map ``U(x) = [x^{(x)j} / sqrt(j!)]_{j <= g}`` (:func:`taylor_exp_features`); with
``symmetric=True`` (the default) the ``d^j`` entries of each tensor power are deduplicated to the
``C(d + j - 1, j)`` monomials ``x^a / sqrt(a!)`` (``|a| = j``), which gives the same inner products
with ``k1 = C(d + g, g)`` columns instead of ``(d^{g+1} - 1) / (d - 1)``. So, with
``U1 = U(sqrt(scale) Q)``, ``V1 = U(sqrt(scale) K)`` ``[T, k1]``,

    S ~ D^{-1} U1 V1^T = U~ V1^T,    U~ = diag(1 / (U1 V1^T 1)) U1.

For even ``g`` every approximate weight ``<U(q), U(k)>`` is positive (an even Taylor polynomial of
``exp`` has no real root), so ``D`` is invertible; odd ``g`` is allowed but can divide by ~0.
Steps 2-4, never forming a ``[T, T]`` matrix (``(x)`` the row-wise Kronecker product, ``[T, k1 d_v]``):

    c = U~ (V1^T V) - y                        r_j = c_j . (U~ V1^T V)_j
    S o G ~ (U~ (x) c)(V1 (x) V)^T             diag(r) S ~ (diag(r) U~) V1^T
    x^T p K   = [(U~ (x) c)^T x]^T [(V1 (x) V)^T K] - [(r o x)^T U~] (V1^T K)
    x^T p^T Q = [(V1 (x) V)^T x]^T [(U~ (x) c)^T Q] - (x^T V1) [U~^T (r o Q)]
    x^T S^T c = (x^T V1) (U~^T c)

which costs ``O(T k1 d_v (d + d_k))`` (:func:`lora_grad_flops`), linear in ``T`` at fixed degree.
The error is the Taylor error: small while ``scale * |q.k|`` stays well below ``g``, and the degree
needed for a fixed error grows with the entry bound, which is where the paper's threshold
``Gamma ~ sqrt(log T)`` comes from (``k1 = T^{o(1)}`` only below it).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

ADAPTABLE = ("q", "k", "v")
"""The weights an adapter can sit on, in the order gradients are returned."""


class LoRAFactors(NamedTuple):
    """One adapter, ``W = W* + (alpha / r) b a``: the paper's ``B A`` in its ``x W`` convention
    (:class:`subq.peft.lora.LoRALinear`'s ``A [r, in]``, ``B [out, r]`` are ``b^T``, ``a^T`` here)."""

    b: Tensor  # [d, r]
    a: Tensor  # [r, d_out]


class LoRAGrad(NamedTuple):
    """``dL/dA`` and ``dL/dB`` of one adapter."""

    a: Tensor  # [r, d_out]
    b: Tensor  # [d, r]


def _check(x, y, w_q, w_k, w_v, adapters: Mapping[str, LoRAFactors]) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, d], got shape {tuple(x.shape)}")
    B, T, d = x.shape
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        if w.dim() != 2 or w.shape[0] != d:
            raise ValueError(f"{name} must be [d={d}, d_out], got shape {tuple(w.shape)}")
    if w_q.shape[1] != w_k.shape[1]:
        raise ValueError(f"w_q and w_k must have the same d_k, got {w_q.shape[1]} and {w_k.shape[1]}")
    if tuple(y.shape) != (B, T, w_v.shape[1]):
        raise ValueError(f"y must be [B={B}, T={T}, d_v={w_v.shape[1]}], got shape {tuple(y.shape)}")
    if not adapters:
        raise ValueError("adapters is empty: give at least one of 'q', 'k', 'v'")
    weights = {"q": w_q, "k": w_k, "v": w_v}
    for name, lora in adapters.items():
        if name not in weights:
            raise ValueError(f"adapter name {name!r} is not one of {ADAPTABLE}")
        r = lora.a.shape[0]
        if tuple(lora.b.shape) != (d, r) or tuple(lora.a.shape) != (r, weights[name].shape[1]):
            raise ValueError(
                f"adapter {name!r}: b must be [d={d}, r] and a [r, d_out={weights[name].shape[1]}], "
                f"got b {tuple(lora.b.shape)} and a {tuple(lora.a.shape)}"
            )


def _adapted(
    w_q, w_k, w_v, adapters: Mapping[str, LoRAFactors], alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``W* + (alpha / r) B A`` for each adapted weight, the frozen weight otherwise."""
    out = {"q": w_q, "k": w_k, "v": w_v}
    for name, lora in adapters.items():
        out[name] = out[name] + (alpha / lora.a.shape[0]) * (lora.b @ lora.a)
    return out["q"], out["k"], out["v"]


def _lora_grads(
    weight_grads: Mapping[str, Tensor], adapters: Mapping[str, LoRAFactors], alpha: float
) -> dict[str, LoRAGrad]:
    """``dL/dA = (alpha/r) B^T dL/dW`` and ``dL/dB = (alpha/r) dL/dW A^T`` for each adapter."""
    grads = {}
    for name in ADAPTABLE:
        if name in adapters:
            lora, gw = adapters[name], weight_grads[name]
            s = alpha / lora.a.shape[0]
            grads[name] = LoRAGrad(a=s * (lora.b.mT @ gw), b=s * (gw @ lora.a.mT))
    return grads


def lora_attention_loss(
    x: Tensor,
    y: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    adapters: Mapping[str, LoRAFactors],
    *,
    alpha: float = 1.0,
    scale: float = 1.0,
) -> Tensor:
    """The paper's loss ``sum_batch 1/2 ||softmax(scale Q K^T) V - y||_F^2``, written plainly.

    Args:
        x: `[B, T, d]` inputs.
        y: `[B, T, d_v]` targets.
        w_q, w_k: `[d, d_k]` frozen query and key weights.
        w_v: `[d, d_v]` frozen value weight.
        adapters: ``{"q" | "k" | "v": LoRAFactors(b [d, r], a [r, d_out])}``, at least one.
        alpha: LoRA's ``alpha`` (the update is ``(alpha / r) B A``). Default 1.
        scale: ``beta`` in front of the scores. Default 1 (the paper's loss).
    Returns:
        the scalar loss.
    """
    _check(x, y, w_q, w_k, w_v, adapters)
    wq, wk, wv = _adapted(w_q, w_k, w_v, adapters, alpha)
    scores = scale * (x @ wq) @ (x @ wk).mT  # [B, T, T]
    out = torch.softmax(scores, dim=-1) @ (x @ wv)  # [B, T, d_v]
    return 0.5 * (out - y).pow(2).sum()


def autograd_lora_grad(
    x: Tensor,
    y: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    adapters: Mapping[str, LoRAFactors],
    *,
    alpha: float = 1.0,
    scale: float = 1.0,
) -> dict[str, LoRAGrad]:
    """``dL/dA, dL/dB`` of :func:`lora_attention_loss` by autograd: the reference. Arguments as there."""
    _check(x, y, w_q, w_k, w_v, adapters)
    leaves = {
        name: LoRAFactors(lora.b.detach().requires_grad_(), lora.a.detach().requires_grad_())
        for name, lora in adapters.items()
    }
    with torch.enable_grad():
        loss = lora_attention_loss(x, y, w_q, w_k, w_v, leaves, alpha=alpha, scale=scale)
        names = [name for name in ADAPTABLE if name in leaves]
        flat = torch.autograd.grad(loss, [t for name in names for t in (leaves[name].a, leaves[name].b)])
    return {name: LoRAGrad(a=flat[2 * i], b=flat[2 * i + 1]) for i, name in enumerate(names)}


def exact_lora_grad(
    x: Tensor,
    y: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    adapters: Mapping[str, LoRAFactors],
    *,
    alpha: float = 1.0,
    scale: float = 1.0,
    block_size: int | None = None,
) -> dict[str, LoRAGrad]:
    """``dL/dA, dL/dB`` in the paper's closed form (Lemma 3.1/3.2), ``Theta(T^2)`` time.

    Arguments as in :func:`lora_attention_loss`, plus ``block_size``: rows of ``S`` held at once
    (default ``None``: all ``T``), so memory is ``O(block_size * T)``.
    Returns:
        ``{name: LoRAGrad(a [r, d_out], b [d, r])}`` for each adapter, in ``q, k, v`` order.
    """
    _check(x, y, w_q, w_k, w_v, adapters)
    wq, wk, wv = _adapted(w_q, w_k, w_v, adapters, alpha)
    q, k, v = x @ wq, x @ wk, x @ wv  # [B, T, d_k], [B, T, d_k], [B, T, d_v]
    T = x.shape[1]
    block = T if block_size is None else block_size
    gq = x.new_zeros(w_q.shape) if "q" in adapters else None
    pt_q = torch.zeros_like(k) if "k" in adapters else None  # p^T Q, [B, T, d_k]
    st_c = torch.zeros_like(v) if "v" in adapters else None  # S^T c, [B, T, d_v]
    for i in range(0, T, block):
        rows = slice(i, i + block)
        s = torch.softmax(scale * q[:, rows] @ k.mT, dim=-1)  # [B, bt, T]
        c = s @ v - y[:, rows]  # [B, bt, d_v]
        sg = s * (c @ v.mT)  # S o G, [B, bt, T]
        p = sg - sg.sum(-1, keepdim=True) * s  # S o G - diag(r) S
        if gq is not None:
            gq += (x[:, rows].mT @ (p @ k)).sum(0)
        if pt_q is not None:
            pt_q += p.mT @ q[:, rows]
        if st_c is not None:
            st_c += s.mT @ c
    weight_grads = {}
    if gq is not None:
        weight_grads["q"] = scale * gq
    if pt_q is not None:
        weight_grads["k"] = scale * (x.mT @ pt_q).sum(0)
    if st_c is not None:
        weight_grads["v"] = (x.mT @ st_c).sum(0)
    return _lora_grads(weight_grads, adapters, alpha)


@functools.cache
def _monomials(d: int, j: int) -> tuple[list[int], list[int], list[float]]:
    """Degree-``j`` monomials in ``d`` variables, sorted index tuples in lexicographic order, as
    (parent in degree ``j - 1``, last variable, ``1 / sqrt(multiplicity of the last variable)``)."""
    previous = {m: i for i, m in enumerate(itertools.combinations_with_replacement(range(d), j - 1))}
    parents, lasts, coefs = [], [], []
    for m in itertools.combinations_with_replacement(range(d), j):
        parents.append(previous[m[:-1]])
        lasts.append(m[-1])
        coefs.append(1.0 / math.sqrt(m.count(m[-1])))
    return parents, lasts, coefs


def taylor_feature_dim(d: int, degree: int, *, symmetric: bool = True) -> int:
    """Columns ``k1`` of :func:`taylor_exp_features`: ``C(d + g, g)``, or ``sum_j d^j`` unsymmetrised."""
    if symmetric:
        return math.comb(d + degree, degree)
    return sum(d**j for j in range(degree + 1))


def taylor_exp_features(x: Tensor, degree: int, *, symmetric: bool = True) -> Tensor:
    """Feature map of ``exp``'s Taylor polynomial: ``<U(x), U(y)> = sum_{j <= degree} <x, y>^j / j!``.

    Args:
        x: `[..., d]`.
        degree: ``g >= 0``.
        symmetric: keep one entry per monomial, ``x^a / sqrt(a!)`` (``|a| = j``), instead of the
            ``d^j`` entries of ``x^{(x)j} / sqrt(j!)``. Default ``True``.
    Returns:
        `[..., k1]` with ``k1 = taylor_feature_dim(d, degree, symmetric=symmetric)``, degree by degree
        (so the first ``taylor_feature_dim(d, g')`` columns are the map of degree ``g' < degree``).
    """
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    d = x.shape[-1]
    power = torch.ones_like(x[..., :1])  # degree 0: [..., 1]
    powers = [power]
    for j in range(1, degree + 1):
        if symmetric:
            parents, lasts, coefs = _monomials(d, j)
            parent = torch.tensor(parents, device=x.device)
            last = torch.tensor(lasts, device=x.device)
            power = power[..., parent] * x[..., last] * x.new_tensor(coefs)  # x^a / sqrt(a!)
        else:
            power = (power.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(j)  # x^{(x)j} / sqrt(j!)
        powers.append(power)
    return torch.cat(powers, dim=-1)


def _row_kron(u: Tensor, c: Tensor) -> Tensor:
    """Row-wise Kronecker product: `[..., T, m]`, `[..., T, n]` -> `[..., T, m * n]`."""
    return (u.unsqueeze(-1) * c.unsqueeze(-2)).flatten(-2)


def fast_lora_grad(
    x: Tensor,
    y: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    adapters: Mapping[str, LoRAFactors],
    *,
    degree: int,
    alpha: float = 1.0,
    scale: float = 1.0,
    symmetric: bool = True,
    block_size: int | None = None,
) -> dict[str, LoRAGrad]:
    """Approximate ``dL/dA, dL/dB`` by the paper's chained low-rank products, ``O(T k1 d_v (d + d_k))``.

    Arguments as in :func:`exact_lora_grad`, plus ``degree`` (``g`` of the Taylor polynomial, even
    keeps every approximate weight positive) and ``symmetric`` (see :func:`taylor_exp_features`).
    ``block_size`` bounds the rows of the ``[T, k1 d_v]`` Kronecker factors held at once.
    No ``[T, T]`` matrix is formed.
    """
    _check(x, y, w_q, w_k, w_v, adapters)
    wq, wk, wv = _adapted(w_q, w_k, w_v, adapters, alpha)
    q, k, v = x @ wq, x @ wk, x @ wv  # [B, T, d_k], [B, T, d_k], [B, T, d_v]
    root = math.sqrt(scale)
    u1 = taylor_exp_features(root * q, degree, symmetric=symmetric)  # [B, T, k1]
    v1 = taylor_exp_features(root * k, degree, symmetric=symmetric)  # [B, T, k1]
    den = u1 @ v1.sum(-2).unsqueeze(-1)  # D 1 = U1 V1^T 1, [B, T, 1]
    u1 = u1 / den  # U~ = D^{-1} U1
    sv = u1 @ (v1.mT @ v)  # S V ~ U~ (V1^T V), [B, T, d_v]
    c = sv - y
    r = (c * sv).sum(-1, keepdim=True)  # r_j = sum_k S_jk G_jk = c_j . (S V)_j, [B, T, 1]

    T = x.shape[1]
    block = T if block_size is None else block_size
    need_q, need_k = "q" in adapters, "k" in adapters

    def kron_products(left: Tensor, right: Tensor, with_x: bool, with_other: Tensor | None):
        """``(left (x) right)^T x`` and ``(left (x) right)^T other``, summed over row blocks."""
        acc_x = acc_o = None
        for i in range(0, T, block):
            rows = slice(i, i + block)
            kron = _row_kron(left[:, rows], right[:, rows]).mT  # [B, k1 d_v, bt]
            if with_x:
                part = kron @ x[:, rows]
                acc_x = part if acc_x is None else acc_x + part
            if with_other is not None:
                part = kron @ with_other[:, rows]
                acc_o = part if acc_o is None else acc_o + part
        return acc_x, acc_o

    weight_grads = {}
    if need_q or need_k:
        ux, uq = kron_products(u1, c, need_q, q if need_k else None)  # (U~ (x) c)^T x, ^T Q
        vx, vk = kron_products(v1, v, need_k, k if need_q else None)  # (V1 (x) V)^T x, ^T K
    if need_k or "v" in adapters:
        xv1 = x.mT @ v1  # x^T V1, [B, d, k1]
    if need_q:
        diag = ((r * x).mT @ u1) @ (v1.mT @ k)  # (r o x)^T U~ V1^T K, [B, d, d_k]
        weight_grads["q"] = scale * (ux.mT @ vk - diag).sum(0)
    if need_k:
        diag = xv1 @ (u1.mT @ (r * q))  # x^T V1 U~^T (r o Q), [B, d, d_k]
        weight_grads["k"] = scale * (vx.mT @ uq - diag).sum(0)
    if "v" in adapters:
        weight_grads["v"] = (xv1 @ (u1.mT @ c)).sum(0)
    return _lora_grads(weight_grads, adapters, alpha)


def lora_grad_flops(
    T: int,
    d: int,
    d_k: int,
    d_v: int,
    rank: int,
    adapted: tuple[str, ...] | frozenset[str] | set[str],
    *,
    degree: int | None = None,
    symmetric: bool = True,
    batch: int = 1,
) -> int:
    """Matmul FLOPs (``2 m n k`` per product) of :func:`exact_lora_grad` (``degree=None``) or of
    :func:`fast_lora_grad` at ``degree``, for one adapter of rank ``rank`` on each name in ``adapted``
    and a batch of ``batch`` sequences of length ``T``.

    Element-wise work (softmax, ``S o G``, the feature map, the Kronecker rows) is left out: it is
    ``O(T^2)`` exact and ``O(T k1 (d_v + g))`` approximate, below the matmuls by a factor ``~d``.
    """
    adapted = set(adapted)
    if not adapted or not adapted <= set(ADAPTABLE):
        raise ValueError(f"adapted must be a non-empty subset of {ADAPTABLE}, got {sorted(adapted)}")
    out_dim = {"q": d_k, "k": d_k, "v": d_v}
    adapter_flops = sum(3 * 2 * d * rank * out_dim[name] for name in adapted)  # B A, B^T dW, dW A^T
    flops = 2 * T * d * (2 * d_k + d_v)  # Q, K, V
    if degree is None:
        flops += 2 * T * T * (d_k + 2 * d_v)  # scores, S V, G = c V^T
        if "q" in adapted:
            flops += 2 * T * T * d_k + 2 * T * d * d_k  # p K, x^T (p K)
        if "k" in adapted:
            flops += 2 * T * T * d_k + 2 * T * d * d_k  # p^T Q, x^T (p^T Q)
        if "v" in adapted:
            flops += 2 * T * T * d_v + 2 * T * d * d_v  # S^T c, x^T (S^T c)
        return batch * flops + adapter_flops
    k1 = taylor_feature_dim(d_k, degree, symmetric=symmetric)
    kv = k1 * d_v
    flops += 2 * T * k1 + 4 * T * k1 * d_v  # D 1, V1^T V, U~ (V1^T V)
    if adapted & {"k", "v"}:
        flops += 2 * T * d * k1  # x^T V1 (shared)
    if "q" in adapted:
        flops += 2 * T * kv * (d + d_k) + 2 * kv * d * d_k  # (U~ (x) c)^T x, (V1 (x) V)^T K, product
        flops += 2 * T * d * k1 + 2 * T * k1 * d_k + 2 * d * k1 * d_k  # (r o x)^T U~, V1^T K, product
    if "k" in adapted:
        flops += 2 * T * kv * (d + d_k) + 2 * kv * d * d_k  # (V1 (x) V)^T x, (U~ (x) c)^T Q, product
        flops += 2 * T * k1 * d_k + 2 * d * k1 * d_k  # U~^T (r o Q), x^T V1 times it
    if "v" in adapted:
        flops += 2 * T * k1 * d_v + 2 * d * k1 * d_v  # U~^T c, x^T V1 times it
    return batch * flops + adapter_flops
