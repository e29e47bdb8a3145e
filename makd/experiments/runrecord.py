"""Run records: everything needed to say where a number came from.

A run record is a JSON-able dict written beside every ``metrics.json``: the config, seed, git commit,
library versions, the sha256 of every data file read and of the teacher checkpoint, the machine and the
wall time.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

from makd.assets.paths import REPO_ROOT

LIBRARIES = ("makd", "torch", "transformers", "datasets", "accelerate", "tokenizers", "safetensors",
             "numpy", "scikit-learn", "rouge-score")


def git_commit() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        pass
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def make_record(config: dict[str, Any], *, seed: int, data_files: dict[str, str] | None = None,
                teacher_hash: str | None = None, started: float | None = None, **extra: Any) -> dict[str, Any]:
    record = {
        "config": config, "seed": seed, "git": git_commit(), "libraries": library_versions(),
        "data_files_sha256": dict(data_files or {}), "teacher_checkpoint_sha256": teacher_hash,
        "machine": machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if started is not None:
        record["wall_time_s"] = round(time.time() - started, 2)
    record.update(extra)
    return record
