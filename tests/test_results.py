"""The README's run tables are generated from metrics.json files."""
from __future__ import annotations

import json

from makd.experiments.results import collect, collect_decoder, decoder_markdown, markdown


def _run(folder, objective, score, proxy=True):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "task": "rt-polarity", "is_proxy": proxy, "source": "embedded", "notes": [], "metric": "accuracy",
        "objective": objective, "teacher": {"metrics": {"accuracy": 0.8}, "params": 22_700_000},
        "student": {"metrics": {"accuracy": score}, "params": 15_000_000, "layer_ratio": 0.5},
        "relative_to_teacher": score / 0.8, "train": {"steps": 10, "runtime_s": 120.0},
        "record": {"config": {"command": f"python -m makd distill --objective {objective}"}, "seed": 0}}))


def test_collect_and_markdown(tmp_path):
    _run(tmp_path / "a", "hierarchical", 0.78)
    _run(tmp_path / "b", "none", 0.5)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text(json.dumps({"unrelated": 1}))
    df = collect(tmp_path)
    assert len(df) == 2 and set(df.objective) == {"hierarchical", "none"}
    table = markdown(df)
    assert "rt-polarity (proxy for SST-2)" in table and "| 80.0 | 100 |" in table
    assert "SVD student + MaKD (hierarchical) | accuracy | 78.0 | 97.5 |" in table
    assert "`python -m makd distill --objective none`" in table


def test_grid_runs_are_left_to_the_grid_summary(tmp_path):
    _run(tmp_path / "rt" / "makd", "hierarchical", 0.78)
    _run(tmp_path / "grid" / "rt" / "makd" / "s0", "hierarchical", 0.70)
    (tmp_path / "grid" / "grid_run.json").write_text("{}")
    assert list(collect(tmp_path).student_score) == [0.78]
    assert list(collect(tmp_path / "grid").student_score) == [0.70]     # asked for directly: listed


def test_squad_scores_are_already_points(tmp_path):
    d = tmp_path / "squad" / "makd"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "task": "squad-v1.1", "metric": "f1", "objective": "hierarchical",
        "teacher": {"metrics": {"exact_match": 60.0, "f1": 70.25}, "params": 22_000_000},
        "student": {"metrics": {"exact_match": 55.5, "f1": 66.0}, "params": 17_000_000}}))
    table = markdown(collect(tmp_path))
    assert "| teacher (fine-tuned) | EM / F1 | 60.0 / 70.2 |" in table
    assert "| EM / F1 | 55.5 / 66.0 |" in table and "7025" not in table


def test_decoder_table(tmp_path):
    gen = {"do_sample": False, "seeds": [0], "max_new_tokens": 48}
    for method, score, steps in (("teacher", 30.0, None), ("makd", 21.5, 16), ("sft", 18.25, 16)):
        d = tmp_path / "dec" / method
        d.mkdir(parents=True)
        body = {"method": method, "eval_set": "selfinst", "train_set": "chatterbot", "train_is_proxy": True,
                "generation": gen, "params": 134_500_000 if method == "teacher" else 95_000_000,
                "eval": {"rougeL": score, "rougeL_std": 0.0, "tokens_per_s": 50.0, "n": 20}}
        if steps:
            body.update(student="svd", train={"steps": steps, "runtime_s": 90.0})
        (d / "metrics.json").write_text(json.dumps(body))
    df = collect_decoder(tmp_path)
    table = decoder_markdown(df).splitlines()
    assert [line.split(" | ")[2] for line in table[2:]] == [
        "teacher", "SVD student + SFT (no teacher)", "SVD student + MaKD (hierarchical)"]
    assert "| selfinst (20 prompts, greedy) | chatterbot (proxy) | SVD student + MaKD (hierarchical) | 21.50 | 95.0 M |" in table[4]
    assert collect(tmp_path).empty                                   # decoder files are not encoder rows
