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
# # 06 · Hierarchical training: every aspect in one objective, end to end
#
# The objective's presets as layer × aspect tables, and one run of the distillation pipeline
# (`python -m makd distill`) with every loss term plotted from the trainer's log.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~50 s | tiny random BERT, GLUE SST-2 fixture (4 sentences), 2 steps |
# | demo (defaults) | ~5.5 min (teacher cached by notebook 02) | MiniLM-L6 fine-tuned on rt-polarity, layer_ratio 0.25, 100 steps, whole dev split |
# | full | as demo (`task` picks a GLUE task from `data_dir`) | GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU recommended) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/06_hierarchical_training.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F06_hierarchical_training.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda" (the pipeline's Trainer uses the GPU whenever one is visible)
run_dir: str = "runs/demo"  # run folder: metrics/06_hierarchical_training.json, figures/ and distill/06_*/ go there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # task: rt-polarity (embedded SST-2 proxy) or a GLUE task
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
objective: str = "hierarchical"  # preset trained (makd.core.objective.PRESETS); hierarchical is our reconstruction
layer_ratio: float = 0.25  # student size: fraction of the teacher's matrix parameters kept (08_glue uses 0.5)
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached: notebooks 02-06 and 08 share one teacher)
teacher_max_train: int | None = None  # teacher fine-tuning examples (None: the whole train split)
force_teacher: bool = False  # distil even when the fine-tuned teacher is at chance level (tiny smoke models)
max_dev: int | None = None  # dev examples for the student's evaluation (keep None: the cached teacher's score is on the whole dev split)
max_length: int = 64  # tokens per example
max_steps: int = 100  # distillation steps
max_train: int | None = 2000  # train examples the distillation draws its batches from (None: all)
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate
logging_steps: int = 10  # log every loss term every N steps

# %%
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.notebook import views as ins
from makd.experiments import distill as pipeline
from makd.assets.models import load_model
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import PRESETS, MaKDObjective
from makd.notebook.plotting import savefig

if objective not in PRESETS:
    raise ValueError(f"objective={objective!r}: choose one of {sorted(PRESETS)}")
