"""The distillation study of subquadratic students (issue 22): the stages' losses, the stages on a tiny GQA Llama
(each lowers its own loss; exactly zero for the softmax identity student; a killed run resumes to the same
weights), LM blocks, ``python -m makd subquadratic`` end to end, and its configuration errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from makd import cli
from makd.assets.models import load_model, resolve
from makd.core.mixing_losses import HIDDEN_KINDS, KL_REDUCTIONS, hidden_alignment_loss, matrix_mixing_loss, token_kl
from makd.experiments import grid as G
from makd.experiments.report import report_markdown
from makd.experiments.stats import collect
from makd.experiments import subquadratic_config as sc
from makd.experiments.options import config_from_kwargs
from makd.experiments.subquadratic import run
from makd.experiments.subquadratic_config import SubquadraticConfig
from makd.students import qkv, stage_loop, stages
from makd.students.mixers import registry
from makd.students.stage_loop import StageSpec
from makd.tasks import lm_blocks, zeroshot

TEXT = ("The river runs through the old town and under seven stone bridges. Merchants sold wool, salt and "
        "wine on its banks, and the guilds built their halls along the water. ")


@pytest.fixture(scope="module")
def teacher():
    model, tok = load_model("tiny-llama", head="lm", attn_implementation="eager")
    assert model.config.num_key_value_heads < model.config.num_attention_heads          # GQA
    return model, tok


def _blocks(n=16, length=24, seed=0):
    ids = torch.randint(3, 500, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(6):
        (folder / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT * 12)
    return folder


# ------------------------------------------------------------------------------------------ losses
def test_matrix_mixing_loss_is_the_row_frobenius_error_over_heads_and_valid_rows():
    m, a = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    m[0, 0, 2, 0], m[0, 1, 1, 1] = 3.0, 1.0                     # squared errors 9 (row 2) and 1 (row 1)
    assert matrix_mixing_loss(m, a).item() == pytest.approx(10 / (2 * 3))
    mask = torch.tensor([[1, 1, 0]])                           # row 2 and column 2 padded: only the 1 is left
    assert matrix_mixing_loss(m, a, mask).item() == pytest.approx(1 / (2 * 2))
    with pytest.raises(ValueError, match="shape"):
        matrix_mixing_loss(m, a[..., :2])


def test_hidden_alignment_l2_is_the_mean_token_norm_and_mse_the_mean_square():
    s, t = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    s[0, 0] = torch.tensor([3.0, 4.0])                          # norm 5
    s[0, 2] = torch.tensor([1.0, 0.0])                          # norm 1, padded below
    assert hidden_alignment_loss(s, t, kind="l2").item() == pytest.approx(6 / 3)
    assert hidden_alignment_loss(s, t, torch.tensor([[1, 1, 0]]), kind="l2").item() == pytest.approx(5 / 2)
    assert hidden_alignment_loss(s, t, torch.tensor([[1, 1, 0]]), kind="mse").item() == pytest.approx(25 / 4)
    zero = torch.zeros(1, 2, 2, requires_grad=True)
    hidden_alignment_loss(zero, torch.zeros(1, 2, 2)).backward()
    assert torch.isfinite(zero.grad).all()                     # no NaN gradient at a perfect match
    assert HIDDEN_KINDS == ("l2", "mse")


def test_token_kl_is_teacher_to_student_per_token_mean_or_summed_per_sequence():
    t = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    s = torch.zeros(1, 3, 2)
    p = torch.softmax(t, -1)
    kl = (p * (p.log() - math.log(0.5))).sum(-1)[0]            # KL(p_t || uniform) per position
    mask = torch.tensor([[1, 1, 0]])
    assert token_kl(s, t, mask).item() == pytest.approx(float(kl[:2].mean()), rel=1e-6)
    assert token_kl(s, t, mask, reduction="sum").item() == pytest.approx(float(kl[:2].sum()), rel=1e-6)
    assert token_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert token_kl(s, t, temperature=2.0).item() == pytest.approx(
        4 * float((torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - math.log(0.5))).sum(-1).mean()))
    assert KL_REDUCTIONS == ("mean", "sum")


# ------------------------------------------------------------------------------------------ stages
def test_the_softmax_student_is_the_teacher_so_stage_1_and_2_losses_are_exactly_zero(teacher):
    model, _ = teacher
    student = stages.identity_student(model)
    batch = _blocks(4, 20)
    with torch.no_grad():
        assert torch.equal(student(input_ids=batch["input_ids"], use_cache=False).logits,
                           model(input_ids=batch["input_ids"]).logits)
    out = stages.run_stages(student, model, _blocks(), [StageSpec("mixing", 4 * 24 * 3, 1e-2),
                                                        StageSpec("hidden", 4 * 24 * 3, 1e-2)],
                            batch_size=4, progress=False)
    for name in ("mixing", "hidden"):
        assert [e["loss"] for e in out[name]["history"]] == [0.0, 0.0, 0.0]
        assert all(e["L0"] == 0.0 and e["L1"] == 0.0 for e in out[name]["history"])


def test_a_padded_row_of_the_identity_student_matches_the_teacher(teacher):
    model, _ = teacher
    student = stages.identity_student(model)
    batch = _blocks(2, 12)
    batch["attention_mask"][0, :4] = 0                          # left padding
    ins, outs, probs = stages.teacher_activations(model, batch, attentions=True)
    valid = batch["attention_mask"].bool()
    for block, h, out, a in zip(student.model.layers, ins, outs, probs):
        with torch.no_grad():
            m = block.mixer.mixing_matrix(block.input_layernorm(h), batch["attention_mask"])
            y = block(h, batch["attention_mask"], None)
        assert torch.equal(m.transpose(1, 2)[valid], a.transpose(1, 2)[valid])
        assert torch.equal(y[valid], out[valid])


@pytest.mark.parametrize("stage", stages.STAGES)
def test_each_stage_lowers_its_own_loss(teacher, stage):
    model, _ = teacher
    student = stages.student_for(model, "gla", "qkv", seed=0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    lr = 3e-3 if stage == "kd" else 1e-2
    # kd: the KL alone (a random tiny teacher is near uniform: its CE on random tokens is memorisation)
    out = stages.run_stages(student, model, _blocks(), [StageSpec(stage, 4 * 24 * 20, lr, "constant")],
                            batch_size=4, progress=False, ce_weight=0.0)
    losses = [e["loss"] for e in out[stage]["history"]]
    assert len(losses) == 20 and out[stage]["tokens"] == 20 * 4 * 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    if stage != "kd":                                           # layer-local stages train the mixers only
        assert changed and all(".mixer." in k for k in changed)
    if stage == "kd":
        assert all(e["loss"] == e["kl"] for e in out[stage]["history"]) and "ce" in out[stage]["history"][0]


def test_stage_3_lowers_ce_plus_kl(teacher):
    model, _ = teacher
    student = stages.student_for(model, "gla", "qkv", seed=0)
    out = stages.run_stages(student, model, _blocks(), [StageSpec("kd", 4 * 24 * 20, 3e-3, "constant")],
                            batch_size=4, progress=False)
    h = out["kd"]["history"]
    assert all(e["loss"] == pytest.approx(e["ce"] + e["kl"]) for e in h)
    assert sum(e["loss"] for e in h[-4:]) < 0.95 * sum(e["loss"] for e in h[:4])


def test_a_killed_run_resumes_to_the_same_weights(teacher, tmp_path):
    model, _ = teacher
    specs = [StageSpec("mixing", 4 * 24 * 3, 1e-2), StageSpec("hidden", 4 * 24 * 5, 1e-2, "cosine", 0.2),
             StageSpec("kd", 4 * 24 * 3, 1e-3)]
    kw = {"batch_size": 4, "seed": 1, "save_every": 2, "progress": False}

    def fresh():
        return stages.student_for(model, "mlstm", "qkv", seed=0)

    whole = fresh()
    expected = stages.run_stages(whole, model, _blocks(), specs, checkpoints=tmp_path / "a", **kw)

    def kill(stage, entry):
        if stage == "hidden" and entry["step"] == 3:
            raise KeyboardInterrupt
    killed = fresh()
    with pytest.raises(KeyboardInterrupt):
        stages.run_stages(killed, model, _blocks(), specs, checkpoints=tmp_path / "b", on_step=kill, **kw)
    resumed = fresh()                                            # a new process: the seeded student again
    got = stages.run_stages(resumed, model, _blocks(), specs, checkpoints=tmp_path / "b", resume=True, **kw)
    assert got["mixing"]["resumed"] and got["hidden"]["resumed"] and not got["kd"]["resumed"]
    for name in ("mixing", "hidden", "kd"):
        assert got[name]["history"] == expected[name]["history"]
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = [StageSpec("mixing", 4 * 24 * 3, 2e-2), *specs[1:]]
    with pytest.raises(ValueError, match="other settings"):
        stages.run_stages(fresh(), model, _blocks(), changed, checkpoints=tmp_path / "b", resume=True, **kw)


def test_schedules_and_batch_order():
    cosine = stage_loop.lr_factor("cosine", 10, 2)
    assert [cosine(0), cosine(1), cosine(2)] == [0.5, 1.0, 1.0] and cosine(9) < 0.05
    assert stage_loop.lr_factor("constant", 10, 0)(9) == 1.0
    first = [i for s in range(5) for i in stage_loop.batch_indices(10, 2, s, seed=3)]
    assert sorted(first) == list(range(10))                     # one epoch: every block once
    assert stage_loop.batch_indices(10, 2, 7, 3) == stage_loop.batch_indices(10, 2, 7, 3)
    assert StageSpec("kd", 100, 1e-3).steps(4, 8) == 4


def test_what_each_stage_trains(teacher):
    student = stages.student_for(teacher[0], "retnet", "qkv")
    mixers = set(stages.stage_params(student, "mixing"))
    assert mixers and all(".mixer." in k for k in mixers) and set(stages.stage_params(student, "hidden")) == mixers
    blocks = set(stages.stage_params(student, "hidden", "block"))
    assert mixers < blocks and any(".mlp." in k for k in blocks) and all(k.startswith("model.layers.") for k in blocks)
    assert set(stages.stage_params(student, "kd")) == {k for k, _ in student.named_parameters()}
    with pytest.raises(ValueError, match="stage kd"):
        StageSpec("kd", 100, 1e-3, "linear")


# ------------------------------------------------------------------------------------------ data
def test_blocks_pack_documents_with_eos_and_split_by_file(teacher, text_dir):
    _, tok = teacher
    train, held, info = lm_blocks.lm_blocks(tok, 32, str(text_dir), held_out_blocks=3)
    assert train["input_ids"].shape[1] == 32 and len(held["input_ids"]) == 3
    assert (train["input_ids"] == tok.eos_token_id).any()       # the border between two documents
    assert info["train_documents"] + info["held_out_documents"] == 6 and info["held_out_documents"] >= 1
    assert set(info["held_out_titles"]) < {f"doc{i}.txt" for i in range(6)}
    with pytest.raises(ValueError, match="positions"):
        lm_blocks.check_block_length(129, type("C", (), {"max_position_embeddings": 128})())
    (text_dir.parent / "empty").mkdir()
    with pytest.raises(ValueError, match="non-empty .txt"):
        lm_blocks.lm_blocks(tok, 32, str(text_dir.parent / "empty"))


# ------------------------------------------------------------------------------------------ the command
def test_config_names_match_the_heavy_modules(teacher):
    assert sc.MIXERS == registry.NAMES and "softmax" not in registry.SUBQUADRATIC
    assert sc.INITS == qkv.INITS and sc.STAGES == stages.STAGES and sc.HIDDEN_PARAMS == stages.HIDDEN_PARAMS
    assert sc.SCHEDULES == stage_loop.SCHEDULES and sc.HIDDEN_KINDS == HIDDEN_KINDS
    assert sc.KL_REDUCTIONS == KL_REDUCTIONS and sc.ZERO_SHOT == zeroshot.TASKS
    assert sc.TEACHER_POSITIONS["tiny-llama"] == teacher[0].config.max_position_embeddings


@pytest.mark.parametrize("mixer", ["gla", "metala"])
def test_the_command_end_to_end_on_a_tiny_teacher(text_dir, tmp_path, capsys, mixer):
    out = tmp_path / "run"
    code = cli.main(["subquadratic", "--teacher", "tiny-llama", "--mixer", mixer, "--text", str(text_dir),
                     "--block-length", "32", "--batch-size", "2", "--mixing-tokens", "128", "--hidden-tokens", "128",
                     "--kd-tokens", "192", "--eval-blocks", "4", "--passkey-contexts", "160", "--passkey-depths", "0.5",
                     "--passkey-per-cell", "1", "--zero-shot", "rt-polarity", "--zero-shot-examples", "4",
                     "--quiet", "--out", str(out)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mixer"] == mixer and m["token_budgets"] == {"mixing": 128, "hidden": 128, "kd": 192}
    assert [len(m["stages"][s]["history"]) for s in ("mixing", "hidden", "kd")] == [2, 2, 3]
    assert set(m["cpu_s"]) == {"mixing", "hidden", "kd", "evaluation"}
    assert {"ce", "ppl", "kl", "top1"} <= set(m["student"]["metrics"]) and m["metric"] == "top1"
    assert m["evaluation"]["teacher"]["lm"]["ppl"] > 0 and "kl" not in m["evaluation"]["teacher"]["lm"]
    assert m["evaluation"]["student"]["passkey"]["cells"][0]["context"] == 160     # the student: no position limit
    assert m["evaluation"]["teacher"]["passkey_skipped_contexts"] == [160]          # the teacher's 128 positions
    assert m["evaluation"]["student"]["zero_shot"]["rt-polarity"]["n"] == 4
    assert m["record"]["config"]["mixer"] == mixer and not (out / "checkpoints").exists()
    assert (out / "student" / "config.json").is_file()
    assert "stage mixing: loss" in capsys.readouterr().out


BAD = [
    (["--mixer", "transformer"], "invalid choice: 'transformer'"),
    (["--mixing-tokens", "0", "--hidden-tokens", "0", "--kd-tokens", "0"], "every stage budget is zero"),
    (["--teacher", "tiny-gpt2"], "not a Llama-family decoder"),
    (["--teacher", "tiny-llama", "--block-length", "129"], "above the 128 positions"),
    (["--text", "/nonexistent/folder"], "does not exist"),
    (["--kd-tokens", "8", "--ce-weight", "0", "--kl-weight", "0"], "both 0"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_command_line_errors_come_before_any_model_is_loaded(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("makd.assets.models.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    try:
        code = cli.main(["subquadratic", *argv])
    except SystemExit as exc:                                   # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_folder_without_text_is_refused_by_the_config(tmp_path):
    (tmp_path / "notes.md").write_text("not a .txt file")
    with pytest.raises(ValueError, match="holds no .txt file"):
        SubquadraticConfig(text=str(tmp_path))


def test_a_non_llama_teacher_folder_is_refused_before_training(tmp_path):
    called = []
    with pytest.raises(ValueError, match="Llama-family teacher"):
        run(SubquadraticConfig(teacher=resolve("tiny-gpt2"), block_length=16, out=str(tmp_path / "o"), quiet=True),
            on_step=lambda *a: called.append(a))
    assert not called


# ------------------------------------------------------------------------------------------ the grid
def test_the_grid_runner_runs_and_resumes_a_subquadratic_grid(text_dir, tmp_path):
    spec = {"name": "subq", "command": "subquadratic", "tasks": ["data"], "seeds": [0],
            "shared": {"teacher": "tiny-llama", "data_dir": str(text_dir.parent), "block_length": 32,
                       "batch_size": 2, "mixing_tokens": 64, "hidden_tokens": 128, "kd_tokens": 64,
                       "eval_blocks": 2, "save_student": False, "save_every": 1, "quiet": True},
            "cells": [{"name": "gla", "options": {"mixer": "gla"}},
                      {"name": "gla-kd-only", "group": "ablation", "options": {"mixer": "gla", "mixing_tokens": 0,
                                                                               "hidden_tokens": 0}}]}
    grid = G.validate_grid(spec)

    def killed(**options):
        def kill(stage, entry):
            if stage == "hidden" and entry["step"] == 1:
                raise KeyboardInterrupt
        return run(config_from_kwargs(SubquadraticConfig, **options), on_step=kill)

    with pytest.raises(KeyboardInterrupt):
        G.run_grid(grid, tmp_path / "out", run_fn=killed, echo=lambda _: None)
    first = G.run_grid(grid, tmp_path / "out", echo=lambda _: None)
    assert [r["state"] for r in first["runs"]] == ["resumed", "ran"]
    m = json.loads((tmp_path / "out" / "data" / "gla" / "s0" / "metrics.json").read_text())
    assert m["stages"]["mixing"]["resumed"] and m["stages"]["hidden"]["resumed"] and m["mixer"] == "gla"
    again = G.run_grid(grid, tmp_path / "out", echo=lambda _: None)
    assert again["counts"]["skipped"] == 2
    report = report_markdown(collect(tmp_path / "out"))            # python -m makd stats: the findings section
    assert "## The study's findings (arXiv 2504.14366) vs ours" in report
    assert "| QKV copying is not sufficient alone (all stages vs QKV copy + stage 3 only) | gla: " in report
    with pytest.raises(ValueError, match="without '/'"):
        G.validate_grid({**spec, "tasks": [str(text_dir)]})
