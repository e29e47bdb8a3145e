"""Caches that verify themselves: fine-tuned teachers (tasks.teacher) and built models (assets.builders).

A damaged cached teacher (flipped bytes, truncated weights, unreadable) is found on reuse, removed and
fine-tuned again under the same key, and the hash a run states is the hash of the weights it loaded; so is one
fine-tuned from a base model whose files changed since; a teacher saved before hashes were stored is trusted once
and gets its hash recorded. Built model folders are checked by
their stamps and recorded hashes and rebuilt when broken. (Extracted assets: tests/test_assets.py.)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from makd.assets import builders, models
from makd.assets.fetch import AssetUnavailableError
from makd.assets.files import sha256_file, sha256_folder
from makd.core.errors import CacheError
from makd.tasks import teacher as teachers
from makd.tasks import teacher_cache
from makd.tasks.glue import load_task

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "glue"
SETTINGS = {"epochs": 1.0, "max_train": 8, "batch_size": 4, "lr": 1e-3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny teacher fine-tuned on the SST-2 fixtures (~3 s), in a module cache; its folder and result."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAKD_CACHE_DIR", str(cache))
        task = load_task("sst2", data_dir=str(FIXTURES))
        result = teachers.finetune_teacher("tiny-bert", task, seed=0, settings=SETTINGS, disable_tqdm=True)
        yield {"cache": cache, "task": task, "result": result}


@pytest.fixture
def cached(trained, tmp_path, monkeypatch):
    """A fresh copy of the trained teacher's folder under this test's own teachers cache; its path."""
    monkeypatch.setenv("MAKD_CACHE_DIR", str(trained["cache"]))          # the tiny-bert build is shared
    monkeypatch.setattr(teachers, "cache_dir", lambda: tmp_path)          # the teachers are this test's
    folder = tmp_path / "teachers" / trained["result"].path.name
    shutil.copytree(trained["result"].path, folder)
    return folder


def _again(trained):
    return teachers.finetune_teacher("tiny-bert", trained["task"], seed=0, settings=SETTINGS, disable_tqdm=True)


def _info(folder: Path) -> dict:
    return json.loads((folder / "teacher_info.json").read_text())


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                                          # a byte of the tensor data
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _messages(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "makd.tasks.teacher" and r.levelno == level]


# ------------------------------------------------------------------------------------------------ teachers
def test_an_intact_teacher_is_reused_with_the_hash_of_its_weights(trained, cached, caplog):
    with caplog.at_level(logging.INFO, logger="makd.tasks.teacher"):
        again = _again(trained)
    assert again.reused and again.path == cached and not _messages(caplog)
    assert again.checkpoint_sha256 == sha256_folder(cached) == trained["result"].checkpoint_sha256


@pytest.mark.parametrize("damage,cause", [(_flip, "weights hash to"), (_truncate, "weights hash to")])
def test_a_damaged_teacher_is_fine_tuned_again_and_states_the_hash_of_its_new_weights(trained, cached, caplog,
                                                                                      damage, cause):
    damage(cached / "model.safetensors")
    broken = sha256_folder(cached)
    with caplog.at_level(logging.WARNING, logger="makd.tasks.teacher"):
        again = _again(trained)
    (warning,) = _messages(caplog)
    assert str(cached) in warning and cause in warning and "fine-tuning the teacher again" in warning
    assert not again.reused and again.path == cached and not cached.with_name(cached.name + ".broken").exists()
    digest = sha256_folder(cached)
    assert again.checkpoint_sha256 == digest == _info(cached)["checkpoint_sha256"] != broken
    # the same key on the same CPU trains the same teacher bit for bit
    assert digest == trained["result"].checkpoint_sha256
    assert _again(trained).reused


@pytest.mark.parametrize("field,note", [("checkpoint_sha256", "no stored checkpoint sha256"),
                                        ("base_sha256", "which base model files")])
def test_a_teacher_saved_without_a_hash_is_trusted_once_and_the_hash_recorded(trained, cached, caplog, field, note):
    info = _info(cached)
    del info[field]                                                       # as an earlier makd may have left it
    (cached / "teacher_info.json").write_text(json.dumps(info))
    with caplog.at_level(logging.INFO, logger="makd.tasks.teacher"):
        again = _again(trained)
    assert again.reused and not _messages(caplog)
    (line,) = [m for m in _messages(caplog, logging.INFO) if note in m]
    assert str(cached) in line and "trusting it from now on" in line
    assert again.checkpoint_sha256 == sha256_folder(cached) == _info(cached)["checkpoint_sha256"]
    assert _info(cached)["base_sha256"] == teacher_cache.base_fingerprint(models.resolve("tiny-bert"))


def test_a_teacher_without_a_hash_that_cannot_be_read_is_fine_tuned_again(trained, cached, caplog):
    info = _info(cached)
    del info["checkpoint_sha256"]
    (cached / "teacher_info.json").write_text(json.dumps(info))
    _truncate(cached / "model.safetensors")                               # nothing to compare: loading fails
    with caplog.at_level(logging.WARNING, logger="makd.tasks.teacher"):
        again = _again(trained)
    (warning,) = _messages(caplog)
    assert str(cached) in warning and "cannot be read" in warning and "SafetensorError" in warning
    assert not again.reused and again.checkpoint_sha256 == sha256_folder(cached) == _info(cached)["checkpoint_sha256"]


def test_a_teacher_killed_before_its_info_was_written_is_fine_tuned_again(trained, cached, caplog):
    (cached / "teacher_info.json").unlink()                               # the info is written last
    _truncate(cached / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="makd.tasks.teacher"):
        again = _again(trained)
    assert not again.reused and not _messages(caplog)                     # nothing was cached: no warning
    assert again.checkpoint_sha256 == sha256_folder(cached) == trained["result"].checkpoint_sha256


def _retune_base(folder: Path) -> None:
    """Rewrite the base model's weights in place, as a rebuilt preset or an overwritten folder would."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})


