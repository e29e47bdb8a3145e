"""Token mixers, part A (linear, retnet, gla, mlstm, metala): the three forms agree, causality, padding,
gradients.

Float64, tiny random inputs. Parameters are perturbed away from their initialisation so that gates, decays and
normalisers all vary per token (mLSTM with input-gate bias 0, so that both branches of its max-normaliser occur).
"""
from __future__ import annotations

import pytest
import torch
from conftest import assert_states_close, mixed_values, run_steps

from makd.students.mixers.gated_linear import causal_scores
from makd.students.mixers.mlstm import mlstm_chunked, mlstm_step
from makd.students.mixers.registry import NAMES, mixer_class
from makd.students.mixers.retnet import retention_decays

TOL = 1e-10
B, T, D, H = 2, 13, 32, 4
CASES = [("linear", {}), ("linear", {"feature_map": "hedgehog"}), ("retnet", {}), ("gla", {}),
         ("mlstm", {"igate_bias": 0.0}), ("metala", {}), ("metala", {"conv_size": 0}), ("metala", {"conv_size": 2})]
IDS = ["linear-elu", "linear-hedgehog", "retnet", "gla", "mlstm", "metala", "metala-noconv", "metala-conv2"]
CASES += [(name, {**kwargs, "num_kv_heads": 2}) for name, kwargs in CASES]   # grouped K/V heads (GQA): 2 per 4
IDS += [f"{i}-gqa" for i in IDS]
# output = M·V exactly (MetaLA adds its self-augmentation, a per-token term: tests/test_mixers_metala.py)
MV_CASES = [(c, i) for c, i in zip(CASES, IDS) if c[0] != "metala"]
OURS = ("linear", "retnet", "gla", "mlstm")   # part B (deltanet, gated_deltanet, mamba2) has its own tests


def make(name, kwargs, chunk_size=64, seed=0, scale=0.3):
    torch.manual_seed(seed)
    mixer = mixer_class(name)(D, H, chunk_size=chunk_size, **kwargs).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(scale * torch.randn_like(p))
    return mixer


def inputs(seed=1, batch=B, length=T):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def values(mixer, x):
    """V per query head (each KV head repeated for its group): (B, H, T, d)."""
    return mixer.expand_kv(mixer.split_heads(mixer.v_proj(x), mixer.num_kv_heads))


@pytest.mark.parametrize("name,kwargs", [c for c, _ in MV_CASES], ids=[i for _, i in MV_CASES])
def test_parallel_equals_recurrent_equals_matrix_times_values(name, kwargs):
    mixer, x = make(name, kwargs), inputs()
    y, state = mixer(x)
    y_rec, state_rec = run_steps(mixer, x)
    assert (y - y_rec).abs().max() < TOL
    assert_states_close(state, state_rec)
    v = values(mixer, x)                                                       # (B, H, T, d)
    mixer.chunk_size = 4                      # M (one (T, T) matrix) against the chunked form's mixed values
    mixed = mixed_values(mixer, x)
    assert (mixer.mixing_matrix(x) @ v - mixed).abs().max() < TOL
    assert y.abs().max() > 1e-3   # not trivially zero


