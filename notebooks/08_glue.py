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
# # 08 · GLUE: teacher vs MaKD student per task, with each task's own metric
#
# The encoder pipeline run task by task: the fine-tuned teacher, its SVD student without training, and the
# student after MaKD distillation, scored on dev with the task's GLUE metric. The demo uses the embedded
# rt-polarity set, a PROXY for SST-2 (never a GLUE score); with `data_dir` it runs the real GLUE dev tasks.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~45 s | tiny random BERT, GLUE RTE fixture (a few rows), 2 steps |
# | demo (defaults) | ~11 min (teacher cached by notebook 02) | MiniLM-L6 on rt-polarity (PROXY for SST-2), 150 steps, whole dev split |
# | full | not measured: hours on 2 cores (every GLUE task with train and dev files in `data_dir`, teachers fine-tuned on whole train splits); GPU recommended | real GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/08_glue.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F08_glue.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda" (the pipeline's Trainer uses the GPU whenever one is visible)
run_dir: str = "runs/demo"  # run folder: metrics/08_glue.json, figures/ and distill/08_*/ go there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
data_dir: str | None = None  # folder with glue/<TASK>/{train,dev}.tsv (None: $MAKD_DATA_DIR, else the proxy only)
tasks: list[str] = []  # tasks to run; empty: rt-polarity (proxy) without data_dir, else every GLUE task found there
objective: str = "hierarchical"  # preset of the MaKD student (makd.core.objective.PRESETS); our reconstruction
layer_ratio: float = 0.5  # student size: fraction of the teacher's matrix parameters kept by the factors
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached per task)
teacher_max_train: int | None = None  # teacher fine-tuning examples per task (None: the whole train split)
force_teacher: bool = False  # distil even when a fine-tuned teacher is at chance level (tiny smoke models)
max_dev: int | None = None  # dev examples per task for the student (keep None: the cached teacher's score is on the whole dev split)
max_length: int = 64  # tokens per example
max_steps: int = 150  # distillation steps per task
max_train: int | None = 2000  # train examples the distillation draws its batches from (None: all)
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate

# %%
import os
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.notebook import views as ins
from makd.experiments import distill as pipeline
from makd.tasks.glue import GLUE_TASKS, PROXY_TASKS
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import PRESETS
from makd.notebook.plotting import savefig

if objective not in PRESETS:
    raise ValueError(f"objective={objective!r}: choose one of {sorted(PRESETS)}")
unknown = [t for t in tasks if t not in GLUE_TASKS + PROXY_TASKS]
if unknown:
    raise ValueError(f"tasks {unknown} unknown: choose from {list(GLUE_TASKS + PROXY_TASKS)}")
run_dir, device = start(run_dir, seed, device)
data_root = data_dir or os.environ.get("MAKD_DATA_DIR")
if not tasks:
    tasks = ins.local_glue_tasks(data_root) if data_root else ["rt-polarity"]
    if not tasks:
        raise ValueError(f"no GLUE task with train and dev files under {data_root}: give tasks=[...] or another data_dir")
tasks

# %% [markdown]
# ## Run the pipeline per task
#
# For each task `makd.experiments.distill.distill` fine-tunes (or reuses, cached) the teacher, factorises it at
# `layer_ratio` and evaluates (a) the SVD student as it is (`objective="none"`) and (b) the student after
# `max_steps` steps of MaKD distillation. Each run writes its own `metrics.json` with a full run record under
# `run_dir/distill/08_<task>_<objective>/`.

# %%
common = dict(data_dir=data_root, teacher=teacher, layer_ratio=layer_ratio, seed=seed, teacher_epochs=teacher_epochs,
              teacher_max_train=teacher_max_train, force_teacher=force_teacher, max_dev=max_dev,
              max_length=max_length, quiet=True, report_to="none")
