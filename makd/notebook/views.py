"""Per-layer tables for the teaching notebooks: spectra, truncation bounds and teacher-vs-student errors.

Pure helpers on what :mod:`makd.core.factorize` and :mod:`makd.core.capture` produce (notebooks ``01``–``06``):

* :func:`spectra`, :func:`eckart_young_error` — singular values of every MHA/FFN matrix, and the best
  possible relative error of a rank-r truncation, ‖W − W_r‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i² / Σ_i σ_i²);
* :func:`module_output_errors` — per layer and role, MSE of each factorised matrix's output against the
  teacher's dense output, on the student's own inputs or on the teacher's (teacher forcing);
* :func:`attention_kl_table` — KL(teacher ‖ student) of attention probabilities per layer and head;
* :func:`hidden_mse_table` — hidden-state MSE per hidden-state index (0 = embedding output);
* :func:`softened`, :func:`kd_gradient_norms` — temperature-softened distributions and why KD scales by t²;
* :func:`history_frame` — the trainer's ``loss_<term>`` log entries as a step × term table;
* :func:`task_teacher`, :func:`eval_batch`, :func:`distill_steps` — the shared set-up of the encoder
  notebooks: a task-tuned cached teacher, a fixed held-out batch, and a few steps of
  :class:`makd.core.trainer.DistillTrainer` (no training loop of its own).

Every number is computed by :mod:`makd.core.losses`; these functions only slice and tabulate. Like the
losses, each comparison takes the student's capture first: ``table(student, teacher, mask)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from transformers import DataCollatorWithPadding
from transformers.trainer_callback import PrinterCallback

from makd.core import families
from makd.core import losses
from makd.core.capture import Captured
from makd.core.factorize import count_parameters, dense_weight, factorize
from makd.core.trainer import DistillTrainer, loss_history
from makd.tasks.glue import GLUE_SPECS, GLUE_TASKS, load_task, tokenize_task
from makd.tasks.teacher import finetune_teacher, training_args


# ------------------------------------------------------------------------------------------ spectra
def spectra(model: nn.Module) -> pd.DataFrame:
    """One row per MHA/FFN matrix: module, layer, role, shape, rank and ``sigma`` (descending, float64).

    σ = svdvals(W) for W (d_out, d_in) — a LowRankLinear gives the spectrum of its product A B.
    """
    rows = []
    for name, (layer, role) in families.matrix_modules(model).items():
        w = dense_weight(model.get_submodule(name)).detach().to(torch.float64)   # (d_out, d_in)
        sigma = torch.linalg.svdvals(w).cpu().numpy()                            # (min(d_out, d_in),)
        rows.append({"module": name, "layer": layer, "role": role, "shape": f"{w.shape[0]}x{w.shape[1]}",
                     "full_rank": len(sigma), "sigma": sigma})
    return pd.DataFrame(rows)


def eckart_young_error(sigma, ranks) -> np.ndarray:
    """Relative Frobenius error of the best rank-r approximation, for each r in ``ranks``.

    e(r) = sqrt(Σ_{i>r} σ_i²) / sqrt(Σ_i σ_i²)  (Eckart–Young–Mirsky); ``sigma`` (k,), ``ranks`` (n,) -> (n,).
    """
    s2 = np.asarray(sigma, dtype=np.float64) ** 2                                # (k,)
    ranks = np.asarray(ranks, dtype=int)
    if s2.ndim != 1 or not len(s2):
        raise ValueError(f"sigma must be a non-empty 1-d array of singular values, got shape {s2.shape}")
    if (ranks < 0).any() or (ranks > len(s2)).any():
        raise ValueError(f"ranks must be in 0..{len(s2)} (the number of singular values), got {ranks.tolist()}")
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])                   # (k+1,) tail[r] = Σ_{i≥r} σ_i²
    return np.sqrt(tail[ranks] / s2.sum())


def energy_rank(sigma, energy: float) -> int:
    """Smallest r with Σ_{i≤r} σ_i² ≥ energy · Σ σ_i² (how many directions hold that share of ‖W‖_F²)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), energy - 1e-12) + 1)


# ------------------------------------------------------------------------------ captured comparisons
def _rel(s: Tensor, t: Tensor, mask) -> float:
    """‖s − t‖ / ‖t‖ over valid tokens (sqrt of the ratio of masked MSEs)."""
    num = losses.masked_mse(s, t, mask)
    den = losses.masked_mse(torch.zeros_like(t), t, mask)
    return float(torch.sqrt(num / den.clamp_min(1e-30)))


