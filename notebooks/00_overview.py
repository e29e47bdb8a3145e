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
# # 00 · Overview: multi-aspect knowledge distillation into low-rank students
#
# What MaKD does, which of its choices this package had to reconstruct, and where each piece lives
# (notebooks and `makd/` modules), with a figure of the hierarchy: which aspect is distilled at which layer.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~7 s | nothing but this notebook (4 layers drawn) |
# | demo (defaults) | ~7 s | the MiniLM-L6 teacher's shape (6 layers) |
# | full | ~7 s | same as demo |
# | paper | ~7 s | BERT-base's shape (12 layers) |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/00_overview.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F00_overview.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (nothing random here; every notebook declares it)
device: str = "auto"  # "auto", "cpu" or "cuda" (unused here; every notebook declares it)
run_dir: str = "runs/demo"  # run folder: metrics/00_overview.json and figures/ are written there
n_layers: int = 6  # teacher depth drawn in the hierarchy figure (MiniLM-L6: 6, BERT-base: 12)
hierarchy: str = "matrix_shallow"  # "matrix_shallow" (default), "matrix_deep" (inverted) or "all"
d_model: int = 384  # hidden size for the storage table (MiniLM-L6: 384, BERT-base: 768)
d_ffn: int = 1536  # FFN size for the storage table (MiniLM-L6: 1536, BERT-base: 3072)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from makd.notebook.helpers import NOTEBOOKS_DIR, package_map, read_notebook, show, start, title, write_metrics
from makd.notebook.plotting import savefig

if hierarchy not in ("matrix_shallow", "matrix_deep", "all"):
    raise ValueError(f"hierarchy={hierarchy!r}: use 'matrix_shallow', 'matrix_deep' or 'all'")
if n_layers < 2:
    raise ValueError(f"n_layers={n_layers}: draw at least 2 layers (one shallow, one deep)")
run_dir, device = start(run_dir, seed, device)
run_dir

# %% [markdown]
# ## The method in one picture
#
# A **teacher** Transformer is compressed into a **student with the teacher's own architecture** whose
# every weight matrix is replaced by two thin factors from a truncated SVD,
# $W = U\Sigma V^\top \approx A B$ with $A = U_r\Sigma_r^{1/2}$, $B = \Sigma_r^{1/2}V_r^\top$, so a
# $d_\text{out}\times d_\text{in}$ matrix costs $r(d_\text{in}+d_\text{out})$ instead of
# $d_\text{in}d_\text{out}$. The student is then trained to imitate the teacher at three granularities:
#
# | granularity | loss | what is compared |
# |---|---|---|
# | **matrix** | $\mathcal L_\text{matrix} = \mathcal L_\text{MHA} + \mathcal L_\text{FFN}$ | outputs of each factorised matrix (Q, K, V, O; FFN in/out) vs the teacher's dense ones (MSE) |
# | **layer** | $\mathcal L_\text{layer} = \mathcal L_\text{attn} + \mathcal L_\text{hidn}$ | attention probabilities (KL) and hidden states (MSE) |
# | **model** | $\mathcal L_\text{model}$ | output distribution (KL at temperature $t$, plus gold cross-entropy) |
#
# The paper combines them in a **hierarchical objective that assigns aspects to shallow vs deep layers**.

# %% [markdown]
# ## Known vs reconstructed
#
# The paper's full text and code are not public (see `docs/METHOD.md`). Known: the three granularities,
# SVD initialisation, the rank $r$ as the free parameter, the hierarchy over shallow/deep layers, the
# baselines and benchmarks. **Reconstructed by this package** (configurable, tested in `07_ablations`):
#
# - the student keeps the teacher's depth/width/heads, all MHA and FFN matrices factorised, budgets in total parameters;
# - matrix distillation = MSE between factorised and dense matrix outputs (student or teacher input: a switch);
# - layer distillation = KL on attention *probabilities* per head (MiniLM form) + MSE on hidden states;
# - model distillation = KL at temperature $t$ (× $t^2$) + gold CE; token-level KL on responses for decoders;
# - **hierarchy default: matrix aspects on the shallow half, layer aspects on the deep half, model at the top**
#   (alternatives: inverted, all aspects everywhere). The figure below draws the chosen `hierarchy`.

# %%
ASPECTS = ["MHA (matrix)", "FFN (matrix)", "attention (layer)", "hidden (layer)", "output (model)"]


def aspect_grid(n_layers: int, hierarchy: str) -> np.ndarray:
    """(L, 5) 0/1 grid: which aspect is distilled at which layer (illustration of the reconstructed options)."""
    shallow = np.arange(n_layers) < n_layers // 2  # (L,)
    matrix_on = {"matrix_shallow": shallow, "matrix_deep": ~shallow, "all": np.ones(n_layers, bool)}[hierarchy]
    layer_on = ~matrix_on if hierarchy != "all" else matrix_on
    model_on = np.arange(n_layers) == n_layers - 1  # the output distribution sits on top of the last layer
    return np.stack([matrix_on, matrix_on, layer_on, layer_on, model_on], axis=1).astype(int)  # (L, 5)


