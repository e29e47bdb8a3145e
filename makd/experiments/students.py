"""The student and the objective a configuration describes, and their checks against the teacher before long work.

Shared by ``python -m makd distill`` and ``python -m makd squad``: :func:`objective_from` builds the MaKD objective
from an :class:`makd.experiments.config.ObjectiveConfig`; :func:`dense_student` builds a dense student
(``layers:K`` or a pretrained model sharing the teacher's tokenizer); :func:`preflight` loads the (not yet
fine-tuned) teacher and checks the size, the student kind and the objective against it, raising one
``ValueError`` that says what to change.
"""
from __future__ import annotations

from typing import Any

from makd.assets.models import load_model, vocab_check
from makd.core import factorize as fz
from makd.core.families import copy_layers, evenly_spaced, get_layers
from makd.core.objective import MaKDObjective
from makd.experiments.config import DistillConfig, ObjectiveConfig

LAYERWISE_FREE = ("model-only", "finetune", "none")   # objectives that do not compare layers 1:1


def objective_from(cfg: ObjectiveConfig, n_layers: int) -> MaKDObjective:
    """The MaKD objective the configuration describes (shared by the GLUE and SQuAD commands)."""
    return MaKDObjective(n_layers, cfg.objective, weights=cfg.weights, split=cfg.split,
                         temperature=cfg.temperature, alpha=cfg.alpha, teacher_forcing=cfg.teacher_forcing,
                         mse=cfg.mse)


def _layers_k(spec: str, n: int) -> int:
    k = spec.split(":", 1)[1]
    if not k.isdigit() or not 1 <= int(k) <= n:
        raise ValueError(f"student {spec!r}: K must be an int in 1..{n} (the teacher has {n} layers)")
    return int(k)


def check_depth(objective: str, student_layers: int, teacher_layers: int) -> None:
    """A dense student of another depth supports only the objectives without layer-wise aspects."""
    if student_layers != teacher_layers and objective not in LAYERWISE_FREE:
        raise ValueError(f"the dense student has {student_layers} layers and the teacher {teacher_layers}: objective "
                         f"{objective!r} compares layers 1:1; use objective 'model-only' (logit KD) or 'finetune'")


def dense_student(spec: str, teacher, tokenizer, num_labels: int):
    """A dense student: ``layers:K`` copies K evenly spaced teacher layers (DistilBERT-style initialisation);
    anything else is loaded with :func:`makd.assets.models.load_model` (its task head is new) and must share the
    teacher's tokenizer."""
    if spec.startswith("layers:"):
        keep = evenly_spaced(len(get_layers(teacher)), _layers_k(spec, len(get_layers(teacher))))
        student = copy_layers(teacher, keep)
        student.makd_dense = {"teacher_layers": keep}
        return student
    student, tok = load_model(spec, head="cls", num_labels=num_labels)
    vocab_check(tokenizer, tok, teacher, student)
    student.makd_dense = {"model": spec}
    return student


def check_size(model, size: dict[str, Any], factorize_embeddings: bool) -> None:
    """The truncated-SVD student of ``model`` at ``size`` can be built (rank, budget above the floor)."""
    try:
        fz.plan_ranks(model, factorize_embeddings=factorize_embeddings, **size)
    except ValueError as err:
        raise ValueError(f"student size {size}: {err}") from None


def check_objective(cfg: ObjectiveConfig, n_layers: int) -> None:
    if cfg.objective != "none":
        try:
            objective_from(cfg, n_layers)
        except ValueError as err:
            raise ValueError(f"objective: {err}") from None


def preflight(cfg: DistillConfig, num_labels: int) -> None:
    """Check the student size, the student kind and the objective against the (not yet fine-tuned) teacher,
    before any long work."""
    model, tok = load_model(cfg.teacher, head="cls", num_labels=num_labels)
    n_layers = model.config.num_hidden_layers
    if cfg.student == "svd":
        check_size(model, cfg.size(), cfg.factorize_embeddings)
    elif cfg.student.startswith("layers:"):
        check_depth(cfg.objective, _layers_k(cfg.student, n_layers), n_layers)
    else:                                                   # a pretrained dense student: same tokenizer?
        student, student_tok = load_model(cfg.student, head="cls", num_labels=model.config.num_labels)
        try:
            vocab_check(tok, student_tok, model, student)
        except ValueError as err:
            raise ValueError(f"student {cfg.student!r}: {err}") from None
    check_objective(cfg, n_layers)
