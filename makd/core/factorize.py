"""The truncated-SVD student: every MHA/FFN matrix of a teacher replaced by two thin factors.

For a weight ``W`` (d_out, d_in) with SVD ``W = U Σ Vᵀ`` the rank-r student keeps

    A = U_r Σ_r^½   (d_out, r)      B = Σ_r^½ V_rᵀ   (r, d_in)      y = (x Bᵀ) Aᵀ + b

at a cost of r·(d_in + d_out) parameters instead of d_in·d_out. Full rank reproduces the teacher; a
plain truncation leaves the Eckart–Young error ‖W − AB‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i²) / ‖W‖_F.
Activation-aware weighting (ASVD-style, an improvement over the paper, not the paper's method):
factorise ``W·diag(s)`` with s_j = mean|x_j|^½ over calibration tokens, then ``B ← B·diag(1/s)``.

Student sizes (see METHOD.md, "Reconstructed defaults"): an explicit ``rank``, a total parameter
``budget`` (embeddings and heads counted) or a ``layer_ratio`` (fraction of the dense matrices'
parameters kept). Budgets are solved with one uniform per-matrix parameter fraction α ≤ 1,
r_i ≈ α·d_in·d_out/(d_in + d_out), so no solved rank exceeds break-even.

Command line: ``python -m makd factorize --help`` (makd.experiments.factorize).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from makd.core import families
# the modules live in makd.core.lowrank; re-exported here (makd.core.factorize.LowRankLinear keeps working)
from makd.core.lowrank import LowRankEmbedding, LowRankLinear, dense_weight, dims  # noqa: F401

__all__ = ["LowRankLinear", "LowRankEmbedding", "factorize", "solve_ranks", "floor_parameters",
           "count_parameters", "factorized_modules", "report", "report_totals"]
EMBED = "embed"  # role of the (optional) word-embedding table


# ------------------------------------------------------------------------------------------ targets
def count_parameters(model: nn.Module) -> int:
    """sum(p.numel() for p in model.parameters()) (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def _embedding_name(model: nn.Module) -> str:
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is emb.weight:
        raise ValueError(f"{type(model).__name__} ties its input embeddings to the output layer: tied "
                         "embeddings cannot be factorised (use factorize_embeddings=False, or untie them)")
    return next(n for n, m in model.named_modules() if m is emb)


def targets(model: nn.Module, modules: dict[str, str] | None = None, factorize_embeddings: bool = False
            ) -> dict[str, dict[str, Any]]:
    """name -> {layer, role, d_in, d_out} of every matrix to factorise (raises on unsupported models)."""
    family = families.detect_family(model, modules)
    out = {}
    if factorize_embeddings:
        out[_embedding_name(model)] = {"layer": -1, "role": EMBED}
    for name, (layer, role) in families.matrix_modules(model, family).items():
        out[name] = {"layer": layer, "role": role}
    if not out:
        raise ValueError(f"{type(model).__name__} has no matrices to factorise")
    for name, info in out.items():
        info["d_in"], info["d_out"] = dims(model.get_submodule(name))
    return out


def _other_params(model: nn.Module, tg: dict) -> int:
    return count_parameters(model) - sum(t["d_in"] * t["d_out"] for t in tg.values())


def floor_parameters(model: nn.Module, *, modules=None, factorize_embeddings: bool = False) -> int:
    """Smallest reachable student: every non-factorised parameter plus rank-1 factors."""
    tg = targets(model, modules, factorize_embeddings)
    return _other_params(model, tg) + sum(t["d_in"] + t["d_out"] for t in tg.values())


def _ranks_at(alpha: float, tg: dict) -> dict[str, int]:
    """r_i = clip(round(α·d_in·d_out/(d_in+d_out)), 1, break-even)."""
    out = {}
    for n, t in tg.items():
        even = t["d_in"] * t["d_out"] / (t["d_in"] + t["d_out"])
        out[n] = int(min(max(round(alpha * even), 1), max(math.floor(even), 1)))
    return out


def _cost(ranks: dict[str, int], tg: dict) -> int:
    return sum(r * (tg[n]["d_in"] + tg[n]["d_out"]) for n, r in ranks.items())


def _solve(tg: dict, goal: int, tol: float) -> dict[str, int]:
    """Ranks whose low-rank parameter count is the largest not above ``goal`` (bisection on α, then
    greedy +1s); if that still misses ``goal`` by more than ``tol`` (coarse steps in tiny models),
    +1 / -1 / -1+1 moves that land closer, possibly just over ``goal``."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _cost(_ranks_at(mid, tg), tg) <= goal else (lo, mid)
    ranks = _ranks_at(lo, tg)
    cap = {n: max(math.floor(t["d_in"] * t["d_out"] / (t["d_in"] + t["d_out"])), 1) for n, t in tg.items()}
    step = {n: t["d_in"] + t["d_out"] for n, t in tg.items()}
    while True:  # greedy +1 on the matrix furthest below the uniform fraction that still fits
        left = goal - _cost(ranks, tg)
        fits = [n for n in ranks if ranks[n] < cap[n] and step[n] <= left]
        if not fits:
            break
        ranks[min(fits, key=lambda k: (ranks[k] / cap[k], k))] += 1
    for _ in range(len(ranks)):  # still off by more than tol: +1, -1 or a -1/+1 swap, whichever lands closest
        diff = goal - _cost(ranks, tg)
        if abs(diff) <= tol:
            break
        inc, dec = {}, {}  # step size -> the most / least "behind" matrix that can move
        for n in sorted(ranks, key=lambda k: ranks[k] / cap[k]):
            if ranks[n] < cap[n]:
                inc.setdefault(step[n], n)
        for n in sorted(ranks, key=lambda k: -ranks[k] / cap[k]):
            if ranks[n] > 1:
                dec.setdefault(step[n], n)
        moves = [(s, [(n, 1)]) for s, n in inc.items()] + [(-s, [(n, -1)]) for s, n in dec.items()]
        moves += [(si - sd, [(nd, -1), (ni, 1)]) for si, ni in inc.items() for sd, nd in dec.items() if ni != nd]
        if not moves:
            break
        delta, change = min(moves, key=lambda m: abs(diff - m[0]))
        if abs(diff - delta) >= abs(diff):
            break
        for n, d in change:
            ranks[n] += d
    return ranks


def solve_ranks(model: nn.Module, *, budget: int | float | None = None, layer_ratio: float | None = None,
                modules=None, factorize_embeddings: bool = False) -> dict[str, int]:
    """Ranks meeting a total-parameter ``budget`` or a ``layer_ratio`` (pure: no SVD)."""
    if (budget is None) == (layer_ratio is None):
        raise ValueError("give exactly one of budget= or layer_ratio=")
    tg = targets(model, modules, factorize_embeddings)
    dense = sum(t["d_in"] * t["d_out"] for t in tg.values())
    one = sum(t["d_in"] + t["d_out"] for t in tg.values())
    other, total = _other_params(model, tg), count_parameters(model)
    if layer_ratio is not None:
        if isinstance(layer_ratio, bool) or not 0 < layer_ratio <= 1:
            raise ValueError(f"layer_ratio must be a float in (0, 1], got {layer_ratio!r}")
        if layer_ratio * dense < one:
            raise ValueError(f"layer_ratio={layer_ratio} is below rank 1 everywhere; the smallest reachable "
                             f"layer_ratio is {one / dense:.4g}")
        goal, what = layer_ratio * dense, f"layer_ratio={layer_ratio}"
    else:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
            raise ValueError(f"budget must be a positive int (parameters) or a float in (0, 1], got {budget!r}")
        if isinstance(budget, float):
            if budget > 1:
                raise ValueError(f"a float budget is a fraction of the teacher's {total:,} parameters and must "
                                 f"be in (0, 1]; got {budget} (pass an int for an absolute count)")
            budget = round(budget * total)
        if budget > total:
            raise ValueError(f"budget {budget:,} is above the teacher's {total:,} parameters")
        if budget < other + one:
            hint = ("" if factorize_embeddings else
                    "; factorize_embeddings=True (--factorize-embeddings) can go lower")
            raise ValueError(f"budget {budget:,} is below the floor: the smallest reachable budget is "
                             f"{other + one:,} parameters (all non-factorised parameters + rank-1 factors){hint}")
        goal, what = budget - other, f"budget={budget:,}"
    scale = goal + (other if budget is not None else 0)  # 0.5 % of the budget, or of the ratio's target
    ranks = _solve(tg, int(goal), 0.005 * scale)
    got = _cost(ranks, tg)
    if abs(got - goal) > 0.005 * scale:
        raise ValueError(f"{what} cannot be met within 0.5 %: the closest student keeps {got:,} factor "
                         f"parameters for a target of {goal:,.0f} (ranks are capped at break-even)")
    return ranks


def _explicit_ranks(tg: dict, rank) -> dict[str, int]:
    """int / fraction of full rank / {name or role: int or fraction} -> {name: rank}, validated."""
    def one(name, value):
        t = tg[name]
        full = min(t["d_in"], t["d_out"])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"rank for {name} must be an int or a float in (0, 1], got {value!r}")
        if isinstance(value, float):
            if not 0 < value <= 1:
                raise ValueError(f"fractional rank for {name} must be in (0, 1], got {value}")
            value = max(1, round(value * full))
        if not 1 <= value <= full:
            raise ValueError(f"rank {value} for {name} (shape {t['d_out']}x{t['d_in']}) is out of range: "
                             f"allowed 1..{full}")
        return int(value)
    if not isinstance(rank, dict):
        return {n: one(n, rank) for n in tg}
    roles = {t["role"] for t in tg.values()}
    unknown = sorted(k for k in rank if k not in tg and k not in roles)
    if unknown:
        raise ValueError(f"unknown module(s) in the rank dict: {unknown}; use full module names "
                         f"(e.g. {next(iter(tg))!r}) or roles {sorted(roles)}")
    picked = {n: rank[n] if n in rank else rank[t["role"]] for n, t in tg.items() if n in rank or t["role"] in rank}
    return {n: one(n, v) for n, v in picked.items()}


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
def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def plan_ranks(model: nn.Module, *, rank=None, budget=None, layer_ratio=None, modules=None,
               factorize_embeddings: bool = False) -> dict[str, int]:
    """The ranks ``factorize`` would use, with all of its checks, and no SVD (cheap: run it before long work)."""
    given = [k for k, v in (("rank", rank), ("budget", budget), ("layer_ratio", layer_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of rank=, budget=, layer_ratio= (got {given or 'none'})")
    if rank is not None:
        ranks = _explicit_ranks(targets(model, modules, factorize_embeddings), rank)
        if not ranks:
            raise ValueError("the rank dict selects no module to factorise")
        return ranks
    return solve_ranks(model, budget=budget, layer_ratio=layer_ratio, modules=modules,
                       factorize_embeddings=factorize_embeddings)


def factorize(model: nn.Module, *, rank=None, budget=None, layer_ratio=None, weighting: str = "none",
              calibration=None, modules: dict[str, str] | None = None, factorize_embeddings: bool = False
              ) -> nn.Module:
    """A NEW model (the teacher is untouched) with every target matrix replaced by a LowRankLinear.

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
    student = copy.deepcopy(model)
    for name, r in ranks.items():
        old = student.get_submodule(name)
        new = (LowRankEmbedding.from_embedding(old, r) if tg[name]["role"] == EMBED
               else LowRankLinear.from_linear(old, r, scales.get(name)))
        _replace(student, name, new)
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


# --------------------------------------------------------------------------------------------- CLI
