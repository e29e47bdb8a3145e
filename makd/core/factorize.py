"""The truncated-SVD student: every MHA/FFN matrix of a teacher replaced by two thin factors.

For a weight ``W`` (d_out, d_in) with SVD ``W = U Σ Vᵀ`` the rank-r student keeps

    A = U_r Σ_r^½   (d_out, r)      B = Σ_r^½ V_rᵀ   (r, d_in)      y = (x Bᵀ) Aᵀ + b

at a cost of r·(d_in + d_out) parameters instead of d_in·d_out. Full rank reproduces the teacher; a
plain truncation leaves the Eckart–Young error ‖W − AB‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i²) / ‖W‖_F.
Activation-aware weighting (ASVD-style, an improvement over the paper, not the paper's method):
factorise ``W·diag(s)`` with s_j = mean|x_j|^½ over calibration tokens, then ``B ← B·diag(1/s)``.

Student sizes (an explicit ``rank``, a total parameter ``budget`` or a ``layer_ratio``) are turned into
ranks by :mod:`makd.core.budget` (re-exported here: ``solve_ranks``, ``plan_ranks``, ``floor_parameters``,
``count_parameters``, ``targets``). Command line: ``python -m makd factorize --help``
(makd.experiments.factorize).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from makd.core import families
# re-exported here: makd.core.factorize.solve_ranks / LowRankLinear / ... keep working
from makd.core.budget import (EMBED, count_parameters, floor_parameters, plan_ranks, solve_ranks,  # noqa: F401
                              targets)
from makd.core.lowrank import LowRankEmbedding, LowRankLinear, dense_weight, dims  # noqa: F401

__all__ = ["LowRankLinear", "LowRankEmbedding", "factorize", "solve_ranks", "plan_ranks", "floor_parameters",
           "count_parameters", "factorized_modules", "report", "report_totals"]


# ------------------------------------------------------------------------------------ calibration
def activation_scales(model: nn.Module, names, calibration) -> dict[str, torch.Tensor]:
    """s_j = (mean |x_j| over valid tokens)^½ of each module's input, from one pass over ``calibration``."""
    batches = [calibration] if isinstance(calibration, Mapping) else list(calibration)  # BatchEncoding too
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise ValueError("calibration must be a dict of model inputs or a non-empty list of such dicts")
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(name):
        def pre(_mod, args):
            x = args[0].detach()                                              # (B, T, d_in)
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask]                                                   # (N, d_in)
            x = x.reshape(-1, x.shape[-1]).abs().double()
            sums[name] = sums.get(name, 0) + x.sum(0)
            counts[name] += x.shape[0]
        return pre

    device = next(model.parameters()).device
    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()
                         if k not in ("labels", "start_positions", "end_positions")}
                mask = batch.get("attention_mask")
                state["mask"] = mask.bool() if mask is not None else None
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for n in names:
        if not counts[n]:
            raise ValueError(f"calibration never reached module {n}")
        s = (sums[n] / counts[n]).sqrt()                                      # (d_in,)
        out[n] = s.clamp_min(1e-6 * float(s.max()) + 1e-12)
    return out


# --------------------------------------------------------------------------------------- factorize
def factorize(model: nn.Module, *, rank=None, budget=None, layer_ratio=None, weighting: str = "none",
              calibration=None, modules: dict[str, str] | None = None, factorize_embeddings: bool = False
              ) -> nn.Module:
    """A NEW model (the teacher is untouched, every student parameter trainable) with every target matrix
    replaced by a LowRankLinear.

    Exactly one of ``rank`` (int, fraction of full rank, or {module name or role: rank}; matrices not
    named in a dict stay dense), ``budget`` (total student parameters, int or fraction of the teacher)
    or ``layer_ratio`` (fraction of the dense matrices' parameters kept). ``weighting``: "none" (plain
    truncated SVD) or "activation" (ASVD-style, needs ``calibration``). All checks run before any SVD.
    """
    given = [k for k, v in (("rank", rank), ("budget", budget), ("layer_ratio", layer_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank=, budget=, layer_ratio= (got {given or 'none'})")
    if weighting not in ("none", "activation"):
        raise ValueError(f"unknown weighting {weighting!r}: use 'none' or 'activation'")
    if weighting == "activation" and calibration is None:
        raise ValueError("weighting='activation' needs calibration= (a dict of model inputs or a list of them)")
    family = families.detect_family(model, modules)
    tg = targets(model, modules, factorize_embeddings)
    ranks = plan_ranks(model, rank=rank, budget=budget, layer_ratio=layer_ratio, modules=modules,
                       factorize_embeddings=factorize_embeddings)
    linear = [n for n in ranks if tg[n]["role"] != EMBED]
    scales = activation_scales(model, linear, calibration) if weighting == "activation" else {}
    student = copy.deepcopy(model).requires_grad_(True)   # trainable even if the teacher was frozen (DistillTrainer)
    for name, r in ranks.items():
        old = student.get_submodule(name)
        new = (LowRankEmbedding.from_embedding(old, r) if tg[name]["role"] == EMBED
               else LowRankLinear.from_linear(old, r, scales.get(name)))
        student.set_submodule(name, new, strict=True)
    student.makd_factorization = {
        "ranks": ranks, "roles": {n: [tg[n]["layer"], tg[n]["role"]] for n in ranks},
        "budget": budget, "layer_ratio": layer_ratio, "rank": rank, "weighting": weighting,
        "teacher": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "teacher_params": count_parameters(model), "family": family.name, "modules": modules,
        "factorize_embeddings": factorize_embeddings,
    }
    return student


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
