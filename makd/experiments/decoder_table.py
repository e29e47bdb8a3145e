"""A decoder comparison's runs as a table (read by :mod:`makd.experiments.decoder_stats`, notebook 10): one row per
scored model from its ``metrics.json`` (:func:`collect`), then per model the mean and std over training seeds and
the share of the teacher's Rouge-L (:func:`summary`), with the row labels and the order every report uses.

A model is named by its folder in the comparison (``<name>/`` or ``<name>/seed-S/``): the method's own name in every
folder ``python -m makd decoder`` writes; a run copied in beside them for an ablation keeps its own name
(``makd-default``, ``kd-1ep``) and is labelled as its method with that name after it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from makd.core.errors import MissingInputError
from makd.experiments.decoder_config import CONTROLS

ORDER = ("teacher", "init", "untrained", "sft", "kd", "seqkd", "makd")
LABELS = {"teacher": "teacher", "init": "student as factorised (no training)",
          "untrained": "student after the layer-local stage (no end-to-end training)", "sft": "SFT (no teacher)",
          "kd": "KD (token KL)", "seqkd": "SeqKD", "makd": "MaKD (hierarchical)"}
SCORED_ONCE = ("teacher", *CONTROLS)                 # not trained: one run, paired with every training seed


def ordered(names) -> list[str]:
    """Model names in the table's order: :data:`ORDER` first, then any other (a run copied in for an ablation) as
    it comes, each once."""
    names = list(dict.fromkeys(names))
    return [m for m in ORDER if m in names] + [m for m in names if m not in ORDER]


def label(method: str, teacher_answers: bool = False, weights: str | None = None) -> str:
    """A model's row label; KD and MaKD trained on the teacher's generated answers (``--kd-responses teacher``)
    say so, a MaKD run with its own ``--makd-weights`` names them. A folder name that is not a method's (a run
    copied beside the folder's own for an ablation, ``makd-default/seed-S/``) is the method's label with the
    folder name after it."""
    base, _, variant = method.partition("-") if method not in LABELS else (method, "", "")
    text = LABELS.get(base, method) + (f" [{variant}]" if variant and base in LABELS else "")
    text += " on the teacher's answers" if teacher_answers else ""
    return text + (f", weights {weights}" if isinstance(weights, str) and weights else "")


def weights_text(weights: dict | None) -> str | None:
    """``--makd-weights`` as a short label, aspects of one weight together ({"mha": 0.0666667, "ffn": 0.0666667,
    "pred": 2} -> "mha, ffn 0.0667; pred 2"), None for the default."""
    if not weights:
        return None
    groups: dict[float, list[str]] = {}
    for aspect, value in weights.items():
        groups.setdefault(value, []).append(aspect)
    return "; ".join(f"{', '.join(aspects)} {value:.3g}" for value, aspects in groups.items())


def answer_words(outputs: list[str] | None) -> float | None:
    """Median length in whitespace-separated words of the generated answers (None without outputs)."""
    return float(np.median([len(o.split()) for o in outputs])) if outputs else None


def repetition(outputs: list[str] | None, n: int = 4) -> float | None:
    """seq-rep-n of Welleck et al. (2020, unlikelihood training): the mean over answers of the share of repeated
    n-grams, 1 − |unique n-grams| / |n-grams| (whitespace words; an answer shorter than n words counts 0), None
    without outputs. Greedy decoding that falls into a loop scores near 1, a fluent answer near 0."""
    if not outputs:
        return None
    shares = []
    for text in outputs:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        shares.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
    return float(np.mean(shares))


def collect(root: str | Path) -> pd.DataFrame:
    """One row per scored model under ``root`` (``<name>/metrics.json`` or ``<name>/seed-S/metrics.json``): its
    ``method`` is the folder name ``<name>`` (the method's own name in every folder `python -m makd decoder`
    writes; another name keeps a run copied in beside them apart, e.g. ``makd-default`` for an ablation)."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.json")):
        d = json.loads(path.read_text())
        if not {"method", "eval", "generation"} <= set(d):
            continue
        parts = path.relative_to(root).parts
        name = parts[0] if len(parts) in (2, 3) else d["method"]
        config = d["record"].get("config", {})
        extra = {f"rougeL_{k}": v["rougeL"] for k, v in d.get("eval_sets", {}).items()}
        wiki = d.get("wiki_heldout", {})
        rows.append({"run": d.get("run", d["method"]), "method": name,
                     "seed": d.get("train", {}).get("seed", d["record"].get("seed")),
                     "rougeL": d["eval"]["rougeL"], "per_prompt": d["eval"].get("rougeL_per_prompt"),
                     "answer_words": answer_words(d["eval"].get("outputs")),
                     "rep4": repetition(d["eval"].get("outputs")),
                     "response_ce": d.get("response_ce"), "wiki_ppl": wiki.get("ppl"), "wiki_ce": wiki.get("ce"),
                     "params": d["params"], "steps": d.get("train", {}).get("steps"),
                     "train_s": d.get("train", {}).get("runtime_s"),
                     "resumed": bool(d.get("train", {}).get("resumed")), "eval_set": d.get("eval_set"),
                     "n_prompts": d["eval"].get("n"), "train_set": d.get("train_set"),
                     "layer_ratio": config.get("layer_ratio"),
                     "teacher_answers": d["method"] in ("kd", "makd")            # --kd-responses teacher
                     and config.get("kd_responses") == "teacher",
                     "weights": weights_text(config.get("makd_weights")) if d["method"] == "makd" else None,
                     **extra})
    df = pd.DataFrame(rows)
    if df.empty:
        raise MissingInputError(f"no decoder results under {root}: give the --out folder of `python -m makd "
                                "decoder` (it holds <method>/metrics.json or <method>/seed-S/metrics.json)")
    return df.astype({"answer_words": float, "rep4": float})  # None (a record without outputs) -> NaN


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: runs, mean and std over seeds of every score, and the share of the teacher's Rouge-L."""
    scores = [c for c in df.columns if c.startswith("rougeL") and c != "rougeL"] + ["rougeL", "response_ce",
                                                                                     "wiki_ppl", "wiki_ce",
                                                                                     "answer_words", "rep4"]
    g = df.groupby("method", sort=False)
    out = g[scores].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["runs"] = g.size()
    out["params"] = g["params"].first()
    out["teacher_answers"] = g["teacher_answers"].any()
    out["weights"] = g["weights"].first()                     # None (the default weights) -> NaN
    # a resumed training's runtime counts its last part only: the mean over the runs trained in one go, when any
    whole = df[~df["resumed"]].groupby("method", sort=False)["train_s"].mean()
    out["train_s"] = whole.reindex(out.index).fillna(g["train_s"].mean())
    out["resumed_only"] = g["resumed"].all()                  # train_s is then a last part: a lower bound
    teacher = out.loc["teacher", "rougeL_mean"] if "teacher" in out.index else np.nan
    out["share_of_teacher"] = out["rougeL_mean"] / teacher
    return out.reindex(ordered(out.index))
