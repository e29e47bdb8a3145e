"""What notebook 11's second half shows of the three-stage distillation into subquadratic students, read from the
runs' files (``metrics.json`` and ``checkpoints/checkpoint-<k>/stage.pt`` of ``python -m makd subquadratic``):

* the stages as a picture (what is teacher-forced, what is trained, what is compared);
* the loss curves per stage and mixer (every logged step, against training tokens);
* a student as it was after stage k (its stage-k checkpoint loaded into a fresh QKV-copied student);
* the ranking of the mixers on held-out text with 95 % intervals from a bootstrap over held-out blocks — the
  interval of the EVALUATION (which blocks were scored), not of training: one seed says nothing about seed
  variation (the grid's 3 seeds do, ``python -m makd stats``). Perplexity = exp(Σ CE / Σ tokens), top-1 and KL
  token-weighted, recomputed on every resample of the blocks;
* pass-key retrieval accuracy by context and depth, teacher beside the students.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from makd.students.stages import STAGES, student_for

STAGE_TITLES = {"mixing": "1 · matrix mixing", "hidden": "2 · hidden-state alignment", "kd": "3 · end-to-end KD"}
# per stage: (what goes in, the student part that trains, what it is compared with, the loss)
STAGE_PARTS = {
    "mixing": ("teacher's input to layer ℓ\n(cached, teacher-forced)", "mixer of layer ℓ\n(materialised matrix M)",
               "teacher's attention A of layer ℓ", "‖M − A‖² per layer\n(MLP not run)"),
    "hidden": ("teacher's input to layer ℓ\n(cached, teacher-forced)", "block ℓ: mixer trained,\nMLP + norms frozen",
               "teacher block ℓ's output", "per-token ‖h_S − h_T‖₂\nper layer"),
    "kd": ("tokens", "whole student\n(all layers, end to end)", "teacher's next-token\ndistribution",
           "CE + KL(teacher ‖ student)"),
}


def read_runs(root: str | Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: metrics.json of ``root/name``} for the runs that finished (missing ones left out)."""
    out = {}
    for name in names:
        path = Path(root) / name / "metrics.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def plot_stage_diagram():
    """Three panels, one per stage: input → trained part → compared with → loss; trained parts in orange."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.6))
    colours = ("#d9d9d9", "#f4a261", "#a8dadc", "#ffffff")
    for ax, stage in zip(axes, STAGES):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")
        ax.set_title(STAGE_TITLES[stage], fontsize=10)
        for i, (text, colour) in enumerate(zip(STAGE_PARTS[stage], colours)):
            y = 0.86 - i * 0.24
            ax.add_patch(FancyBboxPatch((0.08, y - 0.08), 0.84, 0.16, boxstyle="round,pad=0.01", fc=colour,
                                        ec="k", lw=0.8))
            ax.text(0.5, y, text, ha="center", va="center", fontsize=8)
            if i < 3:
                ax.annotate("", (0.5, y - 0.15), (0.5, y - 0.09), arrowprops=dict(arrowstyle="->", lw=0.8))
    fig.text(0.5, 0.01, "grey: from the teacher (no gradient) · orange: trained · blue: the target", ha="center",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def stage_curves(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per logged step: mixer, stage, step, tokens, lr, loss (the stage's total; per-layer terms left out)."""
    rows = []
    for name, metrics in runs.items():
        for stage in STAGES:
            for entry in (metrics.get("stages", {}).get(stage) or {}).get("history") or []:
                rows.append({"mixer": name, "stage": stage, "step": entry["step"], "tokens": entry["tokens"],
                             "lr": entry["lr"], "loss": entry["loss"]})
    return pd.DataFrame(rows, columns=["mixer", "stage", "step", "tokens", "lr", "loss"])


def plot_stage_curves(curves: pd.DataFrame):
    """Loss against training tokens, one panel per stage (log scale), one line per mixer."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, stage in zip(axes, STAGES):
        part = curves[curves["stage"] == stage]
        for name, g in part.groupby("mixer", sort=False):
            ax.plot(g["tokens"], g["loss"], marker=".", lw=1.2, label=name)
        ax.set_title(STAGE_TITLES[stage], fontsize=10)
        ax.set_xlabel("training tokens")
        if len(part) and (part["loss"] > 0).all():
            ax.set_yscale("log")
        if part.empty:
            ax.text(0.5, 0.5, "stage off (0 tokens)", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("stage loss")
    if not curves.empty:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def student_after_stage(run: str | Path, teacher: nn.Module, stage: str = "mixing") -> nn.Module:
    """The student of ``run`` as it was when ``stage`` finished: a fresh student built like the run's (mixer,
    init, seed from its metrics.json) with the stage's checkpoint loaded (the run needs ``--keep-checkpoints``)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    path = run / "checkpoints" / f"checkpoint-{STAGES.index(stage) + 1}" / "stage.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: stage {stage!r} did not run, or the run was made without "
                                "--keep-checkpoints (keep_checkpoints=True)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not payload.get("done"):
        raise ValueError(f"{path} holds an unfinished stage {stage!r} (step {payload.get('step')}): resume the run")
    student = student_for(teacher, metrics["mixer"], metrics["init"], metrics["seed"])
    with torch.no_grad():
        for name, value in payload["params"].items():
            student.get_parameter(name).copy_(value)
    return student.eval()


