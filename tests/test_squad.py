"""SQuAD distillation end to end on tiny random models and the committed SQuAD fixtures, and its errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from makd.experiments import squad as sq
from makd.experiments import squad_teacher as st
from makd.experiments.options import config_from_kwargs, parse_config
from makd.experiments.squad_config import SquadConfig
from makd.tasks.data import TaskDataUnavailableError
from makd.tasks.squad_data import load_squad
from makd.tasks.teacher import TeacherAtChanceError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = dict(data_dir=str(FIXTURES), split_articles=[1, 1], teacher="tiny-bert", max_length=128, stride=32,
            teacher_epochs=1.0, teacher_max_train_features=32, force_teacher=True, report_to="none", quiet=True,
            lr=1e-3, batch_size=4, logging_steps=1, save_student=False)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Fine-tuned tiny teachers go to a per-session cache, never into data/cache."""
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_v1_end_to_end_distils_evaluates_and_states_the_split(tmp_path):
    res = sq.distill_squad(**TINY, out=str(tmp_path / "makd"), max_steps=2, objective="hierarchical")
    saved = json.loads((tmp_path / "makd" / "metrics.json").read_text())
    assert saved["task"] == "squad-v1.1" and saved["train"]["steps"] == 2 and saved["objective"] == "hierarchical"
    assert any("split by article" in n and "1 articles" in n for n in saved["notes"])
    assert any("windows of 128 tokens, stride 32" in n for n in saved["notes"])
    for who in ("teacher", "student"):
        m = saved[who]["metrics"]
        assert 0 <= m["exact_match"] <= m["f1"] <= 100 and m["total"] == 3  # the held-out article's 3 questions
        assert "HasAns_f1" not in m
    assert saved["student"]["params"] < saved["teacher"]["params"]
    assert abs(saved["student"]["layer_ratio"] - 0.5) < 0.05
    logged = set().union(*[set(e) for e in saved["train"]["history"]])
    assert {"loss_mha", "loss_ffn", "loss_attn", "loss_hidn", "loss_pred", "loss_kd", "loss_ce"} <= logged
    rec = saved["record"]
    assert any(p.endswith("squad/dev-v1.1.json") for p in rec["data_files_sha256"])
    assert rec["teacher_checkpoint_sha256"] and rec["config"]["version"] == "1.1"
    assert res["student"]["metrics"] == saved["student"]["metrics"]
    # the SVD student without training reuses the cached teacher and its cached held-out metrics
    none = sq.distill_squad(**TINY, out=str(tmp_path / "none"), objective="none")
    assert none["train"]["steps"] == 0 and none["teacher"]["path"] == res["teacher"]["path"]
    assert saved["teacher"]["path"] == "$MAKD_CACHE_DIR/teachers/" + Path(res["teacher"]["path"]).name   # no machine path
    assert none["teacher"]["metrics"] == saved["teacher"]["metrics"]
    teacher = sq.distill_squad(**TINY, out=str(tmp_path / "teacher"), teacher_only=True)
    assert "student" not in teacher and teacher["objective"] == "teacher"


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    from makd.core.trainer import StopAtStep

    def args(**kw):
        return config_from_kwargs(SquadConfig, **{**TINY, "out": str(tmp_path / "run"), "objective": "model-only",
                                                  "max_steps": 4, "save_steps": 2, **kw})

    first = sq.run(args(), callbacks=[StopAtStep(2)])                     # "interrupted" after step 2
    assert first["train"]["steps"] == 2 and (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = sq.run(args(resume=True))
    assert resumed["train"]["resumed"] and resumed["train"]["steps"] == 4
    assert [e["step"] for e in resumed["train"]["history"]] == [1, 2, 3, 4]


def test_v2_reports_hasans_noans_and_the_best_null_threshold(tmp_path):
    """v2.0 fixture (one article) duplicated under a second title so it can be split 1 / 1 by article."""
    data = json.loads((FIXTURES / "squad" / "dev-v2.0.json").read_text())
    copy = json.loads(json.dumps(data["data"][0]))
    copy["title"] += "_copy"
    for para in copy["paragraphs"]:
        for qa in para["qas"]:
            qa["id"] += "c"
    data["data"].append(copy)
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v2.0.json").write_text(json.dumps(data))
    res = sq.distill_squad(**TINY | {"data_dir": str(tmp_path)}, version="2.0", objective="none",
                           out=str(tmp_path / "run"))
    m = res["student"]["metrics"]
    assert {"HasAns_f1", "NoAns_f1", "HasAns_total", "NoAns_total", "best_f1", "best_f1_thresh"} <= set(m)
    assert m["HasAns_total"] + m["NoAns_total"] == m["total"] == 4
    assert m["best_f1"] >= m["f1"] - 1e-9  # the best threshold is at least as good as the default 0
    assert any("null threshold 0.0" in n for n in res["notes"])


def test_predict_logits_puts_length_sorted_rows_back_in_feature_order():
    """A fake QA model whose start logits are its input ids: every row must come back unpadded, in place
    (Trainer.predict pads rows across batches; they are cut back to each feature's own length)."""
    import datasets
    from transformers import AutoTokenizer
    from transformers.modeling_outputs import QuestionAnsweringModelOutput
    from makd.assets.models import resolve

    class Echo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            x = input_ids.float() + self.w
            return QuestionAnsweringModelOutput(start_logits=x, end_logits=-x)

    tok = AutoTokenizer.from_pretrained(resolve("tiny-bert"))
    rows = [[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 11, 3], [2, 12, 3]]
    feats = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    echo = Echo().train()
    start, end = st.predict_logits(echo, tok, feats, batch_size=2)
    assert echo.training                                    # the caller's mode is restored
    for r, s, e in zip(rows, start, end):
        np.testing.assert_array_equal(s, np.asarray(r, dtype=np.float32))
        np.testing.assert_array_equal(e, -np.asarray(r, dtype=np.float32))


def test_chance_level_is_the_empty_answer_score():
    v1 = load_squad("1.1", data_dir=FIXTURES, dev_only=True)
    v2 = load_squad("2.0", data_dir=FIXTURES, dev_only=True)
    assert st.qa_chance_level(v1) == 0.0
    share = np.mean([len(a["text"]) == 0 for a in v2.dev["answers"]])
    assert 0 < share < 1 and st.qa_chance_level(v2) == pytest.approx(100 * share)
    with pytest.raises(TeacherAtChanceError, match="--force-teacher"):
        st.check_qa_teacher({"exact_match": 1.0, "f1": 25.0}, v1)
    st.check_qa_teacher({"exact_match": 1.0, "f1": 25.0}, v1, force=True)
    st.check_qa_teacher({"exact_match": 30.0, "f1": 40.0}, v1)
    with pytest.raises(TeacherAtChanceError):  # v2: always answering "" already scores the NoAns share
        st.check_qa_teacher({"exact_match": 100 * share + 1, "f1": 100 * share + 1}, v2)


def test_errors_before_training(tmp_path, capsys):
    with pytest.raises(TaskDataUnavailableError, match="dev-v1.1.json"):  # a data folder without SQuAD
        sq.distill_squad(**TINY | {"data_dir": str(tmp_path)}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="split_dev_by_article"):         # more articles than the file has
        sq.distill_squad(**TINY | {"split_articles": [2, 1]}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="encoder"):                       # a decoder teacher
        st.check_qa_teacher_model("tiny-gpt2")
    from makd.assets.models import load_model
    cls, tok = load_model("tiny-bert", head="cls", num_labels=2)
    cls.save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match="SequenceClassification head"):  # a classification teacher
        sq.distill_squad(**TINY | {"teacher": str(tmp_path / "cls")}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="positions"):                     # windows longer than the model
        sq.distill_squad(**TINY | {"max_length": 512}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="stride"):
        sq.distill_squad(**TINY | {"stride": 128}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="device must be one of"):
        sq.distill_squad(**TINY | {"device": "gpu"}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="only one of"):
        sq.distill_squad(**TINY | {"layer_ratio": 0.5, "rank": 4}, out=str(tmp_path / "x"))
    with pytest.raises(TypeError, match="unknown option"):
        sq.distill_squad(task="sst2")
    assert not (tmp_path / "x").exists()


