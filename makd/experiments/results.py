"""Tables of recorded runs: every ``metrics.json`` that ``python -m makd distill`` wrote under a folder.

``collect("results")`` gives one row per run (task, proxy flag, data source, objective, metric, teacher and
student scores, parameter counts, steps, wall time and the exact command); ``markdown(df)`` renders the
README table with a teacher row per task. ``python -m makd results [FOLDER]`` prints it. Numbers are read,
never typed: the README's tables are this command's output.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from makd.core.errors import ArgumentParser, DataError, MissingInputError
from makd.experiments.tables import markdown_table

ROW_NAMES = {"none": "SVD student, no training", "finetune": "SVD student + fine-tuning (no teacher)",
             "model-only": "SVD student + logit KD", "hierarchical": "SVD student + MaKD (hierarchical)"}


def _read(path: Path) -> dict:
    """One metrics.json; a file that is not JSON is a DataError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}). Delete or re-create it (a run that was "
                        "interrupted while writing: run it again)") from None


def collect(root: str | Path = "results") -> pd.DataFrame:
    """One row per pipeline ``metrics.json`` under ``root`` (files without a task/objective are skipped)."""
    rows, root = [], Path(root)
    # a grid (07_ablations) is summarised over seeds by makd.experiments.stats, not listed run by run here
    grids = [g.parent for g in root.rglob("grid_run.json") if g.parent != root]
    for path in sorted(root.rglob("metrics.json")):
        if any(g in path.parents for g in grids):
            continue
        d = _read(path)
        if not {"task", "objective", "teacher", "student"} <= set(d):
            continue
        metric = d["metric"]
        cfg = d.get("record", {}).get("config", {})
        rows.append({
            "path": str(path.parent), "task": d["task"], "is_proxy": bool(d.get("is_proxy")),
            "source": d.get("source"), "objective": d["objective"], "student_kind": cfg.get("student", "svd"),
            "metric": metric, "points": d["task"].startswith("squad"),  # SQuAD EM/F1 are already 0-100
            "teacher_score": d["teacher"]["metrics"].get(metric),
            "teacher_em": d["teacher"]["metrics"].get("exact_match"),
            "student_em": d["student"]["metrics"].get("exact_match"),
            "student_score": d["student"]["metrics"].get(metric),
            "relative": d.get("relative_to_teacher"), "teacher_params": d["teacher"]["params"],
            "student_params": d["student"]["params"], "layer_ratio": d["student"].get("layer_ratio"),
            "steps": d.get("train", {}).get("steps"), "train_s": d.get("train", {}).get("runtime_s"),
            "wall_s": d.get("record", {}).get("wall_time_s"), "seed": d.get("record", {}).get("seed"),
            "notes": "; ".join(d.get("notes") or []), "command": cfg.get("command"),
        })
    return pd.DataFrame(rows)


def _missing(x) -> bool:
    return x is None or pd.isna(x)


def _fmt(x, pct: bool) -> str:
    if _missing(x):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.4f}"


PCT = ("accuracy", "f1", "matthews_correlation", "spearmanr", "pearsonr", "spearman", "pearson")
ROW_ORDER = {k: i for i, k in enumerate(ROW_NAMES)}                  # untrained, fine-tuned, logit KD, MaKD


def _score(r, who: str) -> str:
    """One score cell: ×100 for fractions; SQuAD as 'EM / F1' (already on 0-100)."""
    x, em = getattr(r, f"{who}_score"), getattr(r, f"{who}_em")
    if r.points:
        return "–" if _missing(x) else (f"{x:.1f}" if _missing(em) else f"{em:.1f} / {x:.1f}")
    return _fmt(x, r.metric in PCT)


