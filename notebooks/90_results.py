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
# # 90 · Results: ours beside the paper's numbers and the published baselines
#
# Reads ONLY stored metrics JSON (`metrics.json` of recorded runs and `run_dir/metrics/*.json` of the
# notebooks) and regenerates the paper-vs-ours table and the figures; nothing is trained here.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~30 s | the small JSON fixtures in `tests/fixtures/results/` |
# | demo (defaults) | ~10 s | `results/` (the recorded runs of this repository) |
# | full | ~10 s | same as demo |
# | paper | ~10 s | same as demo |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/90_results.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F90_results.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # seed of the bootstrap resampling (nothing else is random here)
device: str = "auto"  # unused (nothing runs a model here); every notebook declares it
run_dir: str = "runs/demo"  # run folder: its metrics/*.json are read; metrics/90_results.json, figures/ written
results_dirs: list[str] = ["results"]  # folders searched for recorded runs (metrics.json, recursively)
method: str = "makd"  # the grid cell that is "MaKD" in the paired comparison
keep: float = 0.95  # budget verdict: lowest layer ratio keeping this fraction of the teacher's score

# %%
from pathlib import Path

import pandas as pd

from makd.experiments import figures, published, stats, tables, verdicts
from makd.notebook.helpers import read_metrics, resolve_path, show, start, write_metrics
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
roots = [resolve_path(r) for r in results_dirs]
roots

# %% [markdown]
# ## Every recorded run (one row per `metrics.json`)

# %%
runs = pd.concat([stats.collect(r) for r in roots], ignore_index=True)
if runs.empty:
    raise FileNotFoundError(f"no metrics.json under {[str(r) for r in roots]}: record runs first "
                            "(python -m makd distill / python -m makd grid) or pass results_dirs")
here = str(resolve_path(".")) + "/"
runs["where"] = runs["where"].str.replace(here, "", regex=False)   # folder above the task folder, repo-relative
runs[["task", "where", "cell", "seed", "metric", "score", "student_params", "layer_ratio", "steps", "cpu_s"]]

# %% [markdown]
# ## Mean ± std over seeds, with the data and the profile of each row
#
# The profile is read from the recorded run (`smoke`: tiny random teacher; `demo`: embedded data;
# `full`: benchmark files; `paper`: BERT-base teacher), never assumed.

# %%
summary = stats.summarize(runs, by=("task", "where", "cell"))
summary["profile"] = [published.profile_of({"teacher": t, "source": s}) for t, s in zip(summary["teacher"], summary["source"])]
summary["data"] = [f"{s}; {st}" if st else str(s) for s, st in zip(summary["source"], summary["setting"])]
summary["origin"] = summary["where"]
summary.assign(score=[stats.mean_pm_std(m, s) for m, s in zip(summary["mean"], summary["std"])])[
    ["task", "where", "label", "score", "n", "student_params", "layer_ratio", "profile", "data"]]

# %% [markdown]
# ## Paper vs ours
#
# The published numbers live in `makd/experiments/published.py`, each with its source. **Budget assumption:**

# %%
print(published.BUDGET_ASSUMPTION)
table = published.paper_vs_ours(summary)
table

# %% [markdown]
# The same table as Markdown (paste into the README; it is regenerated from the JSON above):

# %%
markdown = tables.markdown_table(table)
(run_dir / "metrics").mkdir(parents=True, exist_ok=True)
(run_dir / "metrics" / "90_results_table.md").write_text(markdown + "\n")
print(markdown)

# %% [markdown]
# ## MaKD vs the best baseline, per task (paired over seeds)
#
# Each grid folder is analysed on its own (two grids may share cell names but not their settings).

# %%
grid_runs = runs[runs["grid"].notna()]                             # runs made by `python -m makd grid`
grids = dict(tuple(grid_runs.groupby("where", sort=True)))
versus = pd.concat([stats.versus_best_baseline(g, method, seed=seed).assign(grid=w) for w, g in grids.items()]
                   + [pd.DataFrame()], ignore_index=True)
