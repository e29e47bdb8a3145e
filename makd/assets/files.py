"""Checksums and atomic JSON writes: how every cache and run folder checks and keeps what it wrote."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_folder(path: str | os.PathLike, pattern: str | tuple[str, ...] = "*.safetensors") -> str:
    """One hash over the files of a folder that match ``pattern`` (or any of several), sorted by name: each name and
    its sha256 in turn (default: the weight files of a checkpoint)."""
    h = hashlib.sha256()
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    files = sorted({f for p in patterns for f in Path(path).glob(p) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"no {' / '.join(patterns)} files in {path}")
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _clean(value.item())
        except (ValueError, RuntimeError):
            return str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (non-finite floats become null): into a temporary sibling
    first, renamed over ``path`` once complete, so a kill or a full disk never leaves a half-written file (the
    temporary one is removed when the write fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
