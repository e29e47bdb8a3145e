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
# # 02 · Attention distillation: KL between the teacher's and the student's attention maps
#
# Teacher vs truncated-SVD student attention maps as heat maps, and KL(teacher ‖ student) per head and
# layer, before and after a short distillation on the attention term alone (layer distillation, part 1).
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~55 s | tiny random BERT, GLUE SST-2 fixture (4 sentences), 2 steps |
# | demo (defaults) | ~3.5 min with the teacher cached; its first fine-tuning (whole rt-polarity train split, 1 epoch) adds ~11 min | MiniLM-L6 fine-tuned on rt-polarity, 60 steps |
# | full | as demo (`task` picks a GLUE task from `data_dir`) | GLUE train/dev files |
# | paper | not measured (BERT-base from the hub; GPU recommended) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/02_attention_distillation.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F02_attention_distillation.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (teacher fine-tuning, data order, training)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/02_attention_distillation.json and figures/ are written there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # task the teacher is fine-tuned on: rt-polarity (embedded SST-2 proxy) or a GLUE task
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
teacher_epochs: float = 1.0  # teacher fine-tuning epochs (cached: notebooks 02-06 and 08 share one teacher)
teacher_max_train: int | None = None  # teacher fine-tuning examples (None: the whole train split)
max_length: int = 64  # tokens per example
layer_ratio: float = 0.25  # student size: fraction of the teacher's matrix parameters kept by the factors
max_steps: int = 60  # distillation steps (attention term only)
max_train: int = 2000  # train examples the distillation draws its batches from
batch_size: int = 16  # distillation batch size
lr: float = 2e-4  # distillation learning rate
eval_examples: int = 32  # held-out dev examples the KL tables are computed on
example: int = 0  # which of them the heat maps show
heads: list[int] = [0, 1, 2]  # heads shown in the heat maps
show_layer: int = 3  # layer shown in the heat maps (-1: the last; taken modulo the number of layers)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.notebook import views as ins
from makd.core.capture import CaptureSpec, capture
from makd.tasks.glue import tokenize_task
from makd.core.losses import attention_kl
from makd.notebook.helpers import show, start, write_metrics
from makd.core.objective import MaKDObjective
from makd.notebook.plotting import savefig

run_dir, device = start(run_dir, seed, device)
b = ins.bench(teacher, task, layer_ratio=layer_ratio, device=device, eval_examples=eval_examples,
              max_length=max_length, data_dir=data_dir, seed=seed, epochs=teacher_epochs, max_train=teacher_max_train)
tuned, data, model, tok, batch, student = b.tuned, b.data, b.model, b.tokenizer, b.batch, b.student
n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
show_layer = show_layer % n_layers
if not all(0 <= h < n_heads for h in heads):
    raise ValueError(f"heads={heads}: the teacher has {n_heads} heads (0..{n_heads - 1})")
mask = batch["attention_mask"]                                             # (B, T)
show({"teacher": teacher, **b.summary()})

# %% [markdown]
# ## Attention probabilities, captured
#
# `makd.core.capture` hooks Q and K of every layer and recomputes $P=\mathrm{softmax}(QK^\top/\sqrt{d_h}+M)$
# (M masks padded keys), so the model keeps its fast attention kernel. Each row of P is a distribution
# over keys. The layer loss (MiniLM form, our reconstructed default) is
# $\mathcal L_\text{attn}=\frac1{H N_q}\sum_{h,q}\mathrm{KL}(P^t_{hq}\,\|\,P^s_{hq})$ over valid queries.
# We compute one layer's KL by hand and assert it equals `makd.core.losses.attention_kl`.

# %%
spec = CaptureSpec(attention_layers=set(range(n_layers)))
t_cap = capture(model, batch, spec, grad=False)
before_cap = capture(student, batch, spec, grad=False)
p_t, p_s = t_cap.attentions[show_layer], before_cap.attentions[show_layer]   # (B, H, T, T)
valid = mask.bool()
kl_rows = (p_t * (p_t.clamp_min(1e-12).log() - p_s.clamp_min(1e-12).log())).sum(-1)   # (B, H, T)
by_hand = kl_rows[valid[:, None, :].expand_as(kl_rows)].mean()
assert np.isclose(float(by_hand), float(attention_kl(p_s, p_t, mask)), rtol=1e-4, atol=1e-7)
before = ins.attention_kl_table(before_cap, t_cap, mask)                   # (layer × head)
show(before.assign(mean=before.mean(axis=1)))

