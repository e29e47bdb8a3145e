"""makd.core.objective: presets, per-aspect terms, weights, errors, teacher forcing, gradients, compatibility."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_batch, tiny_model
from makd.core.capture import capture
from makd.core.losses import NonFiniteLossError
from makd.core.objective import ASPECTS, LOSSES, PRESET_TABLE, PRESETS, MaKDObjective, check_compatible

N = 4
DISTIL = ("mha", "ffn", "attn", "hidn", "vr", "kd")      # terms that vanish when student == teacher


def setup(family, head="auto", **kw):
    teacher = tiny_model(family, head=head, n_layers=N, **kw)
    batch = tiny_batch()
    if family == "bert" and head in ("auto", "cls"):
        batch["labels"] = torch.tensor([0, 1, 1])
    elif head in ("auto", "lm"):
        labels = batch["input_ids"].clone()
        labels[:, :3] = -100                                 # prompt
        labels[batch["attention_mask"] == 0] = -100          # padding
        batch["labels"] = labels
    return teacher, copy.deepcopy(teacher), batch


def perturb(model, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def run(obj, student, teacher, batch, step=None):
    spec = obj.spec()
    s = capture(student, batch, spec, grad=True)
    t = capture(teacher, batch, spec, grad=False) if obj.needs_teacher else None
    return obj(s, t, batch, step=step)


EXPECTED = {
    "hierarchical": {"mha", "ffn", "attn", "hidn", "pred", "kd", "ce"},
    "hierarchical-inverted": {"mha", "ffn", "attn", "hidn", "pred", "kd", "ce"},
    "all": {"mha", "ffn", "attn", "hidn", "pred", "kd", "ce"},
    "layer-only": {"attn", "hidn", "pred", "kd", "ce"},
    "model-only": {"pred", "kd", "ce"},
    "tinybert": {"attn", "hidn", "pred", "kd", "ce"},
    "minilm": {"attn", "vr", "pred", "kd", "ce"},
    "finetune": {"pred", "ce"},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_terms_zero_for_copy_positive_after_perturbing(preset, family):
    teacher, student, batch = setup(family)
    obj = MaKDObjective(N, preset, causal_lm=family != "bert")
    total, terms = run(obj, student, teacher, batch, step=0)
    assert set(terms) == EXPECTED[preset]
    for name in set(terms) & set(DISTIL):
        assert abs(float(terms[name])) < 1e-6, (name, float(terms[name]))
    assert float(terms["ce"]) > 0
    perturb(student)
    total2, terms2 = run(obj, student, teacher, batch)
    for name in set(terms2) & set(DISTIL):
        assert float(terms2[name]) > 1e-6, name
    w = obj.weights
    expect = sum(w[a] * terms2[a] for a in w)
    torch.testing.assert_close(total2.detach(), expect)


GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "objective_golden.json").read_text())["values"]
GOLDEN_CASES = {f"bert/{p}": ("bert", p, {}) for p in PRESETS} | {
    "gpt2/hierarchical": ("gpt2", "hierarchical", {"causal_lm": True}),
    "gpt2/minilm": ("gpt2", "minilm", {"causal_lm": True}),
    "gpt2/finetune": ("gpt2", "finetune", {"causal_lm": True}),
    "llama/all-relative-forced-verbose": ("llama", "all", {"causal_lm": True, "mse": "relative",
                                                           "teacher_forcing": True, "verbose_terms": True}),
    "bert/hierarchical-weighted": ("bert", "hierarchical", {"weights": {"attn": 2.0, "mha": 0.5}, "verbose_terms": True,
                                                            "split": 1, "temperature": 3.0, "alpha": 0.3}),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_total_and_terms_match_the_values_pinned_before_presets_became_data(case):
    """Pinned with the objective of 069f912 (preset special cases in code): the data-driven one must agree."""
    family, preset, kw = GOLDEN_CASES[case]
    teacher, student, batch = setup(family)
    perturb(student)
    total, terms = run(MaKDObjective(N, preset, **kw), student, teacher, batch)
    got = {"total": float(total.detach()), **{k: float(v) for k, v in terms.items()}}
    assert list(got) == list(GOLDEN[case])                  # same terms, logged in the same order
    for name, value in GOLDEN[case].items():   # kd: a KL of nearly equal distributions, CPU-dependent rounding
        assert got[name] == pytest.approx(value, rel=1e-5, abs=2e-7 if name == "kd" else 1e-8), (case, name)


def test_presets_are_data_resolved_through_the_loss_registry():
    assert set(PRESETS) == set(PRESET_TABLE) == set(GOLDEN_CASES[c][1] for c in GOLDEN_CASES)
    for name, preset in PRESET_TABLE.items():
        obj = MaKDObjective(6, name)
        assert set(obj.weights) == set(preset.layers) and obj.needs_teacher == preset.teacher
        for aspect, loss in obj.aspect_losses.items():
            assert loss is LOSSES[preset.losses.get(aspect, aspect)], (name, aspect)
    assert MaKDObjective(6, "tinybert").aspect_losses["attn"] is LOSSES["attn_scores"]
    # an aspect added to a preset by assignment uses its own registered loss
    assert MaKDObjective(6, "hierarchical", assignment={"vr": [5]}).aspect_losses["vr"] is LOSSES["vr"]


def test_hierarchical_assignment_and_spec():
    obj = MaKDObjective(6)
    assert obj.assignment == {"mha": [0, 1, 2], "ffn": [0, 1, 2], "attn": [3, 4, 5], "hidn": [3, 4, 5], "pred": []}
    spec = obj.spec()
    assert spec.matrix_layers == {0, 1, 2} and spec.attention_layers == {3, 4, 5}
    assert spec.hidden_layers == {4, 5, 6} and not spec.inputs and not spec.scores
    inv = MaKDObjective(6, "hierarchical-inverted", split=2)
    assert inv.assignment["mha"] == [2, 3, 4, 5] and inv.assignment["attn"] == [0, 1]
    assert MaKDObjective(6, "layer-only").spec().hidden_layers == set(range(7))
    assert MaKDObjective(6, "tinybert").spec().scores and not MaKDObjective(6, "tinybert").spec().probs
    assert MaKDObjective(6, "minilm").spec().value_layers == {5}
    assert not MaKDObjective(6, "finetune").needs_teacher and MaKDObjective(6).needs_teacher
    table = MaKDObjective(4, weights={"attn": 2.0}).describe()
    assert list(table.columns) == list(ASPECTS) and list(table.index) == ["emb", "L0", "L1", "L2", "L3", "model"]
    assert table.loc["L3", "attn"] == 2.0 and table.loc["L0", "attn"] == 0 and table.loc["model", "pred"] == 1.0


def test_weights_zero_switch_terms_off():
    teacher, student, batch = setup("bert")
    perturb(student)
    full_total, full = run(MaKDObjective(N, "all"), student, teacher, batch)
    obj = MaKDObjective(N, "all", weights={"attn": 0, "mha": 0.0, "hidn": 2.0})
    assert obj.spec().attention_layers == set() and obj.spec().roles == ("ffn_gate", "ffn_in", "ffn_out")
    total, terms = run(obj, student, teacher, batch)
    assert "attn" not in terms and "mha" not in terms and "ffn" in terms
    torch.testing.assert_close(total.detach(), full["ffn"] + 2 * full["hidn"] + full["pred"])


def test_assignment_override_and_verbose_terms():
    teacher, student, batch = setup("bert")
    perturb(student)
    obj = MaKDObjective(N, "hierarchical", assignment={"attn": [1, 3], "hidn": [-1]}, verbose_terms=True)
    total, terms = run(obj, student, teacher, batch)
    assert {"attn/L1", "attn/L3", "hidn/L-1", "mha/L0", "mha/L1"} <= set(terms) and "attn/L2" not in terms
    torch.testing.assert_close(terms["attn"], terms["attn/L1"] + terms["attn/L3"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset.*hierarchical"):
        MaKDObjective(4, "makd")
    with pytest.raises(ValueError, match="unknown aspect 'mlp'.*mha"):
        MaKDObjective(4, weights={"mlp": 1.0})
    with pytest.raises(ValueError, match="unknown aspect 'layer'"):
        MaKDObjective(4, assignment={"layer": [0]})
    with pytest.raises(ValueError, match=r"out-of-range layer\(s\) \[4\]"):
        MaKDObjective(4, assignment={"attn": [4]})
    with pytest.raises(ValueError, match="out-of-range"):
        MaKDObjective(4, assignment={"mha": [-1]})
    with pytest.raises(ValueError, match="split"):
        MaKDObjective(4, split=5)
    with pytest.raises(ValueError, match="not part of preset"):
        MaKDObjective(4, "model-only", weights={"mha": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MaKDObjective(4, weights={"mha": -1})
    with pytest.raises(ValueError, match="causal"):
        MaKDObjective(4, reverse_kl=True)


def test_non_finite_raises_with_term_and_step():
    teacher, student, batch = setup("bert")
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"'mha/L0'.*at step 7"):
        run(MaKDObjective(N), student, teacher, batch, step=7)


def test_only_the_total_is_checked_until_it_is_not_finite(monkeypatch):
    """One isfinite on the total per step; the per-term diagnosis runs only after it fails."""
    from makd.core import losses
    teacher, student, batch = setup("bert")
    perturb(student)
    seen = []
    real = losses.check_finite
    monkeypatch.setattr(losses, "check_finite", lambda name, v, step=None: (seen.append(name), real(name, v, step)))
    run(MaKDObjective(N, "all"), student, teacher, batch, step=3)
    assert seen == []
    monkeypatch.setattr(losses, "hidden_mse", lambda *a, **k: torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"'hidn/L-1'.*at step 3") as err:
        run(MaKDObjective(N, "all"), student, teacher, batch, step=3)
    assert seen[-1] == "hidn/L-1" and "mha/L0" in seen and isinstance(err.value, FloatingPointError)


def test_gradients_reach_only_the_student(family):
    teacher, student, batch = setup(family)
    perturb(student)
    for p in teacher.parameters():
        p.requires_grad_(True)                              # even if trainable, the teacher gets no grad
    total, _ = run(MaKDObjective(N, "all", causal_lm=family != "bert", teacher_forcing=True), student, teacher, batch)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    layer_grads = [p.grad for n, p in student.named_parameters() if ".0." in n and p.grad is not None]
    assert layer_grads and any(float(g.abs().sum()) > 0 for g in layer_grads)


def test_teacher_forcing(family):
    teacher, student, batch = setup(family)
    tf_obj = MaKDObjective(N, "all", teacher_forcing=True, causal_lm=family != "bert")
    own_obj = MaKDObjective(N, "all", causal_lm=family != "bert")
    assert tf_obj.spec().inputs
    _, terms = run(tf_obj, student, teacher, batch)
    assert float(terms["mha"]) < 1e-10 and float(terms["ffn"]) < 1e-10
    with torch.no_grad():                                   # perturb only the first layer's MLP
        for n, p in student.named_parameters():
            if ".0." in n and ("intermediate" in n or "mlp" in n):
                p.add_(0.1)
    _, tf_terms = run(tf_obj, student, teacher, batch)
    _, own_terms = run(own_obj, student, teacher, batch)
    assert float(tf_terms["ffn"]) > 0 and float(own_terms["mha"]) > 0
    assert float(tf_terms["mha"]) < 1e-10                   # attention matrices are untouched: exact with TF
    assert not torch.allclose(tf_terms["ffn"], own_terms["ffn"])


def test_causal_lm_response_only_mask():
    teacher, student, batch = setup("gpt2")
    perturb(student)
    _, all_tokens = run(MaKDObjective(N, "layer-only", causal_lm=True), student, teacher, batch)
    _, response = run(MaKDObjective(N, "layer-only", causal_lm=True, response_only_layers=True),
                      student, teacher, batch)
    assert not torch.allclose(all_tokens["hidn"], response["hidn"])
    torch.testing.assert_close(all_tokens["kd"], response["kd"])          # model term: response tokens always


def test_qa_prediction_averages_start_and_end():
    teacher, student, batch = setup("bert", head="qa")
    batch |= {"start_positions": torch.tensor([1, 2, 0]), "end_positions": torch.tensor([3, 4, 0])}
    obj = MaKDObjective(N, "model-only")
    _, terms = run(obj, student, teacher, batch)
    assert float(terms["kd"]) < 1e-6 and float(terms["ce"]) > 0
    perturb(student)
    total, terms = run(obj, student, teacher, batch)
    assert float(terms["kd"]) > 0
    torch.testing.assert_close(total.detach(), 0.5 * terms["kd"] + 0.5 * terms["ce"])
    with pytest.raises(ValueError, match="end_positions"):
        run(obj, student, teacher, {k: v for k, v in batch.items() if k != "end_positions"})


def test_finetune_runs_without_teacher():
    _, student, batch = setup("bert")
    obj = MaKDObjective(N, "finetune")
    total, terms = run(obj, student, None, batch)
    assert set(terms) == {"ce", "pred"}
    torch.testing.assert_close(total.detach(), terms["ce"])
    with pytest.raises(ValueError, match="needs the teacher"):
        MaKDObjective(N)(None, None, batch)


def test_check_compatible():
    teacher = tiny_model("bert", n_layers=N)
    assert check_compatible(teacher, copy.deepcopy(teacher)) == {i: i for i in range(N)}
    padded = copy.deepcopy(teacher)
    padded.resize_token_embeddings(128)
    with pytest.raises(ValueError, match="vocabulary sizes differ.*resize_token_embeddings"):
        check_compatible(teacher, padded)
    shallow = tiny_model("bert", n_layers=2)
    with pytest.raises(ValueError, match="layer counts differ.*mapping="):
        check_compatible(teacher, shallow)
    assert check_compatible(teacher, shallow, mapping={0: 1, 1: 3}) == {0: 1, 1: 3}
    with pytest.raises(ValueError, match="out-of-range"):
        check_compatible(teacher, shallow, mapping={0: 4})
    wide = tiny_model("bert", n_layers=N, hidden_size=48, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden widths differ.*hidden_proj"):
        check_compatible(teacher, wide)


def test_relative_mse_divides_matrix_and_hidden_terms_by_the_teacher_energy():
    teacher, student, batch = setup("llama", head="lm")
    perturb(student)
    plain = MaKDObjective(N, "all", causal_lm=True)
    rel = MaKDObjective(N, "all", causal_lm=True, mse="relative")
    _, p = run(plain, student, teacher, batch)
    _, r = run(rel, student, teacher, batch)
    for aspect in ("mha", "ffn", "hidn"):
        assert r[aspect] > 0 and not torch.isclose(r[aspect], p[aspect]), aspect
    for aspect in ("attn", "kd", "ce"):                   # not MSE terms: unchanged
        torch.testing.assert_close(r[aspect], p[aspect])
    with pytest.raises(ValueError, match="mse must be"):
        MaKDObjective(N, "all", mse="cosine")


def test_response_only_attention_runs_over_every_real_key():
    # a decoder's response tokens attend to the prompt too: the attention KL of a response query is over all the
    # real keys it sees (a sum over the response keys alone is no divergence: it can go negative and rewards moving
    # attention off the prompt)
    teacher, student, batch = setup("llama")
    perturb(student, scale=0.2)
    obj = MaKDObjective(N, "layer-only", causal_lm=True, response_only_layers=True, verbose_terms=True)
    _, terms = run(obj, student, teacher, batch)
    spec = obj.spec()
    s = capture(student, batch, spec, grad=False)
    t = capture(teacher, batch, spec, grad=False)
    queries = (batch["labels"] != -100) & (batch["attention_mask"] != 0)            # (B, T) response tokens
    for layer in obj.assignment["attn"]:
        log_ps = torch.log_softmax(s.attention_scores(layer).double(), -1)          # (B, H, T, T) masked scores
        log_pt = torch.log_softmax(t.attention_scores(layer).double(), -1)
        kl = torch.where(log_pt.exp() > 0, log_pt.exp() * (log_pt - log_ps), 0.0).sum(-1)   # (B, H, T) all keys
        want = kl[queries[:, None, :].expand_as(kl)].mean()
        assert float(terms[f"attn/L{layer}"]) >= 0
        torch.testing.assert_close(terms[f"attn/L{layer}"].double(), want, rtol=1e-5, atol=1e-7)