def test_teacher_at_chance_is_refused_unless_forced(tmp_path):
    with pytest.raises(TeacherAtChanceError, match="EM="):
        sq.distill_squad(**TINY | {"force_teacher": False}, objective="none", out=str(tmp_path / "x"))


def test_help_names_the_command_and_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        sq.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("python -m makd squad", "--version", "--data-dir", "--split-articles", "--layer-ratio",
                 "--objective", "--max-train-features", "--max-eval", "--teacher-epochs", "--resume"):
        assert flag in text, flag


def test_squad_builds_its_objective_from_the_shared_options_including_mse():
    from makd.experiments.students import objective_from

    args = parse_config(SquadConfig, ["--mse", "relative", "--objective", "hierarchical"])
    assert objective_from(args, 2).mse == "relative"
    assert objective_from(parse_config(SquadConfig, []), 2).mse == "plain"


def test_glue_and_squad_teachers_share_one_cached_fine_tuning(tmp_path, monkeypatch):
    """Both paths go through tasks.teacher.finetune_cached; the QA spec keys the article split and keeps its
    unseeded head (the cached SQuAD teachers predate head seeding)."""
    from makd.tasks import teacher as T

    calls = []
    real = T.finetune_cached

    def spy(teacher, spec, **kw):
        calls.append(spec)
        return real(teacher, spec, **kw)

    monkeypatch.setattr(st, "finetune_cached", spy)
    res = sq.distill_squad(**TINY, out=str(tmp_path / "t"), teacher_only=True)
    (spec,) = calls
    assert spec.head == "qa" and spec.task == "squad-v1.1" and not spec.seed_head and spec.eval_key
    assert spec.key_extra == {"split": res["notes"][:1]} and Path(res["teacher"]["path"]).name.startswith(
        "tiny-bert-squad1.1-s0-")