@pytest.mark.parametrize("name", OURS)
def test_the_forms_agree_at_the_default_initialisation(name):
    torch.manual_seed(0)
    mixer, x = mixer_class(name)(D, H).double(), inputs()
    y, _ = mixer(x)
    assert (y - run_steps(mixer, x)[0]).abs().max() < TOL
    v = values(mixer, x)
    assert (mixer.mixing_matrix(x) @ v - mixed_values(mixer, x)).abs().max() < TOL


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_chunked_form_equals_quadratic_form(name, kwargs):
    x = inputs()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0                                                           # padding across a chunk border
    y, state = make(name, kwargs, chunk_size=64)(x, mask)
    for size in (1, 4, 5):
        y_c, state_c = make(name, kwargs, chunk_size=size)(x, mask)
        assert (y - y_c).abs().max() < TOL, size
        assert_states_close(state, state_c)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_prefill_then_continue_equals_the_full_forward(name, kwargs):
    mixer, x = make(name, kwargs, chunk_size=4), inputs()
    y, state = mixer(x)
    y_pre, mid = mixer(x[:, :7])
    y_step, end = run_steps(mixer, x[:, 7:], {k: t.clone() for k, t in mid.items()})
    assert (torch.cat([y_pre, y_step], 1) - y).abs().max() < TOL
    assert_states_close(end, state)
    y_par, end_par = mixer(x[:, 7:], state=mid)                                  # parallel from a state
    assert (torch.cat([y_pre, y_par], 1) - y).abs().max() < TOL
    assert_states_close(end_par, state)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_no_output_depends_on_a_future_token(name, kwargs):
    mixer, x = make(name, kwargs, chunk_size=4), inputs()
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 6] += torch.randn(B, D, dtype=torch.float64)
    y2, _ = mixer(x2)
    assert (y2[:, :6] - y[:, :6]).abs().max() == 0
    assert (y2[:, 6] - y[:, 6]).abs().max() > 1e-6
    M = mixer.mixing_matrix(x)
    assert M.shape == (B, H, T, T)
    assert M.triu(1).abs().max() == 0
    assert (mixer.mixing_matrix(x2)[..., :6, :] - M[..., :6, :]).abs().max() == 0


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_gradients_match_finite_differences(name, kwargs):
    """The chunked form's and the matrix's backward (in-place steps included) against finite differences."""
    mixer, x = make(name, kwargs, chunk_size=3), inputs(batch=1, length=7).requires_grad_()
    mask = torch.ones(1, 7, dtype=torch.long)
    mask[0, 0] = 0
    forms = lambda x: (mixer(x, mask)[0], mixer.mixing_matrix(x, mask))  # noqa: E731
    assert torch.autograd.gradcheck(forms, (x,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_gradients_are_finite_with_padding(name, kwargs):
    mixer, x = make(name, kwargs, chunk_size=4), inputs().requires_grad_()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :6] = 0
    y, state = mixer(x, mask)
    loss = (y * mask[..., None]).pow(2).sum() + mixer.mixing_matrix(x, mask).pow(2).sum()
    loss = loss + sum(t.pow(2).sum() for t in state.values())
    loss.backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_padding_gives_each_row_its_own_outputs_and_state(name, kwargs):
    mixer, x = make(name, kwargs, chunk_size=4), inputs()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0                                                           # left padding
    mask[1, -3:] = 0                                                          # right padding
    y, state = mixer(x, mask)
    alone = [(0, slice(4, T)), (1, slice(0, T - 3))]
    for row, real in alone:
        y_row, state_row = mixer(x[row:row + 1, real])
        assert (y[row:row + 1, real] - y_row).abs().max() < TOL
        assert_states_close({k: t[row:row + 1] for k, t in state.items()}, state_row)
        M_row = mixer.mixing_matrix(x[row:row + 1, real])
        assert (mixer.mixing_matrix(x, mask)[row:row + 1, :, real, real] - M_row).abs().max() < TOL
    assert mixer.mixing_matrix(x, mask)[0, :, :, :4].abs().max() == 0        # padded columns write nothing


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_strong_gates_stay_finite_in_float32(name, kwargs):
    mixer = make(name, kwargs, chunk_size=8, scale=3.0).float()
    x = 10 * inputs(length=40).float()
    y, state = mixer(x)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in state.values())
    assert torch.isfinite(mixer.mixing_matrix(x)).all()


def test_linear_attention_rows_are_the_normalised_weights():
    for kwargs in ({}, {"feature_map": "hedgehog"}):
        M = make("linear", kwargs).mixing_matrix(inputs())
        assert (M.sum(-1) - 1).abs().max() < TOL
        assert M.min() >= 0


def test_retnet_decays_follow_the_paper():
    gamma = retention_decays(4).exp()
    assert torch.allclose(gamma, torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7, 1 - 2 ** -8],
                                              dtype=torch.float64), rtol=0, atol=1e-15)
    mixer = make("retnet", {})
    assert "log_decay" not in mixer.state_dict() and not any("decay" in n for n, _ in mixer.named_parameters())
    mixer.log_decay.fill_(float("nan"))   # what from_pretrained leaves in a non-persistent buffer
    mixer.reset_buffers()
    assert torch.equal(mixer.log_decay, retention_decays(H))


