"""Which fine-tuned teacher checkpoints the runs of a grid used: a grid compares its cells under ONE teacher.

``teacher_checkpoints(df)`` groups a task's runs (rows of :func:`makd.experiments.stats.collect`) by the sha256 of
the teacher checkpoint their run record names. Several checkpoints are either one teacher re-trained on another
CPU (same cache key, equal dev score, dev loss equal up to float rounding: :func:`retrained_teachers`, a note) or
different teachers (:func:`mixed_teachers`, a warning: the stray teacher's cells must be re-run). The grid runner
checks this after each finished cell; the report and notebook 07 print it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from makd.experiments.published import as_points

TEACHER_RTOL = 1e-5


def teacher_checkpoints(df: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """Tasks whose runs used more than one fine-tuned teacher checkpoint (the run records' sha256): {task:
    {sha256[:12]: {"runs": [cell/s<seed>, ...], "key": teacher cache key, "score": dev score, "loss": dev loss}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if "teacher_sha" not in df:
        return out
    for task, g in df[df["teacher_sha"].notna()].groupby("task", sort=True):
        if g["teacher_sha"].nunique() > 1:
            out[task] = {}
            for sha, h in g.groupby("teacher_sha", sort=True):
                first = h.iloc[0]
                out[task][sha[:12]] = {"runs": sorted(f"{c}/s{s}" for c, s in zip(h["cell"], h["seed"])),
                                       "key": first.get("teacher_key"), "score": first.get("teacher_score"),
                                       "loss": first.get("teacher_loss")}
    return out


def same_teacher_up_to_rounding(a: dict[str, Any], b: dict[str, Any], rtol: float = TEACHER_RTOL) -> bool:
    """Two checkpoints (entries of :func:`teacher_checkpoints`) are one teacher re-trained on another CPU when they
    share the cache key (teacher, task, data files, seed, settings), their dev score is equal and their dev loss
    agrees to ``rtol`` (relative): the float-rounding differences of another CPU type change the file's sha256,
    not the model. Missing evidence (no key or no loss recorded) counts as different."""
    def num(x: Any) -> float:
        return float("nan") if x is None or pd.isna(x) else float(x)
    la, lb, sa, sb = num(a.get("loss")), num(b.get("loss")), num(a.get("score")), num(b.get("score"))
    return (bool(a.get("key")) and a.get("key") == b.get("key") and np.isfinite([la, lb, sa, sb]).all()
            and abs(sa - sb) <= 1e-12 and abs(la - lb) <= rtol * max(abs(la), abs(lb)))


def _one_teacher(groups: dict[str, dict[str, Any]], rtol: float) -> bool:
    ref, *rest = groups.values()
    return all(same_teacher_up_to_rounding(ref, g, rtol) for g in rest)


def mixed_teachers(df: pd.DataFrame, rtol: float = TEACHER_RTOL) -> dict[str, dict[str, list[str]]]:
    """Tasks whose runs used more than one fine-tuned teacher: {task: {sha256[:12]: [cell/s<seed>, ...]}}. A grid
    compares cells under ONE shared teacher; a teacher re-trained with other settings, or (before the teacher head
    was seeded) from a cell of another seed, breaks that, and those cells should be re-run. Checkpoints that are
    the same teacher up to float rounding (:func:`same_teacher_up_to_rounding`) are not mixed: see
    :func:`retrained_teachers`."""
    return {task: {sha: g["runs"] for sha, g in groups.items()}
            for task, groups in teacher_checkpoints(df).items() if not _one_teacher(groups, rtol)}


def retrained_teachers(df: pd.DataFrame, rtol: float = TEACHER_RTOL) -> dict[str, dict[str, dict[str, Any]]]:
    """Tasks whose several teacher checkpoints are all one teacher re-trained on another CPU (same cache key, equal
    dev score, dev loss equal to ``rtol``): {task: {sha256[:12]: {"runs", "key", "score", "loss"}}}."""
    return {task: groups for task, groups in teacher_checkpoints(df).items() if _one_teacher(groups, rtol)}


def retrained_note(task: str, groups: dict[str, dict[str, Any]], rtol: float = TEACHER_RTOL) -> str:
    """One sentence for a task of :func:`retrained_teachers`: each checkpoint's runs and dev loss."""
    losses = [g["loss"] for g in groups.values()]
    which = "; ".join(f"{sha}: {len(g['runs'])} runs, dev loss {g['loss']:.7f}" for sha, g in groups.items())
    return (f"{task}: {len(groups)} teacher checkpoints that differ bitwise but are one teacher re-trained on another "
            f"CPU ({which}) — same settings, data and seed, equal dev score ({as_points(next(iter(groups.values()))['score']):.1f}), "
            f"dev loss within {max(losses) - min(losses):.1e} (tolerance {rtol:g} relative); its cells are compared "
            "as under one teacher.")
