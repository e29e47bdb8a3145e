"""MetaLA (``metala``): the three forms agree (M·V plus the self-augmentation), the key is 1 − α, causality,
padding, gradients, the state — float64, tiny random inputs, with and without the short convolution, MHA and GQA."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_states_close, mixed_values, run_steps

from makd.students.mixers.gated_linear import causal_scores
from makd.students.mixers.registry import NAMES, SUBQUADRATIC, mixer_class

TOL = 1e-10
B, T, D, H = 2, 13, 32, 4
CASES = [{}, {"conv_size": 0}, {"num_kv_heads": 2}, {"num_kv_heads": 2, "conv_size": 0}, {"conv_size": 2}]
IDS = ["conv4", "noconv", "gqa", "gqa-noconv", "conv2"]


def make(kwargs, chunk_size=64, seed=0, scale=0.3):
    torch.manual_seed(seed)
    mixer = mixer_class("metala")(D, H, chunk_size=chunk_size, **kwargs).double()
    with torch.no_grad():                     # away from the initialisation: a ≠ 0, gates vary per token
        for p in mixer.parameters():
            p.add_(scale * torch.randn_like(p))
    return mixer


def inputs(seed=1, batch=B, length=T):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pre_output(mixer, x, mask=None):
    """What the mixer hands to its per-token output (norm, gate, o_proj): M·V plus the augmentation, (B, H, T, d)."""
    return mixed_values(mixer, x, mask)


def features(mixer, x, mask=None):
    mask = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
    u, _ = mixer._mixed_input(x, mask, mixer.init_state(x.shape[0], dtype=x.dtype))
    return mixer._gated_features(u, mask)


def test_registered_as_a_subquadratic_student():
    assert "metala" in NAMES and "metala" in SUBQUADRATIC and mixer_class("metala").name == "metala"


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_parallel_equals_recurrent_equals_matrix_times_values_plus_augmentation(kwargs):
    mixer, x = make(kwargs), inputs()
    y, state = mixer(x)
    y_rec, state_rec = run_steps(mixer, x)
    assert (y - y_rec).abs().max() < TOL
    assert_states_close(state, state_rec)
    q, k, v, _ = features(mixer, x)
    mixer.chunk_size = 4                      # M (one (T, T) matrix) against the chunked form
    want = mixer.mixing_matrix(x) @ mixer.values(x) + mixer.augmentation(q, k, v)
    assert (want - pre_output(mixer, x)).abs().max() < TOL
    assert y.abs().max() > 1e-3


def test_the_key_is_one_minus_the_forget_gate_and_m_is_the_gated_sum():
    mixer, x = make({}), inputs()
    q, k, v, g = features(mixer, x)
    assert (k - (1 - g.exp())).abs().max() < 1e-15 and k.min() >= 0 and k.max() < 1 and g.max() <= 0
    M = mixer.mixing_matrix(x)                                                   # (B, H, T, T)
    cum = g.cumsum(-2)                                                            # (B, H, T, d) — MHA here
    for i, j in ((0, 0), (5, 2), (12, 0), (12, 12)):
        want = (q[:, :, i] * k[:, :, j] * (cum[:, :, i] - cum[:, :, j]).exp()).sum(-1)
        assert (M[:, :, i, j] - want).abs().max() < TOL
    grouped = q.unflatten(1, (mixer.num_kv_heads, -1))
    assert (causal_scores(grouped, k, cum).flatten(1, 2) - M).abs().max() == 0


def test_at_initialisation_the_augmentation_is_a_constant_the_norm_removes():
    torch.manual_seed(0)
    mixer, x = mixer_class("metala")(D, H).double(), inputs()
    assert mixer.aug.abs().max() == 0                                            # a = 0, as the reference
    q, k, v, _ = features(mixer, x)
    assert (mixer.augmentation(q, k, v) - 0.5).abs().max() == 0
    y, _ = mixer(x)
    mixer.augmentation = lambda q, k, v: torch.zeros_like(q)                     # noqa: E731 — drop it
    y_without, _ = mixer(x)
    assert (y - y_without).abs().max() < 1e-12


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_chunked_form_equals_quadratic_form_across_padding(kwargs):
    x = inputs()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0
    y, state = make(kwargs, chunk_size=64)(x, mask)
    for size in (1, 4, 5):
        y_c, state_c = make(kwargs, chunk_size=size)(x, mask)
        assert (y - y_c).abs().max() < TOL, size
        assert_states_close(state, state_c)


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_prefill_then_continue_equals_the_full_forward(kwargs):
    mixer, x = make(kwargs, chunk_size=4), inputs()
    y, state = mixer(x)
    y_pre, mid = mixer(x[:, :7])
    y_step, end = run_steps(mixer, x[:, 7:], {k: t.clone() for k, t in mid.items()})
    assert (torch.cat([y_pre, y_step], 1) - y).abs().max() < TOL
    assert_states_close(end, state)
    y_par, end_par = mixer(x[:, 7:], state=mid)
    assert (torch.cat([y_pre, y_par], 1) - y).abs().max() < TOL
    assert_states_close(end_par, state)


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_no_output_depends_on_a_future_token(kwargs):
    mixer, x = make(kwargs, chunk_size=4), inputs()
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 6] += torch.randn(B, D, dtype=torch.float64)
    y2, _ = mixer(x2)
    assert (y2[:, :6] - y[:, :6]).abs().max() == 0 and (y2[:, 6] - y[:, 6]).abs().max() > 1e-6
    M = mixer.mixing_matrix(x)
    assert M.shape == (B, H, T, T) and M.triu(1).abs().max() == 0
    assert (mixer.mixing_matrix(x2)[..., :6, :] - M[..., :6, :]).abs().max() == 0


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_padding_gives_each_row_its_own_outputs_and_state(kwargs):
    mixer, x = make(kwargs, chunk_size=4), inputs()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0                                                           # left padding
    mask[1, -3:] = 0                                                          # right padding
    y, state = mixer(x, mask)
    for row, real in ((0, slice(4, T)), (1, slice(0, T - 3))):
        y_row, state_row = mixer(x[row:row + 1, real])
        assert (y[row:row + 1, real] - y_row).abs().max() < TOL
        assert_states_close({k: t[row:row + 1] for k, t in state.items()}, state_row)
        M_row = mixer.mixing_matrix(x[row:row + 1, real])
        assert (mixer.mixing_matrix(x, mask)[row:row + 1, :, real, real] - M_row).abs().max() < TOL
    assert mixer.mixing_matrix(x, mask)[0, :, :, :4].abs().max() == 0        # padded columns write nothing


@pytest.mark.parametrize("kwargs", [{}, {"num_kv_heads": 2}], ids=["conv4", "gqa"])
def test_gradients_match_finite_differences(kwargs):
    mixer, x = make(kwargs, chunk_size=3), inputs(batch=1, length=7).requires_grad_()
    mask = torch.ones(1, 7, dtype=torch.long)
    mask[0, 0] = 0
    forms = lambda x: (mixer(x, mask)[0], mixer.mixing_matrix(x, mask))  # noqa: E731
    assert torch.autograd.gradcheck(forms, (x,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_every_parameter_gets_a_finite_gradient_with_padding(kwargs):
    mixer, x = make(kwargs, chunk_size=4), inputs().requires_grad_()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :6] = 0
    y, state = mixer(x, mask)
    loss = (y * mask[..., None]).pow(2).sum() + mixer.mixing_matrix(x, mask).pow(2).sum()
    (loss + sum(t.pow(2).sum() for t in state.values())).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_strong_gates_stay_finite_in_float32():
    mixer = make({}, chunk_size=8, scale=3.0).float()
    x = 10 * inputs(length=40).float()
    y, state = mixer(x)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in state.values())
    assert torch.isfinite(mixer.mixing_matrix(x)).all()


def test_the_state_is_constant_in_the_length():
    mixer = make({"num_kv_heads": 2})
    for length in (3, 40):
        _, state = mixer(inputs(length=length))
        assert {k: tuple(t.shape) for k, t in state.items()} == {"S": (B, 2, 8, 8), "conv": (B, 3, D)}
    assert mixer.state_bytes() == 4 * (2 * 8 * 8 + 3 * D)


def test_clear_errors():
    metala = mixer_class("metala")
    with pytest.raises(ValueError, match="not divisible by 4 heads"):
        metala(30, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        metala(32, 4, chunk_size=0)
    with pytest.raises(ValueError, match="conv_size"):
        metala(32, 4, conv_size=-1)
    with pytest.raises(ValueError, match="gate_temperature must be > 0"):
        metala(32, 4, gate_temperature=0.0)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads = 3"):
        metala(32, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="step takes one token"):
        metala(32, 4).step(torch.randn(1, 2, 32), metala(32, 4).init_state(1))
