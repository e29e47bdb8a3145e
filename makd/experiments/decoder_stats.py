"""``python -m makd decoder-stats OUT``: a decoder comparison trained with several seeds (``python -m makd decoder
--train-seeds ...``), summarised like the GLUE grid: mean ± std over training seeds per method, paired comparisons
over seeds (paired t-test + bootstrap CI, the grid's verdict rule: :func:`makd.experiments.verdicts.direction`),
a prompt-level paired test beside it, the targets of the decoder issue checked from the numbers, and a figure;
``--readme README.md`` rewrites the comparison's block of the README (between the marker lines of
:func:`readme_markers`), so no recorded number there is typed by hand.

Rouge-L is on 0–100; the paired machinery of :mod:`makd.experiments.stats` works on fractions, so differences are
computed on Rouge-L / 100 and reported in points again. The controls (``untrained``, ``init``) are not trained:
one run each, compared with every seed of a method (their value repeated). Beside the scores, the median length
of the generated answers (words): Rouge-L against long references drops when training teaches short replies.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from makd.assets.files import write_json
from makd.core.errors import ArgumentParser, MissingInputError
from makd.experiments.decoder_config import METHODS
from makd.experiments.decoder_table import (  # noqa: F401 (ORDER: for callers, notebook 10)
    LABELS, ORDER, SCORED_ONCE, collect, label, ordered, summary)
from makd.experiments.readme_blocks import read_block, write_block
from makd.experiments.stats import mean_pm_std, paired
from makd.experiments.tables import markdown_table
from makd.experiments.verdicts import describe_diff, direction

TARGETS = {"makd": 0.75, "every method": 0.50}          # share of the teacher's Rouge-L (the issue's targets)


def _by_seed(df: pd.DataFrame, method: str) -> pd.DataFrame:
    return df[df["method"] == method].sort_values("seed")


def compare(df: pd.DataFrame, a: str, b: str) -> dict[str, Any]:
    """Paired comparison of methods ``a`` and ``b`` on Rouge-L/100 over the training seeds they share (a control,
    scored once, is paired with every seed), plus a prompt-level paired t-test over (prompt, seed) pairs."""
    ra, rb = _by_seed(df, a), _by_seed(df, b)
    if a in SCORED_ONCE and len(ra) == 1:            # a trained method with one seed so far is no control
        ra = pd.concat([ra] * len(rb)).assign(seed=rb["seed"].to_numpy())
    if b in SCORED_ONCE and len(rb) == 1:
        rb = pd.concat([rb] * len(ra)).assign(seed=ra["seed"].to_numpy())
    both = ra.merge(rb, on="seed", suffixes=("_a", "_b"))
    if both.empty:
        return {"a": a, "b": b, "n": 0, "seeds_a": ra["seed"].tolist(), "seeds_b": rb["seed"].tolist(),
                "verdict": "no shared training seed yet"}
    res = paired(both["rougeL_a"] / 100, both["rougeL_b"] / 100)
    prompts_a = [x for p in both["per_prompt_a"] if isinstance(p, list) for x in p]
    prompts_b = [x for p in both["per_prompt_b"] if isinstance(p, list) for x in p]
    if prompts_a and len(prompts_a) == len(prompts_b):
        pp = paired(np.asarray(prompts_a) / 100, np.asarray(prompts_b) / 100, n_boot=2000)
        res["prompt_level"] = {k: pp[k] for k in ("n", "mean_diff", "p", "ci_low", "ci_high", "wins")}
    return {"a": a, "b": b, **res, "verdict": direction(res)}


def comparisons(df: pd.DataFrame, method: str = "makd") -> list[dict[str, Any]]:
    """``method`` against every other student method and control present (then any other model, e.g. a run
    copied in for an ablation)."""
    present = ordered(df["method"])
    if method not in present:
        return []
    return [compare(df, method, b) for b in present if b not in ("teacher", method)]


def targets(table: pd.DataFrame) -> list[str]:
    """The issue's targets after training (MaKD ≥ 75 % of the teacher's Rouge-L, every method ≥ 50 %), checked.
    "Every method" is never read as met while one of the four is not in the folder: the line names the missing."""
    lines = []
    trained = [m for m in table.index if m in METHODS]
    missing = [m for m in METHODS if m not in table.index]
    if "makd" in table.index:
        share = table.loc["makd", "share_of_teacher"]
        lines.append(f"MaKD reaches {100 * share:.0f} % of the teacher's Rouge-L (target ≥ "
                     f"{100 * TARGETS['makd']:.0f} %): {'met' if share >= TARGETS['makd'] else 'not met'}.")
    if trained:
        low = [m for m in trained if table.loc[m, "share_of_teacher"] < TARGETS["every method"]]
        shares = ", ".join(f"{m} {100 * table.loc[m, 'share_of_teacher']:.0f} %" for m in low)
        absent = f"{', '.join(missing)} not recorded here" if missing else ""
        if low:
            verdict = f"not met ({'; '.join(filter(None, (shares, absent)))})."
        else:
            verdict = f"met by the methods recorded here ({absent})." if missing else "met."
        lines.append(f"Every trained method ≥ {100 * TARGETS['every method']:.0f} % of the teacher: {verdict}")
    return lines


def report(root: str | Path, df: pd.DataFrame | None = None) -> tuple[str, dict[str, Any]]:
    """The markdown report of a comparison folder and the numbers behind it (``df``: its :func:`collect`, when the
    caller already has it)."""
    df = collect(root) if df is None else df
    table = summary(df)
    extra = [c[:-5] for c in table.columns if c.startswith("rougeL_") and c.endswith("_mean") and c != "rougeL_mean"]
    rows = []
    for m, r in table.iterrows():
        row = [label(m, r["teacher_answers"], r["weights"]), int(r["runs"]),
               mean_pm_std(r["rougeL_mean"], r["rougeL_std"], scale=1, digits=2),
               f"{100 * r['share_of_teacher']:.0f} %"]
        row += [mean_pm_std(r[f"{c}_mean"], r[f"{c}_std"], scale=1, digits=2) for c in extra]
        row += [mean_pm_std(r["response_ce_mean"], r["response_ce_std"], scale=1, digits=3),
                "–" if pd.isna(r["wiki_ppl_mean"]) else mean_pm_std(r["wiki_ppl_mean"], r["wiki_ppl_std"], scale=1),
                "–" if pd.isna(r["answer_words_mean"]) else f"{r['answer_words_mean']:.0f}",
                "–" if pd.isna(r["rep4_mean"]) else f"{100 * r['rep4_mean']:.0f} %",
                f"{r['params'] / 1e6:.1f} M", "–" if pd.isna(r["train_s"]) else
                f"{'≥ ' if r['resumed_only'] else ''}{r['train_s'] / 60:.1f} min"]
        rows.append(row)
    first = df.iloc[0]
    cols = ["model", "runs", f"Rouge-L {first['eval_set']} ({first['n_prompts']})", "of teacher"]
    cols += [f"Rouge-L {c.removeprefix('rougeL_')}" + (" (vs the teacher's answers)" if c == "rougeL_vicuna" else "")
             for c in extra]
    cols += ["response CE", "wiki ppl", "answer words (median)", "rep-4", "params", "train time"]
    comps = comparisons(df)
    def lab(m: str) -> str:
        known = m in table.index
        return label(m, bool(known and table.loc[m, "teacher_answers"]), table.loc[m, "weights"] if known else None)
    me = lab("makd").replace(LABELS["makd"], "MaKD", 1)
    lines = [f"# Decoder comparison: {root}", "", markdown_table(pd.DataFrame(rows, columns=cols)), "",
             "Mean ± std over training seeds (controls: one run); answer words: the median length of the generated "
             f"{first['eval_set']} answers, mean over seeds; rep-4: their share of repeated 4-grams (Welleck et al. "
             "2020's seq-rep-4; a greedy loop scores near 100 %), mean over answers and seeds; train time: mean over "
             "the runs trained in one go (a run resumed from a checkpoint records only its last part: ≥ where every run "
             "of a model was resumed). Paired over "
             "seeds; the verdict needs the bootstrap CI and the paired t-test to agree (the GLUE grid's rule); the "
             "prompt-level test pools (prompt, seed) pairs and is shown for information.", ""]
    for c in comps:
        if not c["n"]:
            lines.append(f"- {me} vs {lab(c['b'])}: {c['verdict']} (MaKD seeds {c['seeds_a']}, "
                         f"{c['b']} seeds {c['seeds_b']}).")
            continue
        pl = c.get("prompt_level")
        extra_pl = (f"; prompt level {100 * pl['mean_diff']:+.2f} points over {pl['n']} pairs, p = {pl['p']:.3g}"
                    if pl else "")
        lines.append(f"- {me} vs {lab(c['b'])}: **{c['verdict']}** — {describe_diff(c)}{extra_pl}.")
    if not comps:
        lines.append("- No MaKD runs yet: no comparison.")
    lines += [""] + [f"- {t}" for t in targets(table)]
    numbers = {"summary": json.loads(table.to_json(orient="index")), "comparisons": comps,
               "targets": targets(table)}
    return "\n".join(lines) + "\n", numbers


def readme_markers(folder: str | Path) -> tuple[str, str]:
    """The marker lines around a comparison's README block, named by its folder as given (``results/...``)."""
    name = Path(folder).as_posix()
    return f"<!-- makd decoder-stats --readme: {name} -->", f"<!-- /makd decoder-stats --readme: {name} -->"


