"""Whitened factorisation: the closed-form optimum of the teacher-forced matrix aspect (makd.core.calibration)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from conftest import tiny_batch, tiny_model
from makd.core import factorize as fz
from makd.core.calibration import input_grams, whitening_factor
from makd.core.lowrank import LowRankLinear, dense_weight


def _problem(d_out=7, d_in=6, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    x = torch.randn(d_in, n, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, d_in, dtype=torch.float64)[:, None]
    return w, x


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_whitened_factors_reach_the_closed_form_minimum(rank):
    w, x = _problem()
    lin = nn.Linear(6, 7, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    chol, lam = whitening_factor(x @ x.T, damping=0.0)
    assert lam == 0.0
    ab = LowRankLinear.from_linear(lin, rank, whiten=chol).dense_weight().detach()    # (7, 6)
    loss = torch.linalg.norm(w @ x - ab @ x) ** 2
    # min over rank-r M of ‖WX − MX‖²: X has full row rank, so it is the Eckart–Young tail of WX
    optimum = (torch.linalg.svdvals(w @ x)[rank:] ** 2).sum()
    torch.testing.assert_close(loss, optimum, rtol=1e-8, atol=1e-10)
    plain = LowRankLinear.from_linear(lin, rank).dense_weight().detach()
    assert torch.linalg.norm(w @ x - plain @ x) ** 2 >= optimum - 1e-9


def test_brute_force_least_squares_does_not_beat_the_closed_form():
    w, x = _problem(5, 4, 30, seed=3)
    rank = 2
    chol, _ = whitening_factor(x @ x.T, damping=0.0)
    lin = nn.Linear(4, 5, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    closed = torch.linalg.norm(w @ x - LowRankLinear.from_linear(lin, rank, whiten=chol).dense_weight() @ x) ** 2
    torch.manual_seed(0)
    a = torch.randn(5, rank, dtype=torch.float64, requires_grad=True)
    b = torch.randn(rank, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        loss = torch.linalg.norm(w @ x - a @ b @ x) ** 2
        loss.backward()
        opt.step()
    assert loss.item() >= closed.item() - 1e-6                  # gradient descent never beats the optimum ...
    assert loss.item() <= closed.item() * 1.01 + 1e-6           # ... and gets to it


def test_identity_inputs_give_plain_svd():
    w, _ = _problem()
    lin = nn.Linear(6, 7, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    chol, _ = whitening_factor(torch.eye(6, dtype=torch.float64), damping=0.0)
    whitened = LowRankLinear.from_linear(lin, 3, whiten=chol).dense_weight()
    torch.testing.assert_close(whitened, LowRankLinear.from_linear(lin, 3).dense_weight())


def test_conv1d_is_whitened_in_its_own_orientation():
    torch.manual_seed(0)
    conv = Conv1D(7, 6).double()                                # GPT-2: weight (d_in, d_out)
    x = torch.randn(50, 6, dtype=torch.float64)                 # (N, d_in)
    chol, _ = whitening_factor(x.T @ x, damping=0.0)
    low = LowRankLinear.from_linear(conv, 2, whiten=chol)
    w = dense_weight(conv).detach()                              # (d_out, d_in)
    optimum = (torch.linalg.svdvals(w @ x.T)[2:] ** 2).sum()
    torch.testing.assert_close(torch.linalg.norm((w - low.dense_weight().detach()) @ x.T) ** 2, optimum)


def test_damping_rescues_a_singular_gram():
    x = torch.randn(3, 6, dtype=torch.float64)                  # 3 tokens, d_in 6: rank-3 Gram
    chol, lam = whitening_factor(x.T @ x, damping=0.0)
    assert lam > 0 and torch.isfinite(chol).all()
    with pytest.raises(ValueError, match="damping must be"):
        whitening_factor(x.T @ x, damping=-1.0)


def _matrix_losses(teacher, student, names, batch):
    grams, _ = input_grams(teacher, names, batch)
    out = {}
    for n in names:
        m = (dense_weight(teacher.get_submodule(n)) - student.get_submodule(n).dense_weight()).detach().double()
        out[n] = float(torch.trace(m @ grams[n] @ m.T))                   # ‖(W − AB) X‖² over the teacher's X
    return out


def test_whitened_student_solves_the_teacher_forced_matrix_aspect(family):
    teacher = tiny_model(family, head="base")
    calibration = [tiny_batch(8, 16, seed=s) for s in (1, 2)]
    plain = fz.factorize(teacher, rank=0.5)
    white = fz.factorize(teacher, rank=0.5, weighting="whiten", calibration=calibration, damping=1e-8)
    names = list(fz.factorized_modules(white))
    assert names and white.makd_factorization["weighting"] == "whiten"
    lp = _matrix_losses(teacher, plain, names, calibration)
    lw = _matrix_losses(teacher, white, names, calibration)
    for n in names:                                                 # the closed form is optimal for every matrix
        assert lw[n] <= lp[n] * (1 + 1e-6) + 1e-9, (n, lw[n], lp[n])
    assert sum(lw.values()) < 0.9 * sum(lp.values())


@pytest.mark.parametrize("weighting", ["whiten", "whiten-sequential", "whiten-compensated"])
def test_full_rank_whitening_reproduces_the_teacher(family, weighting):
    teacher = tiny_model(family, head="base")
    batch = tiny_batch(4, 12, seed=5)
    student = fz.factorize(teacher, rank=1.0, weighting=weighting, calibration=[tiny_batch(8, 16, seed=1)])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref, got = teacher(**batch).last_hidden_state[mask], student(**batch).last_hidden_state[mask]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert all(p.requires_grad for p in student.parameters())


def test_sequential_whitening_compensates_earlier_layers():
    teacher = tiny_model("llama", head="base", n_layers=4)
    calibration = [tiny_batch(8, 16, seed=s) for s in (1, 2, 3)]
    held = tiny_batch(8, 16, seed=9)
    mask = held["attention_mask"].bool()
    errs = {}
    with torch.no_grad():
        ref = teacher(**held).last_hidden_state[mask]
        for w in ("none", "whiten", "whiten-sequential", "whiten-compensated"):
            s = fz.factorize(teacher, rank=0.25, weighting=w, calibration=None if w == "none" else calibration)
            errs[w] = float((s(**held).last_hidden_state[mask] - ref).norm() / ref.norm())
    assert errs["whiten"] < errs["none"] and errs["whiten-sequential"] < errs["none"], errs
    assert errs["whiten-compensated"] < min(errs["whiten"], errs["whiten-sequential"]), errs


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_compensated_factors_reach_the_reduced_rank_regression_minimum(rank):
    w, x = _problem()                                               # teacher inputs X (d_in, n)
    g = torch.Generator().manual_seed(7)
    xs = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)    # the student's inputs X̃, perturbed
    lin = nn.Linear(6, 7, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    chol, _ = whitening_factor(xs @ xs.T, damping=0.0)
    ab = LowRankLinear.from_linear(lin, rank, whiten=chol, cross=x @ xs.T).dense_weight().detach()
    loss = torch.linalg.norm(w @ x - ab @ xs) ** 2
    # min over rank-r M of ‖WX − MX̃‖²: the least-squares fit Ŷ = W X X̃ᵀ (X̃ X̃ᵀ)⁻¹ X̃, then Eckart–Young on Ŷ
    fit = w @ x @ xs.T @ torch.linalg.solve(xs @ xs.T, xs)
    optimum = torch.linalg.norm(w @ x - fit) ** 2 + (torch.linalg.svdvals(fit)[rank:] ** 2).sum()
    torch.testing.assert_close(loss, optimum, rtol=1e-8, atol=1e-10)
    teacher_forced = LowRankLinear.from_linear(lin, rank, whiten=chol).dense_weight().detach()   # fits W X̃
    assert torch.linalg.norm(w @ x - teacher_forced @ xs) ** 2 > optimum
    same = LowRankLinear.from_linear(lin, rank, whiten=chol, cross=xs @ xs.T).dense_weight().detach()   # X = X̃
    torch.testing.assert_close(same, teacher_forced, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="cross= needs whiten="):
        LowRankLinear.from_linear(lin, rank, cross=x @ xs.T)


def test_whitening_needs_calibration_and_a_known_weighting():
    teacher = tiny_model("bert", head="base")
    with pytest.raises(ValueError, match="needs calibration"):
        fz.factorize(teacher, rank=0.5, weighting="whiten")
    with pytest.raises(ValueError, match="unknown weighting 'svd-llm'"):
        fz.factorize(teacher, rank=0.5, weighting="svd-llm", calibration=[tiny_batch()])


# ------------------------------------------------------------------------------ ranks by budget
def test_allocate_ranks_gives_rank_where_the_spectrum_is_flat():
    from makd.core.budget import allocate_ranks

    tg = {"flat": {"d_in": 8, "d_out": 8}, "steep": {"d_in": 8, "d_out": 8}}
    spectra = {"flat": torch.ones(8), "steep": torch.tensor([1.0, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9])}
    ranks = allocate_ranks(spectra, tg, goal=16 * 6)                 # six ranks in all
    assert ranks == {"flat": 4, "steep": 2}
    assert all(r <= 4 for r in ranks.values())                        # break-even of 8x8 is 4
    cost = sum(r * 16 for r in ranks.values())
    assert cost <= 16 * 6
    with pytest.raises(ValueError, match="rank 1"):
        allocate_ranks(spectra, tg, goal=16)


def test_auto_ranks_keep_the_budget_and_lower_the_whitened_error():
    teacher = tiny_model("llama", head="base", n_layers=4)
    calibration = [tiny_batch(8, 16, seed=s) for s in (1, 2)]
    uni = fz.factorize(teacher, layer_ratio=0.5, weighting="whiten", calibration=calibration)
    auto = fz.factorize(teacher, layer_ratio=0.5, weighting="whiten", calibration=calibration, ranks="auto")
    assert auto.makd_factorization["rank_rule"] == "auto"
    assert auto.makd_factorization["ranks"] != uni.makd_factorization["ranks"]
    n_uni, n_auto = fz.count_parameters(uni), fz.count_parameters(auto)
    assert n_auto <= n_uni and (n_uni - n_auto) <= 0.005 * n_uni
    names = list(fz.factorized_modules(uni))
    grams, _ = input_grams(teacher, names, calibration)

    def relative(student):
        total = 0.0
        for n in names:
            w = dense_weight(teacher.get_submodule(n)).detach().double()
            m = w - student.get_submodule(n).dense_weight().detach().double()
            total += float(torch.trace(m @ grams[n] @ m.T) / torch.trace(w @ grams[n] @ w.T))
        return total
    assert relative(auto) < relative(uni)
    with pytest.raises(ValueError, match="ranks='auto' spreads"):
        fz.factorize(teacher, rank=4, ranks="auto")
    with pytest.raises(ValueError, match="unknown ranks rule"):
        fz.factorize(teacher, layer_ratio=0.5, ranks="even")