rows, runs = [], {}
for name in tasks:
    base = pipeline.distill(task=name, objective="none", out=str(run_dir / "distill" / f"08_{name}_none"),
                            save_student=False, **common)
    run = pipeline.distill(task=name, objective=objective, out=str(run_dir / "distill" / f"08_{name}_{objective}"),
                           save_student=name == tasks[0], max_steps=max_steps, max_train=max_train, batch_size=batch_size, lr=lr,
                           logging_steps=max(1, min(10, max_steps // 2)), save_steps=max_steps + 1, **common)
    for kind in ("none", objective):  # the Trainer's final checkpoint (~200 MB) is not needed here
        shutil.rmtree(run_dir / "distill" / f"08_{name}_{kind}" / "checkpoints", ignore_errors=True)
    m = run["metric"]
    runs[name] = run
    rows.append({"task": name + (" (PROXY for SST-2)" if run["is_proxy"] else ""), "metric": m,
                 "teacher": run["teacher"]["metrics"][m], "SVD student, no training": base["student"]["metrics"][m],
                 f"MaKD student ({objective})": run["student"]["metrics"][m],
                 "student / teacher": run["relative_to_teacher"], "source": run["source"]})
table = pd.DataFrame(rows).set_index("task")
show(table)

# %% [markdown]
# ## Teacher vs student per task
#
# Parameter counts of teacher and student (embeddings included, as the baselines count them), and each
# task's metric (accuracy, F1, Matthews correlation or Pearson correlation: the GLUE conventions).

# %%
first = next(iter(runs.values()))
print(f"teacher {first['teacher']['params']:,} parameters; student {first['student']['params']:,} "
      f"({first['student']['ratio']:.3f} of the teacher, layer_ratio {layer_ratio})")
cols = ["teacher", "SVD student, no training", f"MaKD student ({objective})"]
fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(table) + 2), 3.8))
x = np.arange(len(table))
for i, c in enumerate(cols):
    ax.bar(x + (i - 1) * 0.27, table[c], 0.27, label=c)
ax.set_xticks(x, [f"{t}\n{m}" for t, m in zip(table.index, table["metric"])], fontsize=8)
ax.set_ylabel("dev score")
ax.set_title(f"Teacher vs SVD student (layer_ratio {layer_ratio}), {max_steps} distillation steps per task")
ax.legend(fontsize=8)
savefig(fig, "glue_teacher_vs_student_per_task", run_dir)
plt.show()

# %%
metrics = {
    "tasks": list(runs),
    "any_proxy": any(r["is_proxy"] for r in runs.values()),
    "objective": objective,
    "layer_ratio": layer_ratio,
    "steps": max_steps,
    "student_params": first["student"]["params"],
    "teacher_params": first["teacher"]["params"],
    "per_task": {name: {"metric": r["metric"], "is_proxy": r["is_proxy"],
                        "teacher": r["teacher"]["metrics"][r["metric"]],
                        "student_untrained": float(table.iloc[i]["SVD student, no training"]),
                        "student": r["student"]["metrics"][r["metric"]]}
                 for i, (name, r) in enumerate(runs.items())},
}
relative = [r["relative_to_teacher"] for r in runs.values() if r["relative_to_teacher"] is not None]
if relative:  # undefined when a teacher scores 0 (e.g. Matthews correlation of a constant predictor)
    metrics["mean_student_over_teacher"] = float(np.mean(relative))
write_metrics(run_dir, "08_glue", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})

# %% [markdown]
# ## Take the student elsewhere
#
# The first task's student was saved (`OUT/student/`) with its factors, a small self-contained `modeling_makd.py`
# and a model card written from this run's metrics. Plain transformers loads it — no makd needed on the other
# side — and it goes into a `pipeline` like any Hub model (`python -m makd export` also merges it back to a
# dense checkpoint, exports ONNX, or prepares the folder for the Hub; README "Use your student elsewhere").

# %%
from IPython.display import Markdown, display
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline as hf_pipeline

folder = run_dir / "distill" / f"08_{tasks[0]}_{objective}" / "student"
hf_model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
hf_tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
classify = hf_pipeline("text-classification", model=hf_model, tokenizer=hf_tok)
show(pd.DataFrame(classify(["a gripping, beautifully acted film", "a dull, lifeless and overlong mess"])))
print(type(hf_model).__name__, f"{sum(p.numel() for p in hf_model.parameters()):,} parameters")
display(Markdown((folder / "README.md").read_text()))
