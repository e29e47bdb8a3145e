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
# # 05 · Model distillation: the teacher's output distribution, softened by a temperature
#
# The teacher's logits, what the temperature t does to its distribution, the KL-to-teacher term against the
# gold cross-entropy, why the KL is multiplied by t², and a short logit-KD run of the SVD student.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~50 s | tiny random BERT, GLUE SST-2 fixture (4 sentences), 2 steps |
# | demo (defaults) | ~3 min (teacher cached by notebook 02) | MiniLM-L6 fine-tuned on rt-polarity, 60 steps |
# | full | as demo (`task` picks a GLUE task from `data_dir`) | GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU recommended) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/05_model_distillation.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F05_model_distillation.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/05_model_distillation.json and figures/ are written there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # task the teacher is fine-tuned on: rt-polarity (embedded SST-2 proxy) or a GLUE task
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached: notebooks 02-06 and 08 share one teacher)
teacher_max_train: int | None = None  # teacher fine-tuning examples (None: the whole train split)
max_length: int = 64  # tokens per example
layer_ratio: float = 0.25  # student size: fraction of the teacher's matrix parameters kept by the factors
temperatures: list[float] = [1.0, 2.0, 4.0, 8.0]  # temperatures compared
temperature: float = 2.0  # temperature of the training run (the objective's default)
alpha: float = 0.5  # weight of t²·KL vs gold CE in the model term: alpha·KD + (1 − alpha)·CE
max_steps: int = 60  # distillation steps (model term only)
max_train: int = 2000  # train examples the distillation draws its batches from
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate
eval_examples: int = 128  # held-out dev examples the tables and accuracies are computed on
example: int = 0  # which of them the softened-distribution plot shows

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch.nn.functional as F

from makd.core import factorize as fz
from makd.notebook import views as ins
from makd.core.capture import CaptureSpec, capture
from makd.tasks.glue import tokenize_task
from makd.core.losses import logit_kd, prediction_loss
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import MaKDObjective
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
tuned, data = ins.task_teacher(teacher, task, data_dir=data_dir, seed=seed, epochs=teacher_epochs,
                               max_train=teacher_max_train, max_length=max_length)
if data.is_regression:
    raise ValueError(f"task {data.name} is a regression task: this notebook needs class logits (use a classification task)")
model, tok = tuned.model.to(device), tuned.tokenizer
n_layers = model.config.num_hidden_layers
batch = {k: v.to(device) for k, v in ins.eval_batch(data, tok, eval_examples, max_length).items()}
labels = batch["labels"]                                                    # (B,)
student = fz.factorize(model, layer_ratio=layer_ratio)
spec = CaptureSpec()                                                        # logits only
z_t = capture(model, batch, spec, grad=False).logits                       # (B, C)
z_s = capture(student, batch, spec, grad=False).logits                     # (B, C)
accuracy = lambda z: float((z.argmax(-1) == labels).float().mean())
show({"task": data.name, "proxy": data.is_proxy, "classes": ", ".join(data.label_names),
      "teacher accuracy (held-out batch)": accuracy(z_t), "SVD student accuracy, untrained": accuracy(z_s)})

# %% [markdown]
# ## Temperature
#
# The teacher's distribution $p_t=\mathrm{softmax}(z_t/t)$: at $t=1$ it is the model's own prediction, larger
# $t$ flattens it and exposes the relative sizes of the non-maximal logits ("dark knowledge").

# %%
soft = ins.softened(z_t[example], temperatures)                             # (t × class)
soft.columns = data.label_names
entropy = [float(-(F.softmax(z_t / t, -1) * F.log_softmax(z_t / t, -1)).sum(-1).mean()) for t in temperatures]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
soft.plot.bar(ax=axes[0], rot=0)
axes[0].set_xlabel("temperature t")
axes[0].set_ylabel("softmax(z_teacher / t)")
axes[0].set_title(f"held-out example {example}: gold '{data.label_names[int(labels[example])]}'")
axes[1].plot(temperatures, entropy, "o-")
axes[1].axhline(np.log(z_t.shape[-1]), ls="--", color="grey", label="uniform")
axes[1].set_xscale("log", base=2)
axes[1].set_xlabel("temperature t")
axes[1].set_ylabel("mean entropy of p_t (nats)")
axes[1].legend()
fig.suptitle("Softened teacher distributions")
savefig(fig, "softened_teacher_distributions", run_dir)
plt.show()

# %% [markdown]
# ## KL to the teacher vs gold cross-entropy
#
# The model term is $\alpha\,t^2\,\mathrm{KL}(p_t^{(t)}\,\|\,p_s^{(t)}) + (1-\alpha)\,\mathrm{CE}(z_s, y)$
# (Hinton et al.; α = 0.5 is our reconstructed default). We compute the KL by hand and assert it equals
# `makd.core.losses.logit_kd`, then tabulate both parts of `makd.core.losses.prediction_loss` for the untrained student.

