"""DeltaNet, Gated DeltaNet and Mamba2 mixers: the three forms agree, causality, padding, gradients, references.

Float64, tiny sizes (B = 2, T = 13, D = 32, 4 heads of 8) and chunk size 4, so that the chunked form runs several
full chunks and a partial one. Measured errors between our own forms are ~1e-15; the tests allow TOL = 1e-10.
transformers' reference functions compute in float32 whatever the input: against them REF_TOL = 1e-5, relative to
the reference's largest entry (measured ~1e-7).
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
from transformers.models.qwen3_next.modeling_qwen3_next import (torch_chunk_gated_delta_rule,
                                                                torch_recurrent_gated_delta_rule)
from conftest import run_steps

from makd.students.mixers import registry
from makd.students.mixers.deltanet import delta_rule_chunked, l2norm
from makd.students.mixers.mamba2 import Mamba2, ssd_chunked

NAMES = ["deltanet", "gated_deltanet", "mamba2"]
BARE = {"deltanet": {"output_norm": False}, "gated_deltanet": {"output_gate": False, "output_norm": False},
        "mamba2": {"gate": False, "output_norm": False}}  # no per-token output norm/gate: output = o_proj(M·V)
B, T, D, H = 2, 13, 32, 4
TOL, REF_TOL = 1e-10, 1e-5


@pytest.fixture(params=[H, 2], ids=["mha", "gqa"], autouse=True)
def kv_heads(request):
    """Every test twice: one K/V head per query head, and grouped K/V heads (2 for 4 query heads, the GQA layout);
    ``make`` uses it unless a test gives ``num_kv_heads`` (the references and closed forms: one per query head)."""
    KV[0] = request.param
    return request.param


KV = [H]


def make(name: str, seed: int = 0, chunk_size: int = 4, **kw):
    torch.manual_seed(seed)
    kw.setdefault("num_kv_heads", KV[0])
    return registry.mixer_class(name)(D, H, chunk_size=chunk_size, **kw).double()


def inputs(seed: int = 1, t: int = T, b: int = B) -> torch.Tensor:
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def err(a, b) -> float:
    return (a - b).abs().max().item()


def rel_err(a, b) -> float:
    """Max abs error relative to the reference's largest entry (for the float32 references)."""
    return err(a, b) / b.abs().max().item()


def state_err(s1, s2) -> float:
    assert s1.keys() == s2.keys()
    return max(err(s1[k], s2[k]) for k in s1)


def test_registered_under_their_names():
    for name in NAMES:
        assert name in registry.NAMES and registry.mixer_class(name).name == name


@pytest.mark.parametrize("conv_size", [4, 0])
@pytest.mark.parametrize("name", NAMES)
def test_parallel_equals_recurrence(name, conv_size):
    m, x = make(name, conv_size=conv_size), inputs()
    y, s = m(x)
    ys, ss = run_steps(m, x)
    assert err(y, ys) < TOL and state_err(s, ss) < TOL
    assert set(s) == ({"S", "conv"} if conv_size else {"S"})


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_quadratic(name):
    """Chunk sizes 1 (token by token), 4 and 5 (a partial last chunk) against one chunk (the quadratic form)."""
    x = inputs()
    y, s = make(name, chunk_size=64)(x)
    for c in (1, 4, 5):
        yc, sc = make(name, chunk_size=c)(x)
        assert err(y, yc) < TOL and state_err(s, sc) < TOL


def _core(m, x):
    """What M acts on (the heads' V: Mamba2's x after the convolution) and the state the mixing matrix starts from."""
    feats = m._features(x, torch.ones(x.shape[:2], dtype=x.dtype), m.init_state(x.shape[0], dtype=x.dtype))
    return m.expand_kv(feats[2])  # (B, H, T, d): each KV head's values for the query heads of its group


