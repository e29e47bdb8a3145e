"""The subquadratic study's reported findings (arXiv 2504.14366, as ``../shared/docs/METHOD.md`` lists them) tested
on a grid of ``grids/subquadratic.yaml``: one row per finding — the finding, what our runs say (numbers), and a
verdict computed from them, never typed.

Score: the grid's metric (held-out top-1 next-token agreement with the teacher, a fraction). Every comparison is
paired over the seeds both cells ran (:func:`makd.experiments.stats.compare_cells`) and decided by the one rule of
:func:`makd.experiments.verdicts.direction`: a cell is "higher"/"lower" only when the bootstrap CI of the mean
paired difference excludes 0 AND the paired t-test agrees (p < 0.05). How each finding is read (ours, stated):

* "xLSTM (mLSTM) is the best student": mLSTM clearly higher than every other mixer → agrees; some mixer clearly
  higher than mLSTM → disagrees; otherwise inconclusive.
* "GLA and MetaLA are close to the best": each of the two is the best, or not clearly lower than the best → agrees;
  one clearly lower → disagrees; with one of the two missing, the verdict is the other's and names the missing cells.
  "Not clearly lower" needs at least two paired seeds: with one, the comparison is untestable → inconclusive (the
  same for "matrix mixing gives limited gains").
* "plain kernel linear attention struggles": ``linear`` has the lowest mean and is clearly lower than the best →
  agrees; some mixer clearly lower than ``linear`` → disagrees; otherwise inconclusive.
* "hidden-state alignment is the most reliable gain": for every ablated mixer, dropping stage 2 clearly lowers the
  score and costs more (mean) than dropping stage 1 → agrees; dropping stage 2 clearly raises it for one → disagrees.
* "QKV copying helps": QKV copy clearly higher than random init for every ablated mixer → agrees; random clearly
  higher for one → disagrees.
* "... but is not sufficient alone": all three stages clearly higher than QKV copy + stage 3 only (no alignment
  stages) for every ablated mixer → agrees; stage 3 only clearly higher for one → disagrees.
* "matrix mixing gives limited gains": dropping stage 1 is never clearly worse, or costs less than dropping
  stage 2 for every ablated mixer → agrees; otherwise disagrees.

Anything between the clear cases is "inconclusive (…)", with the count of mixers that agree; a finding whose
cells are missing is "not tested (cells missing: …)".
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from makd.experiments.stats import compare_cells
from makd.experiments.verdicts import direction

MIXERS = ("deltanet", "gated_deltanet", "gla", "linear", "mamba2", "metala", "mlstm", "retnet")
CLOSE = ("gla", "metala")   # the study: "GLA and MetaLA close" to the best (90–95 % of the teacher)
CLOSE_FINDING = "GLA and MetaLA are close to the best"
ABLATED = ("gla", "mlstm", "linear")
TASK = "wiki"


def is_subquadratic(df: pd.DataFrame) -> bool:
    """Whether the runs of ``df`` come from ``python -m makd subquadratic`` (their config names a mixer)."""
    return bool(len(df)) and df["config"].apply(lambda c: isinstance(c, dict) and "mixer" in c).all()


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _cmp(df: pd.DataFrame, a: str, b: str) -> dict[str, Any]:
    res = compare_cells(df, df["task"].iloc[0], a, b)
    return {**res, "dir": direction(res)}


def _best(df: pd.DataFrame, mixers: list[str]) -> tuple[str, pd.Series]:
    means = df[df["cell"].isin(mixers)].groupby("cell")["score"].mean().sort_values(ascending=False)
    return str(means.index[0]), means


def _ranking(df, mixers) -> list[dict]:
    cells = set(df["cell"])
    present = [m for m in mixers if m in cells]
    if len(present) < 2:
        return [_row(f, "not tested (fewer than two mixers finished)", "not tested") for f in
                ("xLSTM (mLSTM) is the best student", CLOSE_FINDING, "plain kernel linear attention struggles")]
    best, means = _best(df, present)
    order = ", ".join(f"{c} {100 * v:.1f}" for c, v in means.items())
    rows = []
    if "mlstm" in cells:
        res = [_cmp(df, "mlstm", m) for m in present if m != "mlstm"]
        verdict = ("agrees" if all(r["dir"] == "higher" for r in res) else
                   "disagrees" if any(r["dir"] == "lower" for r in res) else
                   f"inconclusive (mLSTM clearly higher than {sum(r['dir'] == 'higher' for r in res)} of {len(res)})")
        rows.append(_row("xLSTM (mLSTM) is the best student", f"best by mean: {best}; top-1 ×100 by mean: {order}",
                         verdict))
    else:
        rows.append(_row("xLSTM (mLSTM) is the best student", "", "not tested (cells missing: mlstm)"))
    rows.append(_close(df, cells, best))
    if "linear" in cells:
        others = [_cmp(df, m, "linear") for m in present if m != "linear"]
        lowest = means.index[-1] == "linear"
        if any(r["dir"] == "lower" for r in others):
            verdict = "disagrees"
        elif lowest and _cmp(df, best, "linear")["dir"] == "higher":
            verdict = "agrees"
        else:
            verdict = f"inconclusive (clearly below {sum(r['dir'] == 'higher' for r in others)} of {len(others)} mixers)"
        rank = list(means.index).index("linear") + 1
        rows.append(_row("plain kernel linear attention struggles",
                         f"linear ranks {rank} of {len(means)} (top-1 ×100 {100 * means['linear']:.1f})", verdict))
    else:
        rows.append(_row("plain kernel linear attention struggles", "", "not tested (cells missing: linear)"))
    return rows


def _close(df, cells: set, best: str) -> dict[str, str]:
    """The row of :data:`CLOSE_FINDING`: each of :data:`CLOSE` that ran against the best mixer by mean."""
    present, missing = [m for m in CLOSE if m in cells], [m for m in CLOSE if m not in cells]
    if not present:
        return _row(CLOSE_FINDING, "", f"not tested (cells missing: {', '.join(missing)})")
    parts, res = [], []
    for m in present:
        if m == best:
            parts.append(f"{m} is the best by mean")
            continue
        r = _cmp(df, best, m)
        res.append(r)
        parts.append(f"best ({best}) − {m}: {_pts(r['mean_diff'])} points, CI [{_pts(r['ci_low'])}, "
                     f"{_pts(r['ci_high'])}], p = {r['p']:.3g}")
    verdict = _untestable(res) or ("disagrees" if any(r["dir"] == "higher" for r in res) else "agrees")
    if missing:
        verdict += f" (for {', '.join(present)} only; cells missing: {', '.join(missing)})"
    return _row(CLOSE_FINDING, "; ".join(parts), verdict)


def _ablation(df, title: str, full_minus: str, rule) -> dict:
    """One ablation finding over the ablated mixers: ``rule(results)`` -> verdict, results per mixer."""
    cells = set(df["cell"])
    missing = [f"{m}{s}" for m in ABLATED for s in ("", full_minus) if f"{m}{s}" not in cells]
    done = [m for m in ABLATED if m in cells and f"{m}{full_minus}" in cells]
    if not done:
        return _row(title, "", f"not tested (cells missing: {', '.join(missing)})")
    res = {m: _cmp(df, m, f"{m}{full_minus}") for m in done}
    ours = "; ".join(f"{m}: {_pts(r['mean_diff'])} points (CI [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}], "
                     f"{r['dir']})" for m, r in res.items())
    return _row(title, ours, rule(res, df))


def _row(finding: str, ours: str, verdict: str) -> dict[str, str]:
    return {"the study's finding": finding, "ours": ours, "verdict": verdict}


def _hidden_rule(res, df) -> str:
    if any(r["dir"] == "lower" for r in res.values()):
        return "disagrees"
    mixing = {m: _cmp(df, m, f"{m}-no-mixing")["mean_diff"] for m in res if f"{m}-no-mixing" in set(df["cell"])}
    ok = [m for m, r in res.items() if r["dir"] == "higher" and r["mean_diff"] > mixing.get(m, float("-inf"))]
    return "agrees" if len(ok) == len(res) else f"inconclusive (holds for {len(ok)} of {len(res)} mixers)"


def _clear_rule(res, df) -> str:
    if any(r["dir"] == "lower" for r in res.values()):
        return "disagrees"
    ok = sum(r["dir"] == "higher" for r in res.values())
    return "agrees" if ok == len(res) else f"inconclusive (holds for {ok} of {len(res)} mixers)"


def _untestable(results) -> str | None:
    """The verdict when some comparison that a finding would read as "no clear difference" rests on one paired
    seed: absence of evidence is not closeness."""
    n = sum(r["dir"] == "untestable" for r in results)
    return f"inconclusive ({n} of {len(results)} comparisons on a single paired seed: untestable)" if n else None


def _mixing_rule(res, df) -> str:
    if untestable := _untestable(list(res.values())):
        return untestable
    hidden = {m: _cmp(df, m, f"{m}-no-hidden")["mean_diff"] for m in res if f"{m}-no-hidden" in set(df["cell"])}
    limited = [m for m, r in res.items() if r["dir"] != "higher" or r["mean_diff"] < hidden.get(m, float("inf"))]
    return "agrees" if len(limited) == len(res) else \
        f"disagrees (stage 1 is a clear, larger gain for {len(res) - len(limited)} of {len(res)} mixers)"


def findings_table(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """One row per finding: "the study's finding | ours | verdict" (module docstring for each reading), on the runs
    of ``task`` (default: the embedded Wikipedia text ``wiki`` when present, else the first task of ``df``)."""
    if task is None:
        task = TASK if TASK in set(df["task"]) else str(df["task"].iloc[0])
    df = df[df["task"] == task]
    rows = _ranking(df, list(MIXERS))
    rows.append(_ablation(df, "hidden-state alignment is the most reliable gain", "-no-hidden", _hidden_rule))
    rows.append(_ablation(df, "QKV copying helps", "-random", _clear_rule))
    rows.append(_ablation(df, "QKV copying is not sufficient alone (all stages vs QKV copy + stage 3 only)",
                          "-kd-only", _clear_rule))
    rows.append(_ablation(df, "matrix mixing gives limited gains", "-no-mixing", _mixing_rule))
    return pd.DataFrame(rows)
