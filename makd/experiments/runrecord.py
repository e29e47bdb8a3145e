"""Run records: everything needed to say where a number came from.

A run record is a JSON-able dict written beside every ``metrics.json``: the config, seed, git commit,
library versions, the sha256 of every data file read and of the teacher checkpoint, the machine and the
wall time. It names no absolute path of the machine that ran it (:func:`portable`): data files are keyed
relative to the data folder (``$MAKD_DATA_DIR/glue/MRPC/dev.tsv``), embedded assets relative to the cache root
(``$MAKD_CACHE_DIR/...``), files of the checkout relative to the repository, the rest by their name
(``<outside>/NAME``); the sha256 says which file it was. The command line is rewritten alike, so it re-runs
from the repository root with ``MAKD_DATA_DIR`` set.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib import metadata
from typing import Any

from pathlib import Path

from makd.assets.files import write_json
from makd.assets.paths import REPO_ROOT, cache_dir
from makd.assets.paths import data_dir as find_data_dir

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


ROOTS_LEGEND = {"$MAKD_DATA_DIR": "the data folder (data_dir or $MAKD_DATA_DIR)",
                "$MAKD_CACHE_DIR": "the makd cache (embedded assets, teachers)",
                ".": "the repository root", "~": "the home folder", "<outside>": "elsewhere (file name only)"}
# an absolute path starts a string or follows a separator (space, quote, =, :, (, [, comma): "80%/20%" is no path
_ABSOLUTE = re.compile(r"(?<![^\s'\"=:(\[,])(~?/(?!/)[^\s'\"=,;]+)")


def path_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(absolute folder, placeholder) pairs, longest folder first: the data folder, the cache, the checkout,
    the home folder."""
    roots: list[tuple[Path, str]] = []
    try:
        data = find_data_dir(data_dir)
    except FileNotFoundError:
        data = None
    if data is not None:
        roots.append((data, "$MAKD_DATA_DIR"))
    roots += [(cache_dir(), "$MAKD_CACHE_DIR"), (REPO_ROOT, "."), (Path.home(), "~")]
    pairs = {(os.path.abspath(p), label) for p, label in roots} | {(str(p.resolve()), label) for p, label in roots}
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def portable_path(path: str, roots: list[tuple[str, str]]) -> str:
    """An absolute ``path`` as ``<placeholder>/<relative path>`` (see :data:`ROOTS_LEGEND`); others unchanged."""
    text = os.path.expanduser(path)
    if not os.path.isabs(text):
        return path
    text = os.path.abspath(text)
    for root, label in roots:
        if text == root:
            return label
        if text.startswith(root.rstrip(os.sep) + os.sep):
            rel = text[len(root.rstrip(os.sep)) + 1:]
            return rel if label == "." else f"{label}/{rel}"
    return f"<outside>/{os.path.basename(text.rstrip(os.sep))}"


def portable(value: Any, roots: list[tuple[str, str]]) -> Any:
    """``value`` with every absolute path inside its strings (keys and values, nested) made portable."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(1), roots), value)
    if isinstance(value, dict):
        return {portable(k, roots): portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, roots) for v in value]
    if isinstance(value, os.PathLike):
        return portable(os.fspath(value), roots)
    return value


def make_record(config: dict[str, Any], *, seed: int, data_files: dict[str, str] | None = None,
                teacher_hash: str | None = None, started: float | None = None, **extra: Any) -> dict[str, Any]:
    """The run record of a run of ``config`` (its ``data_dir`` names the data folder the paths are relative to);
    ``data_files``: {path or ``hub:...`` id: sha256}. No absolute machine path survives (:func:`portable`)."""
    roots = path_roots(config.get("data_dir"))
    record = {
        "config": portable(config, roots), "seed": seed, "git": git_commit(), "libraries": library_versions(),
        "data_files_sha256": {portable_path(k, roots): v for k, v in (data_files or {}).items()},
        "teacher_checkpoint_sha256": teacher_hash, "paths": ROOTS_LEGEND,
        "machine": machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if started is not None:
        record["wall_time_s"] = round(time.time() - started, 2)
    record.update(portable(extra, roots))
    return record


def write_metrics(path: str | os.PathLike, result: dict[str, Any], data_dir: str | os.PathLike | None = None) -> Path:
    """Write a run's ``metrics.json`` (atomically) with every absolute machine path made portable, the record's
    and the rest's (teacher folder, data source, notes) alike; ``result`` itself is left as it is."""
    return write_json(path, portable(result, path_roots(data_dir)))
