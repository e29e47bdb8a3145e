"""The prepared decoder student is cached (makd.experiments.decoder_prepared): a second comparison reuses it
exactly, damaged entries are prepared again, the key follows what the preparation reads, the 'init' control and
dense students bypass the cache."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from makd.assets.models import load_model
from makd.core.errors import CacheError
from makd.experiments import decoder
from makd.experiments import decoder_prepared as dp
from makd.experiments.decoder_config import DecoderConfig

ROWS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"number {i} is here"} for i in range(12)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))


def _config(tmp_path, **kw):
    base = dict(teacher="tiny-llama", max_train=8, max_eval=2, max_steps=2, batch_size=4, max_length=48,
                max_new_tokens=3, logging_steps=1, quiet=True, out=str(tmp_path / "run"), methods=("untrained",),
                weighting="whiten", calibration_examples=8, local_epochs=1, wiki_windows=0)
    return DecoderConfig(**{**base, **kw})


def _data():
    return decoder.DecoderData(ROWS[:8], ["Say hi."], ["hi"], "human", "x", "x", "x")


def _counting_prepare(monkeypatch):
    calls = []
    real = decoder.prepare_student

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(decoder, "prepare_student", counted)
    return calls


def test_a_second_comparison_reuses_the_prepared_student_exactly(tmp_path, monkeypatch):
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _config(tmp_path)
    calls = _counting_prepare(monkeypatch)
    first = decoder.compare_methods(cfg, model, tok, _data())
    assert calls == [1] and first[decoder.UNTRAINED]["cache"]["reused"] is False
    entry = next((tmp_path / "cache" / "decoder-students").iterdir())
    assert (entry / dp.INFO).is_file() and entry.name == first[decoder.UNTRAINED]["cache"]["key"]
    second = decoder.compare_methods(cfg, model, tok, _data())
    assert calls == [1], "the cached student must be reused, not prepared again"
    a, b = first[decoder.UNTRAINED], second[decoder.UNTRAINED]
    assert b["cache"] == {"key": entry.name, "reused": True}
    assert b["response_ce"] == a["response_ce"] and b["local"]["history"] == a["local"]["history"]
    assert second["untrained"]["eval"]["outputs"] == first["untrained"]["eval"]["outputs"]
    fresh, _, _ = decoder.prepare_student(cfg, model, tok, ROWS[:8], "cpu")
    cached, info = dp.load_prepared(entry, model, "cpu")
    assert info["local"]["steps"] == a["local"]["steps"] and cached.training == fresh.training
    for (n, p), (m, q) in zip(fresh.state_dict().items(), cached.state_dict().items()):
        assert n == m and torch.equal(p, q), n                          # bit for bit
    assert dp.is_fused(cached) == dp.is_fused(fresh)


def test_a_damaged_entry_is_removed_and_the_student_prepared_again(tmp_path, monkeypatch, caplog):
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _config(tmp_path)
    calls = _counting_prepare(monkeypatch)
    decoder.compare_methods(cfg, model, tok, _data())
    entry = next((tmp_path / "cache" / "decoder-students").iterdir())
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="makd.decoder"):
        res = decoder.compare_methods(cfg, model, tok, _data())
    assert calls == [1, 1] and res[decoder.UNTRAINED]["cache"]["reused"] is False
    assert "do not hash to the sha256" in caplog.text
    assert dp.load_prepared(entry, model, "cpu") is not None                 # written again, whole


def test_a_damaged_entry_that_cannot_be_removed_says_to_delete_it(tmp_path, monkeypatch):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / dp.INFO).write_text("{not json")
    def refuse(src, dst):
        raise PermissionError("read-only file system")
    monkeypatch.setattr("makd.tasks.teacher_cache.os.replace", refuse)
    with pytest.raises(CacheError, match=r"cached prepared student .*entry is unusable .* delete it and run again"):
        dp.load_prepared(entry, None, "cpu")
    assert (entry / dp.INFO).is_file()                                         # nothing half-removed


def test_the_key_follows_what_the_preparation_reads():
    cfg = DecoderConfig(teacher="tiny-llama", weighting="whiten", calibration_examples=8, local_epochs=1)
    key = dp.prepared_key(cfg, ROWS)
    assert key.startswith("tiny-llama-") and key == dp.prepared_key(cfg, ROWS)
    for change in ({"local_lr": 1e-3}, {"local_epochs": 2}, {"weighting": "whiten-sequential"}, {"seed": 1},
                   {"layer_ratio": 0.6}, {"max_length": 64}, {"calibration_examples": 4}):
        assert dp.prepared_key(dataclasses.replace(cfg, **change), ROWS) != key, change
    assert dp.prepared_key(cfg, [dict(ROWS[0], output="other"), *ROWS[1:]]) != key          # the rows themselves
    assert dp.prepared_key(cfg, ROWS[:8] + [dict(ROWS[9], output="x")]) == key              # rows past the 8 unread
    for same in ({"lr": 1e-3}, {"methods": ("sft",)}, {"train_seeds": (1, 2)}, {"max_new_tokens": 9}):
        assert dp.prepared_key(dataclasses.replace(cfg, **same), ROWS) == key, same          # training / scoring only


def test_the_init_control_prepares_again_but_fills_the_cache_and_dense_students_bypass_it(tmp_path, monkeypatch):
    marker = object()
    prepare = lambda: (marker, {"init": {}}, "before")                                  # noqa: E731
    saved = []
    monkeypatch.setattr(dp, "save_prepared", lambda path, student, info: saved.append((path.name, student)))
    monkeypatch.setattr(dp, "load_prepared", lambda *a: pytest.fail("the init control must not read the cache"))
    cfg = _config(tmp_path)
    student, info, before = dp.cached_prepare(cfg, ROWS, None, "cpu", prepare, True)
    key = dp.prepared_key(cfg, ROWS)
    assert student is marker and before == "before" and info["cache"] == {"key": key, "reused": False}
    assert saved == [(key, marker)]                          # written for the next run or a second runner
    saved.clear()
    dense = _config(tmp_path, student="layers:1")
    assert dp.cached_prepare(dense, ROWS, None, "cpu", prepare, False)[0] is marker and not saved