MARKDOWN_COLUMNS = ["task", "model", "metric", "score", "% of teacher", "params", "steps", "train time", "command"]


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table: per task, the teacher row then each student row (metric ×100 for fractions)."""
    if df.empty:
        return "(no runs recorded)"
    rows = []
    for task, g in df.groupby("task", sort=False):
        first = g.iloc[0]
        label = f"{task} (proxy for SST-2)" if first.is_proxy and task == "rt-polarity" else (
            f"{task} (proxy)" if first.is_proxy else task)
        metric = "EM / F1" if first.points else first.metric
        rows.append([label, "teacher (fine-tuned)", metric, _score(first, "teacher"), "100",
                     f"{first.teacher_params / 1e6:.2f} M", "–", "–", "(cached by the rows below)"])
        for r in g.sort_values(by="objective", key=lambda c: c.map(lambda o: ROW_ORDER.get(o, len(ROW_ORDER))),
                               kind="stable").itertuples():
            name = ROW_NAMES.get(r.objective, r.objective)
            if r.student_kind != "svd":
                name = f"dense {r.student_kind} + {r.objective}"
            rel = "–" if _missing(r.relative) else f"{100 * r.relative:.1f}"
            t = "–" if _missing(r.train_s) else f"{r.train_s / 60:.1f} min"
            cmd = f"`{r.command}`" if isinstance(r.command, str) else "–"
            rows.append([label, name, metric, _score(r, "student"), rel, f"{r.student_params / 1e6:.2f} M",
                         r.steps, t, cmd])
    return markdown_table(pd.DataFrame(rows, columns=MARKDOWN_COLUMNS))


DECODER_NAMES = {"teacher": "teacher", "sft": "SVD student + SFT (no teacher)", "kd": "SVD student + KD (token KL)",
                 "seqkd": "SVD student + SeqKD", "makd": "SVD student + MaKD (hierarchical)"}


def collect_decoder(root: str | Path = "results") -> pd.DataFrame:
    """One row per ``python -m makd decoder`` result (``OUT/<method>/metrics.json``) under ``root``."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.json")):
        d = _read(path)
        if not {"method", "eval", "generation"} <= set(d) or "rougeL" not in d["eval"]:
            continue
        cfg = d.get("record", {}).get("config", {})
        rows.append({"path": str(path.parent), "eval_set": d.get("eval_set"), "train_set": d.get("train_set"),
                     "train_is_proxy": bool(d.get("train_is_proxy")), "method": d["method"],
                     "student": d.get("student"), "rougeL": d["eval"]["rougeL"], "rougeL_std": d["eval"].get("rougeL_std"),
                     "tokens_per_s": d["eval"].get("tokens_per_s"), "params": d["params"],
                     "steps": d.get("train", {}).get("steps"), "train_s": d.get("train", {}).get("runtime_s"),
                     "decoding": "sampling" if d["generation"].get("do_sample") else "greedy",
                     "n_prompts": d["eval"].get("n"), "reference": d.get("reference"),
                     "teacher": cfg.get("teacher"), "command": cfg.get("command")})
    return pd.DataFrame(rows)


DECODER_COLUMNS = ["eval set", "train set", "model", "Rouge-L", "params", "tokens/s", "steps", "train time"]


def decoder_markdown(df: pd.DataFrame) -> str:
    """Rouge-L (×100, mean ± std over decoding seeds), parameters and generation speed per method."""
    if df.empty:
        return "(no decoder runs recorded)"
    order = {k: i for i, k in enumerate(DECODER_NAMES)}
    rows = []
    for r in df.sort_values(by="method", key=lambda c: c.map(lambda m: order.get(m, 99))).itertuples():
        train = "–" if r.method == "teacher" else (f"{r.train_set} (proxy)" if r.train_is_proxy else r.train_set)
        std = "" if _missing(r.rougeL_std) or not r.rougeL_std else f" ± {r.rougeL_std:.2f}"
        name = DECODER_NAMES.get(r.method, r.method)
        if r.student not in (None, "svd") and r.method != "teacher" and not _missing(r.student):
            name = name.replace("SVD student", f"dense {r.student}")
        t = "–" if _missing(r.train_s) else f"{r.train_s / 60:.1f} min"
        steps = "–" if _missing(r.steps) else int(r.steps)
        rows.append([f"{r.eval_set} ({r.n_prompts} prompts, {r.decoding})", train, name, f"{r.rougeL:.2f}{std}",
                     f"{r.params / 1e6:.1f} M", f"{r.tokens_per_s:.1f}", steps, t])
    return markdown_table(pd.DataFrame(rows, columns=DECODER_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m makd results", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default="results", help="folder searched for metrics.json (default results)")
    p.add_argument("--csv", help="also write the rows as CSV here")
    args = p.parse_args(argv)
    if not Path(args.folder).is_dir():
        raise MissingInputError(f"no folder {args.folder}: give a folder holding metrics.json files (default: "
                                "results, the committed runs; run from the repository root)")
    df = collect(args.folder)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(markdown(df))
    dec = collect_decoder(args.folder)
    if not dec.empty:
        print()
        print(decoder_markdown(dec))
    return 0
