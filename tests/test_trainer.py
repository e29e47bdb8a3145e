"""DistillTrainer on tiny models: every term logged, the logged loss is Σ weight·term, gradient accumulation
matches one big batch, evaluation reports the eval metrics (and, on request, the eval loss terms), objective
parameters trained, teacher frozen."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import TrainingArguments

from makd.core.capture import capture
from makd.core.factorize import factorize
from makd.core.objective import MaKDObjective
from makd.core.trainer import DistillTrainer, loss_history

from conftest import tiny_batch, tiny_model

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def _rows(n: int = 8, seed: int = 1):
    b = tiny_batch(batch=n, seq=8, pad=False, seed=seed)
    return [{"input_ids": b["input_ids"][i], "attention_mask": b["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


def _args(out, **kw) -> TrainingArguments:
    kw = {"per_device_train_batch_size": 4, "max_steps": 3, "logging_steps": 1, "learning_rate": 1e-2, **kw}
    return TrainingArguments(output_dir=str(out), seed=0, report_to="none", save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, **kw)


def test_objective_parameters_are_trained_and_the_teacher_is_not(tmp_path):
    teacher = tiny_model("bert", head="cls")
    student = factorize(teacher, layer_ratio=0.5)
    proj = nn.Linear(32, 32)
    before_proj = proj.weight.detach().clone()
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = MaKDObjective(2, "layer-only", hidden_proj=proj)
    trainer = DistillTrainer(model=student, args=_args(tmp_path), teacher=teacher, objective=objective,
                             train_dataset=_rows())
    trainer.train()
    assert not torch.equal(proj.weight, before_proj)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_teacher[k]), k
    history = loss_history(trainer)
    assert len(history) == 3 and all({"loss_attn", "loss_hidn", "loss_pred"} <= set(e) for e in history)


@pytest.mark.parametrize("accum", [1, 2])
def test_the_logged_loss_is_the_weighted_sum_of_the_logged_terms(tmp_path, accum):
    teacher = tiny_model("bert", head="cls")
    student = factorize(teacher, layer_ratio=0.5)
    weights = {"attn": 2.0, "hidn": 0.5, "pred": 1.5}
    objective = MaKDObjective(2, "layer-only", weights=weights)
    args = _args(tmp_path, per_device_train_batch_size=4 // accum, gradient_accumulation_steps=accum)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, objective=objective, train_dataset=_rows())
    trainer.train()
    history = loss_history(trainer)
    assert len(history) == 3
    for entry in history:
        assert {"loss_attn", "loss_hidn", "loss_pred", "loss_kd", "loss_ce"} <= set(entry)
        weighted = sum(w * entry[f"loss_{a}"] for a, w in weights.items())
        assert entry["loss"] == pytest.approx(weighted, rel=1e-5, abs=1e-5), entry
        assert entry["loss_pred"] == pytest.approx(0.5 * entry["loss_kd"] + 0.5 * entry["loss_ce"], abs=1e-5)
    assert history[0]["loss"] != pytest.approx(history[-1]["loss"], rel=1e-6)     # it trained: the loss moved


def test_gradient_accumulation_matches_one_batch(tmp_path):
    """2 micro-batches × accumulation 2 take the same optimiser step as one batch of 4 (no dropout, no padding)."""
    teacher = tiny_model("bert", head="cls", **NO_DROPOUT)
    start = factorize(teacher, layer_ratio=0.5)
    rows = _rows(4)
    after = {}
    for name, (batch, accum) in {"one": (4, 1), "accumulated": (2, 2)}.items():
        student = factorize(teacher, layer_ratio=0.5)
        student.load_state_dict(start.state_dict())
        args = _args(tmp_path / name, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                     max_steps=1, optim="sgd", learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0)
        DistillTrainer(model=student, args=args, teacher=teacher, objective=MaKDObjective(2, "all"),
                       train_dataset=rows).train()
        after[name] = {k: v.detach().clone() for k, v in student.state_dict().items()}
    moved = max(float((after["one"][k] - v).abs().max()) for k, v in start.state_dict().items())
    assert moved > 1e-3                                                         # the step did change the student
    for k, v in after["one"].items():
        torch.testing.assert_close(after["accumulated"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def _accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


@pytest.mark.parametrize("eval_terms", [False, True])
def test_evaluate_returns_the_eval_metrics_and_logs_the_eval_terms(tmp_path, eval_terms):
    teacher = tiny_model("bert", head="cls", **NO_DROPOUT)
    student = factorize(teacher, layer_ratio=0.5)
    dev = _rows(6, seed=5)
    objective = MaKDObjective(2, "hierarchical")
    args = _args(tmp_path, per_device_eval_batch_size=4, max_steps=1)       # 6 examples: batches of 4 and 2
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, objective=objective, train_dataset=_rows(),
                             eval_dataset=dev, compute_metrics=_accuracy, eval_terms=eval_terms)
    trainer.train()
    metrics = trainer.evaluate()
    student.eval()
    batch = {k: torch.stack([torch.as_tensor(r[k]) for r in dev]) for k in dev[0]}
    with torch.no_grad():
        out = student(**batch)
    assert metrics["eval_loss"] == pytest.approx(float(out.loss), rel=1e-5)          # the student's own task loss
    accuracy = float((out.logits.argmax(-1) == batch["labels"]).float().mean())
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    terms = {k.removeprefix("eval_loss_"): v for k, v in metrics.items() if k.startswith("eval_loss_")}
    logged = trainer.state.log_history[-1]
    assert logged["eval_loss"] == metrics["eval_loss"]
    if not eval_terms:
        assert terms == {} and not any(k.startswith("eval_loss_") for k in logged)
        return
    assert set(terms) == {"mha", "ffn", "attn", "hidn", "pred", "kd", "ce"}
    assert all(logged[f"eval_loss_{k}"] == v for k, v in terms.items())
    spec = objective.spec()                                                  # the example-weighted mean of the batches
    expect = {}
    for rows in (dev[:4], dev[4:]):
        b = {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}
        _, t = objective(capture(student, b, spec, grad=False), capture(teacher, b, spec, grad=False), b)
        for k, v in t.items():
            expect[k] = expect.get(k, 0.0) + float(v) * len(rows) / len(dev)
    for k, v in expect.items():
        assert terms[k] == pytest.approx(v, rel=1e-5), k
    assert terms["ce"] == pytest.approx(metrics["eval_loss"], rel=1e-5)        # the student's CE, both ways
