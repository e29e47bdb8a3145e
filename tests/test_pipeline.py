"""The encoder pipeline end to end on tiny random models and the committed GLUE fixtures (seconds each)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from makd.assets.runfolder import LOCK_NAME
from makd.experiments import distill as pipeline
from makd.experiments import students
from makd.experiments.config import DistillConfig
from makd.experiments.options import config_from_kwargs
from makd.core.checkpoint import load_student
from makd.core.losses import NonFiniteLossError
from makd.core.trainer import StopAtStep

ROOT = Path(__file__).resolve().parent.parent
REAL_CACHE = os.environ.get("MAKD_CACHE_DIR")
FIXTURES = ROOT / "tests" / "fixtures" / "glue"
BASE = dict(task="sst2", data_dir=str(FIXTURES), teacher="tiny-bert", teacher_epochs=1.0, force_teacher=True,
            report_to="none", quiet=True, lr=1e-3, batch_size=2, logging_steps=1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Fine-tuned tiny teachers go to a per-session cache, never into data/cache."""
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _args(out: Path, **kw) -> DistillConfig:
    return config_from_kwargs(DistillConfig, **{**BASE, "out": str(out), **kw})


def test_end_to_end_writes_metrics_run_record_and_every_loss_term(tmp_path):
    res = pipeline.distill(**BASE, out=str(tmp_path / "run"), max_steps=3, objective="hierarchical")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["task"] == "sst2" and saved["objective"] == "hierarchical" and saved["train"]["steps"] == 3
    assert 0 <= saved["student"]["metrics"]["accuracy"] <= 1
    assert saved["student"]["params"] < saved["teacher"]["params"]
    assert abs(saved["student"]["layer_ratio"] - 0.5) < 0.05
    rec = saved["record"]
    for key in ("config", "seed", "git", "libraries", "data_files_sha256", "teacher_checkpoint_sha256"):
        assert key in rec, key
    assert any(p.endswith("SST-2/dev.tsv") for p in rec["data_files_sha256"])
    assert str(tmp_path) not in json.dumps(rec) and str(ROOT) not in json.dumps(rec)   # no machine paths
    assert rec["config"]["data_dir"] == "$MAKD_DATA_DIR" and "$MAKD_DATA_DIR/SST-2/dev.tsv" in rec["data_files_sha256"]
    text = (tmp_path / "run" / "metrics.json").read_text()   # the whole file: teacher folder and source too
    assert str(tmp_path) not in text and str(ROOT) not in text and str(os.environ["MAKD_CACHE_DIR"]) not in text
    assert saved["teacher"]["path"].startswith("$MAKD_CACHE_DIR/teachers/") and res["teacher"]["path"].startswith("/")
    logged = set().union(*[set(e) for e in saved["train"]["history"]])
    # hierarchical on 2 layers: matrix aspects on layer 0, layer aspects on layer 1, the model aspect
    assert {"loss_mha", "loss_ffn", "loss_attn", "loss_hidn", "loss_pred", "loss_kd", "loss_ce"} <= logged
    assert res["student"]["params"] == saved["student"]["params"]
    student = load_student(tmp_path / "run" / "student")
    assert sum(p.numel() for p in student.parameters()) == saved["student"]["params"]


def test_svd_student_without_training_and_dense_student(tmp_path):
    none = pipeline.distill(**BASE, out=str(tmp_path / "none"), objective="none")
    assert none["train"]["steps"] == 0
    dense = pipeline.distill(**BASE, out=str(tmp_path / "dense"), objective="model-only", student="layers:1",
                             max_steps=2)
    assert dense["student"]["params"] < dense["teacher"]["params"] and dense["train"]["steps"] == 2


