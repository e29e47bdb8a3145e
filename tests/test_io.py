"""Saving and loading low-rank students: identical outputs, same ranks, no teacher needed."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import tiny_batch, tiny_model, unfused
from makd.assets import files
from makd.core import factorize as fz
from makd.core import checkpoint as mio


def _main_output(model, batch):
    """Logits (or last hidden state) and hidden states of ``model`` run unfused (:func:`conftest.unfused`): what a
    round trip must keep is the weights, not the fused execution's rounding."""
    model = unfused(model)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state, out.hidden_states


def test_round_trip(family, tmp_path, monkeypatch):
    teacher = tiny_model(family)
    student = fz.factorize(teacher, layer_ratio=0.5)
    with torch.no_grad():  # make the factors differ from a fresh SVD, as after training
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mio.save_student(student, tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "makd_factorization.json").read_text())
    assert meta["architecture"] == type(teacher).__name__ and meta["family"] == family
    assert meta["layer_ratio"] == 0.5 and "makd_version" in meta

    def boom(*a, **k):
        raise AssertionError("load_student must not run an SVD")
    monkeypatch.setattr(torch.linalg, "svd", boom)
    loaded = mio.load_student(tmp_path / "s", attn_implementation="eager")
    assert {n: m.rank for n, m in fz.factorized_modules(loaded).items()} == \
        {n: m.rank for n, m in fz.factorized_modules(student).items()}
    assert loaded.makd_factorization["ranks"] == student.makd_factorization["ranks"]
    assert fz.count_parameters(loaded) == fz.count_parameters(student)
    batch = tiny_batch()
    (a, ha), (b, hb) = _main_output(student, batch), _main_output(loaded, batch)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ha, hb))


def test_tied_lm_head_and_factorised_embeddings(tmp_path):
    gpt2 = fz.factorize(tiny_model("gpt2", head="lm"), rank=6)
    mio.save_student(gpt2, tmp_path / "g")
    loaded = mio.load_student(tmp_path / "g", attn_implementation="eager")
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight      # tie survives the round trip
    batch = tiny_batch()
    assert torch.equal(_main_output(gpt2, batch)[0], _main_output(loaded, batch)[0])

    bert = fz.factorize(tiny_model("bert"), rank=8, factorize_embeddings=True)
    mio.save_student(bert, tmp_path / "b")
    loaded = mio.load_student(tmp_path / "b", attn_implementation="eager")
    assert isinstance(loaded.get_input_embeddings(), fz.LowRankEmbedding)
    assert torch.equal(_main_output(bert, batch)[0], _main_output(loaded, batch)[0])


def test_tokenizer_saved_and_loaded(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]")
    student = fz.factorize(tiny_model("bert"), rank=4)
    mio.save_student(student, tmp_path / "s", tokenizer=tok)
    assert mio.load_tokenizer(tmp_path / "s")("hello world")["input_ids"] == [2, 3]
    mio.save_student(student, tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="no tokenizer saved"):
        mio.load_tokenizer(tmp_path / "n")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved makd student.*missing config.json"):
        mio.load_student(tmp_path / "missing")
    with pytest.raises(ValueError, match="no makd_factorization"):
        mio.save_student(tiny_model("bert"), tmp_path / "dense")
    student = fz.factorize(tiny_model("bert"), rank=4)
    mio.save_student(student, tmp_path / "s")
    meta = tmp_path / "s" / "makd_factorization.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "architecture": "NoSuchModel"}))
    with pytest.raises(ValueError, match="'NoSuchModel'"):
        mio.load_student(tmp_path / "s")
    meta.write_text(json.dumps({**data, "ranks": {**data["ranks"], "bert.encoder.layer.0.attention.self.query": 3}}))
    with pytest.raises(RuntimeError):  # shapes no longer match the saved factors: strict loading refuses
        mio.load_student(tmp_path / "s")
    assert not isinstance(nn.Linear(2, 2), fz.LowRankLinear)


def test_a_save_that_fails_half_way_keeps_the_previous_student(tmp_path, monkeypatch):
    old = fz.factorize(tiny_model("bert"), rank=4)
    mio.save_student(old, tmp_path / "s")
    new = fz.factorize(tiny_model("bert", seed=1), rank=4)
    real = mio.safetensors.torch.save_model

    def disk_full(model, filename, *a, **k):        # half the weights written, then the disk is full
        real(model, filename, *a, **k)
        with open(filename, "r+b") as fh:
            fh.truncate(fh.seek(0, 2) // 2)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(mio.safetensors.torch, "save_model", disk_full)
    with pytest.raises(OSError, match="No space left"):
        mio.save_student(new, tmp_path / "s")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]          # no partial folder left behind
    batch = tiny_batch()
    kept = mio.load_student(tmp_path / "s", attn_implementation="eager")         # eager, as the tiny models
    assert torch.equal(_main_output(kept, batch)[0], _main_output(old, batch)[0])
    mio.save_student(new, tmp_path / "s")                               # a complete save replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert torch.equal(_main_output(mio.load_student(tmp_path / "s"), batch)[0], _main_output(new, batch)[0])


def test_write_json_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    target = files.write_json(tmp_path / "metrics.json", {"score": 1.0})
    real = files.Path.write_text

    def disk_full(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write_json(target, {"score": 2.0, "more": list(range(100))})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"score": 1.0} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
