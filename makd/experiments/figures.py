"""The figures of a grid: each ablation's paired difference to MaKD with its bootstrap CI, and the mean score
against the budget per method of the budget sweep (frames of :mod:`makd.experiments.stats`: ``ablation_deltas``
rows, a ``summarize`` table), and a subquadratic student's budget curve (a
:func:`makd.experiments.subquadratic_curve.token_curve` frame). Each returns a matplotlib figure; saving is the
caller's (``makd.notebook.plotting.savefig``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def plot_ablation_deltas(deltas: pd.DataFrame):
    """Horizontal bars: mean paired difference ablation − MaKD (points ×100) with its bootstrap CI."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(len(deltas), 1)))
    if deltas.empty:
        ax.text(0.5, 0.5, "no ablation runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    names = [f"{t}: {l}" if deltas["task"].nunique() > 1 else l for t, l in zip(deltas["task"], deltas["label"])]
    y = np.arange(len(deltas))
    d = 100 * deltas["mean_diff"].to_numpy()                                        # (cells,)
    err = np.vstack([d - 100 * deltas["ci_low"].to_numpy(), 100 * deltas["ci_high"].to_numpy() - d])  # (2, cells)
    ax.barh(y, d, xerr=err, color=["C3" if v < 0 else "C2" for v in d], capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("score difference to MaKD (points; bar: mean over seeds, whisker: bootstrap CI)")
    return fig


def plot_budget(summary: pd.DataFrame, x: str = "layer_ratio"):
    """Mean score (±std) vs ``x`` (layer_ratio or student_params) per method label of the budget sweep, one
    panel per task (tasks have their own metric and teacher), with that task's teacher score as a dashed line."""
    import matplotlib.pyplot as plt

    b = summary[summary["group"] == "budget"]
    tasks = list(dict.fromkeys(b["task"])) or [None]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks) ** 0.75, 4.8), squeeze=False)
    if b.empty:
        axes[0, 0].text(0.5, 0.5, "no budget sweep runs", ha="center", va="center", transform=axes[0, 0].transAxes)
        return fig
    colour = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(b.sort_values("label")["label"]))}
    for ax, task in zip(axes[0], tasks):
        t = b[b["task"] == task]
        for label, g in t.groupby("label", sort=True):               # same method, same colour in every panel
            g = g.sort_values(x)
            ax.errorbar(g[x], 100 * g["mean"], yerr=100 * g["std"].fillna(0), marker="o", capsize=3, label=label,
                        color=colour[label])
        ax.axhline(100 * t["teacher_score"].mean(), color="k", ls="--", lw=0.8, label="teacher")
        ax.set_xlabel("layer-parameter ratio" if x == "layer_ratio" else "student parameters")
        ax.set_ylabel(f"dev {t['metric'].iloc[0]} (×100)")
        if len(tasks) > 1:
            ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_token_curve(curve: pd.DataFrame, *, ppl_target: float = 1.5, top1_target: float = 0.60):
    """The budget curve of a subquadratic student (:func:`makd.experiments.subquadratic_curve.token_curve`):
    perplexity over the teacher's (log scale) and top-1 agreement (×100) against the tokens per stage (log
    scale), mean ± std over seeds, with the targets as dashed lines."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    if curve.empty:
        left.text(0.5, 0.5, "no budget curve runs", ha="center", va="center", transform=left.transAxes)
        return fig
    x = curve["stage_tokens"].to_numpy(float)
    left.errorbar(x, curve["ppl_ratio_mean"], yerr=curve["ppl_ratio_std"].fillna(0), marker="o", capsize=3)
    left.axhline(ppl_target, color="k", ls="--", lw=0.8, label=f"target {ppl_target}×")
    left.set_yscale("log")
    left.set_ylabel("held-out perplexity / teacher's")
    right.errorbar(x, 100 * curve["top1_mean"], yerr=100 * curve["top1_std"].fillna(0), marker="o", capsize=3)
    right.axhline(100 * top1_target, color="k", ls="--", lw=0.8, label=f"target {100 * top1_target:.0f} %")
    right.set_ylabel("top-1 agreement with the teacher (%)")
    right.set_ylim(0, 100)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training tokens per stage")
        ax.legend()
    fig.tight_layout()
    return fig
