"""Where `makd` keeps things: the asset cache, the benchmark data folder and run folders.

- cache (downloaded wheels, extracted models, fine-tuned teachers): ``$MAKD_CACHE_DIR``, else
  ``<repo>/data/cache`` in a source checkout, else ``~/.cache/makd``.
- benchmark data (GLUE TSVs, SQuAD JSON, instruction JSONL, never committed): an explicit ``data_dir``
  argument, else ``$MAKD_DATA_DIR``; ``None`` when neither is set.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def in_source_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "makd").is_dir()


def cache_dir() -> Path:
    env = os.environ.get("MAKD_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    elif in_source_checkout():
        path = REPO_ROOT / "data" / "cache"
    else:
        path = Path.home() / ".cache" / "makd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The benchmark-data folder: ``explicit`` if given, else ``$MAKD_DATA_DIR``, else ``None``."""
    value = explicit if explicit is not None else os.environ.get("MAKD_DATA_DIR")
    if value in (None, ""):
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} does not exist: pass an existing folder (data_dir=... / --data-dir) "
            "or unset MAKD_DATA_DIR"
        )
    return path