def test_group_by_length_batches_by_length_and_keys_its_own_teacher(tmp_path):
    from transformers import TrainerCallback

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen["strategy"] = args.train_sampling_strategy

    plain = pipeline.distill(**BASE, out=str(tmp_path / "plain"), max_steps=2)
    grouped = pipeline.run(_args(tmp_path / "grouped", max_steps=2, group_by_length=True), callbacks=[Spy()])
    assert seen["strategy"] == "group_by_length"
    assert grouped["record"]["config"]["group_by_length"] is True
    # a teacher trained with grouped batches is another teacher; one trained without keeps its old cache key
    assert grouped["teacher"]["path"] != plain["teacher"]["path"]
    info = lambda r: json.loads((Path(r["teacher"]["path"]) / "teacher_info.json").read_text())["settings"]
    assert info(grouped)["group_by_length"] is True and "group_by_length" not in info(plain)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_student(folder).state_dict().items()}


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    full = _args(tmp_path / "full", max_steps=4, save_steps=2, objective="hierarchical")
    pipeline.run(full)
    cut = _args(tmp_path / "cut", max_steps=4, save_steps=2, objective="hierarchical")
    pipeline.run(cut, callbacks=[StopAtStep(2)])          # "interrupted" after a checkpoint at step 2
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-2").is_dir()
    # as after kill -9 while saving step 4 on a full disk: an empty checkpoint-4/ and the dead run's lock
    (tmp_path / "cut" / "checkpoints" / "checkpoint-4").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "cut" / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                           "started": "then", "command": "killed"}))
    resumed = pipeline.run(_args(tmp_path / "cut", max_steps=4, save_steps=2, objective="hierarchical",
                                 resume=True))
    assert resumed["train"]["resumed"] and resumed["train"]["steps"] == 4
    assert not (tmp_path / "cut" / LOCK_NAME).exists()    # taken over, then released
    a, b = _weights(tmp_path / "full" / "student"), _weights(tmp_path / "cut" / "student")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("kw, expected", [
    (dict(task="nope"), "task must be one of"),
    (dict(task="rte", data_dir="{empty}"), "RTE"),
    (dict(budget=100), "below the floor"),
    (dict(rank=10_000), "rank"),
    (dict(weights={"foo": 1.0}), "unknown aspect"),
    (dict(student="layers:9"), "K must be an int"),
    (dict(student="layers:1", objective="hierarchical"), "compares layers 1:1"),
    (dict(teacher="{three-label teacher}"), "classification head with 3 label(s)"),
])
def test_bad_input_fails_before_training_with_one_clear_message(tmp_path, kw, expected):
    if kw.get("data_dir") == "{empty}":
        kw = {**kw, "data_dir": str(tmp_path)}
    if kw.get("teacher") == "{three-label teacher}":                # a checkpoint whose head does not fit sst2
        from makd.assets.models import load_model
        model, tok = load_model("tiny-bert", head="cls", num_labels=3)
        model.save_pretrained(tmp_path / "t3")
        tok.save_pretrained(tmp_path / "t3")
        kw = {**kw, "teacher": str(tmp_path / "t3")}
    with pytest.raises((ValueError, FileNotFoundError, OSError)) as err:      # never SystemExit: a library
        pipeline.distill(**{**BASE, **kw, "out": str(tmp_path / "run")})
    assert expected.lower() in str(err.value).lower()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="unknown option"):
        pipeline.distill(taks="sst2")


