# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Ablations: baselines at equal budget, each aspect, the hierarchy, the initialisation, the budget
#
# Runs (or reads) a grid of distillation runs declared as data in `grids/`, and answers from the numbers
# whether each aspect helps, which layer assignment works, and how low the budget can go — over seeds,
# with paired tests.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~1.5 min | runs `grids/smoke.yaml`: tiny random BERT, GLUE fixtures, 4 cells × 1 seed × 2 steps |
# | demo (defaults) | ~10 s | reads the recorded grid in `results/grid` (made by `python -m makd grid grids/rt-polarity.yaml`) |
# | full | ~10 s | same as demo (pass `results_dir`, or `results_dir=""` to run a grid: hours on CPU) |
# | paper | ~10 s | same as demo |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/07_ablations.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F07_ablations.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # seed of the bootstrap resampling (training seeds are the grid's `seeds`)
device: str = "auto"  # "auto", "cpu" or "cuda" (runs pick their device themselves)
run_dir: str = "runs/demo"  # run folder: metrics/07_ablations.json, figures/, and grid/ when the grid is run here
results_dir: str = "results/grid"  # read finished runs from this folder; "" = run `grid` into run_dir/grid first
budget_dir: str = "results/grid-budget"  # budget sweep read when results_dir has no budget cells ("" = none)
grid: str = "grids/rt-polarity.yaml"  # grid file to run when results_dir is ""
seeds: list[int] = [0, 1, 2]  # training seeds to run (when running)
only: list[str] = []  # run only these cells (an empty list runs all)
teacher: str = "minilm-l6"  # overrides the grid's teacher when running
task: str = "rt-polarity"  # the task to run and to analyse
data_dir: str = ""  # data folder for GLUE tasks when running ("" = the grid's own)
max_steps: int = -1  # cap training steps per run when running (-1 = the grid's own)
keep: float = 0.95  # budget verdict: lowest layer ratio keeping this fraction of the teacher's score

# %%
import pandas as pd

from makd.experiments import grid as makd_grid
from makd.experiments import figures, stats, teachers, verdicts
from makd.notebook.helpers import resolve_path, show, start, write_metrics
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
source = resolve_path(results_dir) if results_dir else run_dir / "grid"
source

# %% [markdown]
# ## The grid
#
# A grid is data: shared pipeline options plus a list of cells, each a dict of options (an objective
# preset, aspect weights, a student, an initialisation, a budget). Every SVD cell of
# `grids/rt-polarity.yaml` keeps the exact total parameter count of the 3-layer dense students
# (`budget: {budget_of: "layers:3"}`), so baselines and MaKD are compared at the same budget.

# %%
g = makd_grid.load_grid(resolve_path(grid))
pd.DataFrame([{"cell": c["name"], "group": c["group"], "label": c["label"], "options": c["options"]}
              for c in g["cells"]])

# %% [markdown]
# Run the grid here only when `results_dir` is empty (finished cells are skipped, interrupted ones resume).

# %%
if not results_dir:
    overrides = {"teacher": teacher, "quiet": True}
    if data_dir:
        overrides["data_dir"] = str(resolve_path(data_dir))
    if max_steps > 0:
        overrides["max_steps"] = max_steps
    summary = makd_grid.run_grid(g, source, only=only or None, seeds=seeds, tasks=[task], overrides=overrides)
    show(summary["counts"])

# %% [markdown]
# ## Mean ± std over seeds per cell

# %%
runs = stats.collect(source)
runs = runs[runs["task"] == task]
if runs.empty:
    raise FileNotFoundError(f"no finished runs of task {task!r} under {source}: run "
                            f"`python -m makd grid {grid} --out {source}` or set results_dir=''")
for _task, _groups in teachers.mixed_teachers(runs).items():   # cells must share ONE fine-tuned teacher
    print(f"WARNING: {_task} mixes {len(_groups)} teacher checkpoints: {_groups} — re-run the stray teacher's cells")
