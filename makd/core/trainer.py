"""The distillation trainer: transformers' ``Trainer`` with the MaKD objective as its loss.

The model being trained is the student; a frozen teacher runs beside it. Each step captures what the
objective needs from both (``makd.core.capture``), computes the weighted aspect terms (``makd.core.objective``),
and logs every term — to the progress bar, to TensorBoard and to ``trainer_state.json`` — as
``loss_<term>`` averaged over the logging window. Checkpointing, resuming, evaluation, gradient
accumulation and multi-process training (``torchrun`` / ``accelerate launch``: DDP, FSDP, DeepSpeed) are
the Trainer's own. Walk-through: ``notebooks/06_hierarchical_training``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from makd.core.capture import capture


class TermsOnProgressBar(TrainerCallback):
    """Show the latest logged loss terms as the training progress bar's postfix."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        terms = {k.removeprefix("loss_"): f"{v:.4g}" for k, v in logs.items()
                 if k.startswith("loss_") and isinstance(v, (int, float))}
        for cb in self.trainer.callback_handler.callbacks:
            bar = getattr(cb, "training_bar", None) if isinstance(cb, ProgressCallback) else None
            if bar is not None and terms:
                bar.set_postfix(terms, refresh=False)


class StopAtStep(TrainerCallback):
    """Stop training after ``step`` optimiser steps (used to simulate an interruption in tests)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


class DistillTrainer(Trainer):
    """``Trainer`` whose training loss is ``objective(student, teacher)``.

    Args (besides the Trainer's own): ``teacher`` — the frozen teacher (moved to the training device, eval
    mode, no grad); ``objective`` — a :class:`makd.core.objective.MaKDObjective`. With
    ``objective.needs_teacher == False`` (plain fine-tuning) the teacher may be ``None``.
    Evaluation runs the student alone (its own task loss and predictions).
    """

    def __init__(self, *args: Any, teacher: nn.Module | None = None, objective: nn.Module | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if objective is None:
            raise ValueError("DistillTrainer needs an objective (makd.core.objective.MaKDObjective)")
        if getattr(objective, "needs_teacher", True) and teacher is None:
            raise ValueError(f"objective {getattr(objective, 'preset', '')!r} needs a teacher; pass teacher=...")
        self.objective = objective.to(self.args.device)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device).eval()
            teacher.requires_grad_(False)
        # The objective returns a per-batch mean: let Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_steps = 0
        self.add_callback(TermsOnProgressBar(self))

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """The Trainer's optimiser, plus the objective's own parameters (e.g. ``hidden_proj`` of dense baselines).

        Those parameters live in the objective, not the student: they are trained but not part of the saved
        student, and a resumed run re-initialises them (the student's weights and optimiser state resume)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for p in self.objective.parameters() if p.requires_grad]
        if extra and not any(p is q for g in optimizer.param_groups for p in g["params"] for q in extra):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the student on its own
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        spec = self.objective.spec()
        student = capture(model, inputs, spec, grad=True)
        teacher = (capture(self.teacher, inputs, spec, grad=False)
                   if getattr(self.objective, "needs_teacher", True) else None)
        total, terms = self.objective(student, teacher, inputs, step=self.state.global_step)
        for name, value in terms.items():
            self._term_sums[name] += float(value.detach() if torch.is_tensor(value) else value)
        self._term_steps += 1
        return (total, student.outputs) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_steps and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"loss_{name}"] = round(total / self._term_steps, 6)
            self._term_sums.clear()
            self._term_steps = 0
        super().log(logs, start_time)


def loss_history(trainer: Trainer) -> list[dict[str, float]]:
    """Training log entries that carry loss terms (for plots and metrics files)."""
    return [dict(e) for e in trainer.state.log_history if "loss" in e]
