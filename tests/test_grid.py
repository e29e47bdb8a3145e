"""The grid runner on tiny models and the GLUE fixtures: writes, skips finished cells, resumes an interrupted one."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from makd.assets.runfolder import LOCK_NAME, FolderLock
from makd.core.errors import MissingInputError, RunFolderError
from makd.experiments import grid as G
from makd.experiments import distill as pipeline
from makd.experiments import students
from makd.experiments.config import DistillConfig
from makd.experiments.options import config_from_kwargs
from makd.experiments import stats
from makd.core.factorize import count_parameters

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"teacher": "tiny-bert", "data_dir": str(ROOT / "tests" / "fixtures" / "glue"), "teacher_epochs": 1.0,
          "force_teacher": True, "report_to": "none", "quiet": True, "lr": 1e-3, "batch_size": 2,
          "logging_steps": 1, "save_student": False, "max_steps": 2, "layer_ratio": 0.5}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Fine-tuned tiny teachers go to a per-session cache, never into data/cache."""
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _grid(**shared) -> dict:
    return G.validate_grid({"name": "t", "tasks": ["sst2"], "seeds": [0, 1], "shared": {**SHARED, **shared},
                            "cells": [{"name": "makd", "options": {"objective": "hierarchical"}},
                                      {"name": "kd", "group": "baseline", "options": {"objective": "model-only"}}]})


def _no_run(**options):
    raise AssertionError(f"a finished cell was run again: {options['out']}")


def test_writes_every_cell_then_skips_finished_ones_and_reruns_a_changed_one(tmp_path):
    out = tmp_path / "grid"
    first = G.run_grid(_grid(), out, echo=lambda s: None)
    assert first["counts"] == {"ran": 4, "resumed": 0, "skipped": 0, "error": 0}
    for cell in ("makd", "kd"):
        for seed in (0, 1):
            folder = out / "sst2" / cell / f"s{seed}"
            m = json.loads((folder / "metrics.json").read_text())
            info = json.loads((folder / "cell.json").read_text())
            assert m["train"]["steps"] == 2 and m["record"]["seed"] == seed and info["status"] == "done"
            assert info["cpu_s"] > 0 and info["score"] == m["student"]["metrics"]["accuracy"]
            assert not (folder / "checkpoints").exists()         # only needed to resume: removed when done
    assert json.loads((out / "sst2" / "kd" / "s0" / "metrics.json").read_text())["objective"] == "model-only"
    again = G.run_grid(_grid(), out, run_fn=_no_run, echo=lambda s: None)
    assert again["counts"]["skipped"] == 4 and again["counts"]["ran"] == 0
    changed = _grid()
    changed["cells"][1]["options"]["temperature"] = 4.0          # only the kd cells change
    lines: list[str] = []
    third = G.run_grid(changed, out, seeds=[0], echo=lines.append)
    assert third["counts"] == {"ran": 1, "resumed": 0, "skipped": 1, "error": 0}
    assert any("options changed" in line for line in lines)
    ledger = json.loads((out / "grid_run.json").read_text())
    assert len(ledger["invocations"]) == 3 and ledger["cpu_s"] > 0
    assert G.cpu_seconds(out) > 0


