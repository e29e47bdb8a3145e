"""``python -m makd stats``: the markdown report of a grid's results folder, and the README's cells × tasks block.

``report_markdown(df)`` is the whole report of the runs of :func:`makd.experiments.stats.collect`: teacher
warnings or notes (:mod:`makd.experiments.teachers`), the cells × tasks table (:func:`grid_table`), the method vs
the best baseline per task, each ablation's paired delta, the pooled sign tests across tasks, the budget sweep,
the verdicts (:mod:`makd.experiments.verdicts`) and the runs' CPU time. ``readme_table`` is the same cells × tasks
table with task and metric names spelled out, written between two marker lines of the README. Every table goes
through the package's one writer, :func:`makd.experiments.tables.markdown_table`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from makd.core.errors import ArgumentParser
from makd.experiments.published import as_points
from makd.experiments.readme_blocks import read_block, write_block
from makd.experiments.stats import (ablation_deltas, across_tasks, budget_comparisons, collect, mean_pm_std,
                                    summarize, versus_best_baseline)
from makd.experiments.subquadratic_curve import curve_markdown
from makd.experiments.subquadratic_findings import findings_table, is_subquadratic
from makd.experiments.tables import markdown_table
from makd.experiments.teachers import mixed_teachers, retrained_note, retrained_teachers
from makd.experiments.verdicts import direction, verdicts

GROUP_ORDER = {"method": 0, "baseline": 1, "ablation": 2, "budget": 3}
TASK_NAMES = {"cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "stsb": "STS-B", "qnli": "QNLI",
              "qqp": "QQP", "mnli": "MNLI", "wnli": "WNLI", "squad": "SQuAD",
              "wiki": "held-out Wikipedia"}
METRIC_NAMES = {"matthews_correlation": "MCC", "f1": "F1", "accuracy": "acc.", "spearmanr": "Spearman",
                "pearsonr": "Pearson", "exact_match": "EM", "rougeL": "Rouge-L",
                "top1": "top-1 agreement with the teacher"}
TEACHER_NAMES = {"minilm-l6": "MiniLM-L6", "smollm2-135m-instruct": "SmolLM2-135M-Instruct"}
README_MARKERS = ("<!-- makd stats --readme: grid table -->", "<!-- /makd stats --readme -->")
# a subquadratic grid (arXiv 2504.14366) has its own README block: its cells table, then the findings table
SUBQUADRATIC_MARKERS = ("<!-- makd stats --readme: subquadratic table -->", "<!-- /makd stats --readme: subquadratic -->")
# ... and its budget curve (a grid of budget cells only, grids/subquadratic-curve.yaml) another one
CURVE_MARKERS = ("<!-- makd stats --readme: subquadratic curve -->", "<!-- /makd stats --readme: subquadratic curve -->")


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
    kind = "teacher" if is_subquadratic(df) else "fine-tuned teacher"     # subquadratic: the teacher as it is
    teach = {"group": "teacher", "cell": "teacher", "label": f"{kind} ({df['teacher'].iloc[0]})"}
    for t in tasks:
        ts = df[df["task"] == t]["teacher_score"].astype(float)
        teach[cols[t]] = f"{as_points(ts.mean()):.1f}" if ts.notna().any() else "–"
    return pd.DataFrame([*rows, teach])


def readme_table(df: pd.DataFrame) -> str:
    """:func:`grid_table` as the README shows it: one 'cell' column holding the label (no cell ids), task
    columns named 'CoLA (MCC)', 'MRPC (F1)', ... and the teacher row labelled 'fine-tuned <teacher>'."""
    table = grid_table(df)
    if table.empty:
        return markdown_table(table)
    metric = {t: df[df["task"] == t]["metric"].iloc[0] for t in df["task"].unique()}
    rename = {f"{t} ({m})": f"{TASK_NAMES.get(t, t)} ({METRIC_NAMES.get(m, m)})" for t, m in metric.items()}
    teacher = df["teacher"].iloc[0]
    kind = "teacher" if is_subquadratic(df) else "fine-tuned"
    table.loc[table["group"] == "teacher", "label"] = f"{kind} {TEACHER_NAMES.get(teacher, teacher)}"
    table = table.drop(columns="cell").rename(columns={"label": "cell", **rename})
    return markdown_table(table)


def _cpu_seconds(df: pd.DataFrame) -> pd.Series:
    """Each run's CPU seconds from its cell.json (NaN where not recorded)."""
    return pd.to_numeric(df["cpu_s"] if "cpu_s" in df else pd.Series(dtype=float), errors="coerce")


def readme_markdown(df: pd.DataFrame) -> tuple[str, tuple[str, str]]:
    """What ``--readme`` writes for the runs of ``df`` and between which markers: the cells × tasks table
    (:func:`readme_table`), and for a subquadratic grid the findings table under it, in its own block; a
    subquadratic grid of budget cells only (the budget curve) writes its curve section in a third block."""
    if not is_subquadratic(df):
        return readme_table(df), README_MARKERS
    cpu = _cpu_seconds(df).sum() / 3600
    seeds = df.groupby("cell")["seed"].nunique()
    span = str(seeds.min()) if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"  # "3" or "2–3"
    if (df["group"] == "budget").all():
        return "\n".join([curve_markdown(df, heading=False), "", f"{len(df)} runs, {span} seeds per budget, "
                          f"{cpu:.1f} CPU-hours."]), CURVE_MARKERS
    return "\n".join([readme_table(df), "", f"{len(df)} runs, {span} seeds per cell, "
                      f"{cpu:.1f} CPU-hours; the study's findings read from them (top-1 agreement with the teacher "
                      "on held-out text, paired over seeds):", "", markdown_table(findings_table(df))]), \
        SUBQUADRATIC_MARKERS


