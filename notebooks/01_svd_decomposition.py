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
# # 01 · SVD decomposition: from the teacher's matrices to a low-rank student
#
# The equivalent form W = UΣVᵀ of every attention and FFN matrix of the teacher, their singular-value
# spectra per layer, the truncation error against the Eckart–Young bound, the parameter-budget solver,
# and plain vs activation-aware factorisation measured on held-out inputs.
#
# Runtimes measured on a shared 2-core machine under heavy load (load average 7–11); expect less on an idle one.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~50 s | tiny random BERT (2 layers × 32), GLUE SST-2 fixture sentences |
# | demo (defaults) | ~1.7 min | the embedded MiniLM-L6 teacher (6 layers × 384), rt-polarity sentences |
# | full | ~1.7 min | same as demo (`task` picks a GLUE task's sentences from `data_dir`) |
# | paper | not measured (BERT-base, 12 layers × 768, from the hub) | the paper's teacher |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/01_svd_decomposition.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F01_svd_decomposition.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (calibration/held-out sentences are the first rows, nothing else is random)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/01_svd_decomposition.json and figures/ are written there
teacher: str = "minilm-l6"  # teacher: embedded name (minilm-l6), tiny-bert (smoke), local folder or hub id
task: str = "rt-polarity"  # where the calibration and held-out sentences come from (rt-polarity or a GLUE task)
data_dir: str | None = None  # folder with glue/<TASK>/ files (None: embedded rt-polarity / $MAKD_DATA_DIR)
rank_fractions: list[float] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]  # ranks swept, as fractions of each matrix's full rank
budgets: list[float] = [0.9, 0.8, 0.7, 0.6]  # total-parameter budgets (fractions of the teacher) for the solver
layer_ratio: float = 0.25  # student size for plain vs activation-aware SVD (fraction of matrix parameters kept)
calib_examples: int = 64  # train sentences used to calibrate the activation-aware SVD
eval_examples: int = 64  # held-out dev sentences the output errors are measured on
max_length: int = 64  # tokens per sentence

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from makd.core import factorize as fz
from makd.notebook import views as ins
from makd.core.capture import CaptureSpec, capture
from makd.tasks.glue import load_task
from makd.assets.models import load_model
from makd.notebook.helpers import show, start, write_metrics
from makd.notebook.plotting import savefig

if not rank_fractions or not all(0 < f <= 1 for f in rank_fractions):
    raise ValueError(f"rank_fractions={rank_fractions}: give fractions in (0, 1]")
run_dir, device = start(run_dir, seed, device)
model, tok = load_model(teacher, head="base")
model.to(device)
n_layers = model.config.num_hidden_layers
print(f"{teacher}: {fz.count_parameters(model):,} parameters, {n_layers} layers, hidden {model.config.hidden_size}")

# %% [markdown]
# ## The equivalent form W = UΣVᵀ
#
# Any weight matrix $W\in\mathbb R^{d_\text{out}\times d_\text{in}}$ equals $U\Sigma V^\top$ exactly. MaKD's
# student keeps the top $r$ singular directions as two factors $A = U_r\Sigma_r^{1/2}$ and
# $B = \Sigma_r^{1/2}V_r^\top$. We re-derive the factors of one matrix by hand and check them against
# `makd.core.factorize.LowRankLinear.from_linear` (which does it in float64).