grid = aspect_grid(n_layers, hierarchy)  # (L, 5)
fig, ax = plt.subplots(figsize=(6.4, 0.45 * n_layers + 1.6))
ax.imshow(grid[::-1], cmap="Blues", vmin=0, vmax=1.4, aspect="auto")
ax.set_xticks(range(len(ASPECTS)), ASPECTS, rotation=25, ha="right")
ax.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers, 0, -1)])
ax.grid(False)
for (i, j), on in np.ndenumerate(grid[::-1]):
    ax.text(j, i, "✓" if on else "", ha="center", va="center", fontsize=12)
ax.set_title(f"Aspects per layer — hierarchy '{hierarchy}' ({n_layers} layers)")
figure_paths = savefig(fig, "hierarchy_layers_x_aspects", run_dir)
plt.show()

# %% [markdown]
# ## What a rank costs
#
# Storage of one factorised matrix relative to the dense one, for the two matrix shapes of the teacher, and
# the break-even rank $r^* = d_\text{in}d_\text{out}/(d_\text{in}+d_\text{out})$ above which factorising
# stops saving anything.

# %%
shapes = {"attention (d × d)": (d_model, d_model), "FFN (d × 4d)": (d_model, d_ffn)}
ranks = [r for r in (16, 32, 64, 128, 192, 256) if r < d_model]
rows = []
for label, (d_in, d_out) in shapes.items():
    row = {"matrix": f"{label}: {d_in}×{d_out}", "break-even r*": d_in * d_out / (d_in + d_out)}
    row.update({f"r={r}": r * (d_in + d_out) / (d_in * d_out) for r in ranks})
    rows.append(row)
show(pd.DataFrame(rows).set_index("matrix"), digits=3)

# %% [markdown]
# ## Map of the notebooks and of `makd/`
#
# Run them in order (`python -m makd reproduce --profile demo`); each reads only files written by the
# earlier ones into `run_dir`. The table marks which notebooks exist in this checkout.

# %%
PLAN = {
    "00_overview": "this notebook: method, reconstructed choices, map",
    "01_svd_decomposition": "truncated SVD of the teacher's matrices, error vs rank, budgets",
    "02_attention_distillation": "layer aspect 1: KL on attention probabilities",
    "03_hidden_state_distillation": "layer aspect 2: MSE on hidden states",
    "04_matrix_distillation": "matrix aspects: MHA and FFN module outputs",
    "05_model_distillation": "model aspect: output distribution (KL at temperature)",
    "06_hierarchical_training": "the hierarchical objective end to end",
    "07_ablations": "which aspects, where; rank; the low-rank-only control",
    "08_glue": "GLUE dev vs DistilBERT/TinyBERT/MiniLM at equal storage",
    "09_squad": "SQuAD v1.1 / v2.0 EM/F1",
    "10_decoder_rouge": "decoder distillation, Rouge-L vs KD / SeqKD",
    "90_results": "paper-vs-ours tables from the metrics JSON",
}
present = {p.stem: p for p in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))} if NOTEBOOKS_DIR.is_dir() else {}
notebook_map = pd.DataFrame(
    [{"notebook": s, "shows": what, "present": s in present,
      "title": title(read_notebook(present[s])) if s in present else ""} for s, what in PLAN.items()]
    + [{"notebook": s, "shows": "(not in the plan)", "present": True, "title": title(read_notebook(p))}
       for s, p in present.items() if s not in PLAN]
).set_index("notebook")
show(notebook_map)

# %% [markdown]
# `makd/` is laid out by role, in layers (lowest first); a module imports only from its own layer or a lower
# one, so the method never depends on notebooks or command lines (`tests/test_architecture.py` checks it):
#
# - **core** — the method: low-rank modules, factorisation, capture, the losses, the objective, the trainer,
#   checkpoints; it imports nothing else of the package;
# - **assets** — where models and data come from (cache, pinned downloads, model loading);
# - **tasks** — data, metrics and the fine-tuned teacher per task (GLUE, SQuAD, instruction data);
# - **experiments** — the runs behind `python -m makd distill | squad | decoder | grid | stats | results`;
# - **notebook** — what these notebooks stand on: the runner, profiles, helpers, plotting, views;
# - **cli** — `python -m makd COMMAND`, the one command-line module.
#
# The table is read from the modules themselves (`makd.notebook.helpers.package_map`: every module, with the
# first paragraph of its docstring), so it always matches the checkout.

# %%
modules = package_map()  # columns: layer, module, what; rows by layer, lowest first
with pd.option_context("display.max_colwidth", 120):
    show(modules.set_index(["layer", "module"]))

# %%
metrics = {
    "n_layers": n_layers,
    "n_aspects": len(ASPECTS),
    "aspect_layer_pairs": int(grid.sum()),
    "fraction_layers_matrix": float(grid[:, 0].mean()),
    "fraction_layers_layer": float(grid[:, 2].mean()),
    "break_even_rank_attention": d_model * d_model / (2 * d_model),
    "break_even_rank_ffn": d_model * d_ffn / (d_model + d_ffn),
    "notebooks_present": len(present),
    "modules": len(modules),
    "layers": int(modules.layer[modules.layer != "package"].nunique()),
    "figures": [p.name for p in figure_paths],
}
write_metrics(run_dir, "00_overview", metrics)
show({k: v for k, v in metrics.items() if k != "figures"})