class _Crash(TrainerCallback):
    """Simulates a killed job: raises right after the checkpoint at ``step`` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise RuntimeError("simulated interruption")


def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "grid"
    g = _grid(max_steps=4, save_steps=2)
    g["seeds"], g["cells"] = [0], g["cells"][:1]

    def crashing(**options):
        return pipeline.run(config_from_kwargs(DistillConfig, **options), callbacks=[_Crash(2)])

    first = G.run_grid(g, out, run_fn=crashing, echo=lambda s: None)
    folder = out / "sst2" / "makd" / "s0"
    assert first["counts"]["error"] == 1 and not (folder / "metrics.json").exists()
    assert json.loads((folder / "cell.json").read_text())["status"] == "error"
    assert (folder / "checkpoints" / "checkpoint-2").is_dir()
    assert G.status(folder, json.loads((folder / "cell.json").read_text())["config_hash"]) == "resume"
    second = G.run_grid(g, out, echo=lambda s: None)
    m = json.loads((folder / "metrics.json").read_text())
    assert second["counts"]["resumed"] == 1 and m["train"]["resumed"] and m["train"]["steps"] == 4


def test_budget_of_is_the_dense_students_exact_count_and_options_merge():
    from makd.assets.models import load_model

    teacher, tok = load_model("tiny-bert", head="cls", num_labels=2)
    dense = students.dense_student("layers:1", teacher, tok, 2)
    assert G.budget_of("layers:1", "tiny-bert", 2) == count_parameters(dense) < count_parameters(teacher)
    g = _grid()
    g["cells"][0]["options"]["budget"] = {"budget_of": "layers:1"}
    opts = G.cell_options(g, g["cells"][0], "sst2", 0)
    assert "layer_ratio" not in opts and opts["budget"] == {"budget_of": "layers:1"}   # the cell's size key wins
    resolved = G.resolve_options(opts)
    assert resolved["budget"] == count_parameters(dense) and resolved["budget_of"] == "layers:1"
    assert G.config_hash(resolved) == G.config_hash({**resolved, "out": "elsewhere", "quiet": False})
    dense_cell = {"name": "d", "label": "d", "group": "baseline", "options": {"student": "layers:1"}}
    assert not set(G.SIZE_KEYS) & set(G.cell_options(g, dense_cell, "sst2", 0))


def test_the_config_hash_and_cell_json_do_not_depend_on_where_the_data_folder_lies(tmp_path):
    here, there = _grid(), _grid(data_dir="/elsewhere/glue-data")
    (a,), (b,) = (G.plan(g, only=["makd"], seeds=[0]) for g in (here, there))
    assert a["options"]["data_dir"] != b["options"]["data_dir"]
    assert G.config_hash(a["options"]) == G.config_hash(b["options"]) != G.config_hash({**a["options"], "data_dir": None})
    assert G.portable_options(a["options"])["data_dir"] == "$MAKD_DATA_DIR"
    seen = []

    def fake(**options):                       # a finished run as the pipeline records it
        seen.append(options)
        res = {"task": "sst2", "metric": "accuracy", "student": {"metrics": {"accuracy": 0.5}, "params": 10},
               "teacher": {"metrics": {"accuracy": 0.9}, "params": 20}, "record": {}, "train": {}}
        Path(options["out"], "metrics.json").write_text(json.dumps(res))
        return res
    G.run_grid(here, tmp_path, only=["makd"], seeds=[0], run_fn=fake, echo=lambda s: None)
    info = json.loads((tmp_path / "sst2" / "makd" / "s0" / "cell.json").read_text())
    assert info["options"]["data_dir"] == "$MAKD_DATA_DIR" and seen[0]["data_dir"] == SHARED["data_dir"]
    assert G.status(tmp_path / "sst2" / "makd" / "s0", G.config_hash(b["options"])) == "done"


def test_grid_files_validate_and_errors_are_clear(tmp_path, capsys):
    for path in sorted((ROOT / "grids").glob("*.yaml")):
        assert G.load_grid(path)["cells"], path
    with pytest.raises(ValueError, match="unknown pipeline option"):
        G.validate_grid({"tasks": ["sst2"], "cells": [{"name": "a", "options": {"learning_rate": 1}}]})
    with pytest.raises(ValueError, match="one student size"):
        G.validate_grid({"tasks": ["sst2"], "shared": {"budget": 10, "layer_ratio": 0.5}, "cells": [{"name": "a"}]})
    with pytest.raises(ValueError, match="repeated"):
        G.validate_grid({"tasks": ["sst2"], "cells": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="not in the grid"):
        G.plan(_grid(), only=["nope"])
    assert G.main([str(ROOT / "grids" / "smoke.yaml"), "--out", str(tmp_path), "--list", "--seeds", "0"]) == 0
    listed = capsys.readouterr().out
    assert "sst2/makd/s0 [new]" in listed and "sst2/no-layer/s0" in listed
    assert G.main([str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2


def test_a_grid_file_extends_another_merging_its_shared_options_and_refuses_a_cycle(tmp_path):
    cpu, full = G.load_grid(ROOT / "grids" / "subquadratic-cpu.yaml"), G.load_grid(ROOT / "grids" / "subquadratic.yaml")
    assert cpu["cells"] == full["cells"] and cpu["seeds"] == full["seeds"] and cpu["name"] == "subquadratic-cpu"
    assert cpu["shared"] == {**full["shared"], "block_length": 128, "batch_size": 4, "mixing_tokens": 4096,
                             "hidden_tokens": 4096, "kd_tokens": 4096, "eval_blocks": 32, "passkey_contexts": [256, 512],
                             "passkey_per_cell": 2, "zero_shot_examples": 200}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntasks: [sst2]\ncells: [{name: a}]\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntasks: [sst2]\ncells: [{name: b}]\n")
    with pytest.raises(ValueError, match="'extends' makes a cycle"):
        G.load_grid(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(MissingInputError, match="missing.yaml does not exist"):
        G.load_grid(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: smoke.yaml\ntask_options: {sst2: {lr: 0.01}}\nshared: {max_steps: 1}\n")
    shutil.copy(ROOT / "grids" / "smoke.yaml", tmp_path / "smoke.yaml")
    smoke, d = G.load_grid(tmp_path / "smoke.yaml"), G.load_grid(tmp_path / "d.yaml")
    assert d["cells"] == smoke["cells"] and d["shared"] == {**smoke["shared"], "max_steps": 1}
    assert d["task_options"]["sst2"] == {**smoke["task_options"].get("sst2", {}), "lr": 0.01}


@pytest.mark.parametrize("options, message", [
    ({"weighting": "asvd"}, "cell 'a' (sst2): weighting must be one of 'none', 'activation', 'whiten', 'whiten-sequential', 'whiten-compensated', got 'asvd'"),
    ({"epochs": "one"}, "cell 'a' (sst2): epochs must be a number"),
    ({"weights": {"mhaa": 0}}, "cell 'a' (sst2): weights: unknown aspect(s) ['mhaa']"),
    ({"budget": {"budget_of": "layers:3", "x": 1}}, "cell 'a' (sst2): budget"),
    ({"lerning_rate": 1}, "unknown pipeline option(s) ['lerning_rate']"),
])
def test_a_wrong_option_in_a_grid_file_names_the_cell_before_any_cell_runs(tmp_path, options, message):
    text = json.dumps({"tasks": ["sst2"], "shared": {"teacher": "tiny-bert"},
                       "cells": [{"name": "ok"}, {"name": "a", "options": options}]})
    (tmp_path / "g.json").write_text(text)
    with pytest.raises(ValueError) as err:
        G.run_grid(tmp_path / "g.json", tmp_path / "out", run_fn=_no_run, echo=lambda s: None)
    assert message in str(err.value) and str(tmp_path / "g.json") in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"cell 'makd' \(sst2, seed 0\) with --set .*alpha must be <= 1.0"):
        G.plan(_grid(), overrides={"alpha": 3})
    with pytest.raises(ValueError, match="use KEY=VALUE"):
        G._parse_set(["alpha"])


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    g = _grid()
    g["seeds"] = [0]
    g["cells"] = [{"name": "bad", "label": "bad", "group": "baseline",          # 1 dense layer vs 2: no 1:1 layers
                   "options": {"student": "layers:1", "objective": "hierarchical"}}]
    res = G.run_grid(g, tmp_path, echo=lambda s: None)
    info = json.loads((tmp_path / "sst2" / "bad" / "s0" / "cell.json").read_text())
    assert res["counts"]["error"] == 1 and info["status"] == "error" and "model-only" in info["error"]
    with pytest.raises(ValueError, match="compares layers 1:1"):
        G.run_grid(g, tmp_path, stop_on_error=True, echo=lambda s: None)


def test_a_cell_trained_under_another_teacher_checkpoint_is_flagged(tmp_path):
    sha = {"now": "a" * 64}

    def fake(**options):                       # a finished run as the pipeline records it, teacher sha included
        res = {"task": "sst2", "metric": "accuracy", "student": {"metrics": {"accuracy": 0.5}, "params": 10},
               "teacher": {"metrics": {"accuracy": 0.9}, "params": 20},
               "record": {"teacher_checkpoint_sha256": sha["now"]}, "train": {}}
        Path(options["out"], "metrics.json").write_text(json.dumps(res))
        return res

    first = G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lambda s: None)
    assert first["counts"]["ran"] == 4 and first["teacher_mismatch"] == []
    assert set(stats.collect(tmp_path)["teacher_sha"]) == {"a" * 64}
    (tmp_path / "sst2" / "kd" / "s1" / "metrics.json").unlink()          # re-run one cell on a "fresh machine"
    sha["now"] = "b" * 64
    lines: list[str] = []
    second = G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lines.append)
    assert second["counts"]["ran"] == 1 and second["teacher_mismatch"] == ["sst2"]
    warning = [line for line in lines if "WARNING" in line]
    assert len(warning) == 1 and "bbbbbbbbbbbb differs from the one of 3 finished cell(s) of sst2" in warning[0]


def test_a_teacher_retrained_on_another_cpu_is_noted_not_flagged(tmp_path):
    sha = {"now": "a" * 64, "loss": 0.48231133818626404}

    def fake(**options):                       # same cache key and dev score; dev loss off by float rounding
        res = {"task": "sst2", "metric": "accuracy", "student": {"metrics": {"accuracy": 0.5}, "params": 10},
               "teacher": {"metrics": {"accuracy": 0.9, "loss": sha["loss"]}, "params": 20,
                           "path": "/cache/teachers/minilm-l6-sst2-s0-13f537fef8"},
               "record": {"teacher_checkpoint_sha256": sha["now"]}, "train": {}}
        Path(options["out"], "metrics.json").write_text(json.dumps(res))
        return res

    G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lambda s: None)
    (tmp_path / "sst2" / "kd" / "s1" / "metrics.json").unlink()
    sha.update(now="b" * 64, loss=0.48231154680252075)
    lines: list[str] = []
    second = G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lines.append)
    assert second["teacher_mismatch"] == [] and not [line for line in lines if "WARNING" in line]
    assert any("note: sst2: 2 teacher checkpoints that differ bitwise" in line for line in lines)
    (tmp_path / "sst2" / "kd" / "s1" / "metrics.json").unlink()          # a really different teacher: flagged
    sha.update(now="c" * 64, loss=0.52)
    third = G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lines.append)
    assert third["teacher_mismatch"] == ["sst2"]


def test_a_grid_folder_is_locked_while_a_runner_works_and_a_dead_runners_lock_is_taken_over(tmp_path, capsys):
    with FolderLock(tmp_path, "python -m makd grid grids/smoke.yaml --out x"):
        with pytest.raises(RunFolderError, match=f"{tmp_path} is in use by pid {os.getpid()} since .*grids/smoke"):
            G.run_grid(_grid(), tmp_path, run_fn=_no_run, echo=lambda s: None)
        assert G.main([str(ROOT / "grids" / "smoke.yaml"), "--out", str(tmp_path), "--seeds", "0"]) == 1
        assert "error: " in capsys.readouterr().err and not (tmp_path / "sst2").exists()   # no cell started
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                  "started": "then", "command": "a killed grid"}))
    seen = []

    def fake(**options):
        assert (tmp_path / LOCK_NAME).is_file()                   # held by this runner while its cells run
        seen.append(json.loads((tmp_path / LOCK_NAME).read_text())["pid"])
        res = {"task": "sst2", "metric": "accuracy", "student": {"metrics": {"accuracy": 0.5}, "params": 10},
               "teacher": {"metrics": {"accuracy": 0.9}, "params": 20}, "record": {}, "train": {}}
        Path(options["out"], "metrics.json").write_text(json.dumps(res))
        return res

    assert G.run_grid(_grid(), tmp_path, run_fn=fake, echo=lambda s: None)["counts"]["ran"] == 4
    assert seen == [os.getpid()] * 4 and not (tmp_path / LOCK_NAME).exists()
