"""What notebook 11 shows of the subquadratic students: the teacher's attention next to each mixer's materialised
mixing matrix on the same input, the recurrent form checked against the parallel form on the spot, and the
inference-scaling figure of ``benchmarks/bench_subquadratic.py`` (read from its JSON)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from makd.students.stages import teacher_activations


@torch.no_grad()
def mixing_matrices(teacher: nn.Module, students: Mapping[str, nn.Module], batch: Mapping[str, Tensor],
                    layer: int) -> dict[str, Tensor]:
    """{"teacher": softmax attention, name: mixer matrix} of ``layer`` for the first sequence of ``batch``, each
    (H, T, T): every student's mixer sees the teacher's input to that layer through its own input norm (a copy of
    the teacher's), as in the matrix-mixing stage. The teacher must run eager attention."""
    inputs, _, probs = teacher_activations(teacher, batch, attentions=True)
    mask = batch.get("attention_mask")
    out = {"teacher": probs[layer][0].float()}
    for name, student in students.items():
        block = student.model.layers[layer]
        x = block.input_layernorm(inputs[layer])
        out[name] = block.mixer.mixing_matrix(x, mask)[0].float()
    return out


def matrix_table(mats: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per student: the matrix-mixing loss against the teacher's attention (mean squared difference over heads and
    causal entries), the mean |row sum − 1| (a softmax row sums to 1) and the correlation with the teacher's."""
    a = mats["teacher"]                                                         # (H, T, T)
    keep = torch.tril(torch.ones_like(a[0], dtype=torch.bool))                  # causal entries
    rows = []
    for name, m in mats.items():
        if name == "teacher":
            continue
        rows.append({"mixer": name, "MSE to attention": float(((m - a)[:, keep] ** 2).mean()),
                     "mean |row sum − 1|": float((m.sum(-1) - 1).abs().mean()),
                     "correlation": float(np.corrcoef(m[:, keep].flatten(), a[:, keep].flatten())[0, 1])})
    return pd.DataFrame(rows)


@torch.no_grad()
def form_check(student: nn.Module, input_ids: Tensor, new_tokens: int = 4) -> dict[str, Any]:
    """The recurrent form against the parallel form on a real input: the largest |logit| difference between one
    parallel pass and feeding the tokens one by one through the cache, and whether greedy generation with the
    recurrent cache gives the tokens of full recomputation."""
    ids = input_ids[:1]
    parallel = student(ids, use_cache=False).logits                            # (1, T, V)
    cache, steps = None, []
    for t in range(ids.shape[1]):
        out = student(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    recurrent = torch.cat(steps, dim=1)
    cached = student.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    full = student.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=False)
    return {"mixer": student.config.mixer, "max |parallel − recurrent| (logits)": float((parallel - recurrent).abs().max()),
            "logit scale": float(parallel.abs().max()), "greedy tokens equal": bool(torch.equal(cached, full)),
            "state bytes / sequence": cache.state_bytes()}


def plot_matrices(mats: Mapping[str, Tensor], head: int = 0):
    """Heat maps of one head: the teacher's attention and each mixer's matrix (each on its own colour scale, shown
    as |M| for the signed mixers)."""
    import matplotlib.pyplot as plt

    n = len(mats)
    cols = min(4, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 3.0 * math.ceil(n / cols)),
                             squeeze=False)
    for ax, (name, m) in zip(axes.flat, mats.items()):
        ax.imshow(m[head].abs().numpy(), cmap="viridis")
        ax.set_title(name if name == "teacher" else f"{name} (|M|)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def read_scaling(path: str | Path) -> dict[str, Any] | None:
    """The JSON of ``benchmarks/bench_subquadratic.py``, or None when it has not been run."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def scaling_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Per model at the longest prompt and context measured: prefill seconds, ms per generated token, state MiB,
    and each as a fraction of the teacher's (the targets: prefill ≤ 0.5, latency ≤ 0.5, state ≤ 0.1)."""
    T, C = max(result["prefill"], key=int), max(result["generation"], key=int)
    pre, gen = result["prefill"][T], result["generation"][C]
    rows = []
    for name in result["params"]:
        rows.append({"model": name, "params (M)": result["params"][name] / 1e6, f"prefill T={T} (s)": pre[name]["seconds"],
                     "prefill / teacher": pre[name]["seconds"] / pre["teacher"]["seconds"],
                     f"ms/token at {C}": 1000 * gen[name]["seconds_per_token"],
                     "latency / teacher": gen[name]["seconds_per_token"] / gen["teacher"]["seconds_per_token"],
                     f"state at {C} (MiB)": gen[name]["state_bytes"] / 2 ** 20,
                     "state / teacher": gen[name]["state_bytes"] / gen["teacher"]["state_bytes"]})
    return pd.DataFrame(rows)


def plot_scaling(result: Mapping[str, Any]):
    """Log-log: prefill time vs prompt length, ms per token and generation state vs context, every model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    T = sorted(int(t) for t in result["prefill"])
    C = sorted(int(c) for c in result["generation"])
    for name in result["params"]:
        style = dict(color="k", lw=2.2) if name == "teacher" else dict(lw=1.2)
        axes[0].plot(T, [result["prefill"][str(t)][name]["seconds"] for t in T], marker="o", label=name, **style)
        axes[1].plot(C, [1000 * result["generation"][str(c)][name]["seconds_per_token"] for c in C], marker="o", **style)
        axes[2].plot(C, [result["generation"][str(c)][name]["state_bytes"] / 2 ** 20 for c in C], marker="o", **style)
    for ax, (x, y) in zip(axes, [("prompt length T", "prefill time (s)"), ("context", "ms per generated token"),
                                 ("context", "generation state (MiB)")]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
