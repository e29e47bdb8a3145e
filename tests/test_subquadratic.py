"""Subquadratic students from a Llama teacher (issue 21 item 3): QKV copy, generation through the recurrent form,
save / reload, the Auto classes, clear errors — on a tiny GQA Llama and (slow) on the embedded SmolLM2."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from makd.assets.models import load_model
from makd.students import qkv
from makd.students.mixers.base import Mixer
from makd.students.mixers.registry import NAMES

SEVEN = ("deltanet", "gated_deltanet", "gla", "linear", "mamba2", "mlstm", "retnet")
STUDENTS = (*SEVEN, "metala")                  # the seven the issue names, and MetaLA


@pytest.fixture(scope="module")
def teacher():
    model, tok = load_model("tiny-llama", head="lm")
    assert model.config.num_key_value_heads < model.config.num_attention_heads      # GQA
    return model, tok


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0                                                                    # left padding
    return ids, mask


def test_the_seven_mixers_and_metala_are_registered():
    assert set(STUDENTS) <= set(NAMES)


@pytest.mark.parametrize("name", STUDENTS)
def test_student_generates_through_its_recurrent_form_like_full_recomputation(teacher, name, monkeypatch):
    model, _ = teacher
    student = qkv.make_student(model, name)
    ids, mask = _batch(model.config.vocab_size)
    steps = []
    cls = type(student.model.layers[0].mixer)
    original = cls.step
    monkeypatch.setattr(cls, "step", lambda self, x, s: steps.append(1) or original(self, x, s))
    with torch.no_grad():
        cached = student.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert len(steps) == 5 * len(student.model.layers)              # 1 prefill + 5 recurrent steps per layer
        full = student.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                use_cache=False)
    assert torch.equal(cached, full)
    with torch.no_grad():                                                # a padded row generates like itself alone
        alone = student.generate(ids[:1, 3:], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[0, 6:], cached[0, 9:])


@pytest.mark.parametrize("name", STUDENTS)
def test_qkv_copy_keeps_the_teachers_key_value_heads_and_the_rest(teacher, name):
    model, _ = teacher
    student = qkv.make_student(model, name)
    t_attn, mixer = model.model.layers[1].self_attn, student.model.layers[1].mixer
    assert mixer.num_kv_heads == model.config.num_key_value_heads == student.config.mixer_kv_heads
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):                # copied as they are: no repetition
        assert torch.equal(getattr(mixer, proj).weight, getattr(t_attn, proj).weight), proj
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, model.model.embed_tokens.weight)
    random = qkv.make_student(model, name, init="random")
    assert not torch.equal(random.model.layers[1].mixer.q_proj.weight, t_attn.q_proj.weight)
    info = qkv.describe(student, model)
    assert info["params"] == info["teacher_params"] - sum(p.numel() for p in t_attn.parameters()) * len(
        model.model.layers) + info["mixer_params_per_layer"] * len(model.model.layers)
    assert info["state_bytes_per_sequence"] > 0 and info["kv_heads"] == model.config.num_key_value_heads


@pytest.mark.parametrize("name", STUDENTS)
def test_repeat_kv_gives_the_earlier_layout_one_key_value_head_per_query_head(teacher, name):
    model, _ = teacher
    student = qkv.make_student(model, name, repeat_kv=True)
    h, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    t_attn, mixer = model.model.layers[1].self_attn, student.model.layers[1].mixer
    assert mixer.num_kv_heads == h == student.config.mixer_kv_heads
    d = t_attn.k_proj.weight.shape[0] // kv
    for head in range(h):                                                # query head -> its group's K/V head
        group = head // (h // kv)
        assert torch.equal(mixer.k_proj.weight[head * d:(head + 1) * d], t_attn.k_proj.weight[group * d:(group + 1) * d])
        assert torch.equal(mixer.v_proj.weight[head * d:(head + 1) * d], t_attn.v_proj.weight[group * d:(group + 1) * d])
    grouped = qkv.make_student(model, name)
    teacher_qkvo = sum(getattr(t_attn, p).weight.numel() for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    for s, extra in ((grouped, 0), (student, 2 * (h - kv) * d * model.config.hidden_size)):
        m = s.model.layers[1].mixer
        assert sum(getattr(m, p).weight.numel() for p in ("q_proj", "k_proj", "v_proj", "o_proj")) == teacher_qkvo + extra
    assert qkv.count(grouped) < qkv.count(student)
    with pytest.raises(ValueError, match="repeat_kv=True"):
        qkv.make_student(model, name, num_kv_heads=h)


@pytest.mark.parametrize("name", ["linear", "retnet", "mlstm", "gla", "metala"])
def test_grouped_heads_compute_what_tied_repeated_heads_compute(teacher, name):
    """The GQA layout is the repeated layout with each group's K/V (and per-KV-head gates) tied: copy the grouped
    student's weights into a repeated one (K/V rows and GLA's gate rows repeated) and the logits agree."""
    model, _ = teacher
    grouped, repeated = qkv.make_student(model, name), qkv.make_student(model, name, repeat_kv=True)
    h, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    state = {}
    for key, w in grouped.state_dict().items():
        if key.endswith(("k_proj.weight", "v_proj.weight", "gk_proj.1.weight", "gk_proj.1.bias")):
            w = qkv.repeat_heads(w, kv, h) if w.dim() == 2 else qkv.repeat_heads(w[:, None], kv, h)[:, 0]
        state[key] = w
    repeated.load_state_dict(state)
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        a, b = grouped(ids, attention_mask=mask).logits, repeated(ids, attention_mask=mask).logits
    assert (a - b)[:, 3:].abs().max() < 1e-4 * b.abs().max()


def test_a_student_saved_before_mixer_kv_heads_loads_with_repeated_heads(teacher, tmp_path):
    """Folders saved before the GQA layout have no ``mixer_kv_heads`` in config.json: they load as repeated K/V."""
    model, tok = teacher
    student = qkv.make_student(model, "gla", repeat_kv=True)
    qkv.save_student(student, tmp_path, tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["mixer_kv_heads"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids, mask = _batch(model.config.vocab_size)
    loaded = qkv.load_student(tmp_path)
    assert loaded.model.layers[0].mixer.num_kv_heads == model.config.num_attention_heads
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, student(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("name", STUDENTS)
def test_a_saved_student_reloads_identically_also_through_the_auto_class(teacher, name, tmp_path):
    model, tok = teacher
    student = qkv.make_student(model, name)
    qkv.save_student(student, tmp_path, tok)
    ids, mask = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = student(ids, attention_mask=mask).logits
        for loaded in (qkv.load_student(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
            assert isinstance(loaded.model.layers[0].mixer, Mixer) and loaded.config.mixer == name
            assert torch.equal(loaded(ids, attention_mask=mask).logits, want)


def test_clear_errors(teacher):
    model, _ = teacher
    with pytest.raises(ValueError, match="unknown mixer 'hyena': known mixers are deltanet"):
        qkv.make_student(model, "hyena")
    with pytest.raises(ValueError, match="init must be one of qkv, random"):
        qkv.make_student(model, "gla", init="copy")
    gpt2, _ = load_model("tiny-gpt2", head="lm")
    with pytest.raises(ValueError, match="Llama-family teacher"):
        qkv.make_student(gpt2, "gla")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        qkv.load_student("/nonexistent/student")


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_smollm2_students_build_generate_save_and_reload(name, tmp_path):
    model, tok = load_model("smollm2-135m-instruct", head="lm")
    student = qkv.make_student(model, name)
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = student.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    qkv.save_student(student, tmp_path, tok)
    with torch.no_grad():
        assert torch.equal(qkv.load_student(tmp_path)(**enc).logits, student(**enc).logits)
    mixer, attn = student.model.layers[0].mixer, model.model.layers[0].self_attn   # the teacher's GQA widths
    assert (mixer.num_kv_heads, mixer.k_proj.weight.shape) == (3, attn.k_proj.weight.shape)
