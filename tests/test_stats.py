"""makd.experiments.{stats,verdicts,teachers,report,figures} on fixed numbers (hand-computed expectations) and on the stored-results fixtures."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from makd import cli
from makd.experiments import figures, report, stats, teachers, verdicts

GRID = Path(__file__).resolve().parent / "fixtures" / "results" / "grid"


def test_summarize_uses_the_sample_std_and_nan_for_one_seed():
    df = _frame({"a": ("method", [1.0, 2.0, 3.0, 4.0]), "b": ("baseline", [0.7])})
    summ = stats.summarize(df).set_index("cell")
    assert (summ.loc["a", "mean"], summ.loc["a", "n"]) == (2.5, 4) and summ.loc["a", "seeds"] == [0, 1, 2, 3]
    assert summ.loc["a", "std"] == pytest.approx(math.sqrt(5 / 3))
    assert summ.loc["b", "mean"] == 0.7 and math.isnan(summ.loc["b", "std"]) and summ.loc["b", "n"] == 1
    assert list(stats.summarize(df.iloc[:0]).columns) == ["task", "cell", *stats.SUMMARY_COLUMNS]


def test_paired_t_matches_the_closed_form():
    # d = (0.02, 0.01, 0.04): mean 0.07/3, sample std 0.01·sqrt(7/3) -> t = sqrt(7) exactly; with 2 degrees of
    # freedom the two-sided p is 1 - t / sqrt(2 + t²) = 1 - sqrt(7)/3.
    res = stats.paired([0.80, 0.82, 0.84], [0.78, 0.81, 0.80])
    assert res["n"] == 3 and res["wins"] == 3
    assert res["mean_diff"] == pytest.approx(0.07 / 3)
    assert res["std_diff"] == pytest.approx(math.sqrt(((0.02 - 0.07 / 3) ** 2 + (0.01 - 0.07 / 3) ** 2
                                                       + (0.04 - 0.07 / 3) ** 2) / 2))
    assert res["t"] == pytest.approx(math.sqrt(7))
    assert res["p"] == pytest.approx(1 - math.sqrt(7) / 3)
    assert 0.01 - 1e-12 <= res["ci_low"] <= res["mean_diff"] <= res["ci_high"] <= 0.04 + 1e-12


def test_paired_sign_and_untestable_cases():
    res = stats.paired([0.5, 0.6], [0.6, 0.8])
    assert res["mean_diff"] == pytest.approx(-0.15) and res["wins"] == 0 and res["t"] < 0
    same = stats.paired([0.7, 0.8], [0.6, 0.7])          # identical differences: no variance, no t
    assert math.isnan(same["t"]) and math.isnan(same["p"]) and same["ci_low"] == pytest.approx(0.1)
    assert same["ci_high"] == pytest.approx(0.1)
    assert "untestable" in verdicts.significance(same["p"])
    assert verdicts.significance(0.01).startswith("significant") and verdicts.significance(0.2).startswith("not")
    with pytest.raises(ValueError):
        stats.paired([1, 2], [1, 2, 3])


def test_bootstrap_ci_of_two_values_is_their_range():
    # d = (0, 1): resample means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> the 95 % interval is [0, 1]
    lo, hi = stats.bootstrap_ci([0.0, 1.0], n_boot=4000, seed=1)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = stats.bootstrap_ci([0.2, 0.2, 0.2])
    assert lo == hi == pytest.approx(0.2)
    assert stats.bootstrap_ci([0.1, 0.3, 0.2], seed=3) == stats.bootstrap_ci([0.1, 0.3, 0.2], seed=3)


def _frame(scores: dict[str, tuple[str, list[float]]]) -> pd.DataFrame:
    rows = [{"task": "t", "cell": c, "label": c, "group": g, "seed": i, "metric": "accuracy", "score": s,
             "relative": s / 0.9, "student_params": 10, "teacher_params": 20, "layer_ratio": 0.5, "teacher": "x", "teacher_score": 0.9,
             "is_proxy": False, "source": "files", "config": {"max_train": 100}}
            for c, (g, vals) in scores.items() for i, s in enumerate(vals)]
    return pd.DataFrame(rows)


def test_summarize_versus_best_baseline_and_ablation_deltas():
    df = _frame({"makd": ("method", [0.80, 0.82, 0.84]), "kd": ("baseline", [0.78, 0.81, 0.80]),
                 "ft": ("baseline", [0.70, 0.71, 0.72]), "svd-none": ("baseline", [0.95, 0.95, 0.95]),
                 "no-layer": ("ablation", [0.79, 0.80, 0.81])})
    summ = stats.summarize(df)
    assert list(summ["cell"])[:2] == ["svd-none", "makd"]             # sorted by mean, best first
    row = summ.set_index("cell").loc["kd"]
    assert row["mean"] == pytest.approx(0.79667, abs=1e-5) and row["std"] == pytest.approx(np.std([.78, .81, .80], ddof=1))
    assert row["setting"] == "train ex. 100"
    vs = stats.versus_best_baseline(df)                                # svd-none excluded: kd is best
    assert list(vs["best_baseline"]) == ["kd"] and vs["t"].iloc[0] == pytest.approx(math.sqrt(7))
    deltas = stats.ablation_deltas(df)
    assert list(deltas["cell"]) == ["no-layer"] and deltas["mean_diff"].iloc[0] == pytest.approx(-0.02)
    assert stats.mean_pm_std(0.8123, 0.0041) == "81.2 ± 0.4" and stats.mean_pm_std(0.8, float("nan")) == "80.0 ± –"


def test_compare_cells_uses_only_common_seeds():
    df = _frame({"a": ("method", [0.8, 0.9, 0.7]), "b": ("baseline", [0.6, 0.7])})
    res = stats.compare_cells(df, "t", "a", "b")
    assert res["seeds"] == [0, 1] and res["mean_diff"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="share no seed"):
        stats.compare_cells(df[df.seed != 0].assign(seed=lambda d: np.where(d.cell == "a", d.seed + 5, d.seed)),
                            "t", "a", "b")


def test_collect_reads_grid_and_plain_result_folders():
    df = stats.collect(GRID)
    assert len(df) == 30 and set(df["seed"]) == {0, 1, 2}
    makd = df[df.cell == "makd"].sort_values("seed")
    assert list(makd["score"]) == [0.78, 0.77, 0.79] and makd["group"].iloc[0] == "method"
    plain = stats.collect(GRID.parent / "rows")
    assert list(plain["cell"]) == ["makd-hierarchical"] and plain["seed"].iloc[0] == 0
    assert stats.collect(GRID / "nothing-here").empty


def test_a_winner_needs_both_the_bootstrap_interval_and_the_t_test():
    # the grid's activation-aware cell: CI [+0.5, +1.7] points excludes 0 but p = 0.093 over 3 seeds
    assert verdicts.direction({"ci_low": 0.005, "ci_high": 0.017, "p": 0.093}) == "no clear difference"
    assert verdicts.direction({"ci_low": 0.005, "ci_high": 0.017, "p": 0.01}) == "higher"
    assert verdicts.direction({"ci_low": -0.02, "ci_high": -0.01, "p": 0.02}) == "lower"
    assert verdicts.direction({"ci_low": -0.01, "ci_high": 0.02, "p": 0.01}) == "no clear difference"
    assert verdicts.direction({"ci_low": 0.01, "ci_high": 0.01, "p": float("nan")}) == "higher"   # identical diffs
    # one seed: the interval is a point and p undefined -> no direction is claimed
    assert verdicts.direction({"n": 1, "ci_low": 0.007, "ci_high": 0.007, "p": float("nan")}) == "untestable"
    one = _frame({"makd": ("method", [0.80]), "kd": ("baseline", [0.79]), "no-layer": ("ablation", [0.70])})
    answers = verdicts.verdicts(one)
    assert "untestable" in answers["baseline"][0] and "higher" not in answers["baseline"][0]
    assert answers["aspects"][0].endswith("one seed: needs more seeds to tell.")


def test_every_initialisation_cell_gets_a_verdict_against_plain_svd():
    df = _frame({"makd": ("method", [0.30, 0.35, 0.33]), "activation": ("ablation", [0.31, 0.33, 0.36]),
                 "whiten": ("ablation", [0.78, 0.79, 0.77]), "whiten-sequential": ("ablation", [0.80, 0.83, 0.79]),
                 "no-layer": ("ablation", [0.20, 0.21, 0.22])})
    lines = verdicts.verdicts(df)["initialisation"]
    assert [line.split(" vs ")[0] for line in lines] == ["t: activation-aware", "t: whitened (teacher-forced)",
                                                          "t: sequentially whitened"]
    assert lines[0].endswith("→ no clear difference.")
    assert lines[1].endswith("→ whitened (teacher-forced) is better.") and "+45.3 points" in lines[1]
    assert lines[2].endswith("→ sequentially whitened is better.")
    assert verdicts.verdicts(df[df.cell.isin(["makd", "no-layer"])])["initialisation"][0].startswith("not answered")


def test_richest_per_task_takes_one_grid_per_task_by_seeds_then_training_length():
    def grid(where, task, seeds, steps, cells=("makd", "no-layer")):
        f = _frame({c: ("method" if c == "makd" else "ablation", [0.8] * seeds) for c in cells})
        return f.assign(task=task, where=where, grid="g", steps=steps)
    runs = pd.concat([grid("results/grid-short", "rt", 3, 16), grid("results/grid", "rt", 3, 94),   # same seeds: longer wins
                      grid("results/grid-one", "sst2", 1, 94), grid("results/grid-glue", "sst2", 3, 94),  # more seeds win
                      grid("results/grid-x", "cola", 3, 94, cells=("makd",)),                          # no ablation cell
                      grid("results/plain", "rt", 5, 500).assign(grid=None)], ignore_index=True)      # not a grid run
    picked, chosen = stats.richest_per_task(runs, "ablation")
    assert chosen == {"rt": "results/grid", "sst2": "results/grid-glue"}
    assert set(zip(picked["task"], picked["where"])) == {("rt", "results/grid"), ("sst2", "results/grid-glue")}
    assert set(picked["cell"]) == {"makd", "no-layer"} and len(picked) == 12
    assert stats.richest_per_task(runs, "budget")[1] == {}


def test_budget_figure_has_one_panel_per_task_with_its_own_teacher_line():
    rows = [{"task": t, "label": lab, "group": "budget", "layer_ratio": r, "mean": 0.7 + r / 10, "std": 0.01,
             "teacher_score": ts, "metric": m}
            for t, ts, m in [("rt", 0.78, "accuracy"), ("cola", 0.40, "matthews")] for lab in ("MaKD", "KD")
            for r in (0.1, 0.5)]
    fig = figures.plot_budget(pd.DataFrame(rows))
    assert [ax.get_title() for ax in fig.axes] == ["rt", "cola"]
    assert [ax.lines[-1].get_ydata()[0] for ax in fig.axes] == pytest.approx([78.0, 40.0])   # dashed teacher line
    assert fig.axes[1].get_ylabel() == "dev matthews (×100)"
    colours = [{c.get_label(): c.lines[0].get_color() for c in ax.containers} for ax in fig.axes]
    assert colours[0] == colours[1] and colours[0]["MaKD"] != colours[0]["KD"]   # one colour per method


def test_grid_table_orders_groups_and_marks_missing_cells():
    df = pd.concat([
        _frame({"makd": ("method", [0.80, 0.82, 0.84]), "kd": ("baseline", [0.78, 0.81, 0.80]),
                "no-layer": ("ablation", [0.79, 0.80, 0.81])}),
        _frame({"makd": ("method", [0.30]), "kd": ("baseline", [0.20])}).assign(task="cola", metric="mcc",
                                                                              teacher_score=0.4)],
        ignore_index=True)
    table = report.grid_table(df)
    assert list(table.columns) == ["group", "cell", "label", "cola (mcc)", "t (accuracy)"]
    assert list(table["cell"]) == ["makd", "kd", "no-layer", "teacher"]
    row = table.set_index("cell")
    assert row.loc["makd", "t (accuracy)"] == "82.0 ± 2.0 (3)" and row.loc["makd", "cola (mcc)"] == "30.0 ± – (1)"
    assert row.loc["no-layer", "cola (mcc)"] == "–"
    assert row.loc["teacher", "t (accuracy)"] == "90.0" and row.loc["teacher", "cola (mcc)"] == "40.0"


def test_report_markdown_and_cli_on_the_fixture_grid(tmp_path, capsys):
    text = report.report_markdown(stats.collect(GRID))
    assert text.startswith("## Cells × tasks") and "| makd | MaKD (hierarchical, reconstructed) |" in text
    assert "## makd vs the best baseline per task" in text and "## Verdicts" in text
    assert "30 runs (rt-polarity 30)" in text
    out = tmp_path / "REPORT.md"
    assert report.main([str(GRID), "--out", str(out), "--csv", str(tmp_path / "runs.csv")]) == 0
    assert out.read_text().strip() == text.strip() == capsys.readouterr().out.strip()
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 30
    assert cli.main(["stats", str(GRID), "--out", str(tmp_path / "via-cli.md")]) == 0     # python -m makd stats
    assert (tmp_path / "via-cli.md").read_text() == out.read_text()
    for argv, msg in [([str(tmp_path / "none")], "no folder"), ([str(GRID), "--tasks", "rte"], "no finished run"),
                      ([str(GRID), "--method", "nope"], "cell 'nope'")]:
        with pytest.raises(SystemExit):
            report.main(argv)
        assert msg in capsys.readouterr().err


RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/REPORT.md")), ids=lambda p: p.parent.name)
def test_committed_grid_reports_match_their_results(path):
    # each committed REPORT.md is `python -m makd stats <folder> --out <folder>/REPORT.md` of the committed runs,
    # byte for byte (--out writes the report and one newline)
    assert path.read_text() == report.report_markdown(stats.collect(path.parent)) + "\n", (
        f"{path} is stale: regenerate it with python -m makd stats {path.parent.relative_to(RESULTS.parent)} "
        f"--out {path.relative_to(RESULTS.parent)}")


def test_budget_comparisons_pit_the_method_against_the_best_other_label_per_ratio():
    rows = []
    for ratio, scores in {0.1: {"MaKD": [0.5, 0.5, 0.5], "KD": [0.7, 0.68, 0.69], "FT": [0.6, 0.62, 0.61],
                                "MaKD, relative MSE": [0.9, 0.9, 0.9]},
                          0.5: {"MaKD": [0.80, 0.82, 0.84], "KD": [0.78, 0.81, 0.80], "FT": [0.70, 0.71, 0.72]}}.items():
        for label, vals in scores.items():
            f = _frame({f"{label}-r{ratio}": ("budget", vals)})
            rows.append(f.assign(label=label, layer_ratio=ratio))
    df = pd.concat(rows, ignore_index=True)
    res = stats.budget_comparisons(df)
    assert list(res["ratio"]) == [0.1, 0.5] and list(res["best_label"]) == ["KD", "KD"]   # variant excluded
    assert res["mean_diff"].iloc[0] == pytest.approx(0.5 - 0.69)
    assert res["t"].iloc[1] == pytest.approx(math.sqrt(7))
    assert stats.budget_comparisons(df, "nobody").empty
    text = report.report_markdown(df)
    assert "## Budget sweep: MaKD vs the best other method at each ratio" in text and "| t | 0.5 | KD | 3 | +2.3 |" in text


def test_report_warns_when_a_task_mixes_teacher_checkpoints():
    df = _frame({"makd": ("method", [0.80, 0.82, 0.84]), "kd": ("baseline", [0.78, 0.81, 0.80])})
    df["teacher_sha"] = "a" * 64
    assert teachers.mixed_teachers(df) == {}
    df.loc[(df.cell == "kd") & (df.seed == 2), "teacher_sha"] = "b" * 64
    assert teachers.mixed_teachers(df) == {"t": {"a" * 12: ["kd/s0", "kd/s1", "makd/s0", "makd/s1", "makd/s2"],
                                              "b" * 12: ["kd/s2"]}}
    assert report.report_markdown(df).startswith("> **Warning — t mixes 2 teacher checkpoints**")
    assert "teacher_sha" in stats.collect(GRID).columns


def test_a_teacher_retrained_on_another_cpu_is_one_teacher_up_to_rounding():
    # same cache key, equal dev score, dev loss equal to 1e-5 relative: float rounding of another CPU, not another
    # teacher (the RTE teacher re-trained on an AMD EPYC: loss 0.82077146 vs 0.82077157, sha256 different)
    df = _frame({"makd": ("method", [0.80, 0.82, 0.84]), "kd": ("baseline", [0.78, 0.81, 0.80])})
    df = df.assign(teacher_sha="a" * 64, teacher_key="minilm-l6-t-s0-123", teacher_loss=0.8207715749740601)
    stray = (df.cell == "kd") & (df.seed == 2)
    df.loc[stray, "teacher_sha"], df.loc[stray, "teacher_loss"] = "b" * 64, 0.8207714557647705
    assert teachers.mixed_teachers(df) == {} and list(teachers.retrained_teachers(df)) == ["t"]
    text = report.report_markdown(df)
    assert text.startswith("> Note — t: 2 teacher checkpoints that differ bitwise but are one teacher re-trained")
    assert "bbbbbbbbbbbb: 1 runs, dev loss 0.8207715" in text and "dev loss within 1.2e-07" in text
    for change in ({"teacher_loss": 0.8208715}, {"teacher_key": "minilm-l6-t-s1-456"}, {"teacher_score": 0.91},
                   {"teacher_loss": float("nan")}, {"teacher_key": None}):
        other = df.copy()
        for col, val in change.items():
            other[col] = other[col].astype(object)
            other.loc[stray, col] = val
        assert list(teachers.mixed_teachers(other)) == ["t"] and teachers.retrained_teachers(other) == {}, change


def test_across_tasks_pools_signs_over_task_seed_pairs():
    df = pd.concat([
        _frame({"makd": ("method", [0.80, 0.82, 0.84]), "activation": ("ablation", [0.81, 0.83, 0.85])}),
        _frame({"makd": ("method", [0.10, 0.20, 0.30]), "activation": ("ablation", [0.15, 0.25, 0.30])}).assign(task="u"),
    ], ignore_index=True)
    r = stats.across_tasks(df, "activation", "makd")
    # 5 wins, 1 tie (dropped): two-sided exact sign test p = 2 · (1/2)^5
    assert (r["tasks"], r["pairs"], r["wins"], r["losses"], r["ties"]) == (["t", "u"], 6, 5, 0, 1)
    assert r["p"] == pytest.approx(2 * 0.5 ** 5)
    assert "| activation vs makd | t, u | 6 | 5 | 0 | 1 | 0.0625 |" in report.report_markdown(df)
    assert math.isnan(stats.across_tasks(df, "makd", "nope")["p"])


def test_readme_table_spells_out_tasks_metrics_and_the_teacher():
    df = pd.concat([
        _frame({"makd": ("method", [0.80, 0.82, 0.84]), "kd": ("baseline", [0.78, 0.81, 0.80])}).assign(
            task="mrpc", metric="f1"),
        _frame({"makd": ("method", [0.30])}).assign(task="cola", metric="matthews_correlation", teacher_score=0.4)],
        ignore_index=True).assign(teacher="minilm-l6")
    lines = report.readme_table(df).splitlines()
    assert lines[0] == "| group | cell | CoLA (MCC) | MRPC (F1) |"
    assert lines[2].startswith("| method | ") and "| 30.0 ± – (1) | 82.0 ± 2.0 (3) |" in lines[2]
    assert lines[3].endswith("| – | 79.7 ± 1.5 (3) |")                      # kd has no CoLA run
    assert lines[-1] == "| teacher | fine-tuned MiniLM-L6 | 40.0 | 90.0 |"


def test_readme_option_rewrites_only_the_marked_block(tmp_path, capsys):
    start, end = report.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n\n{start}\n\n| old | table |\n\n{end}\n\nafter\n")
    assert report.main([str(GRID), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nintro\n\n") and text.endswith(f"{end}\n\nafter\n") and "| old |" not in text
    assert report.readme_block(text) == report.readme_table(stats.collect(GRID))
    assert report.readme_table(stats.collect(GRID)).startswith("| group | cell | rt-polarity (acc.) |")
    capsys.readouterr()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        report.main([str(GRID), "--readme", str(readme)])
    assert "put the lines" in capsys.readouterr().err and readme.read_text() == "no markers\n"   # file untouched


def test_committed_readme_grid_table_matches_the_glue_grid():
    # the README's cells × tasks table is `python -m makd stats results/grid-glue --readme README.md`
    text = (RESULTS.parent / "README.md").read_text()
    assert report.readme_block(text) == report.readme_table(stats.collect(RESULTS / "grid-glue")), (
        "README.md's GLUE table is stale: regenerate it with "
        "python -m makd stats results/grid-glue --out results/grid-glue/REPORT.md --readme README.md")


@pytest.mark.parametrize("folder, markers", [("subquadratic-cpu", report.SUBQUADRATIC_MARKERS),
                                             ("subquadratic-curve", report.CURVE_MARKERS)])
def test_committed_readme_subquadratic_blocks_match_their_grids(folder, markers):
    # the README's subquadratic block and its budget-curve block are `python -m makd stats results/<folder>
    # --readme README.md` (the grid's runs choose the block)
    text = (RESULTS.parent / "README.md").read_text()
    block, chosen = report.readme_markdown(stats.collect(RESULTS / folder))
    assert chosen == markers and report.readme_block(text, markers) == block, (
        f"README.md's block of results/{folder} is stale: regenerate it with python -m makd stats results/{folder} "
        f"--out results/{folder}/REPORT.md --readme README.md")