# %%
name = next(iter(fz.targets(model)))
lin = model.get_submodule(name)
W = fz.dense_weight(lin).detach().double()                               # (d_out, d_in)
U, S, Vh = torch.linalg.svd(W, full_matrices=False)                       # (o, k), (k,), (k, i)
assert torch.allclose(U @ torch.diag(S) @ Vh, W, atol=1e-10), "the SVD is an exact, equivalent form"
r = max(1, W.shape[1] // 4)
A, B = U[:, :r] * S[:r].sqrt(), S[:r, None].sqrt() * Vh[:r]               # (d_out, r), (r, d_in)
mine = fz.LowRankLinear.from_linear(lin, r)
assert torch.allclose(mine.dense_weight().double(), A @ B, atol=1e-5), "hand-made factors == makd's"
show({"matrix": name, "shape": f"{W.shape[0]}x{W.shape[1]}", "rank kept": r,
      "dense params": W.numel(), "factor params": r * sum(W.shape),
      "‖W − AB‖/‖W‖": float(torch.linalg.norm(W - A @ B) / torch.linalg.norm(W))})

# %% [markdown]
# ## Singular-value spectra per layer and matrix
#
# How fast σᵢ decays decides how much a rank cut costs. Each panel is one role (Q, K, V, O, FFN in, FFN out);
# each line one layer, normalised by σ₁ and plotted against i / full rank.

# %%
spec = ins.spectra(model)                                                  # one row per matrix, sigma column
roles = list(dict.fromkeys(spec["role"]))
fig, axes = plt.subplots(2, (len(roles) + 1) // 2, figsize=(11, 6.0), sharey=True, layout="constrained")
cmap = plt.get_cmap("viridis", n_layers)
for ax, role in zip(axes.flat, roles):
    for _, row in spec[spec["role"] == role].iterrows():
        s = row["sigma"]
        ax.semilogy(np.arange(1, len(s) + 1) / len(s), s / s[0], color=cmap(row["layer"]), lw=1.2,
                    label=f"layer {row['layer']}")
    ax.set_title(f"{role} ({spec[spec['role'] == role]['shape'].iloc[0]})")
for ax in axes[-1]:
    ax.set_xlabel("i / full rank")
axes.flat[0].set_ylabel("σᵢ / σ₁")
axes.flat[0].legend(fontsize=7, ncol=2)
for ax in list(axes.flat)[len(roles):]:
    ax.set_visible(False)
fig.suptitle(f"Singular-value spectra of {teacher}'s matrices")
savefig(fig, "svd_spectra_per_layer", run_dir)
plt.show()

# %%
spec["rank_90pct_energy"] = [ins.energy_rank(s, 0.90) for s in spec["sigma"]]
spec["rank_99pct_energy"] = [ins.energy_rank(s, 0.99) for s in spec["sigma"]]
energy = spec.pivot_table(index="layer", columns="role", values="rank_90pct_energy").astype(int)
show(energy)  # rank needed to keep 90 % of ‖W‖_F² (out of full_rank)

# %% [markdown]
# ## Error vs rank against the Eckart–Young bound
#
# The best rank-r approximation in Frobenius norm is the truncated SVD, with relative error
# $e(r)=\sqrt{\sum_{i>r}\sigma_i^2/\sum_i\sigma_i^2}$. We build the student with `makd.core.factorize.factorize`
# at each rank fraction, read its per-matrix error from `makd.core.factorize.report`, and assert it IS the bound.

# %%
rows = []
for frac in rank_fractions:
    student = fz.factorize(model, rank=float(frac))                       # rank = round(frac · full rank)
    rep = fz.report(student, model).set_index("module")
    for _, row in spec.iterrows():
        got = rep.loc[row["module"]]
        bound = ins.eckart_young_error(row["sigma"], [int(got["rank"])])[0]
        rows.append({"fraction": frac, "layer": row["layer"], "role": row["role"], "rank": int(got["rank"]),
                     "rel_error": got["rel_error"], "eckart_young": bound, "energy_kept": got["energy_kept"]})
errors = pd.DataFrame(rows)
np.testing.assert_allclose(errors["rel_error"], errors["eckart_young"], rtol=1e-3, atol=2e-5)  # makd == bound
show(errors.pivot_table(index="fraction", columns="role", values="rel_error"))  # mean over layers

# %%
fig, ax = plt.subplots(figsize=(6.4, 4.0))
grid = np.linspace(0, 1, 101)
for i, role in enumerate(roles):
    rows_r = spec[spec["role"] == role]
    curve = np.mean([ins.eckart_young_error(s, np.round(grid * len(s)).astype(int)) for s in rows_r["sigma"]], 0)
    ax.plot(grid, curve, color=f"C{i}", lw=1.2, label=f"{role}: Eckart–Young bound")
    pts = errors[errors["role"] == role].groupby("fraction")["rel_error"].mean()
    ax.plot(pts.index, pts.values, "o", color=f"C{i}", ms=5)
ax.set_xlabel("rank / full rank")
ax.set_ylabel("‖W − AB‖_F / ‖W‖_F (mean over layers)")
ax.set_title("Truncation error: makd.core.factorize (dots) on the bound (lines)")
ax.legend(fontsize=7)
savefig(fig, "svd_error_vs_rank_eckart_young", run_dir)
plt.show()

# %% [markdown]
# ## The budget solver
#
# Students are sized in **total parameters** (embeddings included, as the baselines count them).
# `makd.core.factorize.solve_ranks` finds one uniform fraction α of each matrix's break-even rank
# $r^*=d_\text{in}d_\text{out}/(d_\text{in}+d_\text{out})$ that meets the budget within 0.5 %;
# `factorize(budget=...)` builds that student.

# %%
total = fz.count_parameters(model)
print(f"teacher {total:,} parameters; smallest reachable student {fz.floor_parameters(model):,} "
      f"({fz.floor_parameters(model) / total:.3f} of the teacher)")
solved = []
for b in budgets:
    ranks = fz.solve_ranks(model, budget=float(b))
    student = fz.factorize(model, budget=float(b))
    tot = fz.report_totals(student, model)
    roles_of = fz.targets(model)
    by_role = pd.Series({n: r for n, r in ranks.items()}).groupby(lambda n: roles_of[n]["role"]).mean()
    solved.append({"budget": b, "student_params": tot["student_params"], "ratio": tot["ratio"],
                   "layer_ratio": tot["layer_ratio"], **{f"r_{k}": v for k, v in by_role.items()}})
solved = pd.DataFrame(solved).set_index("budget")
assert (abs(solved["ratio"] - solved.index) <= 0.005 + 1e-9).all(), "the solver meets each budget within 0.5 %"
show(solved, digits=3)

# %%
show(fz.report(fz.factorize(model, budget=float(budgets[-1])), model).drop(columns=["module"]), digits=3)

# %% [markdown]
# ## Plain vs activation-aware factorisation
#
# Plain SVD minimises the error of the *weights*; what matters is the error of the *outputs* on real
# inputs. The activation-aware variant (ASVD-style, an improvement over the paper, NOT the paper's method)
# factorises $W\,\mathrm{diag}(s)$ with $s_j=\sqrt{\mathrm{mean}|x_j|}$ from calibration sentences.
# Both students have the same ranks; errors are measured on held-out dev sentences.

# %%
data = load_task(task, data_dir=data_dir, seed=seed)
calib_rows = data.require_train()[: calib_examples]
held_rows = data.dev[: eval_examples]
field_names = list(data.text_fields)
encode = lambda rows: dict(tok(*[rows[f] for f in field_names], padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt"))
calibration, held_out = encode(calib_rows), encode(held_rows)
held_out = {k: v.to(device) for k, v in held_out.items()}
students = {"plain": fz.factorize(model, layer_ratio=layer_ratio),
            "activation": fz.factorize(model, layer_ratio=layer_ratio, weighting="activation",
                                       calibration={k: v.to(device) for k, v in calibration.items()})}
cspec = CaptureSpec(matrix_layers=set(range(n_layers)), hidden_layers=set(range(n_layers + 1)))
t_cap = capture(model, held_out, cspec, grad=False)
mask = held_out["attention_mask"]
hid, mod = [], []
for kind, st in students.items():
    s_cap = capture(st, held_out, cspec, grad=False)
    hid.append(ins.hidden_mse_table(s_cap, t_cap, mask).assign(weighting=kind))
    mod.append(ins.module_output_errors(s_cap, t_cap, mask).assign(weighting=kind))
hid, mod = pd.concat(hid), pd.concat(mod)
weight_err = {k: fz.report(st, model)["rel_error"].mean() for k, st in students.items()}
show(mod.pivot_table(index="role", columns="weighting", values="rel_error"))  # module outputs, mean over layers

# %%
table = hid.pivot_table(index="hidden", columns="weighting", values="rel_error")
fig, ax = plt.subplots(figsize=(6.4, 3.6))
table.plot.bar(ax=ax, rot=0)
ax.set_xlabel("hidden state (0 = embeddings, i = after layer i − 1)")
ax.set_ylabel("‖h_student − h_teacher‖ / ‖h_teacher‖")
ax.set_title(f"Held-out hidden-state error, layer_ratio {layer_ratio}: plain vs activation-aware SVD")
savefig(fig, "svd_plain_vs_activation_hidden_error", run_dir)
plt.show()
show({"weights: plain": weight_err["plain"], "weights: activation": weight_err["activation"],
      "last hidden: plain": table["plain"].iloc[-1], "last hidden: activation": table["activation"].iloc[-1]})

# %%
by_frac = errors.groupby("fraction")["rel_error"].mean()
metrics = {
    "teacher_params": total,
    "n_matrices": len(spec),
    "rel_error_by_rank_fraction": {str(k): float(v) for k, v in by_frac.items()},
    "max_abs_diff_makd_vs_eckart_young": float((errors["rel_error"] - errors["eckart_young"]).abs().max()),
    "mean_rank_fraction_90pct_energy": float((spec["rank_90pct_energy"] / spec["full_rank"]).mean()),
    "budget_ratio_achieved": {str(k): float(v) for k, v in solved["ratio"].items()},
    "floor_ratio": fz.floor_parameters(model) / total,
    "plain_weight_rel_error": float(weight_err["plain"]),
    "activation_weight_rel_error": float(weight_err["activation"]),
    "plain_last_hidden_rel_error": float(table["plain"].iloc[-1]),
    "activation_last_hidden_rel_error": float(table["activation"].iloc[-1]),
    "layer_ratio": layer_ratio,
}
write_metrics(run_dir, "01_svd_decomposition", metrics)
show({k: v for k, v in metrics.items() if not isinstance(v, dict)})