# %%
rows = []
for t in temperatures:
    log_pt, log_ps = F.log_softmax(z_t / t, -1), F.log_softmax(z_s / t, -1)  # (B, C)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    assert np.isclose(float(t ** 2 * kl), float(logit_kd(z_s, z_t, temperature=t)), rtol=1e-5, atol=1e-8)
    total, parts = prediction_loss(z_s, z_t, labels, temperature=t, alpha=alpha)
    rows.append({"t": t, "KL": float(kl), "t²·KL (kd)": float(parts["kd"]), "gold CE": float(parts["ce"]),
                 "total": float(total)})
kl_vs_ce = pd.DataFrame(rows).set_index("t")
teacher_ce = float(F.cross_entropy(z_t, labels))
show(kl_vs_ce)
print(f"for reference: the teacher's own gold CE on this batch is {teacher_ce:.4f}")

# %% [markdown]
# ## Why t²
#
# The gradient of the KL with respect to the student's logits is $(p_s^{(t)}-p_t^{(t)})/t$, and for large t the
# difference itself shrinks like $1/t$: the raw gradient falls like $1/t^2$. Multiplying by $t^2$ keeps the
# soft-target term on the same scale as the gold CE whatever t is (`makd.notebook.views.kd_gradient_norms`).

# %%
grads = ins.kd_gradient_norms(z_s, z_t, temperatures)
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ax.loglog(grads["temperature"], grads["grad_norm_kl"], "o-", base=2, label="‖∂ KL / ∂z_s‖")
ax.loglog(grads["temperature"], grads["grad_norm_t2_kl"], "s-", base=2, label="‖∂ t²·KL / ∂z_s‖")
ax.set_xlabel("temperature t")
ax.set_ylabel("gradient norm")
ax.set_title("t² keeps the gradient scale of the KD term")
ax.legend()
savefig(fig, "kd_gradient_norm_vs_temperature", run_dir)
plt.show()
show(grads.set_index("temperature"))

# %% [markdown]
# ## A short logit-KD run
#
# The `model-only` preset of `makd.core.objective.MaKDObjective` (temperature `temperature`, weight `alpha`) trains
# the SVD student on the model term alone with `makd.core.trainer.DistillTrainer`; the log has both parts.

# %%
objective = MaKDObjective(n_layers, "model-only", temperature=temperature, alpha=alpha)
train, _ = tokenize_task(data, tok, max_length=max_length)
train = train.shuffle(seed=seed).select(range(min(len(train), max_train)))
history = ins.distill_steps(student, model, objective, train, tok, run_dir / "checkpoints" / "05_model",
                            max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
hist = ins.history_frame(history)
z_after = capture(student.to(device), batch, spec, grad=False).logits
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for col in [c for c in ("kd", "ce", "pred") if c in hist]:
    ax.plot(hist.index, hist[col], "o-", label={"kd": "t²·KL (kd)", "ce": "gold CE", "pred": "model term"}[col])
ax.set_xlabel("step")
ax.set_ylabel("loss (training batches)")
ax.set_title(f"Logit KD of the SVD student (t = {temperature}, α = {alpha})")
ax.legend()
savefig(fig, "model_distillation_kd_vs_ce", run_dir)
plt.show()
show({"teacher": accuracy(z_t), "student before": accuracy(z_s), f"student after {max_steps} steps": accuracy(z_after),
      "kd after (t)": float(logit_kd(z_after, z_t, temperature=temperature))})

# %%
metrics = {
    "teacher_accuracy_batch": accuracy(z_t),
    "student_accuracy_before": accuracy(z_s),
    "student_accuracy_after": accuracy(z_after),
    "kd_before": float(logit_kd(z_s, z_t, temperature=temperature)),
    "kd_after": float(logit_kd(z_after, z_t, temperature=temperature)),
    "gold_ce_before": float(F.cross_entropy(z_s, labels)),
    "gold_ce_after": float(F.cross_entropy(z_after, labels)),
    "teacher_gold_ce": teacher_ce,
    "kl_by_temperature": {str(t): float(v) for t, v in kl_vs_ce["KL"].items()},
    "grad_norm_ratio_t2_kl_max_over_min": float(grads["grad_norm_t2_kl"].max() / grads["grad_norm_t2_kl"].min()),
    "grad_norm_ratio_kl_max_over_min": float(grads["grad_norm_kl"].max() / grads["grad_norm_kl"].min()),
    "teacher_dev_metric": float(tuned.metrics[data.metric]),
    "temperature": temperature,
    "alpha": alpha,
    "steps": max_steps,
    "task": data.name,
    "is_proxy": data.is_proxy,
}
write_metrics(run_dir, "05_model_distillation", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, dict)})
