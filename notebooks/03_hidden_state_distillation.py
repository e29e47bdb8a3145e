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
# # 03 · Hidden-state distillation: MSE between the teacher's and the student's hidden states
#
# Hidden-state MSE per layer between the teacher and its truncated-SVD student, before and after a
# short distillation on the hidden-state term alone (layer distillation, part 2), and what it does to
# the attention KL of notebook 02.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~40 s | tiny random BERT, GLUE SST-2 fixture (4 sentences), 2 steps |
# | demo (defaults) | ~2.5 min (teacher cached by notebook 02) | MiniLM-L6 fine-tuned on rt-polarity, 60 steps |
# | full | as demo (`task` picks a GLUE task from `data_dir`) | GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU recommended) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/03_hidden_state_distillation.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F03_hidden_state_distillation.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/03_hidden_state_distillation.json and figures/ are written there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # task the teacher is fine-tuned on: rt-polarity (embedded SST-2 proxy) or a GLUE task
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached: notebooks 02-06 and 08 share one teacher)
teacher_max_train: int | None = None  # teacher fine-tuning examples (None: the whole train split)
max_length: int = 64  # tokens per example
layer_ratio: float = 0.25  # student size: fraction of the teacher's matrix parameters kept by the factors
max_steps: int = 60  # distillation steps (hidden-state term only)
max_train: int = 2000  # train examples the distillation draws its batches from
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate
eval_examples: int = 32  # held-out dev examples the tables are computed on

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.notebook import views as ins
from makd.core.capture import CaptureSpec, capture
from makd.tasks.glue import tokenize_task
from makd.core.losses import hidden_mse
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import MaKDObjective
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
b = ins.bench(teacher, task, layer_ratio=layer_ratio, device=device, eval_examples=eval_examples,
              max_length=max_length, data_dir=data_dir, seed=seed, epochs=teacher_epochs, max_train=teacher_max_train)
tuned, data, model, tok, batch, student = b.tuned, b.data, b.model, b.tokenizer, b.batch, b.student
n_layers = model.config.num_hidden_layers
mask = batch["attention_mask"]                                             # (B, T)
show({"teacher": teacher, **b.summary()})

# %% [markdown]
# ## Hidden states, captured
#
# Hidden state 0 is the embedding output, hidden state i + 1 the output of layer i. The student keeps the
# teacher's width, so no projection is needed: $\mathcal L_\text{hidn}=\frac1{N D}\sum_{\text{valid }b,t}
# \lVert h^s_{bt}-h^t_{bt}\rVert^2$. We compute it by hand for the last layer and assert it equals
# `makd.core.losses.hidden_mse`. The relative error $\lVert h^s-h^t\rVert/\lVert h^t\rVert$ makes layers comparable.

# %%
spec = CaptureSpec(hidden_layers=set(range(n_layers + 1)), attention_layers=set(range(n_layers)))
t_cap = capture(model, batch, spec, grad=False)
before_cap = capture(student, batch, spec, grad=False)
h_t, h_s = t_cap.hidden[n_layers], before_cap.hidden[n_layers]             # (B, T, D)
valid = mask.bool()
by_hand = ((h_s - h_t) ** 2)[valid].mean()                                  # mean over valid tokens and D
assert np.isclose(float(by_hand), float(hidden_mse(h_s, h_t, mask)), rtol=1e-5)
before = ins.hidden_mse_table(before_cap, t_cap, mask)
show(before)  # the embeddings are not factorised: hidden state 0 matches exactly

# %% [markdown]
# ## A short distillation on the hidden-state term alone
#
# The `layer-only` preset with the attention and prediction terms switched off: MSE on the embedding output
# and on every layer's output, trained with `makd.core.trainer.DistillTrainer`.

# %%
objective = MaKDObjective(n_layers, "layer-only", weights={"attn": 0.0, "pred": 0.0})
show(objective.describe())
train, _ = tokenize_task(data, tok, max_length=max_length)
train = train.shuffle(seed=seed).select(range(min(len(train), max_train)))
history = ins.distill_steps(student, model, objective, train, tok, run_dir / "checkpoints" / "03_hidden",
                            max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
show(ins.history_frame(history))

# %%
after_cap = capture(student.to(device), batch, spec, grad=False)
after = ins.hidden_mse_table(after_cap, t_cap, mask)
fig, ax = plt.subplots(figsize=(6.4, 3.8))
x = np.arange(len(before))
ax.bar(x - 0.2, before["rel_error"], 0.4, label="before")
ax.bar(x + 0.2, after["rel_error"], 0.4, label=f"after {max_steps} steps")
ax.set_xticks(x, ["emb"] + [f"L{i}" for i in range(n_layers)])
ax.set_ylabel("‖h_student − h_teacher‖ / ‖h_teacher‖")
ax.set_title("Hidden-state error per layer (held-out sentences)")
ax.legend()
savefig(fig, "hidden_state_error_per_layer_before_after", run_dir)
plt.show()
show(pd.DataFrame({"mse before": before["mse"].to_numpy(), "mse after": after["mse"].to_numpy(),
                   "rel before": before["rel_error"].to_numpy(), "rel after": after["rel_error"].to_numpy()},
                  index=before["after"]))

# %% [markdown]
# ## A side effect: attention
#
# The loss never saw an attention map. Does matching hidden states also move the attention distributions
# toward the teacher's? KL(teacher ‖ student) per layer, mean over heads, before and after.

# %%
attn = pd.DataFrame({"KL before": ins.attention_kl_table(before_cap, t_cap, mask).mean(axis=1),
                     "KL after hidden-only training": ins.attention_kl_table(after_cap, t_cap, mask).mean(axis=1)})
show(attn)

# %%
metrics = {
    "hidden_mse_before": float(before["mse"].iloc[1:].mean()),
    "hidden_mse_after": float(after["mse"].iloc[1:].mean()),
    "last_hidden_rel_error_before": float(before["rel_error"].iloc[-1]),
    "last_hidden_rel_error_after": float(after["rel_error"].iloc[-1]),
    "hidden_mse_per_layer_before": [float(v) for v in before["mse"]],
    "hidden_mse_per_layer_after": [float(v) for v in after["mse"]],
    "attn_kl_before": float(attn.iloc[:, 0].mean()),
    "attn_kl_after": float(attn.iloc[:, 1].mean()),
    "teacher_dev_metric": float(tuned.metrics[data.metric]),
    "steps": max_steps,
    "layer_ratio": layer_ratio,
    "task": data.name,
    "is_proxy": data.is_proxy,
}
write_metrics(run_dir, "03_hidden_state_distillation", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, list)})
