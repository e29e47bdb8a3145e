"""The subquadratic study's findings tested on a grid (``makd.experiments.subquadratic_findings``): verdicts that
follow the numbers — agrees, disagrees, inconclusive, not tested — on synthetic grids whose answer is known, and the
findings section of ``python -m makd stats``'s report."""
from __future__ import annotations

import pandas as pd
import pytest

from makd.experiments import subquadratic_findings as sf
from makd.experiments.report import (README_MARKERS, SUBQUADRATIC_MARKERS, readme_block, readme_markdown,
                                     replace_readme_block, report_markdown)
from makd.experiments.stats import COLUMNS

NOISE = (0.0, 0.004, -0.003)           # per seed, shared by all cells: paired differences are exact


def grid(means: dict[str, float], jitter: dict[str, tuple[float, float, float]] | None = None) -> pd.DataFrame:
    rows = []
    for cell, mean in means.items():
        mixer = cell.split("-")[0]
        for seed, noise in enumerate(NOISE):
            extra = (jitter or {}).get(cell, (0.0, 0.0, 0.0))[seed]
            rows.append({**{c: None for c in COLUMNS}, "task": "wiki", "cell": cell, "label": cell, "seed": seed,
                         "group": "ablation" if "-" in cell else "method", "metric": "top1",
                         "score": mean + noise + extra, "config": {"mixer": mixer}, "cpu_s": 60.0,
                         "student_params": 150_000_000, "teacher_params": 135_000_000, "is_proxy": False,
                         "teacher": "smollm2-135m-instruct"})
    return pd.DataFrame(rows, columns=COLUMNS)


WOBBLE = (0.001, -0.001, 0.0005)       # makes paired differences vary (a t-test needs spread)
STUDY = {"mlstm": 0.50, "gla": 0.495, "metala": 0.49, "retnet": 0.45, "deltanet": 0.44, "gated_deltanet": 0.46,
         "mamba2": 0.43, "linear": 0.30}
ABLATIONS = {f"{m}{suffix}": base + delta for m, base in (("gla", 0.495), ("mlstm", 0.50), ("linear", 0.30))
             for suffix, delta in (("-no-hidden", -0.10), ("-no-mixing", -0.005), ("-random", -0.15),
                                   ("-kd-only", -0.12))}


def _verdicts(df) -> dict[str, str]:
    table = sf.findings_table(df)
    assert list(table.columns) == ["the study's finding", "ours", "verdict"]
    return dict(zip(table["the study's finding"], table["verdict"]))


def test_a_grid_shaped_like_the_study_agrees_with_every_finding():
    jitter = {c: WOBBLE for c in [*STUDY, *ABLATIONS] if c not in ("mlstm", "gla", "linear")}
    df = grid({**STUDY, **ABLATIONS}, jitter={**jitter, "gla": (0.01, -0.012, 0.008),    # GLA and MetaLA within
                                              "metala": (0.012, -0.01, 0.004)})          # noise of mLSTM
    v = _verdicts(df)
    assert v["xLSTM (mLSTM) is the best student"] == "inconclusive (mLSTM clearly higher than 5 of 7)"   # two ties
    assert v["GLA and MetaLA are close to the best"] == "agrees"
    assert v["plain kernel linear attention struggles"] == "agrees"
    assert v["hidden-state alignment is the most reliable gain"] == "agrees"
    assert v["QKV copying helps"] == "agrees"
    assert v["QKV copying is not sufficient alone (all stages vs QKV copy + stage 3 only)"] == "agrees"
    assert v["matrix mixing gives limited gains"] == "agrees"


def test_mlstm_clearly_best_agrees_and_a_winning_linear_attention_disagrees():
    far = {**STUDY, "gla": 0.40}
    assert _verdicts(grid(far, {c: WOBBLE for c in far if c != "mlstm"}))["xLSTM (mLSTM) is the best student"] == "agrees"
    flipped = {**STUDY, "linear": 0.60}
    v = _verdicts(grid(flipped, {c: WOBBLE for c in flipped if c != "mlstm"}))
    assert v["xLSTM (mLSTM) is the best student"] == "disagrees"
    assert v["plain kernel linear attention struggles"] == "disagrees"
    assert v["GLA and MetaLA are close to the best"] == "disagrees"


