# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
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
# that buys at inference (the benchmark's figure). The second half distils: the three stages of the study (matrix
# mixing, hidden-state alignment, end-to-end KD) run here for a few mixers at a small token budget, with their loss
# curves, the mixing matrices after stage 1, the ranking on held-out text and the pass-key probe.
#
# | profile | runtime (2 CPU cores) | what it uses |
# |---|---|---|
# | smoke | ~1 min | tiny random Llama (GQA), 24 tokens; stages of 1,024 tokens each on 64-token blocks |
# | demo (defaults) | 6.4 min (measured 2026-12-06: idle machine, default threads, fresh cache) | SmolLM2-135M-Instruct (embedded), 48 tokens of held-out Wikipedia; mlstm / gla / linear, 4,096 tokens per stage on 128-token blocks, one seed |
# | full / paper | as demo | the same (the recorded study with 3 seeds is the grid `grids/subquadratic.yaml`) |
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
mixers: list[str] = ["linear", "retnet", "gla", "mlstm", "deltanet", "gated_deltanet", "mamba2", "metala"]  # students to build (makd.students.mixers.registry.NAMES)
tokens: int = 48  # length of the held-out text the matrices are computed on
layer: int = 3  # teacher layer whose attention is shown
head: int = 0  # attention head shown in the heat maps
benchmark_json: str = "benchmarks/results/subquadratic.json"  # output of benchmarks/bench_subquadratic.py (the scaling figure)
study_mixers: list[str] = ["mlstm", "gla", "linear"]  # mixers distilled in the second half (the study's best, a close one, the weakest)
stage_tokens: int = 4096  # training tokens of EACH stage (matrix mixing, hidden-state alignment, end-to-end KD)
block_length: int = 128  # tokens per packed training / held-out block
batch_size: int = 4  # blocks per training step
eval_blocks: int = 16  # held-out blocks the teacher and every student are scored on
passkey_contexts: list[int] = [256, 512]  # pass-key probe contexts in tokens (empty: no probe)
passkey_trials: int = 2  # pass-key trials per context and depth (depths 0.1, 0.5, 0.9)

# %%
import pandas as pd

from makd.assets.models import load_model
from makd.notebook.helpers import show, start, write_metrics
from makd.notebook.mixing_views import (form_check, matrix_table, mixing_matrices, plot_matrices, plot_scaling,
                                        read_scaling, scaling_table)
from makd.notebook.plotting import savefig
from makd.experiments.subquadratic import run as run_subquadratic
from makd.experiments.subquadratic_config import SubquadraticConfig
from makd.notebook.stage_views import (passkey_table, plot_passkey, plot_ranking, plot_stage_curves,
                                       plot_stage_diagram, ranking_table, read_runs, stage_curves,
                                       student_after_stage)
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

# %% [markdown]
# # Part 2 · Distillation in three stages
#
# The study's template (after MOHAWK): stage 1 trains each layer's mixer so that its materialised matrix M matches
# the teacher's attention A on the teacher's own input to that layer; stage 2 trains each layer's block so that its
# output matches the teacher block's, again on the teacher's input; stage 3 trains the whole student end to end on
# the next-token cross-entropy plus KL(teacher ‖ student). Stages 1 and 2 are layer-local and teacher-forced: no
# gradient crosses layers, which is what makes them affordable on a CPU.

# %%
savefig(plot_stage_diagram(), "subquadratic_stages", run_dir)

# %% [markdown]
# Each mixer is distilled by `python -m makd subquadratic` (here through its Python entry point, one run folder per
# mixer under `run_dir/subquadratic/`): the same text blocks, the same budget of `stage_tokens` per stage, one seed.
# The budget is tiny next to the study's (hundreds of millions of tokens): what is shown is the mechanics and the
# first steps of each curve, not the study's end point.

