"""The truncated-SVD student: every MHA/FFN matrix of a teacher replaced by two thin factors.

For a weight ``W`` (d_out, d_in) with SVD ``W = U Σ Vᵀ`` the rank-r student keeps

    A = U_r Σ_r^½   (d_out, r)      B = Σ_r^½ V_rᵀ   (r, d_in)      y = (x Bᵀ) Aᵀ + b

at a cost of r·(d_in + d_out) parameters instead of d_in·d_out. Full rank reproduces the teacher; a
plain truncation leaves the Eckart–Young error ‖W − AB‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i²) / ‖W‖_F.
Weightings from calibration inputs (improvements over the paper, not the paper's method;
:mod:`makd.core.calibration`):

- ``"activation"`` (ASVD-style): factorise ``W·diag(s)`` with s_j = mean|x_j|^½ over calibration tokens,
  then ``B ← B·diag(1/s)``;
- ``"whiten"`` (SVD-LLM's truncation-aware whitening, teacher-forced): factorise ``W·S`` with S Sᵀ the Gram
  matrix of the matrix's inputs in the TEACHER, then ``B ← B·S⁻¹`` — the closed-form minimiser of the
  teacher-forced matrix aspect ‖W X − A B X‖_F²;
- ``"whiten-sequential"``: the same, layer by layer, with the inputs of layer l taken from the student whose
  layers < l are already factorised (the truncation fitted to the inputs the student will see; the matrices
  within layer l all see the student's input to that layer, the layer itself still dense). Its target is the
  dense matrix on the student's inputs, W X̃, so the errors of earlier layers are carried on, not undone;
- ``"whiten-compensated"``: layer by layer as above, but the target is the teacher's output W X on the teacher's
  inputs X at the same tokens: the rank-r minimiser of ‖W Xᵀ − A B X̃ᵀ‖_F, reduced-rank regression with the closed
  form SVD of W·(XᵀX̃)·S̃⁻ᵀ, B ← B·S̃⁻¹ (S̃ S̃ᵀ = X̃ᵀX̃ damped, the same damping added to XᵀX̃:
  :func:`makd.core.calibration.damped_cross`) — every matrix also corrects, as far as its rank allows, the error
  its input carries from the layers below (ours; reduces to ``whiten`` where X = X̃).

Student sizes (an explicit ``rank``, a total parameter ``budget`` or a ``layer_ratio``) are turned into
ranks by :mod:`makd.core.budget` (re-exported here: ``solve_ranks``, ``plan_ranks``, ``floor_parameters``,
``count_parameters``, ``targets``). Command line: ``python -m makd factorize --help``
(makd.experiments.factorize).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from makd.core import families
from makd.core.calibration import (activation_scales, as_batches, damped_cross, input_grams, layer_calls,
                                   layer_cross_grams, layer_input_grams, layer_outputs, whitening_factor)
# re-exported here: makd.core.factorize.solve_ranks / LowRankLinear / ... keep working
from makd.core.budget import (EMBED, allocate_ranks, count_parameters, floor_parameters, plan_ranks,  # noqa: F401
                              solve_ranks, targets)
from makd.core.fused import fuse
from makd.core.lowrank import LowRankEmbedding, LowRankLinear, dense_weight, dims  # noqa: F401

__all__ = ["LowRankLinear", "LowRankEmbedding", "factorize", "solve_ranks", "plan_ranks", "floor_parameters",
           "count_parameters", "factorized_modules", "report", "report_totals"]


# --------------------------------------------------------------------------------------- factorize
WEIGHTINGS = ("none", "activation", "whiten", "whiten-sequential", "whiten-compensated")
SEQUENTIAL = ("whiten-sequential", "whiten-compensated")            # factorised layer by layer
RANK_RULES = ("uniform", "auto")


def factorize(model: nn.Module, *, rank=None, budget=None, layer_ratio=None, weighting: str = "none",
              calibration=None, modules: dict[str, str] | None = None, factorize_embeddings: bool = False,
              damping: float = 1e-4, ranks: str = "uniform", fused: bool = True) -> nn.Module:
    """A NEW model (the teacher is untouched, every student parameter trainable) with every target matrix
    replaced by a LowRankLinear.

    Exactly one of ``rank`` (int, fraction of full rank, or {module name or role: rank}; matrices not
    named in a dict stay dense), ``budget`` (total student parameters, int or fraction of the teacher)
    or ``layer_ratio`` (fraction of the dense matrices' parameters kept). ``weighting``: one of
    :data:`WEIGHTINGS` — "none" (plain truncated SVD); "activation" and the three whitenings need
    ``calibration`` (see the module docstring); ``damping``: the whitening's λ (:func:`whitening_factor`).
    ``ranks``: "uniform" (one parameter fraction for every matrix, :mod:`makd.core.budget`) or "auto" (the same
    parameter count spread by :func:`allocate_ranks` over the spectra of the weighted matrices — teacher-forced
    for both whitenings). ``fused``: run the student fused (:func:`makd.core.fused.fuse`: Q/K/V and gate/up share
    one GEMM, matrices whose factors are not cheaper run dense; same outputs, names and state dict); ``False`` or
    :func:`makd.core.fused.unfuse` gives the plain two-GEMM forward. All checks run before any SVD.
    """
    given = [k for k, v in (("rank", rank), ("budget", budget), ("layer_ratio", layer_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank=, budget=, layer_ratio= (got {given or 'none'})")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}: use one of {', '.join(map(repr, WEIGHTINGS))}")
    if weighting != "none" and calibration is None:
        raise ValueError(f"weighting={weighting!r} needs calibration= (a dict of model inputs or a list of them)")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if ranks not in RANK_RULES:
        raise ValueError(f"unknown ranks rule {ranks!r}: use one of {', '.join(map(repr, RANK_RULES))}")
    if ranks == "auto" and rank is not None:
        raise ValueError("ranks='auto' spreads a budget or layer_ratio over the matrices; with an explicit rank= "
                         "use ranks='uniform'")
    family = families.detect_family(model, modules)
    tg = targets(model, modules, factorize_embeddings)
    rule, ranks = ranks, plan_ranks(model, rank=rank, budget=budget, layer_ratio=layer_ratio, modules=modules,
                                    factorize_embeddings=factorize_embeddings)
    linear = [n for n in ranks if tg[n]["role"] != EMBED]
    scales = activation_scales(model, linear, calibration) if weighting == "activation" else {}
    forced: dict[str, tuple] = {}                                         # teacher-forced whitening factors
    if weighting == "whiten" or (weighting in SEQUENTIAL and rule == "auto"):
        grams, _ = input_grams(model, linear, calibration)
        forced = {n: whitening_factor(grams.pop(n), damping) for n in linear}
    if rule == "auto":
        spectra = {}
        for n in linear:
            w = dense_weight(model.get_submodule(n)).detach().double()           # (d_out, d_in)
            if n in scales:
                w = w * scales[n].double()[None, :]
            if n in forced:
                w = w @ forced[n][0]
            spectra[n] = torch.linalg.svdvals(w) ** 2
        ranks.update(allocate_ranks(spectra, tg, sum(ranks[n] * (tg[n]["d_in"] + tg[n]["d_out"]) for n in linear)))
    student = copy.deepcopy(model).requires_grad_(True)   # trainable even if the teacher was frozen (DistillTrainer)
    lams: dict[str, float] = {}
    if weighting == "whiten":                      # all whitening factors from the teacher's inputs
        for name in linear:
            chol, lams[name] = forced.pop(name)
            student.set_submodule(name, LowRankLinear.from_linear(student.get_submodule(name), ranks[name],
                                                                  whiten=chol), strict=True)
    elif weighting in SEQUENTIAL:
        lams = _whiten_sequentially(student, linear, tg, ranks, calibration, damping,
                                    teacher=model if weighting == "whiten-compensated" else None)
    for name, r in ranks.items():
        if name in lams:
            continue
        old = student.get_submodule(name)
        new = (LowRankEmbedding.from_embedding(old, r) if tg[name]["role"] == EMBED
               else LowRankLinear.from_linear(old, r, scales.get(name)))
        student.set_submodule(name, new, strict=True)
    student.makd_factorization = {
        "ranks": ranks, "roles": {n: [tg[n]["layer"], tg[n]["role"]] for n in ranks},
        "budget": budget, "layer_ratio": layer_ratio, "rank": rank, "weighting": weighting, "rank_rule": rule,
        "teacher": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "teacher_params": count_parameters(model), "family": family.name, "modules": modules,
        "factorize_embeddings": factorize_embeddings,
        **({"damping": damping, "damping_max_used": max(lams.values())} if lams else {}),
    }
    return fuse(student, modules=modules) if fused else student


def _whiten_sequentially(student: nn.Module, linear: list[str], tg: dict, ranks: dict[str, int], calibration,
                         damping: float, teacher: nn.Module | None = None) -> dict[str, float]:
    """Factorise ``student``'s matrices layer by layer, each layer whitened on the inputs it gets from the
    already-factorised layers below it; with ``teacher``, each matrix fitted to the teacher's output at the same
    tokens (``whiten-compensated``: the teacher's layers run beside, on the teacher's own hidden states). One pass
    records how every layer is called; then each layer runs alone (O(layers) layer evaluations, not a whole
    forward per layer). Returns the damping used per matrix."""
    layers = families.get_layers(student)
    teacher_layers = families.get_layers(teacher) if teacher is not None else None
    batches = as_batches(calibration)
    calls = layer_calls(student, layers, batches)                      # [batch][layer] = (args, kwargs)
    masks = [b["attention_mask"].bool().to(next(student.parameters()).device) if "attention_mask" in b else None
             for b in batches]
    hidden = [(c[0][0][0] if c[0][0] else c[0][1]["hidden_states"]) for c in calls]   # inputs of layer 0
    hidden_t = list(hidden)                                            # the teacher's: the same at layer 0
    lams: dict[str, float] = {}
    for index, layer in enumerate(layers):
        stage = [n for n in linear if tg[n]["layer"] == index]
        here = [c[index] for c in calls]
        prefix = families.layer_prefix(student) + f".{index}."
        cross: dict[str, torch.Tensor] = {}
        if stage and teacher_layers is not None:
            grams, cross = layer_cross_grams(teacher_layers[index], layer, [n[len(prefix):] for n in stage], here,
                                             hidden_t, hidden, masks)
            grams = {prefix + n: g for n, g in grams.items()}
            cross = {prefix + n: c for n, c in cross.items()}
        elif stage:
            grams = layer_input_grams(layer, {n: layer.get_submodule(n[len(prefix):]) for n in stage}, here, hidden,
                                      masks)
        for name in stage:
            gram = grams.pop(name)
            chol, lams[name] = whitening_factor(gram, damping)
            fit = damped_cross(cross.pop(name), gram, lams[name]) if name in cross else None
            student.set_submodule(name, LowRankLinear.from_linear(student.get_submodule(name), ranks[name],
                                                                  whiten=chol, cross=fit), strict=True)
        if teacher_layers is not None:
            hidden_t = layer_outputs(teacher_layers[index], here, hidden_t)
        hidden = layer_outputs(layer, here, hidden)
    return lams


def factorized_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    """name -> LowRankLinear for every factorised matrix of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


# ------------------------------------------------------------------------------------------ report
def _roles(student: nn.Module) -> dict[str, tuple[int, str]]:
    info = getattr(student, "makd_factorization", None)
    if info and "roles" in info:
        return {n: tuple(v) for n, v in info["roles"].items()}
    try:
        found = families.matrix_modules(student)
    except families.UnsupportedModelError:
        found = {}
    return {n: found.get(n, (-1, EMBED if isinstance(m, LowRankEmbedding) else "?"))
            for n, m in student.named_modules() if isinstance(m, (LowRankLinear, LowRankEmbedding))}


def report(student: nn.Module, teacher: nn.Module | None = None):
    """One row per factorised matrix: shape, rank, dense vs low-rank parameters and, given the teacher,
    rel_error = ‖W − AB‖_F/‖W‖_F and energy_kept = Σ_{i≤r} σ_i² / Σ σ_i² of the teacher's W."""
    import pandas as pd

    rows = []
    for name, (layer, role) in _roles(student).items():
        mod = student.get_submodule(name)
        d_in, d_out = dims(mod)
        row = {"module": name, "layer": layer, "role": role, "shape": f"{d_out}x{d_in}", "rank": mod.rank,
               "full_rank": min(d_in, d_out), "dense_params": d_in * d_out,
               "lowrank_params": mod.rank * (d_in + d_out), "rel_error": math.nan, "energy_kept": math.nan}
        row["param_ratio"] = row["lowrank_params"] / row["dense_params"]
        if teacher is not None:
            w = dense_weight(teacher.get_submodule(name)).detach().double()     # (d_out, d_in)
            approx = mod.dense_weight().detach().double()
            if isinstance(mod, LowRankEmbedding):
                w, approx = w.t(), approx.t()
            sig2 = torch.linalg.svdvals(w) ** 2                                # (min(d_in, d_out),)
            row["rel_error"] = float(torch.linalg.norm(w - approx) / torch.linalg.norm(w))
            row["energy_kept"] = float(sig2[: mod.rank].sum() / sig2.sum())
        rows.append(row)
    cols = ["module", "layer", "role", "shape", "rank", "full_rank", "dense_params", "lowrank_params",
            "param_ratio", "rel_error", "energy_kept"]
    return pd.DataFrame(rows, columns=cols)


def report_totals(student: nn.Module, teacher: nn.Module | None = None) -> dict[str, Any]:
    """teacher/student parameter counts, their ratio, and the layer-parameter ratio of the factorised matrices."""
    mods = [m for m in student.modules() if isinstance(m, (LowRankLinear, LowRankEmbedding))]
    dense = sum(dims(m)[0] * dims(m)[1] for m in mods)
    low = sum(m.rank * sum(dims(m)) for m in mods)
    info = getattr(student, "makd_factorization", {}) or {}
    t_params = count_parameters(teacher) if teacher is not None else info.get("teacher_params")
    s_params = count_parameters(student)
    return {"teacher_params": t_params, "student_params": s_params,
            "ratio": s_params / t_params if t_params else None,
            "layer_ratio": low / dense if dense else None, "factorized_matrices": len(mods),
            "dense_matrix_params": dense, "lowrank_matrix_params": low}
