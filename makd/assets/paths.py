"""Where `makd` keeps things: the asset cache, the benchmark data folder and run folders.

- cache (downloaded wheels, extracted models, fine-tuned teachers): ``$MAKD_CACHE_DIR``, else
  ``<repo>/data/cache`` in a source checkout, else ``~/.cache/makd``.
- benchmark data (GLUE TSVs, SQuAD JSON, instruction JSONL, never committed): an explicit ``data_dir``
  argument, else ``$MAKD_DATA_DIR``; ``None`` when neither is set.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


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



def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute paths stay; relative ones are taken from the repository root (cwd outside a checkout)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return (REPO_ROOT if in_source_checkout() else Path.cwd()) / p


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, name: str) -> Any:
    """Replace ``${VAR}`` in string values; an unset variable is a ValueError saying what to do."""
    if not isinstance(value, str):
        return value
    for var in _ENV.findall(value):
        if var not in os.environ:
            raise ValueError(f"parameter {name!r} = {value!r} needs the environment variable ${var}: "
                             f"set it (e.g. export {var}=/path/to/folder) or pass -p {name} VALUE")
    return _ENV.sub(lambda m: os.environ[m.group(1)], value)


_HUB_CHECKED: bool | None = None


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached; when it cannot, switch the hub libraries to offline mode.

    Without this, an unreachable hub costs ~25 s of retries per call before failing. HF_HUB_OFFLINE=1
    (or HF_DATASETS_OFFLINE=1) answers False at once. The answer is cached for the process.
    """
    global _HUB_CHECKED
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    if _HUB_CHECKED is None:
        import socket
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _HUB_CHECKED = True
        except OSError:
            _HUB_CHECKED = False
            set_hub_offline()
    return _HUB_CHECKED


def set_hub_offline() -> None:
    """Put huggingface_hub, transformers and datasets in offline mode (fail fast instead of retrying)."""
    import sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