@pytest.mark.parametrize("strength", [1.0, 400.0], ids=["one-matmul", "channel-blocks"])
def test_gla_scores_match_the_channel_sum_by_loops(strength):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 2, 6, 20, generator=g, dtype=torch.float64), torch.randn(1, 2, 6, 20, generator=g,
                                                                                 dtype=torch.float64)
    G = -strength * torch.rand(1, 2, 6, 20, generator=g, dtype=torch.float64).cumsum(-2)   # strong: e^-2000 spans
    A = causal_scores(q[:, :, None], k, G)[:, :, 0]    # one query head per key head: (…, G = 1, L, L)
    assert torch.isfinite(A).all()
    for i in range(6):
        for j in range(6):
            want = (q[..., i, :] * k[..., j, :] * (G[..., i, :] - G[..., j, :]).exp()).sum(-1) if j <= i else 0
            assert (A[..., i, j] - want).abs().max() < TOL


def _native():
    try:
        from transformers.models.xlstm import modeling_xlstm as native
    except ImportError as err:   # pragma: no cover - transformers is a dependency
        pytest.skip(f"transformers' xLSTM is not importable: {err}")
    if not hasattr(native, "mlstm_recurrent_step_native"):
        pytest.skip("the external xlstm package is installed: transformers does not define its native kernels")
    return native


def test_mlstm_matches_the_native_xlstm_kernels():
    native = _native()
    g = torch.Generator().manual_seed(4)
    b, h, n, d = 2, 3, 8, 8

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    q, k, v = rnd(b, h, n, d), rnd(b, h, n, d), rnd(b, h, n, d)
    i_pre, f_pre = rnd(b, h, n, scale=3.0), rnd(b, h, n, scale=3.0) + 2
    log_f = torch.nn.functional.logsigmoid(f_pre)
    ours = {"C": torch.zeros(b, h, d, d, dtype=torch.float64), "n": torch.zeros(b, h, d, dtype=torch.float64),
            "m": torch.zeros(b, h, 1, dtype=torch.float64)}
    theirs = (ours["C"], ours["n"], ours["m"])
    for t in range(n):   # the recurrent step, token by token
        h_ours, ours = mlstm_step(q[:, :, t] * d ** -0.5, k[:, :, t], v[:, :, t], i_pre[:, :, t, None],
                                  log_f[:, :, t, None], ours)
        h_theirs, theirs = native.mlstm_recurrent_step_native(
            q[:, :, t], k[:, :, t], v[:, :, t], i_pre[:, :, t, None], f_pre[:, :, t, None], *theirs,
            eps=1e-6, dtype_state=torch.float64)
        assert (h_ours - h_theirs).abs().max() < TOL
        assert_states_close(ours, dict(zip("Cnm", theirs)))
    start = {"C": rnd(b, h, d, d), "n": rnd(b, h, d), "m": rnd(b, h, 1)}  # the parallel form from a state
    h_nat, end_nat = native.mlstm_chunkwise_native_autograd(
        q, k, v, i_pre, f_pre, start["C"], start["n"], start["m"], return_last_states=True, eps=1e-6, chunk_size=4)
    for size in (3, 4, 8):
        h_chunk, end = mlstm_chunked(q * d ** -0.5, k, v, i_pre, log_f, start, size)
        assert (h_chunk - h_nat).abs().max() < TOL
        assert_states_close(end, dict(zip("Cnm", end_nat)))


def test_registry_and_clear_errors():
    assert set(OURS) <= set(NAMES) and list(NAMES) == sorted(NAMES)
    for name in OURS:
        assert mixer_class(name).name == name
    with pytest.raises(ValueError, match="unknown mixer 'nope': known mixers are ") as err:
        mixer_class("nope")
    assert ", ".join(NAMES) in str(err.value)
    for name in OURS:
        with pytest.raises(ValueError, match="not divisible by 4 heads"):
            mixer_class(name)(30, 4)
        with pytest.raises(ValueError, match="chunk_size"):
            mixer_class(name)(32, 4, chunk_size=0)
        assert mixer_class(name)(30, 4, head_dim=8).q_proj.out_features == 32   # head_dim given: no divisibility
        with pytest.raises(ValueError, match="not a multiple of num_kv_heads = 3"):
            mixer_class(name)(32, 4, num_kv_heads=3)
        assert mixer_class(name)(32, 4, num_kv_heads=2).k_proj.out_features == 16   # the KV heads' width
    with pytest.raises(ValueError, match="unknown feature map 'relu'"):
        mixer_class("linear")(32, 4, feature_map="relu")
