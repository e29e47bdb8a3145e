"""How far a token budget gets a subquadratic student: the budget curve of ``grids/subquadratic-curve.yaml``.

The cells of group ``budget`` of a subquadratic grid are one student trained at several token budgets (the same
budget for each of the three stages; 3 seeds each). :func:`token_curve` summarises them per budget — held-out
perplexity and its ratio to the teacher's, KL(teacher ‖ student), top-1 agreement, each mean ± std over seeds —
and compares every budget with the one below it, paired over seeds (the one rule of
:func:`makd.experiments.verdicts.direction`). :func:`extrapolate` fits a straight line on log axes through the
means, log(ppl/ppl_T) = a + b·log(tokens) and top-1 = c + d·log(tokens), and solves for the budget at which the
issue's targets (perplexity within 1.5× the teacher's, top-1 ≥ 60 %) would be met: a reading aid labelled as an
extrapolation, never a measurement (``None`` when the curve does not improve with tokens). :func:`curve_markdown`
is the report's section, all computed from the runs.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from makd.experiments.stats import compare_cells, mean_pm_std
from makd.experiments.tables import markdown_table
from makd.experiments.verdicts import direction

STAGE_KEYS = ("mixing_tokens", "hidden_tokens", "kd_tokens")
PPL_TARGET = 1.5           # issue 22: held-out perplexity within 1.5x the teacher's
TOP1_TARGET = 0.60         # issue 22: top-1 agreement with the teacher >= 60 %


def budget_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``df`` in group 'budget' with their tokens per stage (the largest of the three stage budgets
    in the run's config) and total training tokens; empty when there are none."""
    b = df[df["group"] == "budget"].copy()
    if b.empty:
        return b
    cfg = b["config"].apply(lambda c: [int((c or {}).get(k) or 0) for k in STAGE_KEYS])
    return b.assign(stage_tokens=cfg.apply(max), total_tokens=cfg.apply(sum))


def token_curve(df: pd.DataFrame) -> pd.DataFrame:
    """One row per budget cell, ordered by tokens: cell, label, stage_tokens, total_tokens, n (seeds), mean/std
    of ppl, ppl_ratio (ppl / the same run's teacher ppl), kl and top1 (``score``), the teacher's ppl, and the
    paired comparison of top-1 with the budget below (``vs_below``: mean difference and verdict; '' first)."""
    b = budget_runs(df)
    if b.empty:
        return pd.DataFrame()
    b = b.assign(ppl_ratio=b["ppl"].astype(float) / b["teacher_ppl"].astype(float))
    rows = []
    for cell, g in b.groupby("cell", sort=False):
        row: dict[str, Any] = {"cell": cell, "label": g["label"].iloc[0], "stage_tokens": int(g["stage_tokens"].iloc[0]),
                               "total_tokens": int(g["total_tokens"].iloc[0]), "n": g["seed"].nunique(),
                               "teacher_ppl": float(g["teacher_ppl"].astype(float).mean())}
        for name, col in (("ppl", "ppl"), ("ppl_ratio", "ppl_ratio"), ("kl", "kl"), ("top1", "score")):
            values = g[col].astype(float)
            row[f"{name}_mean"], row[f"{name}_std"] = values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    curve = pd.DataFrame(rows).sort_values("total_tokens", ignore_index=True)
    below: list[str] = [""]
    task = b["task"].iloc[0]
    for lo, hi in zip(curve["cell"][:-1], curve["cell"][1:]):
        try:
            res = compare_cells(b, task, hi, lo)
        except ValueError:
            below.append("no common seeds")
            continue
        below.append(f"{100 * res['mean_diff']:+.1f} ({direction(res)})")
    return curve.assign(vs_below=below)


def _solve(x: np.ndarray, y: np.ndarray, target: float) -> tuple[float, float] | None:
    """Fit y = a + b·log(x) by least squares; the x where the line reaches ``target`` and the slope b (None when
    fewer than two budgets, or the line moves away from the target)."""
    if len(x) < 2:
        return None
    b, a = np.polyfit(np.log(x), y, 1)
    if b == 0 or (target - y[-1]) / b < 0:
        return None
    return float(math.exp((target - a) / b)), float(b)


