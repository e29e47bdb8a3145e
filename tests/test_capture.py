"""makd.core.capture: hooks by module name, attention recomputed from captured q/k, hidden states, grad modes."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from torch import nn

from conftest import tiny_batch, tiny_config, tiny_model
from makd.core import families
from makd.core.capture import CaptureSpec, capture, hook_plan

ALL = CaptureSpec(matrix_layers={0, 1}, attention_layers={0, 1}, hidden_layers={0, 1, 2}, value_layers={0, 1},
                  scores=True, inputs=True)


def _eager_reference(model, batch):
    with torch.no_grad():
        return model(**batch, output_attentions=True, output_hidden_states=True)


def test_attention_matches_eager_with_padding(family):
    model = tiny_model(family)
    batch = tiny_batch()
    assert batch["attention_mask"].min() == 0                      # padding is exercised
    got = capture(model, batch, ALL, grad=False)
    ref = _eager_reference(model, batch)
    for layer in (0, 1):
        torch.testing.assert_close(got.attentions[layer], ref.attentions[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(got.scores[layer].softmax(-1), ref.attentions[layer], atol=1e-5, rtol=0)
    for i in (0, 1, 2):
        torch.testing.assert_close(got.hidden[i], ref.hidden_states[i])
    torch.testing.assert_close(got.logits, ref.logits)
    if family == "llama":                                           # GQA: 4 query heads over 2 kv heads
        assert got.geometry == (4, 2, 8) and got.modules[0]["k"].shape[-1] == 16


def test_attention_without_padding_and_scores_only(family):
    model = tiny_model(family)
    batch = tiny_batch(pad=False)
    got = capture(model, batch, CaptureSpec(attention_layers={1}, scores=True, probs=False), grad=False)
    ref = _eager_reference(model, batch)
    assert got.attentions == {}
    torch.testing.assert_close(got.scores[1].softmax(-1), ref.attentions[1], atol=1e-5, rtol=0)


def test_attention_with_sdpa_model(family):
    eager = tiny_model(family)
    cfg = tiny_config(family)
    cls = tf.AutoModelForSequenceClassification if family == "bert" else tf.AutoModelForCausalLM
    sdpa = cls.from_config(cfg, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    batch = tiny_batch()
    got = capture(sdpa, batch, CaptureSpec(attention_layers={0, 1}), grad=False)
    ref = _eager_reference(eager, batch)
    for layer in (0, 1):
        torch.testing.assert_close(got.attentions[layer], ref.attentions[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "no_scale"])
def test_gpt2_scaling_conventions(option):
    kw = {"scale_attn_weights": False} if option == "no_scale" else {option: True}
    model = tiny_model("gpt2", **kw)
    batch = tiny_batch()
    got = capture(model, batch, CaptureSpec(attention_layers={0, 1}), grad=False)
    ref = _eager_reference(model, batch)
    for layer in (0, 1):
        torch.testing.assert_close(got.attentions[layer], ref.attentions[layer], atol=1e-5, rtol=0)


def test_causal_rows_ignore_future_tokens():
    for family in ("gpt2", "llama"):
        model = tiny_model(family)
        batch = tiny_batch(pad=False)
        changed = {k: v.clone() for k, v in batch.items()}
        changed["input_ids"][:, 6:] = (changed["input_ids"][:, 6:] % 50) + 1
        a = capture(model, batch, CaptureSpec(attention_layers={1}), grad=False).attentions[1]
        b = capture(model, changed, CaptureSpec(attention_layers={1}), grad=False).attentions[1]
        torch.testing.assert_close(a[:, :, :6, :6], b[:, :, :6, :6])          # rows before the change
        assert (a[:, :, :6, 6:] == 0).all()                                    # no weight on the future
        assert not torch.allclose(a[:, :, 6:], b[:, :, 6:])                    # later rows do change


def test_only_requested_layers_are_hooked(monkeypatch, family):
    model = tiny_model(family, n_layers=4)
    spec = CaptureSpec(matrix_layers={2}, roles=("o", "ffn_out"), attention_layers={3}, hidden_layers={1})
    plan = hook_plan(model, spec)
    assert {layer for layer, _ in plan.values()} == {2, 3}
    names = set(plan)
    hooked = []
    original = nn.Module.register_forward_hook

    def counting(self, hook, *args, **kwargs):
        if hook.__module__ == "makd.core.capture":                                  # not transformers' own recorders
            hooked.append(self)
        return original(self, hook, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    got = capture(model, tiny_batch(), spec, grad=False)
    monkeypatch.undo()
    by_id = {id(m): n for n, m in model.named_modules()}
    assert {by_id[id(m)] for m in hooked} == names
    assert set(got.modules) == {2} and set(got.modules[2]) == {"o", "ffn_out"}
    assert set(got.attentions) == {3} and set(got.hidden) == {1}
    assert got.inputs == {} and got.values == {} and got.scores == {}
    assert not any(h.__module__ == "makd.core.capture" for m in model.modules() for h in m._forward_hooks.values())


def test_gpt2_fused_qkv_split():
    model = tiny_model("gpt2")
    got = capture(model, tiny_batch(), CaptureSpec(matrix_layers={0}, roles=("q", "k", "v"), hidden_layers={0}),
                  grad=False)
    block = model.transformer.h[0]
    with torch.no_grad():
        fused = block.attn.c_attn(block.ln_1(got.hidden[0]))                  # (B, T, 3D)
    q, k, v = fused.split(32, dim=-1)
    torch.testing.assert_close(got.modules[0]["q"], q)
    torch.testing.assert_close(got.modules[0]["k"], k)
    torch.testing.assert_close(got.modules[0]["v"], v)


def test_inputs_and_apply_reproduce_outputs(family):
    model = tiny_model(family)
    got = capture(model, tiny_batch(), CaptureSpec(matrix_layers={1}, inputs=True), grad=False)
    roles = set(got.modules[1])
    assert roles == set(got.inputs[1]) and {"q", "k", "v", "o", "ffn_in", "ffn_out"} <= roles
    with torch.no_grad():
        for role in roles:
            torch.testing.assert_close(got.apply[1][role](got.inputs[1][role]), got.modules[1][role])


def test_teacher_no_grad_student_grad(family):
    teacher = tiny_model(family)
    student = copy.deepcopy(teacher).train()
    teacher.train()
    batch = tiny_batch()
    t = capture(teacher, batch, ALL, grad=False)
    assert teacher.training                                                     # mode restored
    assert not any(x.requires_grad for x in [t.logits, *t.attentions.values(), *t.hidden.values(),
                                              *t.modules[0].values()])
    s = capture(student, batch, ALL, grad=True)
    assert student.training
    assert all(x.requires_grad for x in [s.logits, *s.attentions.values(), *s.modules[1].values(), s.hidden[2]])


def test_task_heads():
    batch = tiny_batch()
    qa = tiny_model("bert", head="qa")
    got = capture(qa, batch | {"start_positions": torch.tensor([1, 2, 3])}, CaptureSpec(attention_layers={0}),
                  grad=False)
    assert got.logits.shape == (3, 10, 2)
    torch.testing.assert_close(got.logits[..., 0], got.outputs.start_logits)
    cls = tiny_model("gpt2", head="cls", pad_token_id=0)
    got = capture(cls, batch | {"labels": torch.tensor([0, 1, 0])}, CaptureSpec(matrix_layers={0}), grad=False)
    assert got.logits.shape == (3, 2) and got.outputs.loss is None            # labels not passed to the model
    lm = tiny_model("llama", head="lm")
    got = capture(lm, batch | {"labels": batch["input_ids"]}, CaptureSpec(attention_layers={1}), grad=False)
    assert got.logits.shape == (3, 10, 99) and got.outputs.loss is None


def test_factorised_student_lines_up():
    from makd.core.factorize import factorize
    teacher = tiny_model("bert")
    student = factorize(teacher, rank=4)
    spec = CaptureSpec(matrix_layers={0}, attention_layers={1})
    s, t = capture(student, tiny_batch(), spec, grad=True), capture(teacher, tiny_batch(), spec, grad=False)
    assert set(s.modules[0]) == set(t.modules[0])
    for role in s.modules[0]:
        assert s.modules[0][role].shape == t.modules[0][role].shape
    assert s.attentions[1].shape == t.attentions[1].shape


def test_bad_spec_errors():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="out-of-range.*0..1"):
        capture(model, tiny_batch(), CaptureSpec(attention_layers={2}), grad=False)
    with pytest.raises(ValueError, match="hidden_layers.*0..2"):
        capture(model, tiny_batch(), CaptureSpec(hidden_layers={3}), grad=False)
    with pytest.raises(ValueError, match="unknown role"):
        capture(model, tiny_batch(), CaptureSpec(matrix_layers={0}, roles=("query",)), grad=False)
    with pytest.raises(ValueError, match="input_ids"):
        capture(model, {"attention_mask": torch.ones(2, 3)}, CaptureSpec(), grad=False)
    with pytest.raises(families.UnsupportedModelError):
        capture(nn.Linear(2, 2), tiny_batch(), CaptureSpec(), grad=False)


def test_wrapped_model_is_called_and_inner_model_hooked():
    class Wrapper(nn.Module):                                   # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    model = tiny_model("llama")
    wrapped = Wrapper(model)
    got = capture(wrapped, tiny_batch(), CaptureSpec(attention_layers={0}, matrix_layers={1}), grad=True)
    ref = capture(model, tiny_batch(), CaptureSpec(attention_layers={0}, matrix_layers={1}), grad=True)
    assert wrapped.calls == 1
    torch.testing.assert_close(got.attentions[0], ref.attentions[0])
    assert set(got.modules[1]) == set(ref.modules[1])