# %% [markdown]
# ## A short distillation on the attention term alone
#
# The `layer-only` preset of `makd.core.objective.MaKDObjective` with the hidden-state and prediction terms
# switched off leaves $\mathcal L_\text{attn}$ on every layer; `makd.core.trainer.DistillTrainer` trains the
# student with it for `max_steps` steps.

# %%
objective = MaKDObjective(n_layers, "layer-only", weights={"hidn": 0.0, "pred": 0.0})
show(objective.describe())
train, _ = tokenize_task(data, tok, max_length=max_length)
train = train.shuffle(seed=seed).select(range(min(len(train), max_train)))
history = ins.distill_steps(student, model, objective, train, tok, run_dir / "checkpoints" / "02_attention",
                            max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
show(ins.history_frame(history))

# %%
after_cap = capture(student.to(device), batch, spec, grad=False)
after = ins.attention_kl_table(after_cap, t_cap, mask)
fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * n_layers + 2), sharey=True)
vmax = float(max(before.values.max(), after.values.max()))
for ax, (label, table) in zip(axes, [("before", before), (f"after {max_steps} steps", after)]):
    im = ax.imshow(table.values, cmap="magma", vmin=0, vmax=vmax, aspect="auto")
    ax.set_title(label)
    ax.set_xlabel("head")
    ax.set_xticks(range(n_heads))
    ax.grid(False)
axes[0].set_ylabel("layer")
axes[0].set_yticks(range(n_layers))
fig.colorbar(im, ax=axes, shrink=0.8)
fig.suptitle("KL(teacher ‖ student) of attention probabilities, per layer and head")
savefig(fig, "attention_kl_per_head_layer_before_after", run_dir)
plt.show()
show(pd.DataFrame({"before": before.mean(axis=1), "after": after.mean(axis=1)}))  # L_attn per layer

# %% [markdown]
# ## The maps themselves
#
# One held-out sentence, layer `show_layer`: teacher, SVD student before distillation, and after.

# %%
n_tok = int(mask[example].sum())
tokens = tok.convert_ids_to_tokens(batch["input_ids"][example][:n_tok].tolist())
maps = {"teacher": t_cap, "student before": before_cap, "student after": after_cap}
fig, axes = plt.subplots(len(maps), len(heads), figsize=(3.4 * len(heads), 3.3 * len(maps)), squeeze=False,
                         layout="constrained")
labels = tokens if n_tok <= 32 else [""] * n_tok
for j, h in enumerate(heads):
    vmax = float(t_cap.attentions[show_layer][example, h, :n_tok, :n_tok].max())  # the teacher's scale per head
    for i, (label, cap) in enumerate(maps.items()):
        ax = axes[i, j]
        im = ax.imshow(cap.attentions[show_layer][example, h, :n_tok, :n_tok].float().cpu().numpy(), cmap="viridis",
                       vmin=0, vmax=vmax)
        ax.set_title(f"{label}, head {h}", fontsize=9)
        ax.grid(False)
        ax.set_xticks(range(n_tok), labels if i == len(maps) - 1 else [""] * n_tok, rotation=90, fontsize=6)
        ax.set_yticks(range(n_tok), labels if j == 0 else [""] * n_tok, fontsize=6)
    fig.colorbar(im, ax=axes[:, j], shrink=0.6)
fig.suptitle(f"Attention probabilities, layer {show_layer} (rows: queries, columns: keys)")
savefig(fig, "attention_maps_teacher_vs_student", run_dir)
plt.show()

# %%
metrics = {
    "attn_kl_before": float(before.values.mean()),
    "attn_kl_after": float(after.values.mean()),
    "attn_kl_per_layer_before": [float(v) for v in before.mean(axis=1)],
    "attn_kl_per_layer_after": [float(v) for v in after.mean(axis=1)],
    "teacher_dev_metric": float(tuned.metrics[data.metric]),
    "steps": max_steps,
    "layer_ratio": layer_ratio,
    "task": data.name,
    "is_proxy": data.is_proxy,
}
write_metrics(run_dir, "02_attention_distillation", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, list)})
