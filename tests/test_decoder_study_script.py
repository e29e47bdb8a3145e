"""scripts/decoder_study.sh builds the study's `python -m makd decoder` commands: every ratio, seed and method by
default, a subset through RATIOS / SEEDS / METHODS (two runners sharing the study), the data folder from $1 or
MAKD_DATA_DIR. A stand-in `python` on PATH records the commands instead of running them."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "decoder_study.sh"


def run(tmp_path, *args, **env):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "calls.txt"
    python = fake / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    base = {k: v for k, v in os.environ.items() if k not in ("RATIOS", "SEEDS", "METHODS", "MAKD_DATA_DIR")}
    proc = subprocess.run(["bash", str(SCRIPT), *args], env={**base, "PATH": f"{fake}:{base['PATH']}", **env},
                          capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, [c.split() for c in calls]


def option(call, name):
    i = call.index(name)
    values = []
    for v in call[i + 1:]:
        if v.startswith("--"):
            break
        values.append(v)
    return values


def test_by_default_every_ratio_seed_and_method(tmp_path):
    proc, calls = run(tmp_path, "/data")
    assert proc.returncode == 0, proc.stderr
    assert [option(c, "--layer-ratio") for c in calls] == [["0.8"], ["0.5"]]
    for c, ratio in zip(calls, ("0.8", "0.5")):
        assert c[:3] == ["-m", "makd", "decoder"] and option(c, "--data-dir") == ["/data"]
        assert option(c, "--methods") == ["init", "untrained", "sft", "kd", "seqkd", "makd"]
        assert option(c, "--train-seeds") == ["1", "2", "3"] and "--resume" in c and "--bf16" in c
        assert option(c, "--out") == [f"results/decoder-whiten512/ratio-{ratio}"]


def test_a_runner_takes_a_subset(tmp_path):
    proc, calls = run(tmp_path, RATIOS="0.5", SEEDS="2 3", METHODS="init untrained kd makd", MAKD_DATA_DIR="/d")
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1 and option(calls[0], "--layer-ratio") == ["0.5"]
    assert option(calls[0], "--methods") == ["init", "untrained", "kd", "makd"]
    assert option(calls[0], "--train-seeds") == ["2", "3"] and option(calls[0], "--data-dir") == ["/d"]


def test_no_data_folder_is_one_clear_error(tmp_path):
    proc, calls = run(tmp_path)
    assert proc.returncode != 0 and not calls
    assert "give the data folder as $1 or MAKD_DATA_DIR" in proc.stderr
