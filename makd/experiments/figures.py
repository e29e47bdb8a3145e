"""The two figures of a grid: each ablation's paired difference to MaKD with its bootstrap CI, and the mean score
against the budget per method of the budget sweep. Both take the frames of :mod:`makd.experiments.stats`
(``ablation_deltas`` rows, a ``summarize`` table) and return a matplotlib figure; saving is the caller's
(``makd.notebook.plotting.savefig``).
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