for _task, _groups in teachers.retrained_teachers(runs).items():   # one teacher, re-trained on another CPU
    print("note:", teachers.retrained_note(_task, _groups))
table = stats.summarize(runs)
table.assign(score=[stats.mean_pm_std(m, s) for m, s in zip(table["mean"], table["std"])])[
    ["cell", "group", "label", "score", "n", "student_params", "layer_ratio", "relative"]]

# %% [markdown]
# ## MaKD vs the best baseline (paired over seeds)
#
# $d_i = \text{MaKD}_i - \text{baseline}_i$ per seed; paired $t = \bar d / (s_d/\sqrt n)$ and a percentile
# bootstrap interval of $\bar d$ (`makd.experiments.stats.paired`). With three seeds both are coarse.

# %%
versus = stats.versus_best_baseline(runs)
show(versus[["task", "a", "best_baseline", "n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "t", "p"]]
     if len(versus) else pd.DataFrame({"note": ["no method/baseline pair in these runs"]}))

# %% [markdown]
# ## Ablation deltas (ablation − MaKD, paired over seeds)

# %%
deltas = stats.ablation_deltas(runs)
fig = figures.plot_ablation_deltas(deltas)
savefig(fig, "ablation_deltas", run_dir)
show(deltas[["cell", "label", "n", "mean_diff", "ci_low", "ci_high", "p"]] if len(deltas) else deltas)

# %% [markdown]
# ## Accuracy vs budget per method

# %%
# The sweep lives in its own grid (grids/budget.yaml) unless the grid run here has budget cells.
budget_table, budget_runs, budget_source = table[table["group"] == "budget"], runs, source
if budget_table.empty and budget_dir and resolve_path(budget_dir).is_dir():
    budget_source = resolve_path(budget_dir)
    budget_runs = stats.collect(budget_source)
    budget_runs = budget_runs[budget_runs["task"] == task]
    budget_table = stats.summarize(budget_runs) if len(budget_runs) else budget_table
fig = figures.plot_budget(budget_table)
savefig(fig, "accuracy_vs_layer_ratio", run_dir)
print(f"budget sweep from: {budget_source}")
budget_table[budget_table["group"] == "budget"][["label", "layer_ratio", "student_params", "mean", "std", "n"]]

# %% [markdown]
# ## Verdict (generated from the numbers above)

# %%
answers = verdicts.verdicts(runs, keep=keep)
if budget_source != source:  # the budget question is answered from the budget sweep's own folder
    answers["budget"] = verdicts.verdicts(budget_runs, keep=keep)["budget"]
questions = {"baseline": "Does MaKD beat the best baseline at the same budget?",
             "aspects": "Does each aspect help?", "hierarchy": "Which hierarchy works?",
             "initialisation": "Plain or activation-aware SVD initialisation?", "budget": "How low can the budget go?"}
text = "\n\n".join(f"**{questions[k]}** " + " ".join(v) for k, v in answers.items())
try:
    from IPython.display import Markdown, display
    display(Markdown(text))
except ImportError:
    print(text)

# %%
best = table.iloc[0]
metrics = {"task": task, "n_runs": int(len(runs)), "n_cells": int(runs["cell"].nunique()),
           "seeds": sorted(int(s) for s in runs["seed"].unique()), "best_cell": str(best["cell"]),
           "best_mean": float(best["mean"]), "cpu_s": float(runs["cpu_s"].fillna(0).sum()),
           "cells": {r["cell"]: {"mean": r["mean"], "n": r["n"], "params": r["student_params"],
                                 **({"std": r["std"]} if r["n"] > 1 else {})} for r in table.to_dict("records")},
           "verdicts": answers}
if len(versus):
    v = versus.iloc[0]
    metrics |= {"best_baseline": str(v["best_baseline"]), "makd_minus_best_baseline": float(v["mean_diff"]),
                "ci_low": float(v["ci_low"]), "ci_high": float(v["ci_high"])}
write_metrics(run_dir, "07_ablations", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