@pytest.mark.parametrize("name", NAMES)
def test_mixing_matrix_times_values_is_the_output(name):
    m, x = make(name, **BARE[name]), inputs()
    with torch.no_grad():
        m.o_proj.weight.copy_(torch.eye(D))  # output = merged heads of M·V
    mat = m.mixing_matrix(x)  # (B, H, T, T)
    assert mat.shape == (B, H, T, T) and mat.triu(1).abs().max() == 0
    mv = m.merge_heads(mat @ _core(m, x))
    assert err(m(x)[0], mv) < TOL and err(run_steps(m, x)[0], mv) < TOL


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_delta_matrix_has_the_closed_form(name):
    """A = (tril(QKᵀ)⊙Γ)·(I + strict_tril(diag(β)(KKᵀ⊙Γ)))⁻¹·diag(β), written out with a plain inverse and products."""
    m, x = make(name, num_kv_heads=H), inputs(t=7)
    q, k, _, beta, g, _ = m._features(x, torch.ones(B, 7, dtype=x.dtype), m.init_state(B, dtype=x.dtype))
    g = torch.zeros_like(beta) if g is None else g  # DeltaNet: no decay
    gamma = torch.zeros(B, H, 7, 7, dtype=x.dtype)
    for i in range(7):
        for j in range(i + 1):
            gamma[..., i, j] = g[..., j + 1:i + 1].sum(-1).exp()
    inner = torch.eye(7, dtype=x.dtype) + torch.tril(beta[..., None] * (k @ k.transpose(-1, -2)) * gamma, -1)
    want = torch.tril(q @ k.transpose(-1, -2)) * gamma @ torch.linalg.inv(inner) @ torch.diag_embed(beta)
    assert err(m.mixing_matrix(x), want) < TOL


def test_mamba2_matrix_has_the_closed_form():
    """M = (C Bᵀ) ⊙ L ⊙ Δ (columns) + D on the diagonal, L_ij = a_{j+1}⋯a_i written out as a product."""
    m, x = make("mamba2", num_kv_heads=H), inputs(t=7)
    c_, b_, _, dt, log_a, _ = m._features(x, torch.ones(B, 7, dtype=x.dtype), m.init_state(B, dtype=x.dtype))
    want = torch.zeros(B, H, 7, 7, dtype=x.dtype)
    for i in range(7):
        for j in range(i + 1):
            decay = log_a[..., j + 1:i + 1].exp().prod(-1)  # (B, H)
            want[..., i, j] = (c_[..., i, :] * b_[..., j, :]).sum(-1) * decay * dt[..., j] + m.D * (i == j)
    assert err(m.mixing_matrix(x), want) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_continue(name):
    """State handoff (recurrent state and convolution inputs): prefill 6 tokens, then step or forward the rest."""
    m, x = make(name), inputs()
    y, s = m(x)
    y1, s1 = m(x[:, :6])
    y2, s2 = run_steps(m, x[:, 6:], s1)
    y3, s3 = m(x[:, 6:], state=s1)
    assert err(torch.cat([y1, y2], 1), y) < TOL and state_err(s2, s) < TOL
    assert err(torch.cat([y1, y3], 1), y) < TOL and state_err(s3, s) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    m, x = make(name), inputs()
    x2 = x.clone()
    x2[:, 6] += 1.0
    (y, _), (y2, _) = m(x), m(x2)
    assert err(y[:, :6], y2[:, :6]) < TOL and err(y[:, 6:], y2[:, 6:]) > 1e-6
    mat, mat2 = m.mixing_matrix(x), m.mixing_matrix(x2)
    assert err(mat[:, :, :6], mat2[:, :, :6]) < TOL and err(mat[:, :, 6:], mat2[:, :, 6:]) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_for_every_parameter(name):
    m, x = make(name), inputs()
    mask = torch.ones(B, T, dtype=x.dtype)
    mask[0, :3] = 0
    y, s = m(x, mask)
    loss = y.pow(2).mean() + m.mixing_matrix(x, mask).pow(2).mean() + s["S"].pow(2).mean()
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    """The chunked form's and the matrix's backward (in-place steps included) against finite differences."""
    m, x = make(name, chunk_size=3), inputs(t=7, b=1).requires_grad_()
    mask = torch.ones(1, 7, dtype=x.dtype)
    mask[0, 0] = 0
    forms = lambda x: (m(x, mask)[0], m.mixing_matrix(x, mask))  # noqa: E731
    assert torch.autograd.gradcheck(forms, (x,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name", registry.SUBQUADRATIC)
def test_inference_mode_computes_the_same_numbers(name):
    """Without gradient recording (prefill, generation) the mixers write into their own temporaries: same outputs
    and states, parallel and recurrent, for all seven mixers."""
    torch.manual_seed(0)
    m, x = registry.mixer_class(name)(D, H, chunk_size=4, num_kv_heads=KV[0]).double(), inputs()
    mask = torch.ones(B, T, dtype=x.dtype)
    mask[0, :3] = 0
    y, s = m(x, mask)
    y_rec, s_rec = run_steps(m, x[1:])
    with torch.inference_mode():
        yi, si = m(x, mask)
        yi_rec, si_rec = run_steps(m, x[1:])
    assert err(y, yi) == 0 and state_err(s, si) == 0
    assert err(y_rec, yi_rec) == 0 and state_err(s_rec, si_rec) == 0


@pytest.mark.parametrize("name", NAMES)
def test_padding_left_and_right(name):
    """A padded row gives its unpadded outputs at real positions and the same final state (also after a prefill)."""
    m, x, noise = make(name), inputs(t=10, b=1), inputs(seed=7, t=3, b=1)
    y, s = m(x)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], 1).double()
    yl, sl = m(torch.cat([noise, x], 1), mask)
    assert err(yl[:, 3:], y) < TOL and state_err(sl, s) < TOL
    yr, sr = m(torch.cat([x, noise], 1), mask.flip(1))
    assert err(yr[:, :10], y) < TOL and state_err(sr, s) < TOL
    mat, matl = m.mixing_matrix(x), m.mixing_matrix(torch.cat([noise, x], 1), mask)
    assert err(matl[..., 3:, 3:], mat) < TOL and matl[..., 3:, :3].abs().max() < TOL
    prefix = inputs(seed=3, t=5, b=1)  # padding after a non-zero state writes and decays nothing either
    _, s0 = m(prefix)
    y, s = m(x, state=s0)
    yl, sl = m(torch.cat([noise, x], 1), mask, state=s0)
    assert err(yl[:, 3:], y) < TOL and state_err(sl, s) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_batch_rows_are_independent_with_mixed_padding(name):
    m, x = make(name), inputs()
    mask = torch.ones(B, T, dtype=x.dtype)
    mask[0, :4] = 0
    y, _ = m(x, mask)
    y1, _ = m(x[1:])
    y0, _ = m(x[:1, 4:])
    assert err(y[1:], y1) < TOL and err(y[:1, 4:], y0) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_state_is_constant_in_length(name):
    m = make(name)
    short, long = m(inputs(t=3))[1], m(inputs(t=T))[1]
    assert {k: v.shape for k, v in short.items()} == {k: v.shape for k, v in long.items()}
    assert m.state_bytes(1) == sum(v[:1].numel() * 4 for v in long.values())


