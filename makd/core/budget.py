"""How big each factor is: the matrices a student factorises and the ranks that meet a size target.

A rank-r factorisation of ``W`` (d_out, d_in) costs r·(d_in + d_out) parameters instead of d_in·d_out, so it
only saves parameters below the break-even rank d_in·d_out / (d_in + d_out). A student's size is given as an
explicit ``rank`` (int, fraction of full rank, or per module/role), a total parameter ``budget``
(embeddings and heads counted; int or fraction of the teacher) or a ``layer_ratio`` (fraction of the
dense matrices' parameters kept). Budgets and ratios are solved with one uniform per-matrix parameter
fraction α ≤ 1, r_i ≈ α·d_in·d_out/(d_in + d_out), so no solved rank exceeds break-even (see METHOD.md,
"Reconstructed defaults"). Everything here is pure arithmetic on shapes: no SVD runs, so
:func:`plan_ranks` can check a size before any long work. :mod:`makd.core.factorize` builds the student.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from makd.core import families
from makd.core.lowrank import dims

__all__ = ["EMBED", "count_parameters", "targets", "floor_parameters", "solve_ranks", "plan_ranks", "allocate_ranks"]
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


def allocate_ranks(spectra: dict[str, Any], tg: dict, goal: int) -> dict[str, int]:
    """Uneven ranks for the same parameter count: the largest ``goal`` low-rank parameters (Σ r_i·(d_in+d_out))
    that minimise the total RELATIVE truncation error Σ_i Σ_{j>r_i} σ_ij² / Σ_j σ_ij².

    ``spectra[n]``: the squared singular values σ_j² (descending) of the matrix being truncated — W·S for a
    whitened factorisation, so a tail is the matrix's teacher-forced output error. Each error is divided by the
    matrix's total energy because matrices live on different scales (massive activations make a few inputs'
    Gram matrices 10⁶× larger): the raw sum would hand every rank to them. Greedy: from rank 1 everywhere, add
    one rank where it removes the most relative error per parameter, σ_{r+1}²/Σσ² / (d_in+d_out), while it fits
    and stays at or below break-even. Each matrix's gains do not increase with r, so this is the exact optimum of
    the fractional problem and within one rank step of the integer one.
    """
    import heapq

    ranks, heap = {}, []
    for n, sig2 in spectra.items():
        t = tg[n]
        energy = [float(v) for v in sig2]
        total = sum(energy) or 1.0
        cap = min(max(math.floor(t["d_in"] * t["d_out"] / (t["d_in"] + t["d_out"])), 1), len(energy))
        ranks[n] = 1
        step = t["d_in"] + t["d_out"]
        gains = [e / total / step for e in energy]
        if cap > 1:
            heapq.heappush(heap, (-gains[1], n, step, gains, cap))
    left = goal - sum(tg[n]["d_in"] + tg[n]["d_out"] for n in ranks)
    if left < 0:
        raise ValueError(f"{goal:,} factor parameters do not reach rank 1 for every matrix")
    skipped = []
    while heap:
        neg, n, step, gains, cap = heapq.heappop(heap)
        if step > left:                      # does not fit any more; a cheaper matrix might
            skipped.append(n)
            continue
        ranks[n] += 1
        left -= step
        if ranks[n] < cap:
            heapq.heappush(heap, (-gains[ranks[n]], n, step, gains, cap))
    return ranks
