"""Hydra's matrix-mixer ablations (``variant`` of the ``hydra`` mixer): each variant's output against
its explicit ``[T, T]`` matrix built from the naive SSD matrices of both directions, the diagonal each
variant implies, and the parameters each one has."""

from __future__ import annotations

import pytest
import torch

from subq.layers.hydra import HYDRA_VARIANTS, Hydra
from subq.ops.ssd import ssd_matrix
from tests.conftest import assert_close
from tests.layers.test_ssd_hydra import _quasiseparable_matrix

D_MODEL = 32


def _hydra(variant: str, **kw) -> Hydra:
    kw = {"d_state": 4, "headdim": 16, "chunk_size": 16, **kw}
    m = Hydra(D_MODEL, causal=False, variant=variant, dtype=torch.float64, **kw)
    with torch.no_grad():  # away from the init's A = -1 and uniform D, so that every piece shows
        m.A_log.uniform_(-1.0, 0.5)
        m.dt_bias.uniform_(-1.0, 1.0)
        if m.has_diagonal:
            m.D.uniform_(-1.0, 1.0)
    return m


def _variant_matrix(m: Hydra, u):
    """``M [B, H, T, T]`` of ``m``'s variant from the naive SSD matrices, and the projections:
    ``(S) M_f + J (S) M_b J (+ diag(delta))``."""
    p = m.project(u)
    T = u.shape[1]
    S = torch.diag(torch.ones(T - 1, dtype=u.dtype), -1) if m.shifted else torch.eye(T, dtype=u.dtype)
    J = torch.eye(T, dtype=u.dtype).flip(0)
    M_f = ssd_matrix(p["dt_f"], p["A"], p["B_f"], p["C_f"])
    M_b = ssd_matrix(p["dt_b"].flip(1), p["A"], p["B_b"].flip(1), p["C_b"].flip(1))
    M = S @ M_f + J @ S @ M_b @ J
    if m.has_diagonal:
        M = M + torch.diag_embed(p["delta"].transpose(1, 2))
    return M, p


@pytest.mark.parametrize("mode", ["torch", "naive"])
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("variant", HYDRA_VARIANTS)
def test_variant_equals_its_matrix(variant, T, mode, one_thread):
    m = _hydra(variant, ngroups=2, mode=mode)
    u = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    M, p = _variant_matrix(m, u)
    y = torch.einsum("bhts,bshp->bthp", M, p["x"]).flatten(-2)
    assert_close(m(u), m.out_proj(m.norm(y, p["z"])), 1e-10, f"hydra {variant} vs matrix form")


def test_quasiseparable_matrix_is_the_existing_one(one_thread):
    m = _hydra("quasiseparable")
    u = torch.randn(1, 20, D_MODEL, dtype=torch.float64)
    assert_close(_variant_matrix(m, u)[0], _quasiseparable_matrix(m, u)[0], 1e-14, "matrix")


def test_variant_diagonals(one_thread):
    """additive: the two scans' ``dt C . B`` summed; shift_only: zero; diag_only: both scans' plus
    ``delta``; quasiseparable: ``delta`` alone (the free diagonal)."""
    u = torch.randn(1, 25, D_MODEL, dtype=torch.float64)
    diags = {}
    for variant in HYDRA_VARIANTS:
        torch.manual_seed(0)
        m = _hydra(variant)
        M, p = _variant_matrix(m, u)
        diag = torch.diagonal(M, dim1=-2, dim2=-1)  # [B, H, T]
        heads_per_group = m.nheads // m.ngroups
        cb_f, cb_b = (
            torch.einsum("btgn,btgn->btg", p[C], p[B]).repeat_interleave(heads_per_group, -1)
            for B, C in (("B_f", "C_f"), ("B_b", "C_b"))
        )  # [B, T, H]
        scans = (p["dt_f"] * cb_f + p["dt_b"] * cb_b).transpose(1, 2)
        delta = p["delta"].transpose(1, 2) if m.has_diagonal else torch.zeros_like(diag)
        expected = {
            "quasiseparable": delta,
            "additive": scans,
            "shift_only": torch.zeros_like(diag),
            "diag_only": scans + delta,
        }[variant]
        assert_close(diag, expected, 1e-12, f"{variant} diagonal")
        diags[variant] = diag
    assert diags["additive"].abs().min() > 0  # generically nonzero: the tied diagonal is there


def test_variant_parameters():
    sizes = {}
    for variant in HYDRA_VARIANTS:
        m = Hydra(D_MODEL, causal=False, d_state=4, headdim=16, variant=variant)
        names = {n for n, _ in m.named_parameters()}
        assert ("D" in names and "fc_D.weight" in names) == (variant in ("quasiseparable", "diag_only"))
        sizes[variant] = sum(p.numel() for p in m.parameters())
        assert f"variant={variant!r}" in repr(m)
    diag_params = m.d_inner * m.nheads + m.nheads
    assert sizes["quasiseparable"] == sizes["diag_only"] == sizes["additive"] + diag_params
    assert sizes["additive"] == sizes["shift_only"]


def test_bad_variant():
    with pytest.raises(ValueError, match="variant must be one of"):
        Hydra(D_MODEL, causal=False, variant="mult")


def test_variants_build_in_an_encoder(one_thread):
    from subq.models import Encoder, EncoderConfig

    for variant in HYDRA_VARIANTS:
        cfg = EncoderConfig.from_preset(
            "hydra_bert-tiny",
            vocab_size=20,
            mixer={"name": "hydra", "variant": variant, "headdim": 32, "d_state": 8},
        )
        enc = Encoder(cfg)
        x = torch.randint(0, 20, (2, 17))
        assert enc.mlm_logits(x).shape == (2, 17, 20)
