"""The budget curve of a subquadratic student (``makd.experiments.subquadratic_curve``): the per-budget summary,
the paired comparison with the budget below, the labelled extrapolation and the report / README sections, on
synthetic runs whose answer is known."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from makd.experiments import subquadratic_curve as sc
from makd.experiments.report import (CURVE_MARKERS, SUBQUADRATIC_MARKERS, readme_block, readme_markdown,
                                     replace_readme_block, report_markdown)
from makd.experiments.stats import COLUMNS

TEACHER_PPL = 35.0
WOBBLE = (0.0, 0.004, -0.003)


def curve_runs(points: dict[int, tuple[float, float]], seeds=(0, 1, 2), group="budget") -> pd.DataFrame:
    """points: tokens per stage -> (ppl ratio, top-1) at seed 0; other seeds wobble a little."""
    rows = []
    for tokens, (ratio, top1) in points.items():
        for seed in seeds:
            w = WOBBLE[seed] * (1 + tokens / 4096)
            rows.append({**{c: None for c in COLUMNS}, "task": "wiki", "cell": f"linear-{tokens}",
                         "label": f"linear, {tokens:,} tokens per stage", "group": group, "seed": seed,
                         "metric": "top1", "score": top1 + w, "ppl": TEACHER_PPL * ratio * (1 + w),
                         "teacher_ppl": TEACHER_PPL, "kl": 2.0 * ratio / 10 + w, "cpu_s": 100.0,
                         "config": {"mixer": "linear", "mixing_tokens": tokens, "hidden_tokens": tokens,
                                    "kd_tokens": tokens},
                         "student_params": 134_000_000, "teacher_params": 134_000_000, "is_proxy": False,
                         "teacher": "smollm2-135m-instruct"})
    return pd.DataFrame(rows, columns=COLUMNS)


# ratio halves and top-1 gains 10 points with every 4x tokens: exact lines on log axes
POINTS = {1024: (40.0, 0.10), 4096: (20.0, 0.20), 16384: (10.0, 0.30)}


def test_the_curve_summarises_each_budget_over_seeds_in_token_order():
    df = curve_runs({16384: POINTS[16384], 1024: POINTS[1024], 4096: POINTS[4096]})
    curve = sc.token_curve(df)
    assert list(curve["stage_tokens"]) == [1024, 4096, 16384] and list(curve["total_tokens"]) == [3072, 12288, 49152]
    assert list(curve["n"]) == [3, 3, 3]
    assert curve["ppl_ratio_mean"].round(6).tolist() == pytest.approx([40.0 * (1 + sum(WOBBLE) / 3 * 1.25), 20.0 * (1 + sum(WOBBLE) / 3 * 2), 10.0 * (1 + sum(WOBBLE) / 3 * 5)], rel=1e-6)
    assert curve["teacher_ppl"].tolist() == [TEACHER_PPL] * 3
    assert curve["vs_below"].iloc[0] == "" and curve["vs_below"].iloc[1].startswith("+10.")
    assert curve["vs_below"].iloc[1].endswith("(higher)")


def test_a_curve_with_no_budget_cells_is_empty_and_the_report_leaves_it_out():
    df = curve_runs(POINTS, group="method")
    assert sc.token_curve(df).empty and sc.curve_markdown(df) == ""
    assert "How far the token budget gets" not in report_markdown(df)


def test_the_extrapolation_solves_the_lines_on_log_axes_and_refuses_a_flat_curve():
    curve = sc.token_curve(curve_runs(POINTS, seeds=(0,)))
    ext = sc.extrapolate(curve)
    # ratio = 40 * (t / 1024)^(-1/2): 1.5 at t = 1024 * (40 / 1.5)^2
    assert ext["ppl"]["tokens_per_stage"] == pytest.approx(1024 * (40 / 1.5) ** 2, rel=1e-9)
    assert math.exp(ext["ppl"]["slope_per_doubling"]) == pytest.approx(2 ** -0.5)
    # top-1 = 0.10 + 0.10 * log4(t / 1024): 0.60 at t = 1024 * 4^5
    assert ext["top1"]["tokens_per_stage"] == pytest.approx(1024 * 4 ** 5, rel=1e-9)
    worse = sc.token_curve(curve_runs({1024: (10.0, 0.3), 4096: (20.0, 0.2)}, seeds=(0,)))
    assert sc.extrapolate(worse) == {"ppl": None, "top1": None}
    assert sc.extrapolate(curve.iloc[:1]) == {"ppl": None, "top1": None}


def test_the_report_says_whether_the_largest_budget_meets_the_targets():
    text = report_markdown(curve_runs(POINTS))
    assert "## How far the token budget gets" in text and "The study's findings" not in text
    assert "target ≤ 1.5×: not met" in text and "target ≥ 60 %: not met" in text
    assert "Extrapolation (a straight line on log axes through 3 budgets' means" in text
    assert "| linear, 16,384 tokens per stage | 16,384 | 3 |" in text
    met = report_markdown(curve_runs({1024: (3.0, 0.5), 4096: (1.4, 0.65)}))
    assert "target ≤ 1.5×: met" in met and "target ≥ 60 %: met" in met


def test_the_readme_block_of_a_curve_grid_has_its_own_markers():
    df = curve_runs(POINTS)
    block, markers = readme_markdown(df)
    assert markers == CURVE_MARKERS != SUBQUADRATIC_MARKERS
    assert not block.startswith("##") and "9 runs, 3 seeds per budget, 0.2 CPU-hours." in block
    readme = f"{SUBQUADRATIC_MARKERS[0]}\nstudy\n{SUBQUADRATIC_MARKERS[1]}\n{markers[0]}\nold\n{markers[1]}\n"
    new = replace_readme_block(readme, block, markers)
    assert readme_block(new, markers) == block and readme_block(new, SUBQUADRATIC_MARKERS) == "study"


def test_the_curve_figure_draws_both_panels_on_log_token_axes_with_the_targets():
    from makd.experiments.figures import plot_token_curve
    fig = plot_token_curve(sc.token_curve(curve_runs(POINTS)))
    left, right = fig.axes
    assert left.get_xscale() == right.get_xscale() == "log" and left.get_yscale() == "log"
    assert list(left.lines[0].get_xdata()) == [1024, 4096, 16384]
    assert [round(v, 6) for v in right.lines[0].get_ydata()] == [round(100 * v, 6) for v in sc.token_curve(curve_runs(POINTS))["top1_mean"]]
    assert {t.get_text() for t in left.get_legend().get_texts()} == {"target 1.5×"}
    empty = plot_token_curve(pd.DataFrame())
    assert empty.axes[0].texts[0].get_text() == "no budget curve runs"
