"""The SQuAD teacher: QA evaluation (EM/F1 over sliding windows) and its cached fine-tuning.

The QA head (start/end logits per token) is fine-tuned on the train questions by the one cached fine-tuning of
:func:`makd.tasks.teacher.finetune_cached` (keyed by teacher, data files, article split, seed and settings;
held-out metrics cached per evaluation set). Predictions are :meth:`transformers.Trainer.predict` over windows
sorted by length (little padding), each row cut back to its own length; the answer is the best span over the
windows (:mod:`makd.tasks.qa`); v2.0 answers "" when ``null − best_span > null_threshold``.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, DataCollatorWithPadding, Trainer, TrainingArguments

from makd.assets.models import ENCODER_TYPES, resolve
from makd.tasks.data import _subsample
from makd.tasks.squad_data import SquadData
from makd.tasks.metrics import squad_metrics
from makd.tasks.qa import postprocess_predictions, prepare_eval_features, prepare_train_features
from makd.tasks.teacher import TeacherAtChanceError, TeacherResult, TeacherSpec, finetune_cached, spec_key

DEFAULT_QA_SETTINGS = {"epochs": 2.0, "lr": 5e-5, "batch_size": 16, "max_length": 384, "stride": 128,
                       "weight_decay": 0.01, "warmup_ratio": 0.1, "max_train_features": None}
EVAL_DEFAULTS = {"n_best": 20, "max_answer_length": 30, "null_threshold": 0.0, "batch_size": 64}


# ------------------------------------------------------------------------------------------- evaluation
def predict_logits(model, tokenizer, features, batch_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start/end logits per feature (each row cut to its own length): :meth:`transformers.Trainer.predict` over
    the features sorted longest first (batches of similar lengths pad little), put back in feature order."""
    cols = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]
    lengths = [len(x) for x in features["input_ids"]]
    order = np.argsort([-n for n in lengths], kind="stable")
    data = features.select_columns(cols).select(order.tolist())
    was_training = model.training
    on_cpu = next(model.parameters()).device.type == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=batch_size, report_to="none",
                                 disable_tqdm=True, dataloader_num_workers=0, use_cpu=on_cpu)
        out = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer)).predict(data)
    model.train(was_training)
    start, end = out.predictions[:2]                     # (N, T_max) each, rows padded with -100
    starts: list = [None] * len(lengths)
    ends: list = [None] * len(lengths)
    for row, j in enumerate(order.tolist()):
        starts[j] = np.asarray(start[row, :lengths[j]], dtype=np.float32)
        ends[j] = np.asarray(end[row, :lengths[j]], dtype=np.float32)
    return starts, ends


def evaluate_qa(model, tokenizer, squad: SquadData, *, max_length: int = 384, stride: int = 128,
                n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0,
                batch_size: int = 64, features=None) -> dict[str, Any]:
    """EM/F1 (× 100) of ``model`` on ``squad.dev``; v2.0 adds HasAns/NoAns and the best null threshold
    (``best_f1_thresh``: the ``null − best_span`` score difference that maximises F1 on these questions)."""
    if features is None:
        features = prepare_eval_features(squad.dev, tokenizer, max_length, stride, padding=False)
    start, end = predict_logits(model, tokenizer, features, batch_size)
    spans, diffs = postprocess_predictions(squad.dev, features, start, end, n_best=n_best,
                                           max_answer_length=max_answer_length, version_2=False,
                                           return_null_diffs=True)
    refs = {q: a["text"] for q, a in zip(squad.dev["id"], squad.dev["answers"])}
    if squad.version_2:  # prediction "" where null − best > threshold; best_* from the raw spans and diffs
        out = squad_metrics(spans, refs, version_2=True, no_answer_probs=diffs, no_answer_threshold=null_threshold)
    else:
        out = squad_metrics(spans, refs)
    out["features"] = len(features)
    return out