show(versus[["grid", "task", "best_baseline", "n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p"]]
     if len(versus) else pd.DataFrame({"note": [f"no {method!r} cell with baselines over common seeds"]}))

# %% [markdown]
# ## Figures: accuracy vs budget per method, and the ablation deltas
#
# Each figure takes, per task, ONE grid folder: the one holding that group of cells over the most seeds (then the
# longest training, then the most runs), so cells of different grids (other training lengths) are never mixed.

# %%
subquadratic = grid_runs["config"].apply(lambda c: isinstance(c, dict) and "mixer" in c)   # their own section below
budget_runs, budget_from = stats.richest_per_task(grid_runs[~subquadratic], "budget")
if len(budget_runs):
    fig = figures.plot_budget(stats.summarize(budget_runs))
    savefig(fig, "results_accuracy_vs_layer_ratio", run_dir)
ablation_runs, ablation_from = stats.richest_per_task(grid_runs, "ablation")
if len(ablation_runs):
    deltas = stats.ablation_deltas(ablation_runs, method, seed=seed)
    fig2 = figures.plot_ablation_deltas(deltas)
    savefig(fig2, "results_ablation_deltas", run_dir)
pd.DataFrame({"budget figure from": pd.Series(budget_from), "ablation figure from": pd.Series(ablation_from)})

# %% [markdown]
# ## Subquadratic students (arXiv 2504.14366): the study's findings and how far the token budget gets
#
# Per subquadratic grid folder: the findings table (each of the study's reported findings against our paired
# comparisons) where the grid has mixer cells, and the budget curve (perplexity over the teacher's and top-1
# agreement against the training tokens per stage, with the targets) where it has budget cells.

# %%
from makd.experiments.subquadratic_curve import extrapolate, token_curve
from makd.experiments.subquadratic_findings import findings_table

sq_grids = {w: g for w, g in grid_runs[subquadratic].groupby("where", sort=True)}
curves = {}
for w, g in sq_grids.items():
    if (g["group"] != "budget").any():
        print(f"[{w}] findings")
        show(findings_table(g))
    if (g["group"] == "budget").any():
        curves[w] = token_curve(g)
        print(f"[{w}] budget curve; straight-line extrapolation on log axes (a reading aid): {extrapolate(curves[w])}")
        show(curves[w][["label", "stage_tokens", "n", "ppl_mean", "ppl_std", "ppl_ratio_mean", "top1_mean",
                        "top1_std", "vs_below"]])
        savefig(figures.plot_token_curve(curves[w]), f"results_budget_curve_{Path(w).name}", run_dir)
if not sq_grids:
    print("no subquadratic grid under", [str(r) for r in roots])

# %% [markdown]
# ## Verdict per question (generated from the numbers), per grid

# %%
answers = {}
for w, g in grids.items():
    for question, lines in verdicts.verdicts(g, method, keep=keep).items():
        answers.setdefault(question, []).extend(f"[{w}] {line}" for line in lines)
for question, lines in answers.items():
    print(f"{question}:\n  " + "\n  ".join(lines))

# %% [markdown]
# ## Numbers the other notebooks wrote in `run_dir/metrics/`

# %%
notebook_metrics = read_metrics(run_dir) if (run_dir / "metrics").is_dir() else {}
flat = [{"notebook": nb, "key": k, "value": v} for nb, d in notebook_metrics.items() if nb != "90_results"
        for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
pd.DataFrame(flat, columns=["notebook", "key", "value"])

# %%
metrics = {"n_runs": int(len(runs)), "tasks": sorted(runs["task"].unique().tolist()),
           "table_rows": int(len(table)), "ours_rows": int((table["who"] == "ours").sum()),
           "published_rows": int((table["who"] == "published").sum()), "verdicts": answers}
if len(versus):
    metrics["makd_minus_best_baseline"] = {f'{r["grid"]}:{r["task"]}': float(r["mean_diff"])
                                           for r in versus.to_dict("records")}
write_metrics(run_dir, "90_results", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