run_dir, device = start(run_dir, seed, device)
logging_steps = max(1, min(logging_steps, max_steps // 2))  # at least two log points
n_layers = load_model(teacher, head="base")[0].config.num_hidden_layers
n_layers

# %% [markdown]
# ## The presets: which aspect on which layer
#
# `makd.core.objective.MaKDObjective` is a weighted sum of named terms over a layer × aspect table:
# matrix level `mha`, `ffn`; layer level `attn`, `hidn` (row `emb` = the embedding output); model level
# `pred` (t²·KL + gold CE). The paper's exact assignment is not public: **every preset, including the
# default `hierarchical`, is a reconstruction** (docs/METHOD.md); `tinybert` and `minilm` are baselines.

# %%
tables = {p: MaKDObjective(n_layers, p).describe() for p in PRESETS}
aspects = list(dict.fromkeys(a for t in tables.values() for a in t.columns))
cols = 4
fig, axes = plt.subplots(int(np.ceil(len(tables) / cols)), cols, figsize=(12, 2.2 + 1.6 * ((len(tables) + cols - 1) // cols) * (n_layers + 2) / 8),
                         squeeze=False)
for ax, (preset, table) in zip(axes.flat, tables.items()):
    grid = table.reindex(columns=aspects, fill_value=0.0)
    ax.imshow(grid.values, cmap="Blues", vmin=0, vmax=1.4, aspect="auto")
    ax.set_xticks(range(len(aspects)), aspects, fontsize=7)
    ax.set_yticks(range(len(grid)), grid.index, fontsize=7)
    ax.set_title(preset, fontsize=9)
    ax.grid(False)
for ax in list(axes.flat)[len(tables):]:
    ax.set_visible(False)
fig.suptitle("Objective presets: weight of each aspect per layer (white = off)")
fig.tight_layout()
savefig(fig, "objective_presets_layers_x_aspects", run_dir)
plt.show()
show(pd.Series(PRESETS, name="preset").to_frame("what"))

# %%
show(tables[objective])  # the preset trained below

# %% [markdown]
# ## One distillation run through the pipeline
#
# `makd.experiments.distill.distill` is the Python entry of `python -m makd distill`: it fine-tunes (or reuses) the teacher
# on the task, factorises it at `layer_ratio`, distils with the preset through `makd.core.trainer.DistillTrainer`
# (which logs every term as `loss_<term>`), evaluates on dev and writes `metrics.json`. The SVD student
# without any training (`objective="none"`) is the reference point.

# %%
common = dict(task=task, data_dir=data_dir, teacher=teacher, layer_ratio=layer_ratio, seed=seed,
              teacher_epochs=teacher_epochs, teacher_max_train=teacher_max_train, force_teacher=force_teacher,
              max_dev=max_dev, max_length=max_length, quiet=True, report_to="none", save_student=False)
untrained = pipeline.distill(objective="none", out=str(run_dir / "distill" / "06_none"), **common)
result = pipeline.distill(objective=objective, out=str(run_dir / "distill" / f"06_{objective}"), max_steps=max_steps,
                          max_train=max_train, batch_size=batch_size, lr=lr, logging_steps=logging_steps,
                          save_steps=max_steps + 1, **common)
for name in ("06_none", f"06_{objective}"):  # the Trainer's final checkpoint (~200 MB) is not needed here
    shutil.rmtree(run_dir / "distill" / name / "checkpoints", ignore_errors=True)
metric = result["metric"]
scores = pd.DataFrame([
    {"model": "teacher", metric: result["teacher"]["metrics"][metric], "params": result["teacher"]["params"]},
    {"model": "SVD student, no training", metric: untrained["student"]["metrics"][metric],
     "params": untrained["student"]["params"]},
    {"model": f"SVD student + {objective} ({result['train']['steps']} steps)", metric: result["student"]["metrics"][metric],
     "params": result["student"]["params"]},
]).set_index("model")
print(f"{result['task']}{' (PROXY for SST-2, not a GLUE score)' if result['is_proxy'] else ''}, dev {metric}")
show(scores)

# %% [markdown]
# ## Every loss term over training
#
# The terms live on different scales (MSEs of matrix outputs, KLs of attention rows, the model term), so each
# is divided by its first logged value: the curves show how fast each aspect is learned.

# %%
hist = ins.history_frame(result["train"]["history"])
terms = [c for c in hist.columns if c not in ("loss",)]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for c in ["loss"] + terms:
    axes[0].plot(hist.index, hist[c], "o-" if c == "loss" else "-", label=c, lw=2 if c == "loss" else 1.2)
    axes[1].plot(hist.index, hist[c] / hist[c].iloc[0], label=c)
axes[0].set_yscale("log")
axes[0].set_title("loss terms (log scale)")
axes[1].set_title("relative to the first logged value")
for ax in axes:
    ax.set_xlabel("step")
axes[1].legend(fontsize=7, ncol=2)
fig.suptitle(f"{objective} distillation of the SVD student (layer_ratio {layer_ratio})")
savefig(fig, "training_loss_terms", run_dir)
plt.show()
show(hist)

# %%
metrics = {
    "task": result["task"],
    "is_proxy": result["is_proxy"],
    "metric": metric,
    "objective": objective,
    "teacher": result["teacher"]["metrics"][metric],
    "student_untrained": untrained["student"]["metrics"][metric],
    "student": result["student"]["metrics"][metric],
    "relative_to_teacher": result["relative_to_teacher"],
    "student_params": result["student"]["params"],
    "teacher_params": result["teacher"]["params"],
    "steps": result["train"]["steps"],
    "train_runtime_s": result["train"]["runtime_s"],
    "first_terms": {c: float(hist[c].iloc[0]) for c in hist.columns},
    "last_terms": {c: float(hist[c].iloc[-1]) for c in hist.columns},
}
write_metrics(run_dir, "06_hierarchical_training", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, dict)})
