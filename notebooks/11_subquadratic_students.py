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
# # 11 · Subquadratic students: a Transformer's attention replaced by a token mixer
#
# The second paper this package reproduces (arXiv 2504.14366) distils a Transformer into students whose softmax
# attention is replaced by a subquadratic token mixer — everything else (MLPs, embeddings, norms, depth, width)
# copied from the teacher, the mixer's Q/K/V/O initialised from the teacher's (QKV copy). This first half shows
# the students as built, before any training: each mixer's token-mixing matrix next to the teacher's attention on
# the same text, the recurrent form that generates in O(1) per token checked against the parallel form, and what
# that buys at inference (the benchmark's figure).
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~30 s | tiny random Llama (GQA), 24 tokens |
# | demo (defaults) | ~1 min (57 s measured 2026-12-06, one thread, shared machine) | SmolLM2-135M-Instruct (embedded), 48 tokens of held-out Wikipedia |
# | full / paper | as demo | the same (no data folder needed) |
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/makd-project/makd/blob/main/notebooks/11_subquadratic_students.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/makd-project/makd/main?labpath=notebooks%2F11_subquadratic_students.ipynb)

# %%
import sys
if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "makd @ git+https://github.com/makd-project/makd@main"], check=True)

# %% tags=["parameters"]
seed: int = 0  # random seed (the mixers' new parameters)
device: str = "auto"  # "auto", "cpu" or "cuda"
run_dir: str = "runs/demo"  # run folder: metrics/11_subquadratic_students.json and figures/ go there
teacher: str = "smollm2-135m-instruct"  # Llama-family teacher: embedded name, tiny-llama (smoke), folder or hub id
mixers: list[str] = ["linear", "retnet", "gla", "mlstm", "deltanet", "gated_deltanet", "mamba2"]  # students to build (makd.students.mixers.registry.NAMES)
tokens: int = 48  # length of the held-out text the matrices are computed on
layer: int = 3  # teacher layer whose attention is shown
head: int = 0  # attention head shown in the heat maps
benchmark_json: str = "benchmarks/results/subquadratic.json"  # output of benchmarks/bench_subquadratic.py (the scaling figure)

# %%
import pandas as pd

from makd.assets.models import load_model
from makd.notebook.helpers import show, start, write_metrics
from makd.notebook.mixing_views import (form_check, matrix_table, mixing_matrices, plot_matrices, plot_scaling,
                                        read_scaling, scaling_table)
from makd.notebook.plotting import savefig
from makd.students import qkv
from makd.tasks.wiki import heldout_windows

run_dir, device = start(run_dir, seed, device)
model, tok = load_model(teacher, head="lm", attn_implementation="eager")   # eager: attention probabilities
model.to(device).eval()
students = {name: qkv.make_student(model, name, seed=seed) for name in mixers}
show(pd.DataFrame([{"model": "teacher", "params (M)": qkv.count(model) / 1e6, "state": "KV cache, grows with T"}]
                  + [{"model": k, **{kk: v for kk, v in qkv.describe(s, model).items() if kk != "mixer"}}
                     for k, s in students.items()]))

# %% [markdown]
# ## One text, every mixing matrix
#
# The teacher's input to layer `layer` goes through each student's copy of the teacher's input norm into its
# mixer; the mixer's materialised matrix M (output = M·V per head) is compared with the teacher's softmax
# attention of that layer. Right after QKV copy the mixers already see the teacher's queries and keys, but turn
# them into weights their own way (feature maps, decays, gates, the delta rule): this distance is what the
# matrix-mixing stage of part 2 trains down.

# %%
windows, described = heldout_windows(tok, 1, tokens)
batch = {k: v.to(device) for k, v in windows.items()}
print("text:", tok.decode(batch["input_ids"][0])[:300])
mats = mixing_matrices(model, students, batch, layer)
table = matrix_table(mats)
show(table)
fig = plot_matrices(mats, head)
savefig(fig, "subquadratic_mixing_matrices", run_dir)

# %% [markdown]
# ## The recurrent form, checked on the spot
#
# Every mixer has a parallel (chunked) form for training and prefill, and a recurrent form that keeps a state of
# fixed size for generation. Feeding the text token by token through the state must give the logits of one
# parallel pass (float32 round-off), and greedy generation through the state the tokens of full recomputation.

# %%
forms = pd.DataFrame([form_check(s, batch["input_ids"]) for s in students.values()])
show(forms)
assert forms["greedy tokens equal"].all()

# %% [markdown]
# ## What it buys: inference scaling
#
# `python benchmarks/bench_subquadratic.py` times the teacher (SDPA attention, KV cache) and every student at
# growing prompt and context lengths, batch 1; its JSON is read here (notebooks talk through files).

# %%
result = read_scaling(benchmark_json)
if result is None:
    print(f"{benchmark_json} not found: run `python benchmarks/bench_subquadratic.py` (or --quick) first")
else:
    show(scaling_table(result))
    savefig(plot_scaling(result), "subquadratic_scaling", run_dir)

# %%
write_metrics(run_dir, "11_subquadratic_students", {
    "teacher": teacher, "layer": layer, "tokens": int(batch["input_ids"].shape[1]),
    "mse_to_attention": dict(zip(table["mixer"], table["MSE to attention"])),
    "correlation_to_attention": dict(zip(table["mixer"], table["correlation"])),
    "max_parallel_vs_recurrent": dict(zip(forms["mixer"], forms["max |parallel − recurrent| (logits)"])),
    "params": {k: qkv.count(s) for k, s in students.items()}, "teacher_params": qkv.count(model),
})
