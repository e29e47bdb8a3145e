"""Run folders that cannot be trampled: one lock per folder, a writable / free-space check before any model or
data is loaded, complete checkpoints only, run records without machine paths (issue 18)."""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from makd.assets import runfolder as rf
from makd.core.errors import RunFolderError
from makd.experiments import decoder, distill as pipeline, squad, students
from makd.experiments.runrecord import REPO_ROOT, make_record, portable

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BASE = dict(task="sst2", data_dir=str(FIXTURES / "glue"), teacher="tiny-bert", teacher_epochs=1.0,
            force_teacher=True, report_to="none", quiet=True, lr=1e-3, batch_size=2, logging_steps=1, max_steps=2)
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def no_loading(monkeypatch):
    """Every model or data loader of the three commands fails the test if it is called."""
    def refuse(*a, **k):
        raise AssertionError("a model or data set was loaded before the output folder was checked")
    for module, name in ((pipeline, "load_task"), (pipeline, "finetune_teacher"), (students, "load_model"),
                         (squad, "load_data"), (squad, "load_model"), (decoder, "load_model")):
        monkeypatch.setattr(module, name, refuse)


def _commands(out: Path):
    """(name, call) of each command that writes a run folder, with tiny options."""
    return [("distill", lambda: pipeline.distill(**BASE, out=str(out))),
            ("squad", lambda: squad.distill_squad(data_dir=str(FIXTURES), teacher="tiny-bert", quiet=True,
                                                  out=str(out))),
            ("decoder", lambda: decoder.compare(teacher="tiny-llama", methods=["sft", "makd"], quiet=True,
                                                out=str(out)))]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()                                      # reaped: the pid is free, not a zombie
    return proc.pid


def _write_lock(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00+0000",
              "command": "python -m makd distill --out old", **fields}
    (folder / rf.LOCK_NAME).write_text(json.dumps(holder))
    return folder / rf.LOCK_NAME


def test_a_second_run_on_a_locked_folder_is_refused_at_once_with_one_message(tmp_path, no_loading):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from makd.assets.runfolder import FolderLock\n"
         f"with FolderLock({str(out)!r}, 'python -m makd distill --out run'):\n"
         "    print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for name, call in _commands(out):
            t0 = time.perf_counter()
            with pytest.raises(RunFolderError) as err:
                call()
            assert time.perf_counter() - t0 < 1.0, name
            message = str(err.value)
            assert "\n" not in message and message.startswith(f"{out} is in use by pid {holder.pid} since ")
            assert "(python -m makd distill --out run): wait for it, or pass another --out" in message
        assert json.loads((out / rf.LOCK_NAME).read_text())["pid"] == holder.pid   # the holder keeps its lock
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_a_live_or_foreign_one_is_not(tmp_path, caplog):
    lock = _write_lock(tmp_path / "a")
    with caplog.at_level("WARNING", logger="makd.runfolder"), rf.FolderLock(tmp_path / "a", "mine"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert json.loads(lock.read_text())["command"] == "mine"
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()} since .* \\(mine\\)"):
            rf.FolderLock(tmp_path / "a").acquire()        # a live holder (this very process) is never taken
    assert "no longer running" in caplog.text and not lock.exists()    # released on exit
    _write_lock(tmp_path / "b", pid=os.getpid(), boot_id="another-boot")  # the host rebooted since: stale
    with rf.FolderLock(tmp_path / "b"):
        pass
    _write_lock(tmp_path / "c", pid=os.getpid(), host="elsewhere")        # cannot be checked: refused
    with pytest.raises(RunFolderError, match=r"on host elsewhere .*or delete .*\.makd\.lock if that run is gone"):
        rf.FolderLock(tmp_path / "c").acquire()
    torn = tmp_path / "d" / rf.LOCK_NAME                                     # killed while writing its lock
    torn.parent.mkdir()
    torn.write_text("")
    os.utime(torn, (time.time() - 60, time.time() - 60))
    with rf.FolderLock(tmp_path / "d"):
        assert json.loads(torn.read_text())["pid"] == os.getpid()


def test_a_read_only_folder_is_refused_before_any_model_is_loaded(tmp_path, monkeypatch, no_loading):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:                            # root ignores the mode bits: a read-only file system then
        def read_only(_folder):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(rf, "_write_probe", read_only)
    try:
        for name, call in _commands(folder / "run"):
            with pytest.raises(RunFolderError, match=r"cannot write to the output folder .*: pass a writable --out"):
                call()
            assert not (folder / "run" / rf.LOCK_NAME).exists(), name
    finally:
        folder.chmod(0o755)