@pytest.mark.parametrize("name", NAMES)
def test_bad_sizes_raise_clear_errors(name):
    cls = registry.mixer_class(name)
    for args, kw in [((30, 4), {}), ((32, 0), {}), ((32, 4), {"head_dim": 0}), ((32, 4), {"chunk_size": 0}),
                     ((32, 4), {"conv_size": -1})]:
        with pytest.raises(ValueError):
            cls(*args, **kw)
    m, x = make(name), inputs()
    with pytest.raises(ValueError, match="attention_mask"):
        m(x, torch.ones(B, T + 1))
    with pytest.raises(ValueError, match="one token"):
        m.step(x[:, :2], m.init_state(B, dtype=x.dtype))


def _qkv(t: int = T, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, t, H, 8, generator=gen, dtype=torch.float64) for _ in range(3))  # (B, T, H, d)
    g = -torch.rand(B, t, H, generator=gen, dtype=torch.float64)  # (B, T, H) log-decays
    beta = torch.rand(B, t, H, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, H, 8, 8, generator=gen, dtype=torch.float64)
    return q, k, v, g, beta, s0


@pytest.mark.parametrize("gated", [True, False])
def test_delta_rule_core_matches_transformers_qwen3_next(gated):
    """Our chunked gated delta rule vs transformers' chunked and recurrent torch versions (float32 inside)."""
    q, k, v, g, beta, s0 = _qkv()
    g = g if gated else torch.zeros_like(g)
    ours, s_ours = delta_rule_chunked(l2norm(q).transpose(1, 2) * 8 ** -0.5, l2norm(k).transpose(1, 2),
                                      v.transpose(1, 2), beta.transpose(1, 2), g.transpose(1, 2), s0, 4)
    for ref in (lambda: torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=4, initial_state=s0,
                                                     output_final_state=True, use_qk_l2norm_in_kernel=True),
                lambda: torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                                                         use_qk_l2norm_in_kernel=True)):
        out, s = ref()
        assert rel_err(ours.transpose(1, 2), out) < REF_TOL and rel_err(s_ours, s) < REF_TOL


