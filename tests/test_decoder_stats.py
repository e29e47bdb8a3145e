"""The seeded decoder comparison's statistics (``python -m makd decoder-stats``) on hand-made metrics files."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from makd.cli import main as cli
from makd.experiments import decoder_stats as ds
from makd.experiments import decoder_table as dt


def _write(root, run, method, rouge, seed=0, per_prompt=None, ce=4.0, outputs=None, runtime=60, resumed=None,
           config=None):
    d = root / run
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "method": method, "run": run, "eval_set": "selfinst", "train_set": "chatterbot", "params": 100,
        "generation": {}, "response_ce": ce, "wiki_heldout": {"ppl": 50.0, "ce": 3.9},
        "eval": {"rougeL": rouge, "n": 2, "rougeL_per_prompt": per_prompt or [rouge - 1, rouge + 1],
                 **({"outputs": outputs} if outputs is not None else {})},
        "eval_sets": {"vicuna": {"rougeL": rouge / 2}},
        "train": {"seed": seed, "steps": 0 if method in ("teacher", "untrained") else 5, "runtime_s": runtime,
                  **({"resumed": resumed} if resumed is not None else {})},
        "record": {"seed": seed, **({"config": config} if config is not None else {})}}))


@pytest.fixture
def comparison(tmp_path):
    _write(tmp_path, "teacher", "teacher", 20.0)
    _write(tmp_path, "untrained", "untrained", 5.0)
    for seed, (sft, makd) in zip((1, 2, 3), ((8.0, 16.0), (9.0, 15.5), (8.5, 16.5))):
        _write(tmp_path, f"sft/seed-{seed}", "sft", sft, seed)
        _write(tmp_path, f"makd/seed-{seed}", "makd", makd, seed)
    return tmp_path


def test_summary_means_over_seeds_and_share_of_the_teacher(comparison):
    table = ds.summary(ds.collect(comparison))
    assert list(table.index) == ["teacher", "untrained", "sft", "makd"]
    assert table.loc["makd", "rougeL_mean"] == pytest.approx(16.0) and table.loc["makd", "runs"] == 3
    assert table.loc["sft", "rougeL_std"] == pytest.approx(0.5)
    assert table.loc["makd", "share_of_teacher"] == pytest.approx(0.8)
    assert table.loc["makd", "rougeL_vicuna_mean"] == pytest.approx(8.0)


def test_answer_length_is_the_median_in_words_averaged_over_seeds(tmp_path):
    _write(tmp_path, "teacher", "teacher", 20.0, outputs=["one two three", "a b c d e", "x"])
    _write(tmp_path, "sft/seed-1", "sft", 8.0, 1, outputs=["I'm not sure.", "no"])
    _write(tmp_path, "sft/seed-2", "sft", 9.0, 2, outputs=["yes it is", "a b c d e f g"])
    _write(tmp_path, "makd/seed-1", "makd", 9.0, 1)                         # a record without outputs
    df = ds.collect(tmp_path)
    table = ds.summary(df)
    assert table.loc["teacher", "answer_words_mean"] == 3.0
    assert table.loc["sft", "answer_words_mean"] == pytest.approx((2.0 + 5.0) / 2)
    assert table.loc["sft", "answer_words_std"] == pytest.approx(2.1213203)
    assert dt.answer_words([]) is None and dt.answer_words(None) is None
    text, _ = ds.report(tmp_path, df)
    row = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("|")}
    header = row["model"]
    col = header.index("answer words (median)")
    assert row["teacher"][col] == "3" and row["SFT (no teacher)"][col] == "4"
    assert row["MaKD (hierarchical)"][col] == "–"


def test_repetition_is_seq_rep_4_averaged_over_answers_and_seeds(tmp_path):
    """seq-rep-4: 1 − unique/total 4-grams per answer, averaged; a loop near 1, fluent text 0, short answers 0."""
    loop = "the cat sat on " * 6                                            # 24 words, 21 4-grams, 4 unique
    assert dt.repetition([loop]) == pytest.approx(1 - 4 / 21)
    assert dt.repetition(["one two three four five", "a b"]) == 0.0 and dt.repetition(None) is None
    assert dt.repetition(["a b a b a b"], n=2) == pytest.approx(1 - 2 / 5)
    _write(tmp_path, "teacher", "teacher", 20.0, outputs=["one two three four five", loop])
    _write(tmp_path, "makd/seed-1", "makd", 9.0, 1, outputs=[loop, loop])
    _write(tmp_path, "makd/seed-2", "makd", 9.0, 2, outputs=["one two three four", "x"])
    df = ds.collect(tmp_path)
    table = ds.summary(df)
    assert table.loc["teacher", "rep4_mean"] == pytest.approx((1 - 4 / 21) / 2)
    assert table.loc["makd", "rep4_mean"] == pytest.approx((1 - 4 / 21) / 2)   # seeds 1 - 4/21 and 0
    text, _ = ds.report(tmp_path, df)
    row = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("|")}
    assert row["MaKD (hierarchical)"][row["model"].index("rep-4")] == "40 %"


def test_kd_and_makd_on_the_teachers_answers_say_so(tmp_path):
    """--kd-responses teacher: the KD and MaKD rows and verdicts name what they trained on; SFT and SeqKD (whose
    data the option does not change) and the controls keep their labels."""
    teacher = {"kd_responses": "teacher"}
    _write(tmp_path, "teacher", "teacher", 20.0, config=teacher)
    _write(tmp_path, "untrained", "untrained", 5.0, config=teacher)
    for seed in (1, 2):
        _write(tmp_path, f"seqkd/seed-{seed}", "seqkd", 9.0 + seed, seed, config=teacher)
        _write(tmp_path, f"kd/seed-{seed}", "kd", 8.0 + seed, seed, config=teacher)
        _write(tmp_path, f"makd/seed-{seed}", "makd", 8.5 + seed, seed, config=teacher)
    text, _ = ds.report(tmp_path)
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["teacher", "student after the layer-local stage (no end-to-end training)",
                        "KD (token KL) on the teacher's answers", "SeqKD",
                        "MaKD (hierarchical) on the teacher's answers"]
    assert "- MaKD on the teacher's answers vs KD (token KL) on the teacher's answers: **" in text
    assert "- MaKD on the teacher's answers vs SeqKD: **" in text
    gold = tmp_path / "gold"
    _write(gold, "kd/seed-1", "kd", 8.0, 1, config={"kd_responses": "gold"})
    _write(gold, "makd/seed-1", "makd", 8.0, 1)                               # a record before the option
    text, _ = ds.report(gold)
    assert "on the teacher's answers" not in text and "- MaKD vs KD (token KL): " in text


def test_train_time_leaves_out_resumed_runs_when_whole_ones_exist(tmp_path):
    _write(tmp_path, "teacher", "teacher", 20.0)
    _write(tmp_path, "sft/seed-1", "sft", 8.0, 1, runtime=1200)
    _write(tmp_path, "sft/seed-2", "sft", 9.0, 2, runtime=300, resumed=True)       # only its last part
    _write(tmp_path, "sft/seed-3", "sft", 9.0, 3, runtime=1000, resumed=False)
    _write(tmp_path, "kd/seed-1", "kd", 9.0, 1, runtime=400, resumed=True)         # nothing else: its own
    table = ds.summary(ds.collect(tmp_path))
    assert table.loc["sft", "train_s"] == pytest.approx(1100) and table.loc["kd", "train_s"] == pytest.approx(400)
    assert table.loc["kd", "resumed_only"] and not table.loc["sft", "resumed_only"]
    text = ds.readme_markdown(str(tmp_path), ds.collect(tmp_path))          # a last part only: a lower bound
    kd_row = next(ln for ln in text.splitlines() if ln.startswith("| KD"))
    sft_row = next(ln for ln in text.splitlines() if ln.startswith("| SFT"))
    assert kd_row.endswith("| ≥ 6.7 min |") and sft_row.endswith("| 18.3 min |")


def test_paired_over_seeds_with_the_grid_verdict_rule(comparison):
    df = ds.collect(comparison)
    res = ds.compare(df, "makd", "sft")
    assert res["n"] == 3 and res["mean_diff"] == pytest.approx((8 + 6.5 + 8) / 300)
    assert res["verdict"] == "higher" and res["prompt_level"]["n"] == 6
    control = ds.compare(df, "makd", "untrained")              # one control run paired with every seed
    assert control["n"] == 3 and control["mean_b"] == pytest.approx(0.05)
    assert ds.compare(df, "sft", "makd")["verdict"] == "lower"


def test_a_trained_method_with_one_seed_is_paired_on_its_seed_only(tmp_path, capsys):
    _write(tmp_path, "teacher", "teacher", 20.0)
    _write(tmp_path, "untrained", "untrained", 5.0)
    for seed, kd in ((1, 8.0), (2, 9.0)):
        _write(tmp_path, f"kd/seed-{seed}", "kd", kd, seed)
    _write(tmp_path, "seqkd/seed-1", "seqkd", 11.0, 1)
    _write(tmp_path, "makd/seed-2", "makd", 12.0, 2)
    df = ds.collect(tmp_path)
    kd = ds.compare(df, "makd", "kd")                          # MaKD's one seed is not replicated like a control
    assert kd["n"] == 1 and kd["mean_diff"] == pytest.approx(0.03)
    none = ds.compare(df, "makd", "seqkd")
    assert none["n"] == 0 and none["verdict"] == "no shared training seed yet"
    assert ds.compare(df, "makd", "untrained")["n"] == 1       # a control pairs with every seed there is
    assert cli(["decoder-stats", str(tmp_path), "--write"]) == 0
    assert "- MaKD vs SeqKD: no shared training seed yet (MaKD seeds [2], seqkd seeds [1])." in (
        tmp_path / "REPORT.md").read_text()


def test_targets_are_checked_from_the_numbers(comparison):
    lines = ds.targets(ds.summary(ds.collect(comparison)))
    assert lines[0].startswith("MaKD reaches 80 %") and lines[0].endswith("): met.")
    assert lines[1].endswith("not met (sft 42 %; kd, seqkd not recorded here).")   # the fixture: SFT and MaKD


def test_every_method_is_not_met_by_a_folder_without_all_four(comparison):
    table = ds.summary(ds.collect(comparison))                          # SFT (42 %) and MaKD (80 %)
    assert ds.targets(table.drop(index="sft"))[1].endswith(
        "met by the methods recorded here (sft, kd, seqkd not recorded here).")
    four = pd.concat([table, table.loc[["makd"]].rename(index={"makd": "kd"}),
                      table.loc[["makd"]].rename(index={"makd": "seqkd"})])
    assert ds.targets(four)[1].endswith("not met (sft 42 %).")          # all four there: nothing missing to name
    four.loc["sft", "share_of_teacher"] = 0.6
    assert ds.targets(four)[1].endswith("50 % of the teacher: met.")     # all four there, all at 50 % or more


def test_the_command_writes_the_report(comparison, capsys):
    assert cli(["decoder-stats", str(comparison), "--write"]) == 0
    text = (comparison / "REPORT.md").read_text()
    assert "MaKD vs SFT (no teacher): **higher**" in text and "Rouge-L vicuna" in text
    assert json.loads((comparison / "summary.json").read_text())["summary"]["makd"]["runs"] == 3
    assert (comparison / "rouge.png").stat().st_size > 1000
    assert cli(["decoder-stats", str(comparison / "nowhere")]) == 1
    assert "no folder" in capsys.readouterr().err


def test_a_comparison_without_makd_runs_yet_is_reported(tmp_path):
    _write(tmp_path, "teacher", "teacher", 20.0)
    _write(tmp_path, "init", "init", 5.0)
    text, numbers = ds.report(tmp_path)
    assert "No MaKD runs yet" in text and numbers["comparisons"] == []


def test_readme_block_is_rewritten_between_its_markers(comparison, tmp_path, capsys):
    folder = comparison / "ratio"          # a sub-folder name the markers carry
    folder.mkdir()
    for run in ("teacher", "untrained", "sft", "makd"):
        (comparison / run).rename(folder / run)
    start, end = ds.readme_markers(folder)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\nold numbers\n{end}\noutro\n")
    assert cli(["decoder-stats", str(folder), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old numbers" not in text
    block = ds.readme_block(text, folder)
    assert block == ds.readme_markdown(folder) and "MaKD vs SFT (no teacher): **higher**" in block
    assert block.startswith(f"`{folder.as_posix()}` (0.0 M parameters), as recorded")   # no layer ratio recorded
    capsys.readouterr()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        cli(["decoder-stats", str(folder), "--readme", str(readme)])
    assert "put the lines" in capsys.readouterr().err and readme.read_text() == "no markers\n"   # untouched


@pytest.mark.parametrize("folder", ["results/decoder-whiten/ratio-0.8", "results/decoder-whiten512/ratio-0.8",
                                    "results/decoder-whiten512-wiki256/ratio-0.8",
                                    "results/decoder-whiten512-teacherkd/ratio-0.8",
                                    "results/decoder-whiten512/ratio-0.5",
                                    "results/decoder-whiten512-teacherkd/ratio-0.5",
                                    "results/decoder-whiten512-teacherkd-2ep/ratio-0.8",
                                    "results/decoder-whiten512-teacherkd-layermean/ratio-0.8",
                                    "results/decoder-whiten512-teacherkd-3ep/ratio-0.8",
                                    "results/decoder-whiten512-wikiprompts/ratio-0.8",
                                    "results/decoder-whiten512-wikimix/ratio-0.8"])
def test_committed_readme_decoder_block_matches_its_results(folder):
    # the README's decoder-comparison blocks are `python -m makd decoder-stats FOLDER --readme README.md` (run from
    # the repository root, so the markers name the folder as committed)
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    df = ds.collect(root / folder)
    assert ds.readme_block(text, folder) == ds.readme_markdown(folder, df), (
        f"README.md's block of {folder} is stale: regenerate it with python -m makd decoder-stats {folder} --write "
        "--readme README.md")


def test_an_ablation_folder_compares_makd_with_the_default_run_copied_beside_it(tmp_path):
    """A MaKD run with its own --makd-weights is labelled with them; the default-weights MaKD runs copied in under
    another folder name (makd-default/seed-S) are a model of their own, compared with MaKD seed by seed."""
    light = {"kd_responses": "teacher", "makd_weights": {"mha": 0.0666667, "ffn": 0.0666667}}
    _write(tmp_path, "teacher", "teacher", 20.0)
    for seed, (kd, makd, default) in zip((1, 2, 3), ((8.0, 9.0, 8.2), (8.4, 9.6, 8.1), (8.1, 9.2, 8.3))):
        _write(tmp_path, f"kd/seed-{seed}", "kd", kd, seed, config={"kd_responses": "teacher"})
        _write(tmp_path, f"makd/seed-{seed}", "makd", makd, seed, config=light)
        _write(tmp_path, f"makd-default/seed-{seed}", "makd", default, seed, config={"kd_responses": "teacher"})
    df = ds.collect(tmp_path)
    assert sorted(set(df["method"])) == ["kd", "makd", "makd-default", "teacher"]
    table = ds.summary(df)
    assert table.loc["makd-default", "rougeL_mean"] == pytest.approx(8.2) and table.loc["makd-default", "runs"] == 3
    assert table.loc["makd", "weights"] == "mha, ffn 0.0667" and pd.isna(table.loc["makd-default", "weights"])
    assert [c["b"] for c in ds.comparisons(df)] == ["kd", "makd-default"]    # the copied run after the methods
    text, numbers = ds.report(tmp_path, df)
    assert "| MaKD (hierarchical) on the teacher's answers, weights mha, ffn 0.0667 | 3 |" in text
    assert "| MaKD (hierarchical) [default] on the teacher's answers | 3 |" in text
    assert ("- MaKD on the teacher's answers, weights mha, ffn 0.0667 vs MaKD (hierarchical) [default] on "
            "the teacher's answers: **") in text
    assert "makd-default not" not in text and "Every trained method" in text    # not one of the four methods
    assert ds.label("sft") == "SFT (no teacher)" and ds.label("odd-name") == "odd-name"
    assert dt.weights_text({"mha": 0.5, "pred": 2, "ffn": 0.5}) == "mha, ffn 0.5; pred 2" and not dt.weights_text({})