def replace_readme_block(text: str, table: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """``text`` with everything between the two marker lines replaced by ``table``. Raises ValueError (saying
    which marker lines to add) when the markers are missing or out of order."""
    return write_block(text, table, markers, f"the README has no table block: put the lines {markers[0]!r} and "
                                             f"{markers[1]!r} around the table it should hold")


def readme_block(text: str, markers: tuple[str, str] = README_MARKERS) -> str:
    """The table between the two marker lines of ``text`` (see :func:`replace_readme_block`)."""
    return read_block(text, markers, f"no block between {markers[0]!r} and {markers[1]!r}")


def _paired_columns(res: pd.DataFrame, diff_name: str, *, verdict: bool = True) -> dict[str, list[str]]:
    """The report's columns of paired rows (``makd.experiments.stats.paired``): seeds, the difference (points), its
    bootstrap CI, the t-test p and (``verdict``) :func:`makd.experiments.verdicts.direction`."""
    cols = {"seeds": [len(s) for s in res["seeds"]], diff_name: [f"{100 * d:+.1f}" for d in res["mean_diff"]],
            "95 % bootstrap CI": [f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" for lo, hi in zip(res["ci_low"], res["ci_high"])],
            "paired t-test p": ["–" if pd.isna(p) else f"{p:.3g}" for p in res["p"]]}
    if verdict:
        cols["verdict"] = [direction(r) for r in res.to_dict("records")]
    return cols


def _pooled(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """One :func:`makd.experiments.stats.across_tasks` row per baseline (method vs it) and ablation (it vs method)
    run on more than one task."""
    pooled = []
    for cell, g in df[df["cell"] != method].groupby("cell", sort=False):
        if g["group"].iloc[0] in ("baseline", "ablation") and g["task"].nunique() > 1:
            a, b = (cell, method) if g["group"].iloc[0] == "ablation" else (method, cell)
            r = across_tasks(df, a, b)
            pooled.append({"comparison": f"{r['a']} vs {r['b']}", "tasks": ", ".join(r["tasks"]),
                           "task × seed pairs": r["pairs"], "first wins": r["wins"], "first loses": r["losses"],
                           "ties": r["ties"], "sign test p": "–" if np.isnan(r["p"]) else f"{r['p']:.3g}"})
    return pd.DataFrame(pooled)


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
        pooled = _pooled(df, method)
        if len(pooled):
            parts += ["", "## Across tasks (signs pooled over task × seed pairs; post hoc)", "", markdown_table(pooled)]
    budget = budget_comparisons(df, budget_label)
    if not budget.empty:
        rows = pd.DataFrame({"task": budget["task"], "layer ratio": [f"{r:g}" for r in budget["ratio"]],
                             "best other method": budget["best_label"],
                             **_paired_columns(budget, f"{budget_label} − other")})
        parts += ["", f"## Budget sweep: {budget_label} vs the best other method at each ratio", "", markdown_table(rows)]
    if is_subquadratic(df):
        if (df["group"] != "budget").any():
            parts += ["", "## The study's findings (arXiv 2504.14366) vs ours (top-1 agreement, paired over seeds)",
                      "", markdown_table(findings_table(df))]
        if (df["group"] == "budget").any():
            parts += ["", curve_markdown(df)]
    else:
        parts += ["", "## Verdicts", ""]
        for key, lines in verdicts(df, method, keep=keep).items():
            parts += [f"- **{key}**"] + [f"  - {line}" for line in lines]
    cpu = _cpu_seconds(df)
    cpu_txt = f"{cpu.sum() / 60:.1f} min of CPU time" if cpu.notna().any() else "CPU time not recorded"
    per_task = ", ".join(f"{t} {n}" for t, n in df.groupby("task").size().items())
    parts += ["", f"{len(df)} runs ({per_task}); {cpu_txt} (from the cells' cell.json; a teacher's fine-tuning counts in the cell that triggered it)."]
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
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
                        f"{README_MARKERS[0]!r} and {README_MARKERS[1]!r}, with task/metric names spelled out "
                        f"(a subquadratic grid: its table and the findings table, between {SUBQUADRATIC_MARKERS[0]!r} "
                        f"and {SUBQUADRATIC_MARKERS[1]!r}; its budget curve between {CURVE_MARKERS[0]!r} and "
                        f"{CURVE_MARKERS[1]!r})")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m makd stats FOLDER [--out REPORT.md] [--readme README.md] [--csv runs.csv]``; 1 when no runs."""
    p = build_parser()
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
            readme = replace_readme_block(Path(args.readme).read_text(), *readme_markdown(df))
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