def _bootstrap(blocks: Mapping[str, list], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled (n_boot,) perplexity, top-1 and KL from the per-block sums (blocks drawn with replacement)."""
    tokens = np.asarray(blocks["tokens"], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(tokens), size=(n_boot, len(tokens)))   # (n_boot, N)
    n = tokens[idx].sum(1)
    out = {"ppl": np.exp(np.asarray(blocks["ce_sum"])[idx].sum(1) / n)}
    for key, name in (("agree", "top1"), ("kl_sum", "kl")):
        if key in blocks:
            out[name] = np.asarray(blocks[key])[idx].sum(1) / n
    return out


def ranking_table(runs: Mapping[str, Mapping[str, Any]], n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> pd.DataFrame:
    """Per mixer (and the teacher, from the first run): held-out perplexity, top-1 agreement and KL with their
    bootstrap intervals over held-out blocks, pass-key accuracy; best top-1 first."""
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    rows, teacher_row = [], None
    for name, metrics in runs.items():
        lm = metrics["evaluation"]["student"].get("lm")
        if not lm:
            continue
        row: dict[str, Any] = {"model": name, "ppl": lm["ppl"], "top-1": lm.get("top1"), "KL": lm.get("kl")}
        if "blocks" in lm:
            boot = _bootstrap(lm["blocks"], n_boot, seed)
            for key, col in (("ppl", "ppl"), ("top1", "top-1"), ("kl", "KL")):
                row[f"{col} {level:.0%} CI"] = (float(np.percentile(boot[key], lo)),
                                                float(np.percentile(boot[key], hi)))
        row["pass-key"] = (metrics["evaluation"]["student"].get("passkey") or {}).get("accuracy")
        rows.append(row)
        t_lm = metrics["evaluation"]["teacher"].get("lm")
        if teacher_row is None and t_lm:
            teacher_row = {"model": "teacher", "ppl": t_lm["ppl"], "top-1": 1.0, "KL": 0.0,
                           "pass-key": (metrics["evaluation"]["teacher"].get("passkey") or {}).get("accuracy")}
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("top-1", ascending=False)
    return pd.concat([pd.DataFrame([teacher_row]), table], ignore_index=True) if teacher_row else table


def plot_ranking(table: pd.DataFrame, level: float = 0.95):
    """Top-1 agreement and perplexity per student (points with their bootstrap intervals; perplexity on a log axis
    when it spans more than 20×); the teacher's perplexity as a dashed line."""
    import matplotlib.pyplot as plt

    students = table[table["model"] != "teacher"].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 + 0.45 * max(len(students), 2)))
    for ax, col in zip(axes, ("top-1", "ppl")):
        ci = students.get(f"{col} {level:.0%} CI")
        err = None
        if ci is not None:
            err = np.array([[v - c[0] for v, c in zip(students[col], ci)], [c[1] - v for v, c in zip(students[col], ci)]])
        y = np.arange(len(students))
        ax.errorbar(students[col], y, xerr=err, fmt="o", color="#e76f51", ecolor="k", capsize=3)
        ax.set_yticks(y, students["model"])
        ax.set_ylim(len(students) - 0.5, -0.5)
        values = students[col].dropna()
        if col == "ppl" and len(values) and values.max() / max(values.min(), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{col} (held-out, {level:.0%} bootstrap interval over blocks)")
    teacher = table[table["model"] == "teacher"]
    if len(teacher):
        axes[1].axvline(float(teacher["ppl"].iloc[0]), color="k", ls="--", label="teacher")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def passkey_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model, context and depth: pass-key retrieval accuracy and the number of trials (teacher once)."""
    rows, seen_teacher = [], False
    for name, metrics in runs.items():
        for who, label in (("teacher", "teacher"), ("student", name)):
            if who == "teacher" and seen_teacher:
                continue
            for cell in (metrics["evaluation"][who].get("passkey") or {}).get("cells", []):
                rows.append({"model": label, **cell})
                seen_teacher = seen_teacher or who == "teacher"
    return pd.DataFrame(rows, columns=["model", "context", "depth", "accuracy", "n"])


def plot_passkey(table: pd.DataFrame):
    """Accuracy by depth, one panel per context, one line per model (the teacher in black)."""
    import matplotlib.pyplot as plt

    contexts = sorted(table["context"].unique()) if len(table) else []
    fig, axes = plt.subplots(1, max(len(contexts), 1), figsize=(4.2 * max(len(contexts), 1), 3.2), squeeze=False)
    for ax, context in zip(axes[0], contexts):
        part = table[table["context"] == context]
        for name, g in part.groupby("model", sort=False):
            style = dict(color="k", lw=2.2) if name == "teacher" else dict(lw=1.2)
            ax.plot(g["depth"], g["accuracy"], marker="o", label=name, **style)
        ax.set_title(f"context {context} tokens", fontsize=10)
        ax.set_xlabel("depth of the key in the context")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("pass-key accuracy")
    if contexts:
        axes[0][0].legend(fontsize=8)
    else:
        axes[0][0].text(0.5, 0.5, "no pass-key probe in these runs", ha="center", va="center")
        axes[0][0].axis("off")
    fig.tight_layout()
    return fig