def extrapolate(curve: pd.DataFrame) -> dict[str, Any]:
    """Tokens per stage at which straight lines on log axes through the curve's means reach the targets:
    ``ppl`` (log(ppl/ppl_T) linear in log tokens, solved for ratio 1.5) and ``top1`` (top-1 linear in log tokens,
    solved for 0.60); each {"tokens_per_stage", "slope_per_doubling"} or None (not improving, or < 2 budgets)."""
    x = curve["stage_tokens"].to_numpy(float)
    out: dict[str, Any] = {}
    for key, y, target in (("ppl", np.log(curve["ppl_ratio_mean"].to_numpy(float)), math.log(PPL_TARGET)),
                           ("top1", curve["top1_mean"].to_numpy(float), TOP1_TARGET)):
        hit = _solve(x, y, target)
        out[key] = None if hit is None else {"tokens_per_stage": hit[0], "slope_per_doubling": hit[1] * math.log(2)}
    return out


def _tokens(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:,.3g}{unit}"
    return f"{n:,.0f}"


def curve_markdown(df: pd.DataFrame, heading: bool = True) -> str:
    """The report's budget-curve section (``heading``: with its '## ' title): the table per budget, whether the
    largest budget meets the targets, and the labelled extrapolation. '' when ``df`` has no budget cells."""
    curve = token_curve(df)
    if curve.empty:
        return ""
    table = pd.DataFrame({
        "cell": curve["label"], "tokens per stage": [f"{t:,}" for t in curve["stage_tokens"]],
        "seeds": curve["n"],
        "perplexity": [mean_pm_std(m, s, scale=1, digits=1) for m, s in zip(curve["ppl_mean"], curve["ppl_std"])],
        "× teacher": [mean_pm_std(m, s, scale=1, digits=1) for m, s in zip(curve["ppl_ratio_mean"], curve["ppl_ratio_std"])],
        "KL (nats/token)": [mean_pm_std(m, s, scale=1, digits=2) for m, s in zip(curve["kl_mean"], curve["kl_std"])],
        "top-1 ×100": [mean_pm_std(m, s) for m, s in zip(curve["top1_mean"], curve["top1_std"])],
        "top-1 vs the budget below (points, verdict)": [v or "–" for v in curve["vs_below"]]})
    last = curve.iloc[-1]
    met_ppl, met_top1 = last["ppl_ratio_mean"] <= PPL_TARGET, last["top1_mean"] >= TOP1_TARGET
    lines = ["## How far the token budget gets (budget curve, mean ± std over seeds)", ""] if heading else []
    lines += [f"Teacher perplexity on the same held-out blocks: {curve['teacher_ppl'].mean():.1f}.", "",
              markdown_table(table), "",
              f"At {last['stage_tokens']:,} tokens per stage ({last['total_tokens']:,} in all) the student's perplexity is "
              f"{last['ppl_ratio_mean']:.1f}× the teacher's (target ≤ {PPL_TARGET}×: {'met' if met_ppl else 'not met'}) and "
              f"its top-1 agreement {100 * last['top1_mean']:.1f} % (target ≥ {100 * TOP1_TARGET:.0f} %: "
              f"{'met' if met_top1 else 'not met'})."]
    ext = extrapolate(curve)
    said = []
    for key, what in (("ppl", f"perplexity {PPL_TARGET}× the teacher's"), ("top1", f"top-1 {100 * TOP1_TARGET:.0f} %")):
        e = ext[key]
        if e is None:
            said.append(f"{what}: no extrapolation (the curve does not move towards it)")
        else:
            step = (f"{math.exp(e['slope_per_doubling']):.2f}× perplexity ratio" if key == "ppl"
                    else f"{100 * e['slope_per_doubling']:+.1f} points")
            said.append(f"{what} at ≈ {_tokens(e['tokens_per_stage'])} tokens per stage ({step} per doubling)")
    lines += ["", f"Extrapolation (a straight line on log axes through {len(curve)} budgets' means — a reading aid, "
              "not a measurement; early-training curves usually bend): " + "; ".join(said) + "."]
    return "\n".join(lines)