def eval_key(squad: SquadData, settings: dict[str, Any]) -> str:
    """Fingerprint of an evaluation: the question ids and the feature / post-processing settings."""
    blob = json.dumps({"ids": sorted(squad.dev["id"]), "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def qa_chance_level(squad: SquadData) -> float:
    """EM of the constant "no answer" predictor: 0 on v1.1, 100 × (share of unanswerable questions) on v2.0.

    EM, not F1: a random span predictor already earns token-overlap F1 (a random tiny model: ~25 F1 on the
    fixtures) but almost never an exact match."""
    if not squad.version_2:
        return 0.0
    return 100.0 * float(np.mean([len(a["text"]) == 0 for a in squad.dev["answers"]]))


def check_qa_teacher(metrics: dict[str, float], squad: SquadData, *, force: bool = False, margin: float = 2.0) -> None:
    """Raise :class:`TeacherAtChanceError` when the teacher's held-out EM is within ``margin`` points of chance."""
    chance = qa_chance_level(squad)
    if metrics["exact_match"] <= chance + margin and not force:
        raise TeacherAtChanceError(
            f"the fine-tuned QA teacher scores EM={metrics['exact_match']:.2f} (F1={metrics['f1']:.2f}) on the "
            f"held-out SQuAD v{squad.version} questions, at chance level (EM {chance:.2f} + {margin}): distilling "
            "it would teach nothing. Fine-tune it longer (--teacher-epochs, --teacher-max-train-features), check "
            "the data, or pass --force-teacher.")


# ------------------------------------------------------------------------------------------- teacher
def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available else "cpu"; "cuda" without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available: use 'auto' or 'cpu'")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_qa_teacher_model(name: str) -> None:
    """A QA teacher must be an encoder without a task head other than QA (a classification head would be
    silently dropped and a new QA head initialised)."""
    config = AutoConfig.from_pretrained(resolve(name))
    if config.model_type not in ENCODER_TYPES:
        raise ValueError(f"teacher {name!r} is a {config.model_type} model: SQuAD needs an encoder "
                         f"({', '.join(ENCODER_TYPES)}) with a QA head or without a head")
    heads = [a for a in (getattr(config, "architectures", None) or [])
             if a.endswith(("SequenceClassification", "TokenClassification", "MultipleChoice", "ForCausalLM",
                            "ForMaskedLM", "ForPreTraining"))]
    if heads:
        raise ValueError(f"teacher {name!r} has a {heads[0]} head: SQuAD needs a model with a QA head "
                         "(…ForQuestionAnswering) or a bare pretrained encoder (e.g. minilm-l6, bert-base-uncased)")


def qa_spec(squad: SquadData, ekey: str | None = None) -> TeacherSpec:
    """The SQuAD teacher for the shared cached fine-tuning: the article split is part of its key; its head is not
    seeded separately (the cached SQuAD teachers predate that, and keep their checkpoints)."""
    return TeacherSpec(task=f"squad-v{squad.version}", slug=f"squad{squad.version}", files=squad.files, head="qa",
                       key_extra={"split": squad.notes[:1]}, seed_head=False, eval_key=ekey)


def qa_cache_key(teacher: str, squad: SquadData, settings: dict[str, Any], seed: int) -> str:
    return spec_key(teacher, qa_spec(squad), settings, seed)


def finetune_qa_teacher(teacher: str, squad: SquadData, *, seed: int = 0, settings: dict[str, Any] | None = None,
                        eval_settings: dict[str, Any] | None = None, force_retrain: bool = False,
                        report_to: str = "none", disable_tqdm: bool | None = None, device: str = "auto"
                        ) -> TeacherResult:
    """Fine-tune ``teacher`` with a QA head on ``squad.train`` (cached by teacher, data, split, seed and
    settings) and evaluate it on ``squad.dev``; held-out metrics are cached per evaluation set too.
    ``device``: "auto" (CUDA when available), "cpu" or "cuda"."""
    device = resolve_device(device)
    settings = {**DEFAULT_QA_SETTINGS, **(settings or {})}
    ev = {**EVAL_DEFAULTS, **(eval_settings or {})}
    ekey = eval_key(squad, {k: ev[k] for k in ("n_best", "max_answer_length", "null_threshold")} |
                    {"max_length": settings["max_length"], "stride": settings["stride"]})
    check_qa_teacher_model(teacher)

    def prepare(tok):
        if squad.train is None:
            raise ValueError(f"SQuAD v{squad.version} from {squad.source} has no train split: the teacher cannot be "
                             "fine-tuned (split the dev set by article: --split-articles 38 10)")
        feats = prepare_train_features(squad.train, tok, settings["max_length"], settings["stride"], padding=False)
        notes: list[str] = []
        feats = _subsample(feats, settings["max_train_features"], seed, "teacher train features", notes)
        return feats, None, {"source": squad.source, "notes": squad.notes + notes, "train_features": len(feats),
                             "train_questions": len(squad.train)}

    def evaluate(model, tok, trainer=None):
        return evaluate_qa(model, tok, squad, max_length=settings["max_length"], stride=settings["stride"], **ev)

    return finetune_cached(teacher, qa_spec(squad, ekey), seed=seed, settings=settings, prepare=prepare,
                           evaluate=evaluate, force_retrain=force_retrain, report_to=report_to,
                           disable_tqdm=disable_tqdm, group_by_length=True, device=device)
