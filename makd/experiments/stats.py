"""Statistics over training seeds for grids written by :mod:`makd.experiments.grid`: runs, summaries, paired tests.

``collect(root)`` reads ``root/<task>/<cell>/s<seed>/{metrics,cell}.json`` into one row per run;
``summarize`` gives mean ± std per (task, cell) (a pandas ``groupby().agg``); ``paired`` compares two cells on
the seeds both ran (``scipy.stats.ttest_rel`` and a percentile ``scipy.stats.bootstrap`` with a fixed seed);
``versus_best_baseline``, ``ablation_deltas`` and ``budget_comparisons`` are the report's paired comparisons and
``across_tasks`` the pooled sign test. All functions are pure (DataFrame/arrays in, DataFrame/dict out). The
verdict sentences are in :mod:`makd.experiments.verdicts`, the markdown report in :mod:`makd.experiments.report`.

Scores are the task's main dev metric (``metrics.json``'s ``metric``), as fractions (accuracy 0.81).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest, bootstrap, ttest_rel

from makd.experiments.published import points_scale
from makd.experiments.results import ROW_NAMES

COLUMNS = ["task", "cell", "label", "group", "seed", "metric", "score", "teacher_score", "relative",
           "student_params", "teacher_params", "layer_ratio", "param_ratio", "objective", "student_kind",
           "weighting", "is_proxy", "source", "teacher", "teacher_sha", "teacher_key", "teacher_loss", "ppl", "teacher_ppl", "kl", "config", "steps", "cpu_s", "wall_s", "grid", "where", "origin", "path"]


def collect(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (``<task>/<cell>/s<seed>/metrics.json``). Runs not made by
    the grid (no ``cell.json``, e.g. ``results/<task>/<row>/metrics.json``) take their cell name from the
    folder (``<row>``, or ``<cell>`` of ``<cell>/s<seed>``) and their seed from the run record.
    ``origin`` is ``root`` as given; ``where`` the folder above the task folder (``results/grid`` for
    ``results/grid/rte/makd/s0``); ``grid`` the grid name (None for runs not made by the grid); ``config``
    the recorded pipeline options; ``ppl`` / ``teacher_ppl`` / ``kl``: a language-model run's held-out perplexity,
    its teacher's and KL(teacher ‖ student) (None for the others)."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.json")):
        d = json.loads(path.read_text())
        if not {"task", "metric", "student", "teacher"} <= set(d):
            continue
        info_path = path.parent / "cell.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        cfg = d.get("record", {}).get("config", {})
        by_seed = re.fullmatch(r"s(\d+)", path.parent.name)
        folder_cell = path.parent.parent.name if by_seed else path.parent.name
        seed = info.get("seed", d.get("record", {}).get("seed", int(by_seed.group(1)) if by_seed else 0))
        metric = d["metric"]
        rel = path.parent.relative_to(root).parts
        cut = max((i for i, part in enumerate(rel[:-1]) if part == d["task"]), default=None)
        where = Path(root, *rel[:cut]) if cut is not None else Path(root)
        rows.append({
            "task": d["task"], "cell": info.get("cell", folder_cell),
            "label": info.get("label", _plain_label(d, cfg)), "group": info.get("group", "method"), "seed": int(seed),
            "metric": metric, "score": d["student"]["metrics"].get(metric),
            "teacher_score": d["teacher"]["metrics"].get(metric), "relative": d.get("relative_to_teacher"),
            "student_params": d["student"]["params"], "teacher_params": d["teacher"]["params"],
            "layer_ratio": d["student"].get("layer_ratio"), "param_ratio": d["student"].get("ratio"),
            "objective": d.get("objective"), "student_kind": cfg.get("student", "svd"),
            "weighting": cfg.get("weighting", "none"), "is_proxy": bool(d.get("is_proxy")),
            "source": d.get("source"), "teacher": d["teacher"].get("id") or d.get("teacher_name"),
            "teacher_sha": d.get("record", {}).get("teacher_checkpoint_sha256"),
            "teacher_key": Path(d["teacher"]["path"]).name if d["teacher"].get("path") else None,
            "teacher_loss": d["teacher"]["metrics"].get("loss"), "ppl": d["student"]["metrics"].get("ppl"),
            "teacher_ppl": d["teacher"]["metrics"].get("ppl"), "kl": d["student"]["metrics"].get("kl"), "config": cfg,
            "steps": d.get("train", {}).get("steps"), "cpu_s": info.get("cpu_s"),
            "wall_s": info.get("wall_s", d.get("record", {}).get("wall_time_s")), "grid": info.get("grid"),
            "where": str(where), "origin": str(root),
            "path": str(path.parent),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _plain_label(d: dict[str, Any], cfg: dict[str, Any]) -> str:
    """A readable name for a run not made by the grid, from its objective and student."""
    name = ROW_NAMES.get(d.get("objective"), f"SVD student + {d.get('objective')}")
    student = cfg.get("student", "svd")
    return name if student in (None, "svd") else f"dense {student} + {d.get('objective')}"


SUMMARY_COLUMNS = ["label", "group", "metric", "mean", "std", "n", "relative", "student_params", "teacher_params",
                   "layer_ratio", "seeds", "teacher", "teacher_score", "is_proxy", "source", "setting"]
_FIRST = ["label", "group", "metric", "student_params", "teacher_params", "layer_ratio", "teacher", "is_proxy",
          "source", "config"]                           # the same in every run of a cell: taken from its first run


def summarize(df: pd.DataFrame, by: Sequence[str] = ("task", "cell")) -> pd.DataFrame:
    """Mean ± std of ``score`` over seeds per group (x̄ = Σxᵢ/n, sample std s = sqrt(Σ(xᵢ − x̄)²/(n − 1)),
    NaN for n = 1), with n, the seeds, the label/group/params of the cell, the mean fraction of the teacher's
    score and the training setting (:func:`setting_of`). Sorted by the other keys, then mean score (best first)."""
    by = list(by)
    if df.empty:
        return pd.DataFrame(columns=[*by, *SUMMARY_COLUMNS])
    nums = {c: pd.to_numeric(df[c], errors="coerce") for c in ("score", "relative", "teacher_score")}
    grouped = df.assign(**nums).groupby(by, sort=False)
    agg = grouped.agg(mean=("score", "mean"), std=("score", "std"), n=("score", "size"),
                      relative=("relative", "mean"), teacher_score=("teacher_score", "mean"),
                      seeds=("seed", lambda s: sorted(int(x) for x in s)))
    out = grouped[_FIRST].first(skipna=False).join(agg).reset_index()
    out = out.astype({"student_params": int, "teacher_params": int, "is_proxy": bool, "n": int})
    out["setting"] = [setting_of(c) for c in out.pop("config")]
    keys = by[:-1] + ["mean"]
    out = out.sort_values(keys, ascending=[True] * (len(keys) - 1) + [False]).reset_index(drop=True)
    return out[[*by, *SUMMARY_COLUMNS]]


SETTING_KEYS = (("max_train", "train ex."), ("epochs", "epochs"), ("max_steps", "max steps"),
                ("max_length", "max len"), ("teacher_epochs", "teacher epochs"), ("teacher_max_train", "teacher ex."))


def setting_of(config: dict[str, Any] | None) -> str:
    """The training-size options of a recorded run config, e.g. 'train ex. 2000, epochs 1, max len 64'
    (options left at 'all'/-1/None are omitted; max_steps only when set)."""
    if not isinstance(config, dict):
        return ""
    parts = [f"{name} {config[k]:g}" if isinstance(config[k], float) else f"{name} {config[k]}"
             for k, name in SETTING_KEYS if config.get(k) not in (None, -1, "")]
    return ", ".join(parts)


def mean_pm_std(mean: float, std: float, scale: float | None = None, digits: int = 1) -> str:
    """'81.2 ± 0.4' (scaled by ``scale``; default ×100 for fractions |mean| ≤ 1, ×1 for scores already on
    0–100 such as SQuAD F1; '± –' when the std is undefined, n = 1)."""
    scale = points_scale(mean) if scale is None else scale
    sd = "–" if std is None or np.isnan(std) else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {sd}"


def bootstrap_ci(diffs: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences dᵢ = aᵢ − bᵢ (``scipy.stats.bootstrap``).

    Draw B resamples d*₁..d*ₙ with replacement, take their means m*_b, and return the (1−level)/2 and
    (1+level)/2 quantiles of {m*_b}; the generator is seeded with ``seed``, so the interval is deterministic.
    With n = 3 seeds there are only 10 distinct resample means: the interval is coarse and too narrow — read it
    together with the paired t-test. A single difference gives the point interval [d₁, d₁].
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("bootstrap_ci needs at least one difference")
    if d.size == 1:                                    # every resample is d₁ (scipy needs two observations)
        return float(d[0]), float(d[0])
    ci = bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                   rng=seed).confidence_interval
    return float(ci.low), float(ci.high)


def paired(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95,
           seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two methods over the same seeds (aᵢ, bᵢ from seed i).

    dᵢ = aᵢ − bᵢ, d̄ = Σdᵢ/n, s_d = sqrt(Σ(dᵢ − d̄)²/(n − 1)), t = d̄ / (s_d/√n) with n − 1 degrees of
    freedom, two-sided p from scipy.stats.ttest_rel; plus the bootstrap CI of d̄ (:func:`bootstrap_ci`)
    and the number of seeds where a wins. t and p are NaN when n < 2 or all dᵢ are equal.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired needs two equal-length 1-D samples, got shapes {a.shape} and {b.shape}")
    d = a - b
    t, p = (float("nan"), float("nan"))
    if d.size > 1 and np.ptp(d) > 1e-12:                    # equal differences (up to rounding): no t
        res = ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    return {"n": int(d.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(d.mean()),
            "std_diff": float(d.std(ddof=1)) if d.size > 1 else float("nan"), "t": t, "p": p,
            "ci_low": lo, "ci_high": hi, "level": level, "wins": int((d > 0).sum())}


def _seed_scores(df: pd.DataFrame, task: str, cell: str) -> pd.Series:
    g = df[(df["task"] == task) & (df["cell"] == cell)]
    return g.groupby("seed")["score"].mean()


def compare_cells(df: pd.DataFrame, task: str, a: str, b: str, **kw: Any) -> dict[str, Any]:
    """:func:`paired` of cells ``a`` and ``b`` of ``task`` on the seeds both have (ValueError if none)."""
    sa, sb = _seed_scores(df, task, a), _seed_scores(df, task, b)
    common = sorted(set(sa.index) & set(sb.index))
    if not common:
        raise ValueError(f"{task}: cells {a!r} and {b!r} share no seed (have {sorted(sa.index)} and {sorted(sb.index)})")
    return {"task": task, "a": a, "b": b, "seeds": common, **paired(sa[common], sb[common], **kw)}


def versus_best_baseline(df: pd.DataFrame, method: str = "makd", *, exclude: Sequence[str] = ("svd-none",),
                         **kw: Any) -> pd.DataFrame:
    """Per task: ``method`` vs the baseline cell (group 'baseline', not in ``exclude``) with the best mean
    score over the seeds it shares with ``method``, as a :func:`paired` row. The untrained SVD student is
    excluded by default (it is a floor, not a competitor)."""
    rows = []
    for task in sorted(df["task"].unique()):
        sub = df[df["task"] == task]
        if method not in set(sub["cell"]):
            continue
        seeds = set(sub[sub["cell"] == method]["seed"])
        base = sub[(sub["group"] == "baseline") & ~sub["cell"].isin(exclude) & sub["seed"].isin(seeds)]
        if base.empty:
            continue
        best = base.groupby("cell")["score"].mean().idxmax()
        res = compare_cells(df, task, method, best, **kw)
        rows.append({**res, "best_baseline": best, "label": sub[sub["cell"] == best]["label"].iloc[0]})
    return pd.DataFrame(rows)


def ablation_deltas(df: pd.DataFrame, method: str = "makd", *, group: str = "ablation", **kw: Any) -> pd.DataFrame:
    """Per task and ablation cell: paired difference ablation − ``method`` (negative = the removed or
    changed part helped MaKD)."""
    rows = []
    for task in sorted(df["task"].unique()):
        sub = df[df["task"] == task]
        if method not in set(sub["cell"]):
            continue
        for cell in sub[sub["group"] == group]["cell"].unique():
            try:
                res = compare_cells(df, task, cell, method, **kw)
            except ValueError:
                continue
            rows.append({**res, "cell": cell, "label": sub[sub["cell"] == cell]["label"].iloc[0]})
    return pd.DataFrame(rows)


def budget_comparisons(df: pd.DataFrame, method_label: str = "MaKD", **kw: Any) -> pd.DataFrame:
    """Budget sweep (group 'budget'): per task and layer ratio, the cell labelled ``method_label`` vs the other
    label with the best mean score at that ratio (variants, labels starting with ``method_label``, are not
    competitors), as a :func:`paired` row over their common seeds (with
    ``ratio``, ``best`` and ``best_label``). Empty when the runs hold no budget cells of that label."""
    b = df[df["group"] == "budget"].assign(_r=lambda d: d["layer_ratio"].astype(float).round(2))
    rows = []
    for (task, ratio), g in b.groupby(["task", "_r"], sort=True):
        mine = g[g["label"] == method_label]
        others = g[~g["label"].str.startswith(method_label)]         # not its variants ("MaKD, relative MSE")
        if mine.empty or others.empty:
            continue
        cell = mine["cell"].iloc[0]
        best = others.groupby("cell")["score"].mean().idxmax()
        try:
            res = compare_cells(df, task, cell, best, **kw)
        except ValueError:
            continue
        rows.append({**res, "ratio": ratio, "best": best, "best_label": others[others["cell"] == best]["label"].iloc[0]})
    return pd.DataFrame(rows)


def across_tasks(df: pd.DataFrame, a: str, b: str) -> dict[str, Any]:
    """Cells ``a`` vs ``b`` pooled over every (task, seed) pair both ran: wins of ``a`` (ties count half a win
    each way, dropped from the test), the two-sided exact sign test p = binomtest(wins, n_untied, 0.5) and the
    tasks used. Each task's scores have their own metric, so only the signs are pooled. A post-hoc pooled view:
    read it beside the per-task paired tests, not instead of them."""
    wins = losses = ties = 0
    tasks = []
    for task in sorted(df["task"].unique()):
        sa, sb = _seed_scores(df, task, a), _seed_scores(df, task, b)
        common = sorted(set(sa.index) & set(sb.index))
        if not common:
            continue
        tasks.append(task)
        d = sa[common].to_numpy() - sb[common].to_numpy()
        wins, losses, ties = wins + int((d > 1e-12).sum()), losses + int((d < -1e-12).sum()), ties + int((abs(d) <= 1e-12).sum())
    n = wins + losses
    p = float(binomtest(wins, n, 0.5).pvalue) if n else float("nan")
    return {"a": a, "b": b, "tasks": tasks, "pairs": n + ties, "wins": wins, "losses": losses, "ties": ties, "p": p}


def richest_per_task(runs: pd.DataFrame, group: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """For each task, the runs of ONE grid folder (``where``): the folder whose ``group`` cells of that task span
    the most seeds, then the longest training (most ``steps``), then the most runs, then the folder name
    sorting last. Returns those runs (all cells of
    the task in the chosen folder, so the method cell is there to compare against) and ``{task: where}``.
    Grids of one task are never mixed: two folders may share cell names but not their settings."""
    runs = runs[runs["grid"].notna()] if "grid" in runs else runs.iloc[:0]
    chosen: dict[str, str] = {}
    parts = []
    for task, t in runs.groupby("task", sort=True):
        ranked = []
        for where, g in t.groupby("where", sort=True):
            cells = g[g["group"] == group]
            if len(cells):
                steps = pd.to_numeric(cells["steps"], errors="coerce").max()
                ranked.append((cells["seed"].nunique(), 0 if pd.isna(steps) else float(steps), len(g), where))
        if ranked:
            where = max(ranked)[3]
            chosen[task] = where
            parts.append(t[t["where"] == where])
    return (pd.concat(parts, ignore_index=True) if parts else runs.iloc[:0]), chosen