def test_too_little_free_space_is_refused_before_any_model_is_loaded(tmp_path, monkeypatch, no_loading):
    monkeypatch.setattr(rf.shutil, "disk_usage", lambda path: Usage(10 << 30, 10 << 30, 5 << 20))
    for name, call in _commands(tmp_path / "run"):
        with pytest.raises(RunFolderError) as err:
            call()
        assert re.search(r"has 5\.0 MiB free but this run needs about [\d.]+ MiB .*pass another --out",
                         str(err.value)), (name, str(err.value))
        assert not (tmp_path / "run").exists(), name   # lock released, the empty folder it created removed
    # the estimate: trainings · (L + 1) checkpoints of 3 · 4 · P bytes, two students of 4 · P, the margin
    p = 1_000_000
    assert rf.estimate_run_bytes(p, margin=0) == 3 * 12 * p + 8 * p
    assert rf.estimate_run_bytes(p, save_total_limit=1, trainings=3, save_student=False, margin=7) == 3 * 2 * 12 * p + 7
    assert rf.estimate_run_bytes(p, trainings=0, save_student=False) == rf.MARGIN_BYTES
    monkeypatch.setattr(rf.shutil, "disk_usage", lambda path: Usage(0, 0, rf.estimate_run_bytes(p)))
    rf.check_output_folder(tmp_path / "ok", rf.estimate_run_bytes(p))        # exactly enough: accepted
    with pytest.raises(RunFolderError, match="free some space"):
        rf.check_output_folder(tmp_path / "ok", rf.estimate_run_bytes(p) + 1)


def test_params_hint_knows_embedded_names_local_folders_and_falls_back_for_hub_ids(tmp_path):
    assert rf.params_hint("minilm-l6") == rf.KNOWN_PARAMS["minilm-l6"]
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    assert rf.params_hint(str(tmp_path)) == 1000
    assert rf.params_hint("org/some-model") == rf.DEFAULT_PARAMS


def test_last_checkpoint_skips_and_removes_half_written_ones(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert rf.last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists() and (tmp_path / "checkpoint-2").is_dir()
    assert rf.last_checkpoint(tmp_path / "none") is None


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_a_run_record_names_no_absolute_machine_path(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data"
    (data / "glue" / "MRPC").mkdir(parents=True)
    monkeypatch.delenv("MAKD_DATA_DIR", raising=False)
    cache = Path(os.environ["MAKD_CACHE_DIR"])
    config = {"data_dir": str(data), "out": str(REPO_ROOT / "results" / "x"), "teacher": str(cache / "models" / "t"),
              "command": f"python -m makd distill --data-dir {data} --out={tmp_path}/elsewhere/run --teacher org/m",
              "weights": {"mha": 0}}
    rec = make_record(config, seed=0, started=time.time(), data_files={
        str(data / "glue" / "MRPC" / "dev.tsv"): "a" * 64, str(cache / "assets" / "c.yml"): "b" * 64,
        str(REPO_ROOT / "tests" / "fixtures" / "f.tsv"): "c" * 64, "hub:glue/mrpc:train": "d" * 64})
    text = json.dumps(rec)
    for root in (tmp_path, REPO_ROOT, cache, Path.home()):
        assert str(root) not in text, root
    assert not [s for s in _strings(rec) if re.search(r"(^|[\s=:])/[^/\s]", s)]
    assert rec["data_files_sha256"] == {"$MAKD_DATA_DIR/glue/MRPC/dev.tsv": "a" * 64,
                                        "$MAKD_CACHE_DIR/assets/c.yml": "b" * 64, "tests/fixtures/f.tsv": "c" * 64,
                                        "hub:glue/mrpc:train": "d" * 64}
    assert rec["config"]["command"] == ("python -m makd distill --data-dir $MAKD_DATA_DIR --out=<outside>/run "
                                        "--teacher org/m")
    assert rec["config"]["out"] == "results/x" and rec["config"]["teacher"] == "$MAKD_CACHE_DIR/models/t"
    assert rec["config"]["weights"] == {"mha": 0} and set(rec["paths"]) >= {"$MAKD_DATA_DIR", "$MAKD_CACHE_DIR"}


def test_text_that_only_looks_like_a_path_is_kept():
    roots = [("/data", "$MAKD_DATA_DIR")]
    note = "12752 snippets split 80%/20% train/dev (fresh=1/positive, rotten=0/negative); see https://x.org/a"
    assert portable(note, roots) == note
    assert portable("local:/data/glue/RTE", roots) == "local:$MAKD_DATA_DIR/glue/RTE"


def test_the_command_line_shows_a_busy_folder_as_one_error_line(tmp_path):
    out = tmp_path / "run"
    with rf.FolderLock(out, "python -m makd distill --out run"):
        proc = subprocess.run([sys.executable, "-m", "makd", "distill", "--task", "sst2", "--data-dir",
                               str(FIXTURES / "glue"), "--teacher", "tiny-bert", "--out", str(out)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out} is in use by pid {os.getpid()} since "), lines