def test_a_teacher_fine_tuned_from_a_base_model_that_changed_since_is_fine_tuned_again(trained, tmp_path,
                                                                                       monkeypatch, caplog):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(trained["cache"]))
    monkeypatch.setattr(teachers, "cache_dir", lambda: tmp_path / "cache")
    base = tmp_path / "my-bert"
    shutil.copytree(models.resolve("tiny-bert"), base)                    # a user's own base folder

    def tune():
        return teachers.finetune_teacher(str(base), trained["task"], seed=0, settings=SETTINGS, disable_tqdm=True)
    first = tune()
    assert _info(first.path)["base_sha256"] == teacher_cache.base_fingerprint(str(base))
    assert tune().reused                                                  # same base files: reused
    _retune_base(base)
    with caplog.at_level(logging.WARNING, logger="makd.tasks.teacher"):
        again = tune()
    (warning,) = _messages(caplog)
    assert str(first.path) in warning and "another version of its base model" in warning
    assert not again.reused and again.path == first.path                 # the key names the base by location
    assert again.checkpoint_sha256 != first.checkpoint_sha256
    assert _info(again.path)["base_sha256"] == teacher_cache.base_fingerprint(str(base))


def test_a_hub_id_has_no_base_fingerprint_and_a_folder_fingerprint_covers_weights_config_and_tokenizer(tmp_path):
    assert teacher_cache.base_fingerprint("bert-base-uncased") is None
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = teacher_cache.base_fingerprint(str(folder))
    (folder / "README.md").write_text("notes")                           # not part of the model
    assert teacher_cache.base_fingerprint(str(folder)) == before
    for name in ("vocab.txt", "config.json", "model.safetensors"):
        (folder / name).write_text(name)
        assert teacher_cache.base_fingerprint(str(folder)) != before
        before = teacher_cache.base_fingerprint(str(folder))


