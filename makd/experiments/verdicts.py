"""The verdict rule and the verdict sentences of a grid: does MaKD beat the best baseline, does each aspect help,
which hierarchy, which initialisation, how low can the budget go — all computed from the runs, never typed.

``direction(res)`` is the one rule every verdict uses: a winner needs the bootstrap CI of the mean paired
difference to exclude 0 AND the paired t-test to agree (p < 0.05). ``verdicts(df)`` answers the ablation
questions in sentences, from the paired comparisons of :mod:`makd.experiments.stats`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from makd.experiments.stats import (ablation_deltas, compare_cells, mean_pm_std, summarize,
                                    versus_best_baseline)


def significance(p: float, alpha: float = 0.05) -> str:
    """'significant (p = 0.012)' / 'not significant (p = 0.31)' / 'untestable' for NaN p."""
    if p is None or np.isnan(p):
        return "untestable (fewer than 2 seeds or identical differences)"
    return f"{'significant' if p < alpha else 'not significant'} at {alpha:g} (p = {p:.3g})"


def direction(res: dict[str, Any], alpha: float = 0.05) -> str:
    """'higher' / 'lower' when the bootstrap CI of the mean difference excludes 0 AND the paired t-test agrees
    (p < ``alpha``; a NaN p — e.g. identical differences — leaves the CI alone to decide), else 'no clear
    difference': with 3 seeds a bootstrap CI alone is too coarse to call a winner. 'untestable' with a
    single seed (its bootstrap interval is a point: it says nothing about the spread)."""
    if res.get("n", 2) < 2:
        return "untestable"
    p = res.get("p")
    if p is not None and not np.isnan(p) and p >= alpha:
        return "no clear difference"
    if res["ci_low"] > 0:
        return "higher"
    if res["ci_high"] < 0:
        return "lower"
    return "no clear difference"


def describe_diff(res: dict[str, Any]) -> str:
    """'+2.3 points over 3 seed(s), 95 % bootstrap CI [+0.7, +4.0], significant at 0.05 (p = 0.02)'."""
    return (f"{100 * res['mean_diff']:+.1f} points over {res['n']} seed(s), {int(100 * res['level'])} % bootstrap "
            f"CI [{100 * res['ci_low']:+.1f}, {100 * res['ci_high']:+.1f}], {significance(res['p'])}")


ONE_SEED = "one seed: needs more seeds to tell"
ASPECT_CELLS = {"no-matrix": "the matrix aspect", "no-layer": "the layer aspect", "no-model": "the model aspect"}
HIERARCHY_CELLS = {"makd": "hierarchical (matrix shallow, layer deep)", "inverted": "inverted hierarchy",
                   "all-aspects": "all aspects on all layers"}
INIT_CELLS = {"activation": "activation-aware", "whiten": "whitened (teacher-forced)",
              "whiten-sequential": "sequentially whitened"}      # initialisation cells, each against plain SVD
NOT_ANSWERED = {"baseline": "no method/baseline pair", "aspects": "no aspect ablation (no-matrix/no-layer/no-model)",
                "hierarchy": "fewer than two of makd/inverted/all-aspects",
                "initialisation": "no initialisation cell (activation / whiten / whiten-sequential)",
                "budget": "no budget sweep cells"}


def verdicts(df: pd.DataFrame, method: str = "makd", *, keep: float = 0.95) -> dict[str, list[str]]:
    """Sentences answering the ablation questions, computed from the runs in ``df`` (never hard-coded).

    Keys: ``baseline`` (method vs best baseline), ``aspects`` (each "no-X" ablation: removing X changes the
    score by d; X helps when the CI of d is below 0), ``hierarchy`` (best of makd / inverted / all-aspects),
    ``initialisation`` (each of :data:`INIT_CELLS` — activation-aware, whitened, sequentially whitened — vs plain
    SVD, i.e. vs the method cell), ``budget`` (lowest layer ratio whose mean score keeps
    ≥ ``keep`` × the teacher's score, per method of the budget sweep). A question without runs says so.
    """
    out: dict[str, list[str]] = {k: [] for k in NOT_ANSWERED}
    for r in versus_best_baseline(df, method).to_dict("records"):
        out["baseline"].append(f"{r['task']}: {method} vs the best baseline ({r['label']}): {direction(r)} — "
                               f"{describe_diff(r)}.")
    for r in ablation_deltas(df, method).to_dict("records"):
        if r["cell"] in ASPECT_CELLS:
            meaning = {"lower": "the aspect helps", "higher": "the aspect hurts",
                       "no clear difference": "no evidence that the aspect matters",
                       "untestable": ONE_SEED}[direction(r)]
            out["aspects"].append(f"{r['task']}: without {ASPECT_CELLS[r['cell']]}: {describe_diff(r)} → {meaning}.")
        if r["cell"] in INIT_CELLS:
            init = INIT_CELLS[r["cell"]]
            meaning = {"higher": f"{init} is better", "lower": "plain is better",
                       "no clear difference": "no clear difference", "untestable": ONE_SEED}[direction(r)]
            out["initialisation"].append(f"{r['task']}: {init} vs plain SVD initialisation: "
                                         f"{describe_diff(r)} → {meaning}.")
    summ = summarize(df)
    for task in sorted(df["task"].unique()):
        h = summ[(summ["task"] == task) & summ["cell"].isin(HIERARCHY_CELLS)]
        if len(h) >= 2:
            best = h.iloc[0]                                     # summarize sorts by mean, best first
            others = "; ".join(f"{HIERARCHY_CELLS[c]} {mean_pm_std(m, s)}" for c, m, s in
                               zip(h["cell"].iloc[1:], h["mean"].iloc[1:], h["std"].iloc[1:]))
            line = (f"{task}: best assignment is {HIERARCHY_CELLS[best['cell']]} ({mean_pm_std(best['mean'], best['std'])}); "
                    f"then {others}")
            if best["cell"] != method and method in set(h["cell"]):
                line += f"; {best['cell']} vs {method}: {describe_diff(compare_cells(df, task, best['cell'], method))}"
            out["hierarchy"].append(line + ".")
        b = summ[(summ["task"] == task) & (summ["group"] == "budget")]
        for label, g in b.groupby("label", sort=False):
            g = g.sort_values("layer_ratio")
            ok = g[g["mean"] >= keep * g["teacher_score"]]
            curve = ", ".join(f"{r:.2g}: {100 * m:.1f}" for r, m in zip(g["layer_ratio"], g["mean"]))
            low = (f"down to layer ratio {ok['layer_ratio'].min():.2g}" if len(ok)
                   else "at none of the ratios tried")
            out["budget"].append(f"{task}, {label}: keeps ≥ {keep:.0%} of the teacher's score {low} "
                                 f"(mean score by layer ratio — {curve}).")
    for key, why in NOT_ANSWERED.items():
        if not out[key]:
            out[key].append(f"not answered: the runs contain {why}.")
    return out
