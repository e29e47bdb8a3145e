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
# # 04 · Matrix distillation: every factorised matrix imitates its dense original
#
# MHA (Q, K, V, O) and FFN module-output errors per layer between the teacher and its truncated-SVD
# student, on the student's own inputs vs the teacher's inputs (teacher forcing), before and after a short
# distillation on the matrix terms alone.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~45 s | tiny random BERT, GLUE SST-2 fixture (4 sentences), 2 steps |
# | demo (defaults) | ~3.5 min (teacher cached by notebook 02) | MiniLM-L6 fine-tuned on rt-polarity, 60 steps |
# | full | as demo (`task` picks a GLUE task from `data_dir`) | GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU recommended) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/04_matrix_distillation.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F04_matrix_distillation.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/04_matrix_distillation.json and figures/ are written there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # task the teacher is fine-tuned on: rt-polarity (embedded SST-2 proxy) or a GLUE task
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached: notebooks 02-06 and 08 share one teacher)
teacher_max_train: int | None = None  # teacher fine-tuning examples (None: the whole train split)
max_length: int = 64  # tokens per example
layer_ratio: float = 0.25  # student size: fraction of the teacher's matrix parameters kept by the factors
teacher_forcing: bool = False  # training: the student's matrices see the teacher's inputs (True) or their own
max_steps: int = 60  # distillation steps (matrix terms only)
max_train: int = 2000  # train examples the distillation draws its batches from
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate
eval_examples: int = 32  # held-out dev examples the tables are computed on
calibration_examples: int = 64  # training examples whose teacher inputs calibrate the whitened factorisation
descent_steps: int = 300  # Adam steps of the single-matrix descent towards the closed form

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.core import factorize as fz
from makd.notebook import closed_form as cf
from makd.notebook import views as ins
from makd.core.capture import CaptureSpec, capture
from makd.tasks.glue import tokenize_task
from makd.core.losses import matrix_ffn_loss, matrix_mha_loss
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import FFN, MHA, MaKDObjective
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
b = ins.bench(teacher, task, layer_ratio=layer_ratio, device=device, eval_examples=eval_examples,
              max_length=max_length, data_dir=data_dir, seed=seed, epochs=teacher_epochs, max_train=teacher_max_train)
tuned, data, model, tok, batch, student = b.tuned, b.data, b.model, b.tokenizer, b.batch, b.student
n_layers = model.config.num_hidden_layers
mask = batch["attention_mask"]                                             # (B, T)
show({"teacher": teacher, **b.summary()})

# %% [markdown]
# ## Module outputs, captured: own inputs vs teacher forcing
#
# `makd.core.capture` hooks every Q, K, V, O and FFN matrix. The matrix losses (our reconstruction of MaKD's
# matrix distillation) are $\mathcal L_\text{MHA}=\sum_{m\in\{Q,K,V,O\}}\mathrm{MSE}(y^s_m, y^t_m)$ and
# $\mathcal L_\text{FFN}=\sum_{m\in\{\text{in},\text{out}\}}\mathrm{MSE}(y^s_m, y^t_m)$. The student matrix may see
# **its own input** $x^s$ (errors of earlier layers accumulate in it) or **the teacher's input** $x^t$
# (teacher forcing: only this matrix's own truncation error remains). We compute both, and assert that the
# per-role MSEs sum to `makd.core.losses.matrix_mha_loss` / `matrix_ffn_loss`.

# %%
spec = CaptureSpec(matrix_layers=set(range(n_layers)), inputs=True)
t_cap = capture(model, batch, spec, grad=False)


def both(student_cap):
    """own-input and teacher-forced error tables of one student capture, stacked."""
    own = ins.module_output_errors(student_cap, t_cap, mask).assign(inputs="own")
    forced = ins.module_output_errors(student_cap, t_cap, mask, teacher_forced=True).assign(inputs="teacher")
    return pd.concat([own, forced], ignore_index=True)


before_cap = capture(student, batch, spec, grad=False)
before = both(before_cap)
own0 = before[before["inputs"] == "own"].set_index(["layer", "role"])["mse"]
for layer in range(n_layers):
    mha = float(matrix_mha_loss(before_cap.modules[layer], t_cap.modules[layer], mask, roles=MHA))
    ffn = float(matrix_ffn_loss(before_cap.modules[layer], t_cap.modules[layer], mask, roles=FFN))
    assert np.isclose(mha, own0.loc[layer].reindex(MHA).dropna().sum(), rtol=1e-5)
    assert np.isclose(ffn, own0.loc[layer].reindex(FFN).dropna().sum(), rtol=1e-5)
show(before.pivot_table(index=["layer"], columns=["inputs", "role"], values="rel_error"), digits=3)


