"""The ``ssd`` (Mamba-2) and ``hydra`` mixers beyond the generic contract: Mamba-2's forward restated
with the recurrent SSD, Hydra's output against its explicit quasiseparable matrix
``shift M_f + J shift M_b J + diag(delta)`` built from the naive SSD matrices, the rank structure of
that matrix, the gated RMSNorm and the argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from subq.layers.hydra import Hydra
from subq.layers.ssd import GatedRMSNorm, SSDMixer
from subq.ops.ssd import naive_recurrent_ssd, ssd_matrix
from tests.conftest import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton forms' tests

D_MODEL = 32


def _rmsnorm(y, w, group, eps=1e-5):
    g = y.unflatten(-1, (-1, group))
    return (g / (g.pow(2).mean(-1, keepdim=True) + eps).sqrt()).flatten(-2) * w


def test_ssd_mixer_equals_mamba2_restated(one_thread):
    m = SSDMixer(D_MODEL, d_state=8, headdim=16, ngroups=2, chunk_size=16, dtype=torch.float64)
    u = torch.randn(2, 50, D_MODEL, dtype=torch.float64)
    T, H, GN = 50, m.nheads, m.ngroups * m.d_state
    # Mamba2 (non-fused): nn.Conv1d with padding d_conv - 1, truncated to T
    z, xBC, dt = m.in_proj(u).split([m.d_inner, m.d_inner + 2 * GN, H], dim=-1)
    xBC = F.conv1d(
        xBC.transpose(1, 2), m.conv_weight[:, None], m.conv_bias, padding=m.d_conv - 1, groups=m.conv_dim
    )
    xBC = F.silu(xBC[..., :T].transpose(1, 2))
    x, B, C = xBC.split([m.d_inner, GN, GN], dim=-1)
    y, _ = naive_recurrent_ssd(
        x.unflatten(-1, (H, m.headdim)),
        F.softplus(dt + m.dt_bias),
        -torch.exp(m.A_log),
        B.unflatten(-1, (m.ngroups, m.d_state)),
        C.unflatten(-1, (m.ngroups, m.d_state)),
        D=m.D,
    )
    y = _rmsnorm(y.flatten(-2) * F.silu(z), m.norm.weight, m.d_inner // m.ngroups)
    assert_close(m(u), m.out_proj(y), 1e-10, "ssd mixer")


def _hydra(**kw):
    kw = {"d_state": 4, "headdim": 16, "chunk_size": 16, **kw}
    m = Hydra(D_MODEL, causal=False, dtype=torch.float64, **kw)
    with torch.no_grad():  # away from the init's A = -1 and uniform D, so that every piece shows
        m.A_log.uniform_(-1.0, 0.5)
        m.D.uniform_(-1.0, 1.0)
        m.dt_bias.uniform_(-1.0, 1.0)
    return m


def _quasiseparable_matrix(m: Hydra, u):
    """``M [B, H, T, T]`` from the naive SSD matrices of both directions, and the projections."""
    p = m.project(u)
    T = u.shape[1]
    S = torch.diag(torch.ones(T - 1, dtype=u.dtype), -1)  # (S M)[i] = M[i - 1], row 0 zero
    J = torch.eye(T, dtype=u.dtype).flip(0)
    M_f = ssd_matrix(p["dt_f"], p["A"], p["B_f"], p["C_f"])
    M_b = ssd_matrix(p["dt_b"].flip(1), p["A"], p["B_b"].flip(1), p["C_b"].flip(1))
    M = S @ M_f + J @ S @ M_b @ J + torch.diag_embed(p["delta"].transpose(1, 2))
    return M, p


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("T", [1, 37])
def test_hydra_equals_its_quasiseparable_matrix(T, ngroups, one_thread):
    m = _hydra(ngroups=ngroups)
    u = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    M, p = _quasiseparable_matrix(m, u)
    y = torch.einsum("bhts,bshp->bthp", M, p["x"]).flatten(-2)
    assert_close(m(u), m.out_proj(m.norm(y, p["z"])), 1e-10, "hydra vs matrix form")


def test_hydra_matrix_is_quasiseparable_with_a_free_diagonal(one_thread):
    """Every block strictly below or strictly above the diagonal has rank <= N; the diagonal is
    ``delta``, not the ``c . b`` an added pair of SSMs would force."""
    m = _hydra()
    u = torch.randn(1, 30, D_MODEL, dtype=torch.float64)
    M, p = _quasiseparable_matrix(m, u)
    N = m.d_state
    for h in range(m.nheads):
        for k in (8, 15, 22):
            assert torch.linalg.matrix_rank(M[0, h, k:, :k]).item() <= N
            assert torch.linalg.matrix_rank(M[0, h, :k, k:]).item() <= N
        assert torch.linalg.matrix_rank(M[0, h, 15:, :15]).item() == N  # and generically exactly N
    assert_close(torch.diagonal(M, dim1=-2, dim2=-1), p["delta"].transpose(1, 2), 1e-14, "diagonal")


def test_hydra_shares_parameters_between_directions():
    m = Hydra(D_MODEL, causal=False, d_state=4, headdim=16)
    assert m.A_log.shape == m.dt_bias.shape == m.D.shape == (m.nheads,)
    assert m.in_proj.out_features == m.d_inner + m.d_inner + 4 * m.d_state + 2 * m.nheads
    assert torch.equal(m.A_log, torch.zeros(m.nheads)) and torch.equal(m.D, torch.ones(m.nheads))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))


def test_hydra_reversal_symmetry_of_the_two_scans(one_thread):
    """Swapping the forward and backward projections and flipping the sequence flips the output: the
    backward scan is the forward one on the reversed sequence."""
    m = _hydra()
    u = torch.randn(1, 21, D_MODEL, dtype=torch.float64)
    d, GN, H = m.d_inner, m.ngroups * m.d_state, m.nheads
    swap = torch.arange(m.in_proj.out_features)
    xbc = 2 * d  # z, then x, then [B_f, C_f, B_b, C_b], then [dt_f, dt_b]
    swap[xbc : xbc + 2 * GN], swap[xbc + 2 * GN : xbc + 4 * GN] = (
        torch.arange(xbc + 2 * GN, xbc + 4 * GN),
        torch.arange(xbc, xbc + 2 * GN),
    )
    dts = xbc + 4 * GN
    swap[dts : dts + H], swap[dts + H :] = torch.arange(dts + H, dts + 2 * H), torch.arange(dts, dts + H)
    m2 = _hydra()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.in_proj.weight.copy_(m.in_proj.weight[swap])
        m2.conv_weight.copy_(m.conv_weight.flip(-1)[swap[d:dts] - d])
        m2.conv_bias.copy_(m.conv_bias[swap[d:dts] - d])
    assert_close(m2(u.flip(1)).flip(1), m(u), 1e-10, "reversed")


def test_gated_rmsnorm_orders():
    y, z = torch.randn(3, 12, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    n = GatedRMSNorm(12, norm_before_gate=True, group_size=4, dtype=torch.float64)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    assert_close(n(y, z), _rmsnorm(y, n.weight, 4) * F.silu(z), 1e-12, "norm then gate")
    n.norm_before_gate = False
    assert_close(n(y, z), _rmsnorm(y * F.silu(z), n.weight, 4), 1e-12, "gate then norm")


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (Hydra, dict(causal=True), "bidirectional only"),
        (Hydra, dict(causal=False, d_conv=4), "d_conv must be an odd"),
        (Hydra, dict(causal=False, headdim=24), "divisible by headdim=24"),
        (SSDMixer, dict(causal=False), "causal only"),
        (SSDMixer, dict(headdim=16, ngroups=3), "multiple of ngroups=3"),
        (SSDMixer, dict(chunk_size=48), "power of two"),
        (SSDMixer, dict(d_conv=9), "d_conv must be an int in"),
        (SSDMixer, dict(conv_mode="cuda"), "conv_mode must be 'auto', 'torch' or 'triton'"),
        (Hydra, dict(causal=False, norm_mode="fused"), "norm_mode must be 'auto', 'torch' or 'triton'"),
        (
            Hydra,
            dict(causal=False, d_conv=9, conv_mode="triton"),
            r"conv_mode='triton' takes d_conv in \[2, 8\]",
        ),
    ],
)
def test_bad_arguments(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(D_MODEL, **kw)


@pytest.mark.parametrize("cls", [SSDMixer, Hydra], ids=["ssd", "hydra"])
@pytest.mark.parametrize("part", ["conv_mode", "norm_mode"])
def test_triton_convolution_and_norm_match_torch(cls, part, one_thread):
    """``conv_mode="triton"`` (the short-convolution kernels in place on the projection) and
    ``norm_mode="triton"`` (the gated RMSNorm kernels; in Triton's interpreter on a CPU) against the
    PyTorch forms: forward and every gradient, awkward length."""
    causal = cls is SSDMixer
    kw = dict(causal=causal, d_state=8, headdim=16, chunk_size=16, mode="torch", device=DEVICE)
    fast, ref = cls(D_MODEL, **{part: "triton"}, **kw), cls(D_MODEL, **kw)
    ref.load_state_dict(fast.state_dict())
    u = torch.randn(2, 37, D_MODEL, device=DEVICE, requires_grad=True)
    g = torch.randn(2, 37, D_MODEL, device=DEVICE)

    def outputs_and_grads(m):
        y = m(u)
        return [y, *torch.autograd.grad(y, [u, *m.parameters()], g)]

    out, out_r = outputs_and_grads(fast), outputs_and_grads(ref)
    names = ["y", "du", *(f"d{n}" for n, _ in ref.named_parameters())]
    for name, a, b in zip(names, out, out_r, strict=True):
        assert_close(a, b, 1e-5, name)


@pytest.mark.parametrize("cls", [SSDMixer, Hydra], ids=["ssd", "hydra"])
def test_auto_forms_follow_the_mixer_mode(cls):
    """``conv_mode="auto"`` and ``norm_mode="auto"`` (the defaults) take the Triton kernels exactly
    when the mixer runs its Triton path; explicit forms win; ``mode="naive"`` stays in PyTorch."""
    kw = dict(causal=cls is SSDMixer, d_state=8, headdim=16, chunk_size=16)
    m = cls(D_MODEL, **kw)
    assert (m.conv_mode, m.norm_mode) == ("auto", "auto")
    assert m._forms("triton") == ("triton", "triton")
    assert m._forms("torch") == ("torch", "torch")
    assert m._forms("naive") == ("torch", "torch")
    m = cls(D_MODEL, conv_mode="torch", norm_mode="triton", **kw)
    assert m._forms("triton") == ("torch", "triton")
    assert m._forms("torch") == ("torch", "triton")
    assert m._forms("naive") == ("torch", "torch")


def test_auto_conv_form_needs_a_short_kernel():
    m = Hydra(D_MODEL, causal=False, d_state=8, headdim=16, chunk_size=16, d_conv=9)
    assert m._forms("triton") == ("torch", "triton")


def test_state_sizes():
    m = SSDMixer(D_MODEL, d_state=8, headdim=16, d_conv=4)
    assert m.state_size(10) == m.state_size(1000) == 4 * 16 * 8 + (64 + 2 * 8) * 4
    h = Hydra(D_MODEL, causal=False, d_state=8, headdim=16)
    assert h.state_size(10) == 10 * (64 + 4 * 8 + 2 * 4) + 4 * 16 * 8


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [SSDMixer, Hydra], ids=["ssd", "hydra"])
@pytest.mark.parametrize("kernels", ["torch", "triton"], ids=["torch-conv-norm", "triton-conv-norm"])
def test_triton_layer_matches_torch_on_cuda(cls, kernels):
    causal = cls is SSDMixer
    fast = cls(256, causal=causal, mode="triton", conv_mode=kernels, norm_mode=kernels, device="cuda")
    ref = cls(256, causal=causal, mode="torch", device="cuda")
    ref.load_state_dict(fast.state_dict())
    u = torch.randn(2, 1000, 256, device="cuda", requires_grad=True)
    y, y_r = fast(u), ref(u)
    assert_close(y, y_r, 1e-4, "forward")
    g = torch.randn_like(y)
    gu, *gp = torch.autograd.grad(y, [u, *fast.parameters()], g)
    gu_r, *gp_r = torch.autograd.grad(y_r, [u, *ref.parameters()], g)
    assert_close(gu, gu_r, 1e-4, "du")
    for (name, _), a, b in zip(fast.named_parameters(), gp, gp_r, strict=True):
        assert_close(a, b, 1e-4, f"d{name}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert_close(fast(u).float(), y_r, 3e-2, "bf16 autocast")


@pytest.mark.parametrize("cls", [SSDMixer, Hydra], ids=["ssd", "hydra"])
def test_naive_mode_keeps_pytorch_norm_and_convolution(cls, monkeypatch):
    """``mode="naive"`` is the reference: the Triton norm and convolution are not called."""
    import subq.ops.gated_rmsnorm.triton_norm as norm_kernels
    import subq.ops.short_conv.triton_conv as conv_kernels

    def refuse(*args, **kwargs):
        raise AssertionError("a Triton kernel ran in mode='naive'")

    monkeypatch.setattr(norm_kernels, "triton_gated_rmsnorm", refuse)
    monkeypatch.setattr(conv_kernels, "triton_short_conv", refuse)
    kw = dict(
        causal=cls is SSDMixer, d_state=8, headdim=16, chunk_size=16, conv_mode="triton", norm_mode="triton"
    )
    m = cls(D_MODEL, mode="naive", **kw)
    assert m(torch.randn(1, 9, D_MODEL)).shape == (1, 9, D_MODEL)
