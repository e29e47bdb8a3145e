"""Folding a per-channel scale or a concatenation into the weights (prefill, training) or applying it to the
activations (a decoding step) gives the same numbers (``makd.students.mixers.gated_linear.folds``): the helpers on
both paths, and every mixer's forward, step and gradients with folding forced off, in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from makd.students.mixers import gated_linear as gl
from makd.students.mixers import registry

TOL = 1e-12


def test_folding_follows_the_token_count():
    assert gl.folds(torch.zeros(2, 40, 32), 32) and not gl.folds(torch.zeros(2, 16, 32), 32)
    assert not gl.folds(torch.zeros(1, 1, 576), 576)


@pytest.mark.parametrize("tokens", [1, 64])
def test_the_helpers_give_the_same_products_folded_or_not(tokens):
    torch.manual_seed(0)
    x = torch.randn(1, tokens, 16, dtype=torch.float64)
    p, q = (nn.Linear(16, 8, bias=False).double() for _ in range(2))
    scale = torch.rand(4, dtype=torch.float64)
    want_scaled = (x @ p.weight.T) * scale.repeat(2)
    want_out = (x * scale.repeat(4)) @ p.weight.T
    want_cat = torch.cat([x @ p.weight.T, x @ q.weight.T], -1)
    assert gl.folds(x, 16) == (tokens > 16)
    torch.testing.assert_close(gl.scaled_linear(x, p, scale), want_scaled, atol=TOL, rtol=0)
    torch.testing.assert_close(gl.scaled_linear(x, p, 0.5), (x @ p.weight.T) * 0.5, atol=TOL, rtol=0)
    torch.testing.assert_close(gl.project_out(x, p, scale), want_out, atol=TOL, rtol=0)
    torch.testing.assert_close(gl.fused_linear(x, p, q), want_cat, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["retnet", "gla", "mlstm", "deltanet", "gated_deltanet", "mamba2"])
def test_every_mixer_is_the_same_with_folding_forced_off(name, monkeypatch):
    torch.manual_seed(0)
    mixer = registry.mixer_class(name)(32, 4, num_kv_heads=2, chunk_size=8).double()
    x = torch.randn(2, 40, 32, dtype=torch.float64, requires_grad=True)      # 80 tokens > 32 features: folded
    assert gl.folds(x, 32)
    y, state = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()], allow_unused=True)
    step_in = torch.randn(2, 1, 32, dtype=torch.float64)
    y_step, _ = mixer.step(step_in, state)
    monkeypatch.setattr(gl, "folds", lambda *a: False)
    y2, state2 = mixer(x)
    grads2 = torch.autograd.grad(y2.square().sum(), [x, *mixer.parameters()], allow_unused=True)
    torch.testing.assert_close(y2, y, atol=TOL, rtol=0)
    for a, b in zip(grads, grads2):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-10, rtol=0))
    monkeypatch.setattr(gl, "folds", lambda *a: True)                        # the step folded as well
    torch.testing.assert_close(mixer.step(step_in, state2)[0], y_step, atol=TOL, rtol=0)