def module_output_errors(student: Captured, teacher: Captured, mask=None, teacher_forced: bool = False
                         ) -> pd.DataFrame:
    """Per (layer, role): MSE and relative error of the student matrix's output vs the teacher's.

    own inputs:     y_s = student matrix(x_s)  vs  y_t = teacher matrix(x_t)   (errors accumulate)
    teacher forced: y_s = student matrix(x_t)  vs  y_t                         (this matrix's error only)
    ``teacher`` must be captured with ``CaptureSpec(inputs=True)`` for teacher forcing, ``student`` with it
    too (its ``apply`` functions). Outputs (B, T, D_role), mask (B, T). Columns: layer, role, group
    (MHA/FFN), mse (= :func:`makd.core.losses.masked_mse`), rel_error.
    """
    rows = []
    with torch.no_grad():
        for layer, outs in sorted(teacher.modules.items()):
            for role, y_t in outs.items():
                if teacher_forced:
                    if role not in teacher.inputs.get(layer, {}) or role not in student.apply.get(layer, {}):
                        raise ValueError("teacher_forced=True needs both captures taken with CaptureSpec(inputs=True)")
                    y_s = student.apply[layer][role](teacher.inputs[layer][role])    # (B, T, D_role)
                else:
                    y_s = student.modules[layer][role]                                # (B, T, D_role)
                rows.append({"layer": layer, "role": role, "group": "MHA" if role in families.MHA_ROLES else "FFN",
                             "mse": float(losses.masked_mse(y_s, y_t, mask)), "rel_error": _rel(y_s, y_t, mask)})
    return pd.DataFrame(rows, columns=["layer", "role", "group", "mse", "rel_error"])


def attention_kl_table(student: Captured, teacher: Captured, mask=None) -> pd.DataFrame:
    """(layer × head) table of KL(teacher ‖ student) attention probabilities (:func:`makd.core.losses.attention_kl`
    on one head at a time). The row mean equals the layer's L_attn (heads averaged). Probabilities (B, H, T, T)."""
    table = {}
    with torch.no_grad():
        for layer, p_t in sorted(teacher.attentions.items()):
            p_s = student.attentions[layer]                                      # (B, H, T, T)
            table[layer] = [float(losses.attention_kl(p_s[:, h:h + 1], p_t[:, h:h + 1], mask))
                            for h in range(p_t.shape[1])]
    df = pd.DataFrame.from_dict(table, orient="index")
    df.index.name, df.columns = "layer", [f"h{h}" for h in df.columns]
    return df


def hidden_mse_table(student: Captured, teacher: Captured, mask=None) -> pd.DataFrame:
    """Per hidden-state index (0 = embedding output, i + 1 = output of layer i): MSE
    (:func:`makd.core.losses.hidden_mse`) and relative error ‖h_s − h_t‖ / ‖h_t‖ over valid tokens."""
    rows = []
    with torch.no_grad():
        for i, h_t in sorted(teacher.hidden.items()):
            h_s = student.hidden[i]                                              # (B, T, D)
            rows.append({"hidden": i, "after": "embeddings" if i == 0 else f"layer {i - 1}",
                         "mse": float(losses.hidden_mse(h_s, h_t, mask)), "rel_error": _rel(h_s, h_t, mask)})
    return pd.DataFrame(rows, columns=["hidden", "after", "mse", "rel_error"])


# ------------------------------------------------------------------------------------------- model level
def softened(logits: Tensor, temperatures) -> pd.DataFrame:
    """softmax(z / t) of ONE logit vector ``logits`` (C,) for each t: a (t × class) table of probabilities."""
    z = torch.as_tensor(logits, dtype=torch.float64).reshape(-1)                  # (C,)
    rows = {float(t): torch.softmax(z / t, dim=-1).tolist() for t in temperatures}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"class {c}" for c in range(len(z))])


def kd_gradient_norms(student_logits: Tensor, teacher_logits: Tensor, temperatures) -> pd.DataFrame:
    """Per temperature t: KL_t = KL(softmax(z_t/t) ‖ softmax(z_s/t)), the gradient norm ‖∂KL_t/∂z_s‖ and
    ‖∂(t²·KL_t)/∂z_s‖ (= :func:`makd.core.losses.logit_kd`). The raw gradient shrinks like 1/t² for large t;
    the t² factor keeps the soft-target term on the scale of the hard-label loss (Hinton et al., 2015).
    Logits (B, C)."""
    rows = []
    for t in temperatures:
        z = student_logits.detach().double().clone().requires_grad_(True)        # (B, C)
        scaled = losses.logit_kd(z, teacher_logits.detach().double(), temperature=float(t))
        (grad,) = torch.autograd.grad(scaled, z)
        kl = scaled.detach() / t ** 2
        rows.append({"temperature": float(t), "kl": float(kl), "t2_kl": float(scaled.detach()),
                     "grad_norm_kl": float(grad.norm()) / t ** 2, "grad_norm_t2_kl": float(grad.norm())})
    return pd.DataFrame(rows)


def history_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """The trainer's log entries (``makd.core.trainer.loss_history``) as a table indexed by step, one column per
    ``loss_<term>`` (prefix removed) plus ``loss`` (the weighted total)."""
    rows = [{"step": e["step"], "loss": e["loss"],
             **{k.removeprefix("loss_"): v for k, v in e.items() if k.startswith("loss_")}}
            for e in history if "loss" in e and "step" in e]
    if not rows:
        raise ValueError("the history has no training log entry with a loss: train for at least logging_steps "
                         "steps (or lower logging_steps)")
    return pd.DataFrame(rows).set_index("step")


