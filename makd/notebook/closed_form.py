"""The teacher-forced matrix aspect has a closed form; notebook 04 shows it with these functions.

For a matrix W (d_out, d_in) and the inputs X (d_in, N) it receives in the teacher, the teacher-forced matrix
loss of rank-r factors A B, relative to the teacher's output energy, is

    ℓ(A B) = ‖(W − A B) X‖_F² / ‖W X‖_F² = tr((W − AB) G (W − AB)ᵀ) / tr(W G Wᵀ),      G = X Xᵀ,

so it needs only the Gram matrix G (:func:`makd.core.calibration.input_grams`). Its minimum over rank-r
products is Σ_{i>r} σ_i(W S)² / Σ_i σ_i(W S)² with S Sᵀ = G, reached by the whitened factorisation
(``makd.core.factorize.factorize(..., weighting="whiten")``). :func:`teacher_forced_losses` tabulates ℓ per
matrix for several students; :func:`matrix_descent` trains one matrix's factors by gradient descent on ℓ, from
the plain SVD, to show the trained matrix aspect heading for the same optimum.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from makd.core import families
from makd.core.calibration import input_grams, whitening_factor
from makd.core.lowrank import LowRankLinear, dense_weight

__all__ = ["relative_loss", "teacher_forced_losses", "matrix_descent", "calibration_batch"]


def relative_loss(w: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """tr((W − M) G (W − M)ᵀ) / tr(W G Wᵀ) for W, M (d_out, d_in) and G (d_in, d_in): ‖(W − M)X‖² / ‖WX‖²."""
    diff = w - approx                                                         # (d_out, d_in)
    return torch.trace(diff @ gram @ diff.T) / torch.trace(w @ gram @ w.T)


def teacher_forced_losses(teacher: nn.Module, students: dict[str, nn.Module], inputs) -> pd.DataFrame:
    """One row per factorised matrix: layer, role and ℓ of each student (a column each), on the teacher's inputs
    to that matrix over ``inputs`` (a batch dict or a list of them; padding excluded)."""
    first = next(iter(students.values()))
    names = [n for n, m in first.named_modules() if isinstance(m, LowRankLinear)]
    roles = families.matrix_modules(teacher)
    grams, _ = input_grams(teacher, names, inputs)
    rows = []
    for n in names:
        w = dense_weight(teacher.get_submodule(n)).detach().double()            # (d_out, d_in)
        row = {"module": n, "layer": roles[n][0], "role": roles[n][1]}
        for label, student in students.items():
            approx = student.get_submodule(n).dense_weight().detach().double()
            row[label] = float(relative_loss(w, approx, grams[n]))
        rows.append(row)
    return pd.DataFrame(rows)


def matrix_descent(teacher: nn.Module, name: str, rank: int, inputs, *, steps: int = 300, lr: float = 1e-2,
                   damping: float = 1e-8, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Adam on the factors (A, B) of matrix ``name`` minimising ℓ(A B) on the teacher's inputs, starting from
    the plain truncated SVD; returns (step, loss) history and {plain, whitened, trained}: ℓ of the plain SVD,
    of the closed form (the optimum) and after ``steps`` steps."""
    grams, _ = input_grams(teacher, [name], inputs)
    gram = grams[name]                                                        # (d_in, d_in), float64
    module = teacher.get_submodule(name)
    w = dense_weight(module).detach().double()                                # (d_out, d_in)
    chol, _ = whitening_factor(gram, damping)
    plain = LowRankLinear.from_linear(module, rank).double()
    closed = LowRankLinear.from_linear(module, rank, whiten=chol).double()
    torch.manual_seed(seed)
    a = plain.up.weight.detach().clone().requires_grad_(True)                 # (d_out, r)
    b = plain.down.weight.detach().clone().requires_grad_(True)               # (r, d_in)
    opt = torch.optim.Adam([a, b], lr=lr)
    history = []
    for step in range(steps + 1):
        loss = relative_loss(w, a @ b, gram)
        history.append({"step": step, "loss": float(loss)})
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    summary = {"plain": float(relative_loss(w, plain.dense_weight().detach(), gram)),
               "whitened": float(relative_loss(w, closed.dense_weight().detach(), gram)),
               "trained": history[-1]["loss"]}
    return pd.DataFrame(history), summary


def calibration_batch(train, tokenizer, n: int = 64) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of a tokenized training split as one padded batch (input_ids, attention_mask):
    the calibration inputs of a weighted factorisation (labels dropped)."""
    from transformers import DataCollatorWithPadding

    rows = [{k: v for k, v in train[i].items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            for i in range(min(n, len(train)))]
    if not rows:
        raise ValueError("calibration needs at least one training row")
    return dict(DataCollatorWithPadding(tokenizer)(rows))