def test_ssd_core_matches_transformers_mamba2_chunk_scan():
    """Same x, Δ (raw + bias, softplus), A, B, C, D and initial state: outputs and final state."""
    q, k, x, dt_raw, _, s0 = _qkv()
    a_log, dt_bias, d_skip = torch.rand(H).double() * 2, torch.randn(H).double(), torch.randn(H).double()
    dt = torch.nn.functional.softplus(dt_raw + dt_bias)  # (B, T, H)
    y, s = ssd_chunked(q.transpose(1, 2), k.transpose(1, 2), x.transpose(1, 2), dt.transpose(1, 2),
                       (-a_log.exp() * dt).transpose(1, 2), s0, 4)
    y = y + d_skip[:, None, None] * x.transpose(1, 2)
    ref, ref_s = mamba2_chunk_scan(x, dt_raw, -a_log.exp(), k, q, chunk_size=4, D=d_skip, dt_bias=dt_bias,
                                   initial_states=s0.transpose(-1, -2), dt_softplus=True, return_final_states=True)
    assert rel_err(y.transpose(1, 2), ref) < REF_TOL and rel_err(s.transpose(-1, -2), ref_s) < REF_TOL


def test_mamba2_module_matches_transformers_mamba2_mixer():
    """The whole block (convolution, SSD, D, gated per-head norm, projections) vs ``Mamba2Mixer``'s torch path."""
    ours = make("mamba2", num_kv_heads=H)
    cfg = tf.Mamba2Config(hidden_size=D, num_heads=H, head_dim=8, expand=1, state_size=8, n_groups=H, conv_kernel=4,
                          chunk_size=4, num_hidden_layers=1, use_bias=False, use_conv_bias=True)
    ref = tf.models.mamba2.modeling_mamba2.Mamba2Mixer(cfg, layer_idx=0).double().eval()
    with torch.no_grad():
        ref.in_proj.weight.copy_(torch.cat([ours.g_proj.weight, ours.v_proj.weight, ours.k_proj.weight,
                                            ours.q_proj.weight, ours.dt_proj.weight]))
        for name in ("dt_bias", "A_log", "D"):
            getattr(ref, name).copy_(getattr(ours, name))
        ref.conv1d.weight.copy_(ours.conv1d.weight)
        ref.conv1d.bias.copy_(ours.conv1d.bias)
        ref.norm.weight.copy_(ours.norm_weight)
        ref.out_proj.weight.copy_(ours.o_proj.weight)
    x = inputs()
    assert rel_err(ours(x)[0], ref(x)) < REF_TOL
    assert isinstance(ours, Mamba2)


def test_gated_deltanet_module_matches_transformers_qwen3_next():
    """The whole block (convolution, gated delta rule, gated norm, projections) vs ``Qwen3NextGatedDeltaNet``."""
    ours = make("gated_deltanet", num_kv_heads=H)
    cfg = tf.Qwen3NextConfig(hidden_size=D, linear_num_value_heads=H, linear_num_key_heads=H, linear_key_head_dim=8,
                             linear_value_head_dim=8, linear_conv_kernel_dim=4, rms_norm_eps=1e-5,
                             num_hidden_layers=1, layer_types=["linear_attention"])
    ref = tf.models.qwen3_next.modeling_qwen3_next.Qwen3NextGatedDeltaNet(cfg, layer_idx=0).double().eval()
    per_head = lambda *ws: torch.cat([w.view(H, -1, D) for w in ws], 1).reshape(-1, D)  # noqa: E731  head-major rows
    with torch.no_grad():
        ref.in_proj_qkvz.weight.copy_(per_head(ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight,
                                               ours.g_proj.weight))
        ref.in_proj_ba.weight.copy_(per_head(ours.b_proj.weight, ours.a_proj.weight))
        for name in ("dt_bias", "A_log"):
            getattr(ref, name).copy_(getattr(ours, name))
        ref.conv1d.weight.copy_(ours.conv1d.weight)
        ref.norm.weight.copy_(torch.rand(8))
        ours.o_norm.weight.copy_(ref.norm.weight)
        ref.out_proj.weight.copy_(ours.o_proj.weight)
    x = inputs()
    assert rel_err(ours(x)[0], ref(x)) < REF_TOL
