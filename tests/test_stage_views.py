"""Notebook 11's second half (``makd.notebook.stage_views``): what it reads from a real ``python -m makd
subquadratic`` run on the tiny random Llama — loss curves per stage, the student after stage k, the ranking with
bootstrap intervals over held-out blocks, the pass-key table — and the figures."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from makd.assets.models import load_model
from makd.experiments.subquadratic import run
from makd.experiments.subquadratic_config import SubquadraticConfig
from makd.notebook import stage_views as sv

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("subq")
    for mixer in ("gla", "linear"):
        run(SubquadraticConfig(teacher="tiny-llama", mixer=mixer, block_length=32, batch_size=4, mixing_tokens=256,
                               hidden_tokens=256, kd_tokens=256, eval_blocks=6, eval_batch_size=4,
                               keep_checkpoints=True, save_student=False, quiet=True, out=str(root / mixer)))
    return root


def test_curves_have_every_logged_step_of_every_stage(study):
    runs = sv.read_runs(study, ["gla", "linear", "missing"])
    assert list(runs) == ["gla", "linear"]
    curves = sv.stage_curves(runs)
    assert len(curves) == 2 * 3 * 2                              # 2 mixers x 3 stages x 256 / (4 x 32) steps
    assert set(curves["stage"]) == {"mixing", "hidden", "kd"} and (curves["loss"] > 0).all()
    first = runs["gla"]["stages"]["kd"]["history"][0]
    row = curves[(curves["mixer"] == "gla") & (curves["stage"] == "kd")].iloc[0]
    assert row["loss"] == first["loss"] and row["tokens"] == first["tokens"]
    sv.plot_stage_curves(curves)
    sv.plot_stage_curves(curves[curves["stage"] != "hidden"])    # an empty panel says the stage was off


def test_student_after_stage_holds_that_stages_parameters(study):
    teacher, _ = load_model("tiny-llama", head="lm")
    payload = torch.load(study / "gla" / "checkpoints" / "checkpoint-1" / "stage.pt", weights_only=True)
    student = sv.student_after_stage(study / "gla", teacher, "mixing")
    for name, value in payload["params"].items():
        assert torch.equal(student.get_parameter(name), value), name
    after_kd = sv.student_after_stage(study / "gla", teacher, "kd")
    name = next(iter(payload["params"]))
    assert not torch.equal(after_kd.get_parameter(name), student.get_parameter(name))
    with pytest.raises(ValueError, match="stage must be one of"):
        sv.student_after_stage(study / "gla", teacher, "nope")


def test_student_after_stage_without_checkpoints_says_how_to_keep_them(study, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text((study / "gla" / "metrics.json").read_text())
    teacher, _ = load_model("tiny-llama", head="lm")
    with pytest.raises(FileNotFoundError, match="--keep-checkpoints"):
        sv.student_after_stage(tmp_path / "run", teacher, "mixing")


def test_ranking_intervals_come_from_the_blocks_and_contain_the_estimate(study):
    runs = sv.read_runs(study, ["gla", "linear"])
    table = sv.ranking_table(runs, n_boot=500)
    assert table["model"].iloc[0] == "teacher" and list(table["model"].iloc[1:]) == \
        list(table.iloc[1:].sort_values("top-1", ascending=False)["model"])
    for _, row in table.iloc[1:].iterrows():
        lm = runs[row["model"]]["evaluation"]["student"]["lm"]
        assert row["ppl"] == lm["ppl"] and row["top-1"] == lm["top1"]
        for col in ("ppl", "top-1", "KL"):
            lo, hi = row[f"{col} 95% CI"]
            assert lo <= row[col] <= hi
    blocks = runs["gla"]["evaluation"]["student"]["lm"]["blocks"]
    one = {k: [v[0]] * len(v) for k, v in blocks.items()}        # every block the same: no spread
    boot = sv._bootstrap(one, 100, 0)
    assert np.ptp(boot["ppl"]) == pytest.approx(0.0, abs=1e-9)
    sv.plot_ranking(table)


def test_passkey_table_lists_the_teacher_once():
    cells = [{"context": 256, "depth": d, "accuracy": a, "n": 2} for d, a in ((0.1, 1.0), (0.9, 0.5))]
    runs = {m: {"evaluation": {"teacher": {"passkey": {"cells": cells}}, "student": {"passkey": {"cells": cells}}}}
            for m in ("gla", "mlstm")}
    table = sv.passkey_table(runs)
    assert list(table["model"]) == ["teacher"] * 2 + ["gla"] * 2 + ["mlstm"] * 2
    sv.plot_passkey(table)
    sv.plot_passkey(pd.DataFrame(columns=table.columns))          # no probe: a figure that says so


def test_the_stage_diagram_has_one_panel_per_stage():
    fig = sv.plot_stage_diagram()
    assert [ax.get_title() for ax in fig.axes] == [sv.STAGE_TITLES[s] for s in ("mixing", "hidden", "kd")]
