"""MetaLA (``metala``), what is its own: the three forms agree (M·V plus the self-augmentation), the key is 1 − α,
the augmentation at initialisation, the state, its errors — float64, tiny random inputs, with and without the short
convolution, MHA and GQA. Chunking, prefill, causality, padding and gradients: tests/test_mixers_a.py (its cases
include metala)."""
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


def test_registered_as_a_subquadratic_student():
    assert "metala" in NAMES and "metala" in SUBQUADRATIC and mixer_class("metala").name == "metala"


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_parallel_equals_recurrent_equals_matrix_times_values_plus_augmentation(kwargs):
    mixer, x = make(kwargs), inputs()
    y, state = mixer(x)
    y_rec, state_rec = run_steps(mixer, x)
    assert (y - y_rec).abs().max() < TOL
    assert_states_close(state, state_rec)
    q, k, v, _ = mixer.initial_features(x)
    mixer.chunk_size = 4                      # M (one (T, T) matrix) against the chunked form
    want = mixer.mixing_matrix(x) @ mixer.values(x) + mixer.augmentation(q, k, v)
    assert (want - mixed_values(mixer, x)).abs().max() < TOL   # what forward hands to its output
    assert y.abs().max() > 1e-3


def test_the_key_is_one_minus_the_forget_gate_and_m_is_the_gated_sum():
    mixer, x = make({}), inputs()
    q, k, v, g = mixer.initial_features(x)
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
    q, k, v, _ = mixer.initial_features(x)
    assert (mixer.augmentation(q, k, v) - 0.5).abs().max() == 0
    y, _ = mixer(x)
    mixer.augmentation = lambda q, k, v: torch.zeros_like(q)                     # noqa: E731 — drop it
    y_without, _ = mixer(x)
    assert (y - y_without).abs().max() < 1e-12


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