@pytest.mark.parametrize("kw, message", [
    (dict(weighting="asvd"), "weighting must be one of 'none', 'activation', 'whiten', 'whiten-sequential', 'whiten-compensated', got 'asvd'"),
    (dict(weights='{"mha": 0'), "not valid JSON"),
    (dict(epochs="3"), "epochs must be a number"),
    (dict(objective="hierarchical", layer_ratio=0.5, budget=0.5), "give only one of"),
])
def test_a_wrong_value_is_a_value_error_before_any_model_or_data_is_loaded(tmp_path, monkeypatch, kw, message):
    def refuse(*a, **k):
        raise AssertionError("a model or data set was loaded before the options were checked")

    for module, name in ((pipeline, "load_task"), (pipeline, "finetune_teacher"), (students, "load_model")):
        monkeypatch.setattr(module, name, refuse)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline.distill(**{**BASE, **kw, "out": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


def test_json_weights_reach_the_objective_as_a_mapping():
    cfg = config_from_kwargs(DistillConfig, weights='{"mha": 0, "ffn": 0}')
    objective = students.objective_from(cfg, 2)
    assert cfg.weights == {"mha": 0, "ffn": 0}
    assert not {"mha", "ffn"} & set(objective.weights) and {"attn", "hidn", "pred"} <= set(objective.weights)


def test_vocabulary_mismatch_is_refused(tmp_path, monkeypatch):
    # minilm-l3 (BERT uncased vocabulary, 30,522 tokens) cannot learn from tiny-bert's 99-token vocabulary;
    # refused in the preflight, so nothing is fine-tuned into the real cache
    if REAL_CACHE:
        monkeypatch.setenv("MAKD_CACHE_DIR", REAL_CACHE)
    else:
        monkeypatch.delenv("MAKD_CACHE_DIR")
    from makd.assets.fetch import is_cached
    if not is_cached("minilm-l3-onnx"):
        pytest.skip("the embedded minilm-l3 asset is not in the cache (python -m makd fetch-assets)")
    with pytest.raises(ValueError, match="vocabular|token"):
        pipeline.distill(**BASE, out=str(tmp_path / "run"), student="minilm-l3", objective="model-only")


def test_non_finite_loss_stops_with_the_term_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    from makd.core import losses
    real = losses.hidden_mse
    calls = {"n": 0}

    def poisoned(*a, **k):                                 # finite for 2 steps, then NaN
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] > 2 else value

    monkeypatch.setattr(losses, "hidden_mse", poisoned)
    with pytest.raises(NonFiniteLossError, match="hidn"):
        pipeline.distill(**BASE, out=str(tmp_path / "run"), max_steps=4, save_steps=1, objective="hierarchical")
    err = json.loads((tmp_path / "run" / "error.json").read_text())
    assert "hidn" in err["error"] and err["checkpoints"]
    assert all(Path(c).is_dir() for c in err["checkpoints"])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_cpu_processes_with_torchrun(tmp_path):
    env = {**os.environ, "MAKD_CACHE_DIR": os.environ["MAKD_CACHE_DIR"], "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = ["-m", "makd", "distill", "--task", "sst2", "--data-dir", str(FIXTURES), "--teacher", "tiny-bert",
           "--teacher-epochs", "1", "--force-teacher", "--report-to", "none", "--quiet", "--max-steps", "3",
           "--batch-size", "2", "--objective", "hierarchical"]
    # the teacher is fine-tuned (and cached) once, then two processes distil it over gloo
    subprocess.run([sys.executable, *cmd, "--objective", "none", "--out", str(tmp_path / "warm")], env=env,
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", *cmd,
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert saved["train"]["steps"] == 3
    assert saved["record"]["machine"]["world_size"] == 2


def test_teacher_head_follows_the_teacher_seed_not_the_callers_rng(tmp_path):
    # A checkpoint without a task head (like the embedded MiniLM): the head is new. Its init used to come from
    # whatever state torch's RNG was in (which grid cell triggered the fine-tuning), so a re-trained teacher
    # could differ from the cached one; now it follows the teacher seed only.
    from makd.tasks.glue import load_task
    from makd.assets.models import load_model
    from makd.tasks.teacher import finetune_teacher

    model, tok = load_model("tiny-bert")                            # base model: no classification head
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    task = load_task("sst2", data_dir=str(FIXTURES))
    settings = {"epochs": 1.0, "max_train": 8, "batch_size": 4, "lr": 1e-3}

    def train(teacher_seed: int, caller_seed: int):
        torch.manual_seed(caller_seed)
        return finetune_teacher(str(tmp_path / "base"), task, seed=teacher_seed, settings=settings,
                                force_retrain=True, disable_tqdm=True)

    first, again, other = train(0, caller_seed=1), train(0, caller_seed=2), train(1, caller_seed=1)
    assert first.checkpoint_sha256 == again.checkpoint_sha256
    assert json.loads((first.path / "teacher_info.json").read_text())["head_init_seed"] == 0
    assert other.checkpoint_sha256 != first.checkpoint_sha256        # another teacher seed, another head


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_student(tmp_path):
    """A real ``kill -9`` of ``python -m makd distill`` mid-training: the re-run with ``--resume`` takes over the
    dead run's lock, drops a half-written checkpoint if the kill hit a save, and ends with the same student."""
    cmd = [sys.executable, "-m", "makd", "distill", "--task", "sst2", "--data-dir", str(FIXTURES), "--teacher",
           "tiny-bert", "--teacher-epochs", "1", "--force-teacher", "--report-to", "none", "--quiet", "--lr", "1e-3",
           "--batch-size", "2", "--max-steps", "60", "--save-steps", "5", "--objective", "hierarchical"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path / "full")], env=env, check=True, capture_output=True, timeout=300,
                   cwd=ROOT)
    victim = subprocess.Popen([*cmd, "--out", str(tmp_path / "cut")], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while victim.poll() is None and time.time() < deadline and \
            not list((tmp_path / "cut" / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    if (tmp_path / "cut" / "metrics.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert (tmp_path / "cut" / LOCK_NAME).is_file()              # the dead run's lock is still there
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert saved["train"]["resumed"] and saved["train"]["steps"] == 60
    a, b = _weights(tmp_path / "full" / "student"), _weights(tmp_path / "cut" / "student")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
