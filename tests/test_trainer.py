"""DistillTrainer on tiny models: every term logged, objective parameters trained, teacher frozen."""
from __future__ import annotations

import torch
from torch import nn

from makd.core.factorize import factorize
from makd.core.objective import MaKDObjective
from makd.tasks.teacher import training_args
from makd.core.trainer import DistillTrainer, loss_history

from conftest import tiny_batch, tiny_model


def _rows(n: int = 8):
    b = tiny_batch(batch=n, seq=8, pad=False)
    return [{"input_ids": b["input_ids"][i], "attention_mask": b["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


def test_objective_parameters_are_trained_and_the_teacher_is_not(tmp_path):
    teacher = tiny_model("bert", head="cls")
    student = factorize(teacher, layer_ratio=0.5)
    proj = nn.Linear(32, 32)
    before_proj = proj.weight.detach().clone()
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = MaKDObjective(2, "layer-only", hidden_proj=proj)
    args = training_args(tmp_path, seed=0, epochs=1, lr=1e-2, batch_size=4, max_steps=3, logging_steps=1)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, objective=objective, train_dataset=_rows())
    trainer.train()
    assert not torch.equal(proj.weight, before_proj)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_teacher[k]), k
    history = loss_history(trainer)
    assert len(history) == 3 and all({"loss_attn", "loss_hidn", "loss_pred"} <= set(e) for e in history)
