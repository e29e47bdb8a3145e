"""Statistics over training seeds for grids written by :mod:`makd.experiments.grid`: tables, paired tests, bootstrap.

``collect(root)`` reads ``root/<task>/<cell>/s<seed>/{metrics,cell}.json`` into one row per run;
``summarize`` gives mean ± std per (task, cell); ``paired`` compares two cells on the seeds both ran;
``versus_best_baseline`` answers "MaKD vs the best baseline" per task; ``ablation_deltas`` gives each
ablation's paired difference to MaKD. All functions are pure (DataFrame/arrays in, DataFrame/dict out).

Scores are the task's main dev metric (``metrics.json``'s ``metric``), as fractions (accuracy 0.81).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

COLUMNS = ["task", "cell", "label", "group", "seed", "metric", "score", "teacher_score", "relative",
           "student_params", "teacher_params", "layer_ratio", "param_ratio", "objective", "student_kind",
           "weighting", "is_proxy", "source", "teacher", "teacher_sha", "teacher_key", "teacher_loss", "config", "steps", "cpu_s", "wall_s", "grid", "where", "origin", "path"]


def collect(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root`` (``<task>/<cell>/s<seed>/metrics.json``). Runs not made by
    the grid (no ``cell.json``, e.g. ``results/<task>/<row>/metrics.json``) take their cell name from the
    folder (``<row>``, or ``<cell>`` of ``<cell>/s<seed>``) and their seed from the run record.
    ``origin`` is ``root`` as given; ``where`` the folder above the task folder (``results/grid`` for
    ``results/grid/rte/makd/s0``); ``grid`` the grid name (None for runs not made by the grid); ``config``
    the recorded pipeline options."""
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
            "source": d.get("source"), "teacher": d["teacher"].get("id"),
            "teacher_sha": d.get("record", {}).get("teacher_checkpoint_sha256"),
            "teacher_key": Path(d["teacher"]["path"]).name if d["teacher"].get("path") else None,
            "teacher_loss": d["teacher"]["metrics"].get("loss"), "config": cfg,
            "steps": d.get("train", {}).get("steps"), "cpu_s": info.get("cpu_s"),
            "wall_s": info.get("wall_s", d.get("record", {}).get("wall_time_s")), "grid": info.get("grid"),
            "where": str(where), "origin": str(root),
            "path": str(path.parent),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _plain_label(d: dict[str, Any], cfg: dict[str, Any]) -> str:
    """A readable name for a run not made by the grid, from its objective and student."""
    from makd.experiments.results import ROW_NAMES

    name = ROW_NAMES.get(d.get("objective"), f"SVD student + {d.get('objective')}")
    student = cfg.get("student", "svd")
    return name if student in (None, "svd") else f"dense {student} + {d.get('objective')}"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n): x̄ = Σxᵢ/n, s = sqrt(Σ(xᵢ − x̄)² / (n − 1)); s = NaN for n < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan"), int(x.size)