# %%
study_root = run_dir / "subquadratic"
for name in study_mixers:
    cfg = SubquadraticConfig(teacher=teacher, mixer=name, seed=seed, block_length=block_length, batch_size=batch_size,
                             mixing_tokens=stage_tokens, hidden_tokens=stage_tokens, kd_tokens=stage_tokens,
                             eval_blocks=eval_blocks, passkey_contexts=tuple(passkey_contexts),
                             passkey_per_cell=passkey_trials,
                             keep_checkpoints=True, save_student=False, quiet=True, out=str(study_root / name))
    run_subquadratic(cfg)
runs = read_runs(study_root, study_mixers)
curves = stage_curves(runs)
show(curves.groupby(["mixer", "stage"], sort=False)["loss"].agg(["first", "last", "count"]))
savefig(plot_stage_curves(curves), "subquadratic_stage_curves", run_dir)

# %% [markdown]
# ## The mixing matrices after stage 1
#
# The same text and layer as in part 1: the teacher's attention, each mixer as QKV copy left it, and after the
# matrix-mixing stage (its checkpoint loaded into a fresh student).

# %%
after = {name: student_after_stage(study_root / name, model, "mixing") for name in study_mixers}
before_mats = mixing_matrices(model, {f"{k} · QKV copy": students[k] for k in study_mixers if k in students}, batch,
                              layer)
after_mats = mixing_matrices(model, {f"{k} · after stage 1": s for k, s in after.items()}, batch, layer)
stage1 = pd.concat([matrix_table(before_mats), matrix_table(after_mats)], ignore_index=True)
show(stage1)
fig = plot_matrices({**before_mats, **{k: v for k, v in after_mats.items() if k != "teacher"}}, head)
savefig(fig, "subquadratic_matrices_after_stage1", run_dir)

# %% [markdown]
# ## Ranking on held-out text
#
# Perplexity, top-1 next-token agreement with the teacher and KL(teacher ‖ student) on `eval_blocks` held-out
# blocks of Wikipedia articles never trained on. The intervals resample the held-out blocks (how much the number
# depends on which text was scored); with one training seed they say nothing about seed variation — the recorded
# grid (3 seeds, `python -m makd stats`) does.

# %%
ranking = ranking_table(runs, seed=seed)
show(ranking)
savefig(plot_ranking(ranking), "subquadratic_ranking", run_dir)

# %% [markdown]
# ## Pass-key retrieval
#
# A five-digit number hidden in filler text at several depths; the model is asked for it at the end. The teacher
# attends back to it; a fixed-size state has to have kept it.

# %%
keys = passkey_table(runs)
show(keys)
savefig(plot_passkey(keys), "subquadratic_passkey", run_dir)

# %%
write_metrics(run_dir, "11_subquadratic_students", {
    "teacher": teacher, "layer": layer, "tokens": int(batch["input_ids"].shape[1]),
    "mse_to_attention": dict(zip(table["mixer"], table["MSE to attention"])),
    "correlation_to_attention": dict(zip(table["mixer"], table["correlation"])),
    "max_parallel_vs_recurrent": dict(zip(forms["mixer"], forms["max |parallel − recurrent| (logits)"])),
    "params": {k: qkv.count(s) for k, s in students.items()}, "teacher_params": qkv.count(model),
    "stage_tokens": stage_tokens,
    "stage_loss": {name: {stage: {"first": g["loss"].iloc[0], "last": g["loss"].iloc[-1]}
                          for stage, g in curves[curves["mixer"] == name].groupby("stage", sort=False)}
                   for name in runs},
    "mse_to_attention_after_stage1": dict(zip(stage1["mixer"], stage1["MSE to attention"])),
    "held_out": {row["model"]: {"ppl": row["ppl"], "top1": row["top-1"], "kl": row["KL"]}
                 for row in ranking.to_dict("records")},
    "passkey_accuracy": {row["model"]: row["pass-key"] for row in ranking.to_dict("records")
                         if row["pass-key"] is not None},
})