def readme_markdown(folder: str | Path, df: pd.DataFrame | None = None, text: str | None = None) -> str:
    """What ``--readme`` writes: a line naming the comparison (layer ratio, student size, the command), then the
    report's table, comparisons and targets (:func:`report` without its heading; ``text``: that report, when the
    caller already has it — its paired bootstraps are not redone)."""
    df = collect(folder) if df is None else df
    text = report(folder, df)[0] if text is None else text
    students = df[~df["method"].isin(["teacher"])]
    ratios = students["layer_ratio"].dropna().unique()
    what = f"Layer ratio {ratios[0]:g}" if len(ratios) == 1 else f"`{Path(folder).as_posix()}`"
    size = f" ({students['params'].iloc[0] / 1e6:.1f} M parameters)" if len(students) else ""
    head = (f"{what}{size}, as recorded so far (`python -m makd decoder-stats {Path(folder).as_posix()} "
            "--readme README.md` writes this block):")
    return head + "\n\n" + text.split("\n", 2)[2].strip()


def replace_readme_block(text: str, folder: str | Path, block: str) -> str:
    """``text`` with the block of ``folder`` replaced (ValueError saying which lines to add when it has none)."""
    return write_block(text, block, readme_markers(folder), _missing(folder))


def readme_block(text: str, folder: str | Path) -> str:
    """The block of ``folder`` in ``text``, stripped."""
    return read_block(text, readme_markers(folder), _missing(folder))