def summarize(df: pd.DataFrame, by: Sequence[str] = ("task", "cell")) -> pd.DataFrame:
    """Mean ± std of ``score`` over seeds per group, with n, the label/group/params of the cell and the
    mean fraction of the teacher's score. Sorted by task, then mean score (best first)."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "label", "group", "metric", "mean", "std", "n", "relative",
                                     "student_params", "layer_ratio", "seeds", "teacher", "teacher_score",
                                     "is_proxy", "source", "setting"])
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        m, s, n = mean_std(g["score"])
        rel = g["relative"].dropna()
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "label": g["label"].iloc[0], "group": g["group"].iloc[0], "metric": g["metric"].iloc[0],
                     "mean": m, "std": s, "n": n, "relative": float(rel.mean()) if len(rel) else float("nan"),
                     "student_params": int(g["student_params"].iloc[0]),
                     "teacher_params": int(g["teacher_params"].iloc[0]),
                     "layer_ratio": g["layer_ratio"].iloc[0], "seeds": sorted(int(x) for x in g["seed"]),
                     "teacher": g["teacher"].iloc[0], "teacher_score": float(g["teacher_score"].mean()),
                     "is_proxy": bool(g["is_proxy"].iloc[0]), "source": g["source"].iloc[0],
                     "setting": setting_of(g["config"].iloc[0])})
    out = pd.DataFrame(rows)
    keys = list(by[:-1]) + ["mean"]
    return out.sort_values(keys, ascending=[True] * (len(keys) - 1) + [False]).reset_index(drop=True)


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
    from makd.experiments.published import points_scale

    scale = points_scale(mean) if scale is None else scale
    sd = "–" if std is None or np.isnan(std) else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {sd}"


def bootstrap_ci(diffs: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences dᵢ = aᵢ − bᵢ.

    Draw B resamples d*₁..d*ₙ with replacement, take their means m*_b, and return the (1−level)/2 and
    (1+level)/2 quantiles of {m*_b}. With n = 3 seeds there are only 10 distinct resample means: the
    interval is coarse and too narrow — read it together with the paired t-test.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("bootstrap_ci needs at least one difference")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)   # (B,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, level: float = 0.95,
           seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two methods over the same seeds (aᵢ, bᵢ from seed i).

    dᵢ = aᵢ − bᵢ, d̄ = Σdᵢ/n, s_d = sqrt(Σ(dᵢ − d̄)²/(n − 1)), t = d̄ / (s_d/√n) with n − 1 degrees of
    freedom, two-sided p from scipy.stats.ttest_rel; plus the bootstrap CI of d̄ (:func:`bootstrap_ci`)
    and the number of seeds where a wins. t and p are NaN when n < 2 or all dᵢ are equal.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired needs two equal-length 1-D samples, got shapes {a.shape} and {b.shape}")
    d = a - b
    t, p = (float("nan"), float("nan"))
    if d.size > 1 and np.ptp(d) > 1e-12:                    # equal differences (up to rounding): no t
        res = stats.ttest_rel(a, b)
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


def significance(p: float, alpha: float = 0.05) -> str:
    """'significant (p = 0.012)' / 'not significant (p = 0.31)' / 'untestable' for NaN p."""
    if p is None or np.isnan(p):
        return "untestable (fewer than 2 seeds or identical differences)"
    return f"{'significant' if p < alpha else 'not significant'} at {alpha:g} (p = {p:.3g})"


# ------------------------------------------------------------------------------------------ verdicts
def _direction(res: dict[str, Any], alpha: float = 0.05) -> str:
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


def _fmt_diff(res: dict[str, Any]) -> str:
    return (f"{100 * res['mean_diff']:+.1f} points over {res['n']} seed(s), {int(100 * res['level'])} % bootstrap "
            f"CI [{100 * res['ci_low']:+.1f}, {100 * res['ci_high']:+.1f}], {significance(res['p'])}")


ONE_SEED = "one seed: needs more seeds to tell"
ASPECT_CELLS = {"no-matrix": "the matrix aspect", "no-layer": "the layer aspect", "no-model": "the model aspect"}
HIERARCHY_CELLS = {"makd": "hierarchical (matrix shallow, layer deep)", "inverted": "inverted hierarchy",
                   "all-aspects": "all aspects on all layers"}


def verdicts(df: pd.DataFrame, method: str = "makd", *, keep: float = 0.95) -> dict[str, list[str]]:
    """Sentences answering the ablation questions, computed from the runs in ``df`` (never hard-coded).

    Keys: ``baseline`` (method vs best baseline), ``aspects`` (each "no-X" ablation: removing X changes the
    score by d; X helps when the CI of d is below 0), ``hierarchy`` (best of makd / inverted / all-aspects),
    ``initialisation`` (activation-aware vs plain SVD), ``budget`` (lowest layer ratio whose mean score keeps
    ≥ ``keep`` × the teacher's score, per method of the budget sweep). A question without runs says so.
    """
    out: dict[str, list[str]] = {k: [] for k in ("baseline", "aspects", "hierarchy", "initialisation", "budget")}
    for r in versus_best_baseline(df, method).to_dict("records"):
        out["baseline"].append(f"{r['task']}: {method} vs the best baseline ({r['label']}): {_direction(r)} — "
                               f"{_fmt_diff(r)}.")
    deltas = ablation_deltas(df, method)
    for r in deltas.to_dict("records"):
        if r["cell"] in ASPECT_CELLS:
            d = _direction(r)
            meaning = {"lower": "the aspect helps", "higher": "the aspect hurts",
                       "no clear difference": "no evidence that the aspect matters",
                       "untestable": ONE_SEED}[d]
            out["aspects"].append(f"{r['task']}: without {ASPECT_CELLS[r['cell']]}: {_fmt_diff(r)} → {meaning}.")
        if r["cell"] == "activation":
            meaning = {"higher": "activation-aware is better", "lower": "plain is better",
                       "no clear difference": "no clear difference", "untestable": ONE_SEED}[_direction(r)]
            out["initialisation"].append(f"{r['task']}: activation-aware vs plain SVD initialisation: {_fmt_diff(r)}"
                                         f" → {meaning}.")
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
                line += f"; {best['cell']} vs {method}: {_fmt_diff(compare_cells(df, task, best['cell'], method))}"
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
    missing = {"baseline": "no method/baseline pair", "aspects": "no aspect ablation (no-matrix/no-layer/no-model)",
               "hierarchy": "fewer than two of makd/inverted/all-aspects", "initialisation": "no 'activation' cell",
               "budget": "no budget sweep cells"}
    for key, why in missing.items():
        if not out[key]:
            out[key].append(f"not answered: the runs contain {why}.")
    return out


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


# ------------------------------------------------------------------------------------------ figures
def plot_ablation_deltas(deltas: pd.DataFrame):
    """Horizontal bars: mean paired difference ablation − MaKD (points ×100) with its bootstrap CI."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(len(deltas), 1)))
    if deltas.empty:
        ax.text(0.5, 0.5, "no ablation runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    names = [f"{t}: {l}" if deltas["task"].nunique() > 1 else l for t, l in zip(deltas["task"], deltas["label"])]
    y = np.arange(len(deltas))
    d = 100 * deltas["mean_diff"].to_numpy()
    err = np.vstack([d - 100 * deltas["ci_low"].to_numpy(), 100 * deltas["ci_high"].to_numpy() - d])
    ax.barh(y, d, xerr=err, color=["C3" if v < 0 else "C2" for v in d], capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("score difference to MaKD (points; bar: mean over seeds, whisker: bootstrap CI)")
    return fig


def plot_budget(summary: pd.DataFrame, x: str = "layer_ratio"):
    """Mean score (±std) vs ``x`` (layer_ratio or student_params) per method label of the budget sweep, one
    panel per task (tasks have their own metric and teacher), with that task's teacher score as a dashed line."""
    import matplotlib.pyplot as plt

    b = summary[summary["group"] == "budget"]
    tasks = list(dict.fromkeys(b["task"])) or [None]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks) ** 0.75, 4.8), squeeze=False)
    if b.empty:
        axes[0, 0].text(0.5, 0.5, "no budget sweep runs", ha="center", va="center", transform=axes[0, 0].transAxes)
        return fig
    colour = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(b.sort_values("label")["label"]))}
    for ax, task in zip(axes[0], tasks):
        t = b[b["task"] == task]
        for label, g in t.groupby("label", sort=True):               # same method, same colour in every panel
            g = g.sort_values(x)
            ax.errorbar(g[x], 100 * g["mean"], yerr=100 * g["std"].fillna(0), marker="o", capsize=3, label=label,
                        color=colour[label])
        ax.axhline(100 * t["teacher_score"].mean(), color="k", ls="--", lw=0.8, label="teacher")
        ax.set_xlabel("layer-parameter ratio" if x == "layer_ratio" else "student parameters")
        ax.set_ylabel(f"dev {t['metric'].iloc[0]} (×100)")
        if len(tasks) > 1:
            ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ report
