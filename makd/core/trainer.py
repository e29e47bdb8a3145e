"""The distillation trainer: transformers' ``Trainer`` with the MaKD objective as its loss.

The model being trained is the student; a frozen teacher runs beside it. Each step captures what the
objective needs from both (``makd.core.capture``), computes the weighted aspect terms (``makd.core.objective``),
and logs every term — to the progress bar, to TensorBoard and to ``trainer_state.json`` — as
``loss_<term>`` averaged over the logging window; in a notebook, as one live table (``makd.core.livelog``).
Checkpointing, resuming, evaluation and gradient accumulation are the Trainer's own, and so is multi-process
training: the student is prepared (wrapped) by the Trainer's accelerator, the teacher goes through the same
accelerator prepared for evaluation (device, mixed precision; never wrapped for gradient sync). DDP under
``torchrun`` and ``accelerate launch`` is tested with 2 CPU processes; FSDP on CPU processes is refused
(:func:`refuse_fsdp_on_cpu`: accelerate shards only on accelerators). The terms stay on the device between logs
(no host sync per term and step); with ``eval_terms=True`` evaluation also reports them as ``eval_loss_<term>``.
Walk-through: ``notebooks/06_hierarchical_training``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from makd.core.capture import capture
from makd.core.errors import UsageError
from makd.core.livelog import live_log


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


def refuse_fsdp_on_cpu(args: TrainingArguments) -> None:
    """A :class:`UsageError` when FSDP is asked for (``accelerate launch --use_fsdp``, ``ACCELERATE_USE_FSDP=true``
    or ``TrainingArguments(fsdp=...)``) on CPU processes. accelerate 1.15 shards only on accelerators (its state
    enables FSDP for multi-GPU/XPU/NPU... runs only): on CPUs its FSDP plugin fails ("There are currently no
    available devices found") or, with ``--fsdp_sync_module_states false``, the run silently trains with DDP."""
    requested = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if requested and args.device.type == "cpu":
        raise UsageError("FSDP cannot shard on CPU processes (accelerate 1.15 runs FSDP on GPUs and other "
                         "accelerators only; on CPUs it fails or silently falls back to DDP). On CPUs use DDP: "
                         "`torchrun --nproc_per_node N -m makd ...` or, with no GPU visible, "
                         "`accelerate launch --multi_gpu --num_processes N -m makd ...`")


class DistillTrainer(Trainer):
    """``Trainer`` whose training loss is ``objective(student, teacher)``.

    Args (besides the Trainer's own): ``teacher`` — the frozen teacher (eval mode, no grad; prepared by the
    Trainer's accelerator for evaluation at its first use, which places it on the training device);
    ``objective`` — a :class:`makd.core.objective.MaKDObjective`. With ``objective.needs_teacher == False``
    (plain fine-tuning) the teacher may be ``None``.
    Evaluation runs the student alone (its own task loss and predictions); ``eval_terms=True`` also runs the
    teacher on the evaluation batches and adds the objective's terms, averaged over examples, to the metrics
    as ``eval_loss_<term>`` (one more capture per model and batch: off by default).
    """

    def __init__(self, *args: Any, teacher: nn.Module | None = None, objective: nn.Module | None = None,
                 eval_terms: bool = False, **kwargs: Any):
        training_args = kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)
        if training_args is not None:          # before the Trainer builds its accelerator (which may fail on it)
            refuse_fsdp_on_cpu(training_args)
        super().__init__(*args, **kwargs)
        if objective is None:
            raise ValueError("DistillTrainer needs an objective (makd.core.objective.MaKDObjective)")
        if getattr(objective, "needs_teacher", True) and teacher is None:
            raise ValueError(f"objective {getattr(objective, 'preset', '')!r} needs a teacher; pass teacher=...")
        self.objective = objective.to(self.args.device)
        self.teacher = teacher
        self._teacher_ready = teacher is None
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        # The objective returns a per-batch mean: let Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._term_values: dict[str, list[Tensor]] = defaultdict(list)    # term -> its per-step values, on device
        self._term_steps = 0
        self.eval_terms = eval_terms
        self._eval_sums: dict[str, Tensor] = {}                             # term -> Σ value · batch size
        self._eval_examples = 0
        self.add_callback(TermsOnProgressBar(self))
        live_log(self)                                  # in a notebook: one live loss table, no printed dicts

    def prepared_teacher(self) -> nn.Module:
        """The teacher through ``self.accelerator.prepare_model(..., evaluation_mode=True)``: placed on the
        training device (also under FSDP, where accelerate would not place it), mixed precision applied, never
        wrapped for gradient sync. Done at first use, after the Trainer has prepared the student (the Trainer
        prepares the student for evaluation only while the accelerator holds no model yet)."""
        if not self._teacher_ready:
            self.teacher = self.accelerator.prepare_model(self.teacher, device_placement=True, evaluation_mode=True)
            self._teacher_ready = True
        return self.teacher

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """The Trainer's optimiser, plus the objective's own parameters (e.g. ``hidden_proj`` of dense baselines).

        Those parameters live in the objective, not the student: they are trained but not part of the saved
        student, and a resumed run re-initialises them (the student's weights and optimiser state resume)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for p in self.objective.parameters() if p.requires_grad]
        if extra and not any(p is q for g in optimizer.param_groups for p in g["params"] for q in extra):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _objective(self, model, inputs, grad: bool) -> tuple[Tensor, dict[str, Tensor], Any]:
        """The objective on one batch: the teacher once (inference mode), the student, the terms. The captures are
        dropped by the time the Trainer runs backward (only what the terms' backward needs stays alive)."""
        needs_teacher = getattr(self.objective, "needs_teacher", True)
        teacher = self.prepared_teacher() if needs_teacher else None
        if hasattr(self.objective, "compute"):                 # MaKDObjective: teacher in inference mode, consumed
            total, terms, student = self.objective.compute(model, teacher, inputs, grad=grad,
                                                           step=self.state.global_step)
            return total, terms, student.outputs
        spec = self.objective.spec()                            # another objective: two plain captures
        student = capture(model, inputs, spec, grad=grad)
        teacher_cap = capture(teacher, inputs, spec, grad=False) if needs_teacher else None
        total, terms = self.objective(student, teacher_cap, inputs, step=self.state.global_step)
        return total, terms, student.outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the student on its own (and, with eval_terms, the objective's terms)
            outputs = model(**inputs)
            if self.eval_terms:
                _, terms, _ = self._objective(model, inputs, grad=False)
                n = len(inputs["input_ids"])
                for name, value in terms.items():
                    self._eval_sums[name] = self._eval_sums.get(name, 0) + value.detach() * n
                self._eval_examples += n
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        total, terms, outputs = self._objective(model, inputs, grad=True)
        for name, value in terms.items():
            self._term_values[name].append(value.detach() if torch.is_tensor(value) else torch.tensor(float(value)))
        self._term_steps += 1
        return (total, outputs) if return_outputs else total

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """The Trainer's loop, plus ``<prefix>_loss_<term>`` = Σ_batches n_b · term_b / Σ n_b with ``eval_terms``."""
        self._eval_sums, self._eval_examples = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._eval_sums:
            names = sorted(self._eval_sums)
            sums = torch.stack([self._eval_sums[n].float() for n in names] + [
                torch.tensor(float(self._eval_examples), device=self._eval_sums[names[0]].device)])  # (terms + 1,)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            totals = sums.cpu().tolist()
            for name, value in zip(names, totals):
                output.metrics[f"{metric_key_prefix}_loss_{name}"] = value / max(totals[-1], 1)
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_steps and "loss" in logs:
            for name, values in self._term_values.items():   # one host copy per term and logging window
                logs[f"loss_{name}"] = round(sum(torch.stack(values).cpu().tolist()) / self._term_steps, 6)
            self._term_values.clear()
            self._term_steps = 0
        super().log(logs, start_time)


def loss_history(trainer: Trainer) -> list[dict[str, float]]:
    """Training log entries that carry loss terms (for plots and metrics files)."""
    return [dict(e) for e in trainer.state.log_history if "loss" in e]