# ------------------------------------------------------------------------------------------ set-up
def task_teacher(teacher: str, task: str, *, data_dir: str | None = None, seed: int = 0, epochs: float = 1.0,
                 max_train: int | None = None, max_dev: int | None = None, max_length: int = 64,
                 lr: float = 5e-5):
    """(teacher result, task data): ``task`` loaded with :func:`makd.tasks.glue.load_task` and the teacher fine-tuned
    on it by :func:`makd.tasks.teacher.finetune_teacher` (cached by teacher, task, seed and these settings, the
    same cache ``python -m makd distill`` uses with ``--teacher-epochs/--teacher-lr/--teacher-max-train/
    --max-length``)."""
    data = load_task(task, data_dir=data_dir, max_dev=max_dev, seed=seed)
    result = finetune_teacher(teacher, data, seed=seed, disable_tqdm=True,
                              settings={"epochs": epochs, "lr": lr, "max_train": max_train, "max_length": max_length})
    return result, data


@dataclass
class Bench:
    """What the aspect notebooks (02-05) work on: the fine-tuned teacher, its task, a held-out batch and the
    untrained SVD student."""
    tuned: Any                      # makd.tasks.teacher result (.model, .tokenizer, .metrics)
    data: Any                       # makd.tasks.glue task (TaskData)
    model: nn.Module                # the teacher, on the device
    tokenizer: Any
    batch: dict[str, Tensor]        # eval_batch(...) on the device: input_ids, attention_mask, labels (B, T)
    student: nn.Module              # fz.factorize(model, layer_ratio=...)

    def summary(self) -> dict[str, Any]:
        return {"task": self.data.name, "proxy": self.data.is_proxy,
                f"teacher dev {self.data.metric}": self.tuned.metrics[self.data.metric],
                "student params": count_parameters(self.student), "teacher params": count_parameters(self.model)}


def bench(teacher: str, task: str, *, layer_ratio: float, device: str = "cpu", eval_examples: int = 32,
          max_length: int = 64, data_dir: str | None = None, seed: int = 0, epochs: float = 1.0,
          max_train: int | None = None) -> Bench:
    """:func:`task_teacher` + :func:`eval_batch` + the SVD student at ``layer_ratio``, all on ``device``."""
    tuned, data = task_teacher(teacher, task, data_dir=data_dir, seed=seed, epochs=epochs, max_train=max_train,
                               max_length=max_length)
    model = tuned.model.to(device)
    batch = {k: v.to(device) for k, v in eval_batch(data, tuned.tokenizer, eval_examples, max_length).items()}
    return Bench(tuned, data, model, tuned.tokenizer, batch, factorize(model, layer_ratio=layer_ratio))


def eval_batch(task, tokenizer, n: int = 32, max_length: int = 64) -> dict[str, Tensor]:
    """The first ``n`` dev examples of ``task`` as one padded batch (input_ids, attention_mask, labels...)."""
    _, dev = tokenize_task(task, tokenizer, max_length=max_length)
    rows = [dev[i] for i in range(min(n, len(dev)))]                            # list of dicts
    return dict(DataCollatorWithPadding(tokenizer)(rows))


def distill_steps(student: nn.Module, teacher: nn.Module, objective: nn.Module, train, tokenizer, out_dir,
                  *, max_steps: int, lr: float = 1e-4, batch_size: int = 16, seed: int = 0,
                  logging_steps: int | None = None) -> list[dict[str, float]]:
    """Train ``student`` in place for ``max_steps`` steps of :class:`makd.core.trainer.DistillTrainer` with
    ``objective``; return its loss history (:func:`makd.core.trainer.loss_history`: one entry per logging window
    with ``loss`` and every ``loss_<term>``). ``train``: a tokenized dataset with ``labels``."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    logging_steps = logging_steps or max(1, min(10, max_steps // 5))
    args = training_args(Path(out_dir), seed=seed, epochs=1.0, lr=lr, batch_size=batch_size, max_steps=max_steps,
                         logging_steps=logging_steps, disable_tqdm=True, warmup_steps=0.06)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, objective=objective, train_dataset=train,
                             data_collator=DataCollatorWithPadding(tokenizer))
    trainer.remove_callback(PrinterCallback)  # the history is returned: no log dicts printed per window
    trainer.train()
    student.eval()
    return loss_history(trainer)


def local_glue_tasks(data_dir: str | os.PathLike) -> list[str]:
    """GLUE tasks (in :data:`makd.tasks.glue.GLUE_TASKS` order) whose train AND dev files are in ``data_dir``
    (``<data_dir>/glue/<Folder>/`` or ``<data_dir>/<Folder>/``): what can be distilled and evaluated offline."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a folder: give the folder that holds glue/<TASK>/")
    found = []
    for name in GLUE_TASKS:
        folder, files = GLUE_SPECS[name][0], GLUE_SPECS[name][1]
        if any(all((d / f).is_file() for f in files.values()) for d in (root / "glue" / folder, root / folder)):
            found.append(name)
    return found