def test_a_distillation_over_a_damaged_teacher_records_the_hash_it_loaded(tmp_path, monkeypatch):
    from makd.experiments import distill as pipeline
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))
    kw = dict(task="sst2", data_dir=str(FIXTURES), teacher="tiny-bert", teacher_epochs=1.0, teacher_max_train=8,
              force_teacher=True, report_to="none", quiet=True, objective="none")
    first = pipeline.distill(**kw, out=str(tmp_path / "first"))
    folder = Path(first["teacher"]["path"])
    _flip(folder / "model.safetensors")
    pipeline.distill(**kw, out=str(tmp_path / "second"))
    record = json.loads((tmp_path / "second" / "metrics.json").read_text())["record"]
    assert record["teacher_checkpoint_sha256"] == sha256_folder(folder) == _info(folder)["checkpoint_sha256"]


# ------------------------------------------------------------------------------------------- built models
@pytest.fixture
def built(tmp_path, monkeypatch):
    """tiny-bert built into this test's own cache (~1 s); its folder."""
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path))
    return Path(models.resolve("tiny-bert"))


def _later(path: Path) -> None:
    """Move the mtime a second on, as an edit made later than the build would (one clock tick is ~4 ms)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_built_model_records_the_hash_of_every_file(built):
    files = json.loads((built / "makd_build.json").read_text())["files"]
    assert set(files) == {p.name for p in built.iterdir()} - {"makd_build.json"}
    assert files["model.safetensors"]["sha256"] == sha256_file(built / "model.safetensors")


@pytest.mark.parametrize("damage", [lambda p: (_flip(p), _later(p)), _truncate, os.remove])
def test_a_broken_built_model_is_built_again_with_one_warning(built, caplog, damage):
    weights = built / "model.safetensors"
    damage(weights)
    with caplog.at_level(logging.WARNING, logger="makd.assets.builders"):
        assert models.resolve("tiny-bert") == str(built)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "makd.assets.builders"]
    assert str(built) in warning and "model.safetensors" in warning
    files = json.loads((built / "makd_build.json").read_text())["files"]
    assert weights.is_file() and sha256_file(weights) == files["model.safetensors"]["sha256"]
    models.load_model("tiny-bert")


def test_a_built_model_with_new_dates_but_the_same_bytes_is_not_rebuilt(built, monkeypatch):
    _later(built / "config.json")
    monkeypatch.setitem(builders.BUILDERS, "tiny-bert", lambda out: pytest.fail("rebuilt"))
    assert models.resolve("tiny-bert") == str(built)
    files = json.loads((built / "makd_build.json").read_text())["files"]
    assert files["config.json"]["mtime_ns"] == (built / "config.json").stat().st_mtime_ns


def test_a_model_built_before_hashes_is_trusted_once_unless_its_weights_are_truncated(built, monkeypatch, caplog):
    marker = built / "makd_build.json"
    old = {k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}
    marker.write_text(json.dumps(old))
    rebuild = builders.BUILDERS["tiny-bert"]
    monkeypatch.setitem(builders.BUILDERS, "tiny-bert", lambda out: pytest.fail("rebuilt"))
    with caplog.at_level(logging.INFO, logger="makd.assets.builders"):
        models.resolve("tiny-bert")
    assert any("trust on first use" in r.getMessage() for r in caplog.records)
    assert json.loads(marker.read_text())["files"]["model.safetensors"]["sha256"] == sha256_file(
        built / "model.safetensors")
    marker.write_text(json.dumps(old))
    _truncate(built / "model.safetensors")                                # a truncation is caught by the header
    monkeypatch.setitem(builders.BUILDERS, "tiny-bert", rebuild)
    models.resolve("tiny-bert")
    models.load_model("tiny-bert")


def test_a_broken_built_model_that_cannot_be_rebuilt_raises_one_cache_error(built, monkeypatch):
    _truncate(built / "model.safetensors")

    def offline(out):
        raise AssetUnavailableError("could not download the wheel x from PyPI\nmore lines")
    monkeypatch.setitem(builders.BUILDERS, "tiny-bert", offline)
    with pytest.raises(CacheError) as info:
        models.resolve("tiny-bert")
    msg = str(info.value)
    assert "\n" not in msg and str(built) in msg and "could not be rebuilt" in msg and "fetch-assets" in msg
