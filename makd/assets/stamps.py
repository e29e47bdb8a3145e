"""Size and mtime stamps of cached files: a check cheap enough for every load, a full sha256 only on a change.

Hashing a cached model on each load costs about 1 s per GB (measured: 0.44 s for the 538 MB float32
SmolLM2, 0.06 s for the 69 MB MiniLM-L3, page cache warm; more from a cold disk), every time a notebook, test or
grid cell loads it. A stamp (``size``, ``mtime_ns``) costs one ``stat``. A file is rehashed only when its stamp
moved: a truncation changes the size, an edit in place (flipped bytes) the mtime, a copy without ``-p`` the
mtime too (then one rehash, and the new stamp is recorded). What a stamp cannot see, a change that keeps both
size and mtime (bit rot under an unchanged inode), ``python -m makd fetch-assets --verify`` finds by hashing in
full. The stamps live in the marker file written next to what they describe (``.makd-asset-<name>.json`` for
an extracted asset, ``makd_build.json`` for a built model).
"""
from __future__ import annotations

from pathlib import Path


def files_of(path: Path) -> dict[str, Path]:
    """``{relative name: path}`` of a file (its own name) or of every file under a folder (posix paths)."""
    path = Path(path)
    if path.is_file():
        return {path.name: path}
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    return {}


def stamp(path: Path) -> dict[str, int]:
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def take(path: Path, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
    """``{relative name: {"size", "mtime_ns"}}`` of the files of ``path`` (a file or a folder)."""
    return {rel: stamp(p) for rel, p in files_of(path).items() if rel not in exclude}


def moved(path: Path, recorded: dict[str, dict], exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative name: what changed}`` for every file whose stamp differs from ``recorded``.

    A recorded file that is gone reads ``"missing"``; a file that was not recorded reads ``"new file"``; a size
    change ``"size A -> B"``; a changed mtime alone ``"modified"``. Empty when nothing moved.
    """
    now = take(path, exclude)
    out: dict[str, str] = {}
    for rel, old in recorded.items():
        cur = now.get(rel)
        if cur is None:
            out[rel] = "missing"
        elif cur["size"] != old.get("size"):
            out[rel] = f"size {old.get('size')} -> {cur['size']} bytes"
        elif cur["mtime_ns"] != old.get("mtime_ns"):
            out[rel] = "modified"
    out.update({rel: "new file" for rel in now if rel not in recorded})
    return out


def describe(changes: dict[str, str], limit: int = 3) -> str:
    """``"a: missing, b: size 3 -> 1 bytes"`` (at most ``limit`` entries, then how many more)."""
    items = [f"{rel}: {what}" for rel, what in sorted(changes.items())]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")
