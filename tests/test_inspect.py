"""makd.notebook.views: spectra and the Eckart–Young bound, per-layer teacher-vs-student tables, temperature
helpers, the history table, GLUE task discovery, and the shared notebook set-up (tiny models only)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from makd.core import factorize as fz
from makd.notebook import views as ins
from makd.core import losses
from makd.core.capture import CaptureSpec, capture

from conftest import tiny_batch, tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
ALL = CaptureSpec(matrix_layers={0, 1}, attention_layers={0, 1}, hidden_layers={0, 1, 2}, inputs=True)


def test_eckart_young_error_is_the_truncation_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    for r in range(6):
        w_r = (u[:, :r] * s[:r]) @ vh[:r]
        expected = float(torch.linalg.norm(w - w_r) / torch.linalg.norm(w))
        assert ins.eckart_young_error(s.numpy(), [r])[0] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert ins.eckart_young_error(s.numpy(), [0, 5]).tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="ranks must be in 0..5"):
        ins.eckart_young_error(s.numpy(), [6])
    with pytest.raises(ValueError, match="non-empty 1-d"):
        ins.eckart_young_error([], [0])


def test_energy_rank():
    sigma = [3.0, 2.0, 1.0]                                  # energies 9, 4, 1 of 14
    assert ins.energy_rank(sigma, 9 / 14) == 1
    assert ins.energy_rank(sigma, 0.7) == 2 and ins.energy_rank(sigma, 1.0) == 3
    with pytest.raises(ValueError, match="energy must be in"):
        ins.energy_rank(sigma, 0)


def test_spectra_one_row_per_matrix_and_match_factorize_report():
    model = tiny_model("bert")
    spec = ins.spectra(model)
    assert len(spec) == 2 * 6 and set(spec["role"]) == {"q", "k", "v", "o", "ffn_in", "ffn_out"}
    row = spec.iloc[4]                                       # layer 0 ffn_in, 37x32
    assert row["shape"] == "37x32" and row["full_rank"] == 32 and np.all(np.diff(row["sigma"]) <= 1e-12)
    student = fz.factorize(model, rank=8)
    rep = fz.report(student, model).set_index("module")
    for _, r in spec.iterrows():
        assert rep.loc[r["module"], "rel_error"] == pytest.approx(ins.eckart_young_error(r["sigma"], [8])[0], rel=1e-4)
    low = ins.spectra(student)                               # spectrum of the product A B: rank 8
    assert all((s[8:] < 1e-4 * s[0]).all() for s in low["sigma"])


def _captures(rank=8):
    teacher = tiny_model("bert")
    student = fz.factorize(teacher, rank=rank)
    batch = tiny_batch()
    return (capture(teacher, batch, ALL, grad=False), capture(student, batch, ALL, grad=False),
            batch["attention_mask"])


def test_tables_are_zero_for_an_exact_student():
    t, s, mask = _captures(rank=32)                          # full rank: the student IS the teacher
    assert ins.attention_kl_table(s, t, mask).abs().to_numpy().max() < 1e-5
    assert ins.hidden_mse_table(s, t, mask)["mse"].max() < 1e-10
    assert ins.module_output_errors(s, t, mask)["rel_error"].max() < 1e-4
    assert ins.module_output_errors(s, t, mask, teacher_forced=True)["rel_error"].max() < 1e-4


def test_attention_and_hidden_tables_agree_with_makd_losses():
    t, s, mask = _captures()
    kl = ins.attention_kl_table(s, t, mask)
    assert kl.shape == (2, 4) and list(kl.columns) == ["h0", "h1", "h2", "h3"] and (kl.to_numpy() > 0).all()
    for layer in (0, 1):  # mean over heads == the layer's L_attn (every head has the same valid queries)
        assert kl.loc[layer].mean() == pytest.approx(float(losses.attention_kl(s.attentions[layer], t.attentions[layer],
                                                                                mask)), rel=1e-5)
    assert not np.allclose(ins.attention_kl_table(t, s, mask).to_numpy(), kl.to_numpy(), rtol=1e-3)  # order matters
    hid = ins.hidden_mse_table(s, t, mask)
    assert hid["after"].tolist() == ["embeddings", "layer 0", "layer 1"] and hid["mse"].iloc[0] == 0.0
    assert hid["mse"].iloc[2] == pytest.approx(float(losses.hidden_mse(s.hidden[2], t.hidden[2], mask)), rel=1e-6)
    h_s, h_t = s.hidden[2], t.hidden[2]
    valid = mask.bool()
    rel = float(torch.linalg.norm(h_s[valid] - h_t[valid]) / torch.linalg.norm(h_t[valid]))
    assert hid["rel_error"].iloc[2] == pytest.approx(rel, rel=1e-5)


def test_module_output_errors_own_vs_teacher_forced():
    t, s, mask = _captures(rank=4)
    own = ins.module_output_errors(s, t, mask).set_index(["layer", "role"])
    forced = ins.module_output_errors(s, t, mask, teacher_forced=True).set_index(["layer", "role"])
    assert len(own) == 12 and set(own["group"]) == {"MHA", "FFN"}
    # layer 0's Q/K/V see the (unfactorised) embedding output: same input either way
    for role in ("q", "k", "v"):
        assert own.loc[(0, role), "mse"] == pytest.approx(forced.loc[(0, role), "mse"], rel=1e-5)
    # deeper, the student's own inputs carry the earlier layers' errors
    assert not np.allclose(own.loc[1, "mse"].to_numpy(), forced.loc[1, "mse"].to_numpy())
    for (layer, role), row in own.iterrows():
        assert row["mse"] == pytest.approx(float(losses.masked_mse(s.modules[layer][role], t.modules[layer][role], mask)),
                                           rel=1e-6)
    batch = tiny_batch()
    plain = capture(tiny_model("bert"), batch, CaptureSpec(matrix_layers={0}), grad=False)
    with pytest.raises(ValueError, match="inputs=True"):
        ins.module_output_errors(plain, plain, batch["attention_mask"], teacher_forced=True)


def test_softened_and_kd_gradient_norms():
    z = torch.tensor([2.0, 0.5, -1.0])
    soft = ins.softened(z, [1.0, 4.0, 1e4])
    assert np.allclose(soft.sum(axis=1), 1.0)
    assert np.allclose(soft.loc[1.0], torch.softmax(z.double(), -1).numpy())
    assert np.allclose(soft.loc[1e4], 1 / 3, atol=1e-3) and soft.loc[4.0].max() < soft.loc[1.0].max()
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g) * 3
    table = ins.kd_gradient_norms(z_s, z_t, [1.0, 2.0, 8.0]).set_index("temperature")
    for t in (1.0, 2.0, 8.0):
        assert table.loc[t, "t2_kl"] == pytest.approx(float(losses.logit_kd(z_s, z_t, temperature=t)), rel=1e-5)
        assert table.loc[t, "kl"] * t ** 2 == pytest.approx(table.loc[t, "t2_kl"], rel=1e-9)
        # ∂KL/∂z_s = (p_s − p_t) / (t · B) for the batch mean
        expected = ((F.softmax(z_s.double() / t, -1) - F.softmax(z_t.double() / t, -1)) / (t * 6)).norm()
        assert table.loc[t, "grad_norm_kl"] == pytest.approx(float(expected), rel=1e-6)
    assert table["grad_norm_kl"].iloc[-1] < table["grad_norm_kl"].iloc[0] / 10   # shrinks ~1/t²


def test_history_frame():
    hist = [{"loss": 1.0, "loss_attn": 0.4, "loss_hidn": 0.6, "step": 1, "epoch": 0.1},
            {"loss": 0.5, "loss_attn": 0.2, "loss_hidn": 0.3, "step": 2, "epoch": 0.2},
            {"train_runtime": 3.0, "step": 2}]
    df = ins.history_frame(hist)
    assert list(df.columns) == ["loss", "attn", "hidn"] and df.index.tolist() == [1, 2] and df.loc[2, "attn"] == 0.2
    with pytest.raises(ValueError, match="no training log entry"):
        ins.history_frame([{"train_runtime": 3.0, "step": 2}])


def test_local_glue_tasks(tmp_path):
    found = ins.local_glue_tasks(FIXTURES)                  # fixtures/glue/<Folder>/; QNLI has no train file
    assert "qnli" not in found and {"sst2", "rte", "mnli", "mnli-mm", "cola"} <= set(found)
    (tmp_path / "SST-2").mkdir()
    for f in ("train.tsv", "dev.tsv"):
        shutil.copy(FIXTURES / "glue" / "SST-2" / f, tmp_path / "SST-2" / f)
    assert ins.local_glue_tasks(tmp_path) == ["sst2"]      # <data_dir>/<Folder>/ works too
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ins.local_glue_tasks(tmp_path / "missing")


def test_task_teacher_eval_batch_and_distill_steps(tmp_path):
    from makd.tasks.glue import tokenize_task
    from makd.core.objective import MaKDObjective

    result, data = ins.task_teacher("tiny-bert", "sst2", data_dir=str(FIXTURES / "glue"), max_length=32)
    assert data.name == "sst2" and result.model.config.num_labels == 2 and "accuracy" in result.metrics
    again, _ = ins.task_teacher("tiny-bert", "sst2", data_dir=str(FIXTURES / "glue"), max_length=32)
    assert again.reused and again.path == result.path       # cached by settings
    batch = ins.eval_batch(data, result.tokenizer, n=3, max_length=32)
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].tolist() == data.dev["label"][:3]
    student = fz.factorize(result.model, rank=4)
    before = [p.detach().clone() for p in student.parameters()]
    train, _ = tokenize_task(data, result.tokenizer, max_length=32)
    hist = ins.distill_steps(student, result.model, MaKDObjective(2, "layer-only", weights={"pred": 0.0}), train,
                             result.tokenizer, tmp_path / "run", max_steps=2, logging_steps=1, batch_size=2)
    assert [e["step"] for e in hist] == [1, 2] and all("loss_attn" in e and "loss_hidn" in e for e in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters())), "the student was trained"
    assert not student.training
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        ins.distill_steps(student, result.model, MaKDObjective(2, "layer-only"), train, result.tokenizer,
                          tmp_path / "run", max_steps=0)