# %%
def plot_errors(table, title, name):
    groups = ["MHA", "FFN"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    for ax, group in zip(axes, groups):
        sub = table[table["group"] == group].groupby(["inputs", "layer"])["rel_error"].mean()
        for inputs, style in (("own", "-o"), ("teacher", "--s")):
            ax.plot(sub.loc[inputs].index, sub.loc[inputs].values, style, label=f"{inputs} inputs")
        ax.set_title(f"{group} matrices")
        ax.set_xlabel("layer")
        ax.set_xticks(range(n_layers))
    axes[0].set_ylabel("‖y_s − y_t‖ / ‖y_t‖, mean over roles")
    axes[0].legend()
    fig.suptitle(title)
    savefig(fig, name, run_dir)
    plt.show()


plot_errors(before, "Module-output error of the SVD student before distillation", "matrix_errors_own_vs_forced_before")

# %% [markdown]
# ## The closed form: whitened SVD solves the teacher-forced matrix aspect
#
# With teacher forcing a matrix's loss depends on its own factors only:
# $\ell(AB)=\lVert (W-AB)X\rVert_F^2/\lVert WX\rVert_F^2$ over the teacher's inputs $X$. Writing the Gram matrix
# $G=XX^\top=SS^\top$ (Cholesky), $\ell(AB)=\lVert (W-AB)S\rVert_F^2/\lVert WS\rVert_F^2$, minimised over rank-$r$
# products by the truncated SVD of $WS$: $A=U_r\Sigma_r^{1/2}$, $B=\Sigma_r^{1/2}V_r^\top S^{-1}$ (SVD-LLM's
# truncation-aware whitening, `weighting="whiten"` in `makd.core.factorize`). So this aspect can be **solved at
# initialisation** instead of trained. Calibration: the teacher's inputs on training sentences; the table and the
# plot use the held-out batch.

# %%
train, _ = tokenize_task(data, tok, max_length=max_length)
train = train.shuffle(seed=seed).select(range(min(len(train), max_train)))
calibration = {k: v.to(device) for k, v in cf.calibration_batch(train, tok, calibration_examples).items()}
whitened = fz.factorize(model, layer_ratio=layer_ratio, weighting="whiten", calibration=calibration)
forced = cf.teacher_forced_losses(model, {"plain SVD": student, "whitened SVD": whitened}, batch)
show(forced.groupby("role")[["plain SVD", "whitened SVD"]].mean(), digits=4)

# %%
fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
per_layer = forced.groupby("layer")[["plain SVD", "whitened SVD"]].mean()
per_layer.plot.bar(ax=ax, logy=True, rot=0)
ax.set_ylabel("teacher-forced ‖(W − AB)X‖² / ‖WX‖², mean over matrices")
ax.set_title(f"Untrained students at layer ratio {layer_ratio}: plain vs whitened factors (held-out inputs)")
savefig(fig, "matrix_closed_form_plain_vs_whitened", run_dir)
plt.show()

# %% [markdown]
# Gradient descent on the same loss, for the matrix the plain SVD serves worst, starting from its plain factors:
# the trained matrix aspect heads for the closed-form optimum and cannot go below it.

# %%
worst = forced.sort_values("plain SVD").iloc[-1]
hist, ends = cf.matrix_descent(model, worst["module"], whitened.get_submodule(worst["module"]).rank, calibration,
                               steps=descent_steps)
fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
ax.plot(hist["step"], hist["loss"], label="Adam on (A, B), from the plain SVD")
ax.axhline(ends["whitened"], color="k", ls="--", label="closed form (whitened SVD)")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("teacher-forced relative loss")
ax.set_title(f"{worst['module']} (layer {worst['layer']}, {worst['role']})")
ax.legend()
savefig(fig, "matrix_closed_form_descent", run_dir)
plt.show()
assert ends["trained"] >= ends["whitened"] * (1 - 1e-6)
show(ends, digits=5)

# %% [markdown]
# ## A short distillation on the matrix terms alone
#
# The `all` preset with the attention, hidden-state and prediction terms switched off leaves
# $\mathcal L_\text{MHA}+\mathcal L_\text{FFN}$ on every layer (`teacher_forcing` chooses which inputs the
# student's matrices see during training).

# %%
objective = MaKDObjective(n_layers, "all", weights={"attn": 0.0, "hidn": 0.0, "pred": 0.0},
                          teacher_forcing=teacher_forcing)
show(objective.describe())
history = ins.distill_steps(student, model, objective, train, tok, run_dir / "checkpoints" / "04_matrix",
                            max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
show(ins.history_frame(history))

# %%
after = both(capture(student.to(device), batch, spec, grad=False))
plot_errors(after, f"Module-output error after {max_steps} steps of matrix distillation",
            "matrix_errors_own_vs_forced_after")
summary = pd.concat([before.assign(when="before"), after.assign(when="after")]).pivot_table(
    index=["group", "inputs"], columns="when", values="rel_error")[["before", "after"]]
show(summary)

# %%
def mean_err(table, group, inputs):
    return float(table[(table["group"] == group) & (table["inputs"] == inputs)]["rel_error"].mean())


metrics = {f"{g.lower()}_rel_error_{i}_{w}": mean_err(t, g, i) for g in ("MHA", "FFN") for i in ("own", "teacher")
           for w, t in (("before", before), ("after", after))}
metrics.update({
    "mha_mse_before": float(before[(before.group == "MHA") & (before.inputs == "own")]["mse"].sum()),
    "mha_mse_after": float(after[(after.group == "MHA") & (after.inputs == "own")]["mse"].sum()),
    "ffn_mse_before": float(before[(before.group == "FFN") & (before.inputs == "own")]["mse"].sum()),
    "ffn_mse_after": float(after[(after.group == "FFN") & (after.inputs == "own")]["mse"].sum()),
    "teacher_forcing": teacher_forcing,
    "tf_loss_plain": float(forced["plain SVD"].mean()),
    "tf_loss_whitened": float(forced["whitened SVD"].mean()),
    "descent_plain": ends["plain"],
    "descent_trained": ends["trained"],
    "descent_whitened": ends["whitened"],
    "teacher_dev_metric": float(tuned.metrics[data.metric]),
    "steps": max_steps,
    "layer_ratio": layer_ratio,
    "task": data.name,
    "is_proxy": data.is_proxy,
})
write_metrics(run_dir, "04_matrix_distillation", metrics)
show(metrics)