def _missing(folder: str | Path) -> str:
    start, end = readme_markers(folder)
    return f"no block for {Path(folder).as_posix()}: put the lines {start!r} and {end!r} where it goes"


def plot(df: pd.DataFrame):
    """Rouge-L per method: one dot per training seed, the mean as a bar, the teacher as a dashed line."""
    import matplotlib.pyplot as plt

    methods = [m for m in ordered(df["method"]) if m != "teacher"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, m in enumerate(methods):
        vals = _by_seed(df, m)["rougeL"].to_numpy()
        ax.bar(i, vals.mean(), color="C0" if m not in ("init", "untrained") else "0.7", alpha=0.6)
        ax.scatter(np.full(len(vals), i), vals, color="k", s=12, zorder=3)
    if "teacher" in set(df["method"]):
        ax.axhline(float(df.loc[df["method"] == "teacher", "rougeL"].iloc[0]), color="k", ls="--", lw=1,
                   label="teacher")
        ax.legend()
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("Rouge-L (dots: training seeds)")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m makd decoder-stats", description=__doc__.split("\n\n")[0],
                       epilog="example: python -m makd decoder-stats results/decoder-whiten/ratio-0.8 --write "
                              "--readme README.md")
    p.add_argument("folder", help="the --out folder of a `python -m makd decoder` run")
    p.add_argument("--write", action="store_true", help="also write FOLDER/REPORT.md, FOLDER/summary.json and "
                   "FOLDER/rouge.png")
    p.add_argument("--readme", metavar="FILE", help="rewrite this comparison's block of FILE (between the lines "
                   "<!-- makd decoder-stats --readme: FOLDER --> and <!-- /makd decoder-stats --readme: FOLDER -->)")
    args = p.parse_args(argv)
    if not Path(args.folder).is_dir():
        raise MissingInputError(f"no folder {args.folder}: give the --out folder of `python -m makd decoder`")
    if args.readme and not Path(args.readme).is_file():
        p.error(f"--readme: no file {args.readme!r}")
    df = collect(args.folder)
    text, numbers = report(args.folder, df)
    readme = None
    if args.readme:
        try:
            readme = replace_readme_block(Path(args.readme).read_text(), args.folder,
                                          readme_markdown(args.folder, df, text))
        except ValueError as e:
            p.error(f"--readme {args.readme}: {e}")
    print(text)
    if readme is not None:
        Path(args.readme).write_text(readme)
    if args.write:
        (Path(args.folder) / "REPORT.md").write_text(text)
        write_json(Path(args.folder) / "summary.json", numbers)
        plot(df).savefig(Path(args.folder) / "rouge.png", dpi=120, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