GROUP_ORDER = {"method": 0, "baseline": 1, "ablation": 2, "budget": 3}


def across_tasks(df: pd.DataFrame, a: str, b: str) -> dict[str, Any]:
    """Cells ``a`` vs ``b`` pooled over every (task, seed) pair both ran: wins of ``a`` (ties count half a win
    each way, dropped from the test), the two-sided exact sign test p = binomtest(wins, n_untied, 0.5) and the
    tasks used. Each task's scores have their own metric, so only the signs are pooled. A post-hoc pooled view:
    read it beside the per-task paired tests, not instead of them."""
    from scipy.stats import binomtest

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


TEACHER_RTOL = 1e-5


def teacher_checkpoints(df: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Tasks whose runs used more than one fine-tuned teacher checkpoint (the run records' sha256): {task:
    {sha256[:12]: {"runs": [cell/s<seed>, ...], "key": teacher cache key, "score": dev score, "loss": dev loss}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if "teacher_sha" not in df:
        return out
    for task, g in df[df["teacher_sha"].notna()].groupby("task", sort=True):
        if g["teacher_sha"].nunique() > 1:
            out[task] = {}
            for sha, h in g.groupby("teacher_sha", sort=True):
                first = h.iloc[0]
                out[task][sha[:12]] = {"runs": sorted(f"{c}/s{s}" for c, s in zip(h["cell"], h["seed"])),
                                       "key": first.get("teacher_key"), "score": first.get("teacher_score"),
                                       "loss": first.get("teacher_loss")}
    return out


def same_teacher_up_to_rounding(a: dict[str, Any], b: dict[str, Any], rtol: float = TEACHER_RTOL) -> bool:
    """Two checkpoints (entries of :func:`teacher_checkpoints`) are one teacher re-trained on another CPU when they
    share the cache key (teacher, task, data files, seed, settings), their dev score is equal and their dev loss
    agrees to ``rtol`` (relative): the float-rounding differences of another CPU type change the file's sha256,
    not the model. Missing evidence (no key or no loss recorded) counts as different."""
    def num(x: Any) -> float:
        return float("nan") if x is None or pd.isna(x) else float(x)
    la, lb, sa, sb = num(a.get("loss")), num(b.get("loss")), num(a.get("score")), num(b.get("score"))
    return (bool(a.get("key")) and a.get("key") == b.get("key") and np.isfinite([la, lb, sa, sb]).all()
            and abs(sa - sb) <= 1e-12 and abs(la - lb) <= rtol * max(abs(la), abs(lb)))


def _one_teacher(groups: dict[str, dict[str, Any]], rtol: float) -> bool:
    ref, *rest = groups.values()
    return all(same_teacher_up_to_rounding(ref, g, rtol) for g in rest)


def mixed_teachers(df: pd.DataFrame, rtol: float = TEACHER_RTOL) -> dict[str, dict[str, list[str]]]:
    """Tasks whose runs used more than one fine-tuned teacher: {task: {sha256[:12]: [cell/s<seed>, ...]}}. A grid
    compares cells under ONE shared teacher; a teacher re-trained with other settings, or (before the teacher head
    was seeded) from a cell of another seed, breaks that, and those cells should be re-run. Checkpoints that are
    the same teacher up to float rounding (:func:`same_teacher_up_to_rounding`) are not mixed: see
    :func:`retrained_teachers`."""
    return {task: {sha: g["runs"] for sha, g in groups.items()}
            for task, groups in teacher_checkpoints(df).items() if not _one_teacher(groups, rtol)}


def retrained_teachers(df: pd.DataFrame, rtol: float = TEACHER_RTOL) -> dict[str, dict[str, dict[str, Any]]]:
    """Tasks whose several teacher checkpoints are all one teacher re-trained on another CPU (same cache key, equal
    dev score, dev loss equal to ``rtol``): {task: {sha256[:12]: {"runs", "key", "score", "loss"}}}."""
    return {task: groups for task, groups in teacher_checkpoints(df).items() if _one_teacher(groups, rtol)}


def retrained_note(task: str, groups: dict[str, dict[str, Any]], rtol: float = TEACHER_RTOL) -> str:
    """One sentence for a task of :func:`retrained_teachers`: each checkpoint's runs and dev loss."""
    losses = [g["loss"] for g in groups.values()]
    which = "; ".join(f"{sha}: {len(g['runs'])} runs, dev loss {g['loss']:.7f}" for sha, g in groups.items())
    return (f"{task}: {len(groups)} teacher checkpoints that differ bitwise but are one teacher re-trained on another "
            f"CPU ({which}) — same settings, data and seed, equal dev score ({points_of(next(iter(groups.values()))['score']):.1f}), "
            f"dev loss within {max(losses) - min(losses):.1e} (tolerance {rtol:g} relative); its cells are compared "
            "as under one teacher.")


def grid_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cells × tasks: 'mean ± std (n)' of each cell on each task (×100 for fractions, '–' where the cell has
    no finished run on that task), rows ordered method, baselines, ablations, budget (then by the cells' first
    appearance), plus a last 'teacher' row with each task's mean teacher score. Columns: group, cell, label, then
    one column per task named '<task> (<metric>)'."""
    if df.empty:
        return pd.DataFrame(columns=["group", "cell", "label"])
    summ = summarize(df)
    tasks = sorted(df["task"].unique())
    metric = {t: df[df["task"] == t]["metric"].iloc[0] for t in tasks}
    cols = {t: f"{t} ({metric[t]})" for t in tasks}
    first = {c: i for i, c in enumerate(dict.fromkeys(df["cell"]))}
    cells = summ.drop_duplicates("cell")[["cell", "label", "group"]]
    cells = cells.assign(_g=cells["group"].map(GROUP_ORDER).fillna(9), _f=cells["cell"].map(first))
    rows = []
    for r in cells.sort_values(["_g", "_f"]).to_dict("records"):
        row = {"group": r["group"], "cell": r["cell"], "label": r["label"]}
        for t in tasks:
            hit = summ[(summ["task"] == t) & (summ["cell"] == r["cell"])]
            row[cols[t]] = "–" if hit.empty else f"{mean_pm_std(hit['mean'].iloc[0], hit['std'].iloc[0])} ({hit['n'].iloc[0]})"
        rows.append(row)
    teach = {"group": "teacher", "cell": "teacher", "label": f"fine-tuned teacher ({df['teacher'].iloc[0]})"}
    for t in tasks:
        ts = df[df["task"] == t]["teacher_score"].astype(float)
        teach[cols[t]] = f"{points_of(ts.mean()):.1f}" if ts.notna().any() else "–"
    return pd.DataFrame([*rows, teach])


TASK_NAMES = {"cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "stsb": "STS-B", "qnli": "QNLI",
              "qqp": "QQP", "mnli": "MNLI", "wnli": "WNLI", "squad": "SQuAD"}
METRIC_NAMES = {"matthews_correlation": "MCC", "f1": "F1", "accuracy": "acc.", "spearmanr": "Spearman",
                "pearsonr": "Pearson", "exact_match": "EM", "rougeL": "Rouge-L"}
TEACHER_NAMES = {"minilm-l6": "MiniLM-L6"}
README_MARKERS = ("<!-- makd stats --readme: grid table -->", "<!-- /makd stats --readme -->")


def readme_table(df: pd.DataFrame) -> str:
    """:func:`grid_table` as the README shows it: one 'cell' column holding the label (no cell ids), task
    columns named 'CoLA (MCC)', 'MRPC (F1)', ... and the teacher row labelled 'fine-tuned <teacher>'."""
    table = grid_table(df)
    if table.empty:
        return markdown_table(table)
    metric = {t: df[df["task"] == t]["metric"].iloc[0] for t in df["task"].unique()}
    rename = {f"{t} ({m})": f"{TASK_NAMES.get(t, t)} ({METRIC_NAMES.get(m, m)})" for t, m in metric.items()}
    teacher = df["teacher"].iloc[0]
    table.loc[table["group"] == "teacher", "label"] = f"fine-tuned {TEACHER_NAMES.get(teacher, teacher)}"
    table = table.drop(columns="cell").rename(columns={"label": "cell", **rename})
    return markdown_table(table)


def replace_readme_block(text: str, table: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """``text`` with everything between the two marker lines replaced by ``table``. Raises ValueError (saying
    which marker lines to add) when the markers are missing or out of order."""
    start, end = markers
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the README has no table block: put the lines {start!r} and {end!r} around the table "
                         "it should hold")
    return text[:i + len(start)] + "\n\n" + table + "\n\n" + text[j:]


def readme_block(text: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """The table between the two marker lines of ``text`` (see :func:`replace_readme_block`)."""
    start, end = markers
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"no block between {start!r} and {end!r}")
    return text[i + len(start):j].strip()


def points_of(x: float) -> float:
    """A fraction on 0–1 as points (×100); a score already on 0–100 unchanged (as :func:`mean_pm_std`)."""
    from makd.experiments.published import points_scale

    return points_scale(x) * x


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


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-markdown table of ``frame`` (all values as text; '|' in values escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(cell, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _paired_columns(res: pd.DataFrame, diff_name: str, *, verdict: bool = True) -> dict[str, list[str]]:
    """The report's columns of :func:`paired` rows: seeds, the difference (points), its bootstrap CI, the t-test p
    and (``verdict``) :func:`_direction`."""
    cols = {"seeds": [len(s) for s in res["seeds"]], diff_name: [f"{100 * d:+.1f}" for d in res["mean_diff"]],
            "95 % bootstrap CI": [f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" for lo, hi in zip(res["ci_low"], res["ci_high"])],
            "paired t-test p": ["–" if pd.isna(p) else f"{p:.3g}" for p in res["p"]]}
    if verdict:
        cols["verdict"] = [_direction(r) for r in res.to_dict("records")]
    return cols


def report_markdown(df: pd.DataFrame, method: str = "makd", *, keep: float = 0.95, budget_label: str = "MaKD") -> str:
    """The grid report as markdown, all computed from ``df`` (rows of :func:`collect`): the cells × tasks table,
    ``method`` vs the best baseline per task (paired over common seeds), each ablation's paired delta, the
    budget sweep's ``budget_label`` vs the best other method per ratio (:func:`budget_comparisons`), the verdict
    sentences of :func:`verdicts`, and the runs' count and CPU time. Sections without runs are left out."""
    if df.empty:
        return "no finished runs (no metrics.json under the folder)"
    parts = []
    for task, groups in mixed_teachers(df).items():
        which = "; ".join(f"{sha}: {', '.join(runs)}" for sha, runs in groups.items())
        parts += [f"> **Warning — {task} mixes {len(groups)} teacher checkpoints** ({which}): its cells are not "
                  "compared under one teacher; remove the runs of the stray teacher and re-run them.", ""]
    for task, groups in retrained_teachers(df).items():
        parts += [f"> Note — {retrained_note(task, groups)}", ""]
    parts += ["## Cells × tasks (mean ± std over seeds, number of seeds; fractions ×100)", "",
              markdown_table(grid_table(df).drop(columns=["group"]))]
    vs = versus_best_baseline(df, method)
    if not vs.empty:
        rows = pd.DataFrame({"task": vs["task"], "best baseline": vs["label"],
                             **_paired_columns(vs, f"{method} − baseline")})
        parts += ["", f"## {method} vs the best baseline per task", "", markdown_table(rows)]
    deltas = ablation_deltas(df, method)
    if not deltas.empty:
        rows = pd.DataFrame({"task": deltas["task"], "ablation": deltas["label"],
                             **_paired_columns(deltas, f"ablation − {method}", verdict=False)})
        parts += ["", "## Ablations (paired difference to " + method + ")", "", markdown_table(rows)]
    if df["task"].nunique() > 1 and method in set(df["cell"]):
        pooled = []
        for cell, g in df[df["cell"] != method].groupby("cell", sort=False):
            if g["group"].iloc[0] in ("baseline", "ablation") and g["task"].nunique() > 1:
                r = across_tasks(df, cell if g["group"].iloc[0] == "ablation" else method,
                                 method if g["group"].iloc[0] == "ablation" else cell)
                pooled.append({"comparison": f"{r['a']} vs {r['b']}", "tasks": ", ".join(r["tasks"]),
                               "task × seed pairs": r["pairs"], "first wins": r["wins"], "first loses": r["losses"],
                               "ties": r["ties"], "sign test p": "–" if np.isnan(r["p"]) else f"{r['p']:.3g}"})
        if pooled:
            parts += ["", "## Across tasks (signs pooled over task × seed pairs; post hoc)", "",
                      markdown_table(pd.DataFrame(pooled))]
    budget = budget_comparisons(df, budget_label)
    if not budget.empty:
        rows = pd.DataFrame({"task": budget["task"], "layer ratio": [f"{r:g}" for r in budget["ratio"]],
                             "best other method": budget["best_label"],
                             **_paired_columns(budget, f"{budget_label} − other")})
        parts += ["", f"## Budget sweep: {budget_label} vs the best other method at each ratio", "", markdown_table(rows)]
    parts += ["", "## Verdicts", ""]
    for key, lines in verdicts(df, method, keep=keep).items():
        parts += [f"- **{key}**"] + [f"  - {line}" for line in lines]
    cpu = pd.to_numeric(df["cpu_s"] if "cpu_s" in df else pd.Series(dtype=float), errors="coerce")
    cpu_txt = f"{cpu.sum() / 60:.1f} min of CPU time" if cpu.notna().any() else "CPU time not recorded"
    per_task = ", ".join(f"{t} {n}" for t, n in df.groupby("task").size().items())
    parts += ["", f"{len(df)} runs ({per_task}); {cpu_txt} (from the cells' cell.json; a teacher's fine-tuning counts in the cell that triggered it)."]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m makd stats",
        description="Report of a grid's results folder as markdown: cells × tasks (mean ± std over seeds), "
                    "MaKD vs the best baseline per task (paired t-test + bootstrap CI), ablation deltas, "
                    "verdicts and CPU time. Reads only metrics.json/cell.json; unfinished cells are left out.",
        epilog="example: python -m makd stats results/grid-glue --out results/grid-glue/REPORT.md --readme README.md")
    p.add_argument("folder", help="a results folder written by `python -m makd grid` (OUT/<task>/<cell>/s<seed>/)")
    p.add_argument("--method", help="the cell compared against the baselines (default makd)")
    p.add_argument("--budget-label", default="MaKD",
                   help="budget sweep: the method label compared at each ratio (default MaKD)")
    p.add_argument("--tasks", nargs="+", help="only these tasks")
    p.add_argument("--keep", type=float, default=0.95,
                   help="budget verdict: lowest ratio keeping this fraction of the teacher's score (default 0.95)")
    p.add_argument("--out", help="also write the markdown to this file")
    p.add_argument("--csv", help="also write one row per run as CSV here")
    p.add_argument("--readme", metavar="FILE",
                   help="also rewrite the cells x tasks table in FILE (e.g. README.md) between the lines "
                        f"{README_MARKERS[0]!r} and {README_MARKERS[1]!r}, with task/metric names spelled out")
    args = p.parse_args(argv)
    if not Path(args.folder).is_dir():
        p.error(f"no folder {args.folder!r}: pass the --out folder of `python -m makd grid`")
    df = collect(args.folder)
    if args.tasks:
        unknown = sorted(set(args.tasks) - set(df["task"]))
        if unknown:
            p.error(f"task(s) {', '.join(unknown)} have no finished run in {args.folder} "
                    f"(tasks there: {', '.join(sorted(df['task'].unique())) or 'none'})")
        df = df[df["task"].isin(args.tasks)]
    if args.readme:
        if not Path(args.readme).is_file():
            p.error(f"--readme: no file {args.readme!r}")
        try:
            readme = replace_readme_block(Path(args.readme).read_text(), readme_table(df))
        except ValueError as e:
            p.error(f"--readme {args.readme}: {e}")
    if args.method and args.method not in set(df["cell"]):
        p.error(f"cell {args.method!r} has no finished run in {args.folder} (cells: {', '.join(sorted(df['cell'].unique()))})")
    text = report_markdown(df, args.method or "makd", keep=args.keep, budget_label=args.budget_label)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.csv:
        df.drop(columns=["config"]).to_csv(args.csv, index=False)
    if args.readme:
        Path(args.readme).write_text(readme)
    return 0 if len(df) else 1


if __name__ == "__main__":
    raise SystemExit(main())