def test_gla_and_metala_are_read_one_by_one_and_a_missing_one_is_named():
    wob = {c: WOBBLE for c in STUDY if c != "mlstm"}
    low = {**STUDY, "metala": 0.40}                                       # MetaLA clearly below the best
    table = sf.findings_table(grid(low, wob)).set_index("the study's finding")
    assert table.loc["GLA and MetaLA are close to the best", "verdict"] == "disagrees"
    assert "best (mlstm) − gla" in table.loc["GLA and MetaLA are close to the best", "ours"]
    assert "best (mlstm) − metala: +10.0 points" in table.loc["GLA and MetaLA are close to the best", "ours"]
    without = {k: v for k, v in STUDY.items() if k != "metala"}
    v = _verdicts(grid(without, {**wob, "gla": (0.01, -0.012, 0.008)}))
    assert v["GLA and MetaLA are close to the best"] == "agrees (for gla only; cells missing: metala)"
    top = {**STUDY, "metala": 0.60}
    table = sf.findings_table(grid(top, {c: WOBBLE for c in top if c != "metala"})).set_index("the study's finding")
    assert table.loc["GLA and MetaLA are close to the best", "ours"].startswith("best (metala) − gla: +10.5 points")
    assert table.loc["GLA and MetaLA are close to the best", "ours"].endswith("; metala is the best by mean")
    assert table.loc["GLA and MetaLA are close to the best", "verdict"] == "disagrees"   # GLA clearly below MetaLA
    assert _verdicts(grid({"retnet": 0.4, "mlstm": 0.5}))["GLA and MetaLA are close to the best"] == \
        "not tested (cells missing: gla, metala)"


def test_ablations_that_go_the_other_way_disagree():
    flipped = {**STUDY, **ABLATIONS, "gla-no-hidden": 0.60, "mlstm-random": 0.70, "linear-no-mixing": 0.45}
    v = _verdicts(grid(flipped, {c: WOBBLE for c in flipped if "-" in c}))
    assert v["hidden-state alignment is the most reliable gain"] == "disagrees"
    assert v["QKV copying helps"] == "disagrees"
    assert v["matrix mixing gives limited gains"].startswith("disagrees (stage 1 is a clear, larger gain for 1 of 3")


def test_missing_cells_are_not_tested_and_say_which():
    v = _verdicts(grid({"gla": 0.4, "retnet": 0.3}))
    assert v["xLSTM (mLSTM) is the best student"] == "not tested (cells missing: mlstm)"
    assert v["plain kernel linear attention struggles"] == "not tested (cells missing: linear)"
    assert v["QKV copying helps"].startswith("not tested (cells missing: gla-random")
    assert set(_verdicts(grid({"gla": 0.4})).values()) >= {"not tested"}


def test_the_stats_report_of_a_subquadratic_grid_has_the_findings_section():
    df = grid({**STUDY, **ABLATIONS}, {c: WOBBLE for c in ABLATIONS})
    assert sf.is_subquadratic(df) and not sf.is_subquadratic(df.assign(config=[{}] * len(df)))
    text = report_markdown(df)
    assert "## The study's findings (arXiv 2504.14366) vs ours" in text and "## Verdicts" not in text
    assert "| hidden-state alignment is the most reliable gain |" in text
    with pytest.raises(KeyError):
        sf.findings_table(df.drop(columns=["score"]))


def test_the_readme_block_of_a_subquadratic_grid_holds_its_table_and_findings_under_their_own_markers():
    df = grid({**STUDY, **ABLATIONS}, {c: WOBBLE for c in ABLATIONS})
    block, markers = readme_markdown(df)
    assert markers == SUBQUADRATIC_MARKERS != README_MARKERS
    assert "held-out Wikipedia (top-1 agreement with the teacher)" in block and "| xLSTM (mLSTM) is the best" in block
    assert f"{len(df)} runs, 3 seeds per cell, {len(df) * 60 / 3600:.1f} CPU-hours" in block
    short = df.drop(index=df.index[(df["cell"] == "gla") & (df["seed"] == df["seed"].max())])  # one seed fewer
    assert f"{len(short)} runs, 2–3 seeds per cell" in readme_markdown(short)[0]
    assert "| hidden-state alignment is the most reliable gain | " in block
    readme = f"intro\n{README_MARKERS[0]}\nGLUE\n{README_MARKERS[1]}\n{markers[0]}\nold\n{markers[1]}\n"
    new = replace_readme_block(readme, block, markers)
    assert readme_block(new, markers) == block and readme_block(new) == "GLUE"      # the GLUE block untouched
    plain = df.assign(config=[{}] * len(df))
    assert readme_markdown(plain)[1] == README_MARKERS


def test_a_single_paired_seed_is_never_read_as_closeness_or_limited_gain():
    one = grid({**STUDY, **ABLATIONS}).query("seed == 0")
    v = _verdicts(one)
    assert v["GLA and MetaLA are close to the best"] == ("inconclusive (2 of 2 comparisons on a single paired seed: "
                                                         "untestable)")
    assert v["matrix mixing gives limited gains"].startswith("inconclusive (3 of 3 comparisons on a single paired seed")
    assert v["xLSTM (mLSTM) is the best student"].startswith("inconclusive")
