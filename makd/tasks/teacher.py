"""Fine-tune the teacher on the task first, and cache it.

Distilling from a teacher that never saw the task is the most common reproduction trap (METHOD.md): the
pretrained encoders ship without task heads. ``finetune_teacher`` trains the teacher's task head and body
on the task's train split, evaluates it on dev, and caches the result under
``cache_dir()/teachers/<key>/`` keyed by teacher, task, data files, seed and settings; a second call
with the same key reuses it. The new task head is initialised from the teacher seed, so a re-training on the
same CPU reproduces the checkpoint bit for bit whatever ran before it. ``check_teacher`` refuses a teacher whose
dev score is at chance level. :func:`finetune_cached` is the one cached fine-tuning behind it and behind the SQuAD
teacher (:func:`makd.experiments.squad_teacher.finetune_qa_teacher`): a :class:`TeacherSpec` says what differs.

The cache verifies itself (:mod:`makd.tasks.teacher_cache`). ``teacher_info.json`` is written last and atomically,
with the sha256 of the weight files and the fingerprint of the base model's files: a fine-tuning killed midway
leaves no info and is redone. On reuse the weights are hashed again (about 0.1 s per 100 MB) and loaded; a hash that
differs from the stored one (flipped bytes, a truncated file), a file that cannot be read, or a base model whose
files changed since (a rebuilt tiny preset, an overwritten folder: the key names the base by location) gives one
warning naming the folder and the cause, the folder is removed and the teacher fine-tuned again under the same
key. A folder saved before a hash was stored has it recorded on its first reuse (trust on first use, said in one
log line). The hash a run record states is always the hash of the weights that were loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, Trainer, TrainingArguments)

from makd.assets.models import load_model, resolve
from makd.assets.paths import cache_dir
from makd.assets.files import sha256_folder, write_json
from makd.core.errors import MakdError
from makd.core.livelog import live_log
from makd.core.trainer import refuse_fsdp_on_cpu
from makd.tasks.glue import tokenize_task
from makd.tasks.teacher_cache import Unusable, base_fingerprint, is_main_process, load_cached, remove

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = {"epochs": 1.0, "lr": 5e-5, "batch_size": 32, "max_length": 128, "weight_decay": 0.01,
                    "warmup_ratio": 0.06, "max_train": None}


_AUTO = {"cls": AutoModelForSequenceClassification, "qa": AutoModelForQuestionAnswering}


class TeacherAtChanceError(MakdError, RuntimeError):
    """The fine-tuned teacher scores at chance level on dev: distilling it would teach nothing."""


@dataclass
class TeacherResult:
    model: Any
    tokenizer: Any
    path: Path
    metrics: dict[str, float]
    checkpoint_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


@dataclass(frozen=True)
class TeacherSpec:
    """What a kind of task tells the shared cached fine-tuning (:func:`finetune_cached`)."""
    task: str                          # the key's task name: "rte", "squad-v1.1"
    slug: str                          # in the folder name: "rte", "squad1.1"
    files: dict[str, str]              # data file -> sha256, in the key
    head: str                          # "cls" or "qa"
    num_labels: int | None = None
    key_extra: dict[str, Any] = field(default_factory=dict)   # more key fields (SQuAD: the article split)
    seed_head: bool = True             # draw a new head from the teacher seed (SQuAD teachers predate it: False)
    eval_key: str | None = None        # None: metrics stored once; else per evaluation set under "evals"


def glue_spec(task) -> TeacherSpec:
    return TeacherSpec(task=task.name, slug=task.name, files=task.files, head="cls",
                       num_labels=1 if task.is_regression else task.num_labels)


def cache_key(teacher: str, task, settings: dict[str, Any], seed: int) -> str:
    """The cache folder name of a GLUE teacher: :func:`spec_key` of :func:`glue_spec`."""
    return spec_key(teacher, TeacherSpec(task=task.name, slug=task.name, files=task.files, head="cls"), settings, seed)


def spec_key(teacher: str, spec: TeacherSpec, settings: dict[str, Any], seed: int) -> str:
    """``<teacher>-<slug>-s<seed>-<sha256[:10]>`` of the resolved teacher, task, data files, settings and seed
    (plus ``spec.key_extra``): the keys of every teacher cached so far."""
    blob = json.dumps({"teacher": resolve(teacher), "task": spec.task, "files": spec.files, "settings": settings,
                       "seed": seed, **spec.key_extra}, sort_keys=True, default=str)
    slug = Path(str(teacher)).name.replace("/", "-")
    return f"{slug}-{spec.slug}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def chance_level(task) -> float:
    """Dev score of a constant predictor in the task's main metric (majority class for accuracy)."""
    if task.metric in ("accuracy", "acc"):
        labels = np.asarray(task.dev["label"])
        return float(np.bincount(labels.astype(int)).max() / len(labels))
    if task.metric == "f1":
        return 0.0 if np.mean(task.dev["label"]) < 0.5 else float(
            2 * np.mean(task.dev["label"]) / (1 + np.mean(task.dev["label"])))
    return 0.0  # matthews / pearson / spearman: a constant predictor scores 0


def check_teacher(metrics: dict[str, float], task, *, force: bool = False, margin: float = 0.02) -> None:
    """Raise :class:`TeacherAtChanceError` when the teacher's main dev metric is within ``margin`` of chance."""
    key = task.metric
    score = metrics.get(key, metrics.get(f"eval_{key}"))
    if score is None:
        raise KeyError(f"teacher metrics have no {key!r}: {sorted(metrics)}")
    chance = chance_level(task)
    if score <= chance + margin and not force:
        raise TeacherAtChanceError(
            f"the fine-tuned teacher scores {key}={score:.4f} on {task.name} dev, at chance level "
            f"({chance:.4f}): distilling it would teach nothing. Fine-tune it longer (--teacher-epochs, "
            "--teacher-max-train), check the data, or pass --force-teacher to distil anyway.")


def predictions_from_logits(logits: np.ndarray, is_regression: bool) -> np.ndarray:
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.squeeze(-1) if is_regression else logits.argmax(-1)


def metrics_fn(task):
    def compute(eval_pred) -> dict[str, float]:
        preds = predictions_from_logits(eval_pred.predictions, task.is_regression)
        out = task.compute_metrics(preds, eval_pred.label_ids)
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.floating))}
    return compute


def training_args(out: Path, *, seed: int, epochs: float, lr: float, batch_size: int, max_steps: int = -1,
                  report_to: str | list[str] = "none", group_by_length: bool = False,
                  **kw: Any) -> TrainingArguments:
    """transformers' TrainingArguments with makd's defaults; ``group_by_length`` batches similar lengths together."""
    return TrainingArguments(
        output_dir=str(out), seed=seed, num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=max(batch_size, 64),
        report_to=report_to, save_strategy=kw.pop("save_strategy", "no"), eval_strategy=kw.pop("eval_strategy", "no"),
        logging_steps=kw.pop("logging_steps", 20), disable_tqdm=kw.pop("disable_tqdm", None),
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        dataloader_num_workers=0, use_cpu=kw.pop("use_cpu", not torch.cuda.is_available()), **kw)


def finetune_teacher(teacher: str, task, *, seed: int = 0, settings: dict[str, Any] | None = None,
                     force_retrain: bool = False, report_to: str = "none",
                     disable_tqdm: bool | None = None) -> TeacherResult:
    """Fine-tune ``teacher`` on ``task`` (a :class:`makd.tasks.glue.TaskData`) or reuse the cached result."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}

    def prepare(tok):
        if task.train is None:
            raise ValueError(f"task {task.name} has no train split here ({task.source}); the teacher cannot be "
                             "fine-tuned on it. Give a data folder with its train file or use the hub.")
        train, dev = tokenize_task(task, tok, max_length=settings["max_length"])
        if settings.get("max_train"):
            train = train.shuffle(seed=seed).select(range(min(len(train), int(settings["max_train"]))))
        return train, dev, {"source": task.source, "train_examples": len(train)}

    def evaluate(model, tok, trainer):
        return {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}

    return finetune_cached(teacher, glue_spec(task), seed=seed, settings=settings, prepare=prepare,
                           evaluate=evaluate, compute_metrics=metrics_fn(task), force_retrain=force_retrain,
                           report_to=report_to, disable_tqdm=disable_tqdm,
                           group_by_length=bool(settings.get("group_by_length")))


def finetune_cached(teacher: str, spec: TeacherSpec, *, seed: int, settings: dict[str, Any],
                    prepare: Callable, evaluate: Callable, compute_metrics: Callable | None = None,
                    force_retrain: bool = False, report_to: str = "none", disable_tqdm: bool | None = None,
                    group_by_length: bool = False, device: str | None = None) -> TeacherResult:
    """The one cached fine-tuning of a teacher, shared by the GLUE and SQuAD paths.

    Cached under ``cache_dir()/teachers/<spec_key>/`` (model, tokenizer, ``teacher_info.json``). On a miss:
    load ``teacher`` with the ``spec.head`` head (seeded from ``seed`` when ``spec.seed_head``), ``prepare(tok)
    -> (train, dev or None, info fields)``, train with ``settings`` (epochs, lr, batch_size, weight_decay,
    warmup_ratio), ``evaluate(model, tok, trainer) -> metrics`` on every process, then process zero saves.
    With ``spec.eval_key`` the metrics are cached per evaluation set (``evaluate(model, tok, None)`` on a hit
    with a new set). ``device``: move the model there (None: let the Trainer place it).
    """
    path = cache_dir() / "teachers" / spec_key(teacher, spec, settings, seed)
    info_path = path / "teacher_info.json"
    base = base_fingerprint(resolve(teacher))
    if info_path.is_file() and not force_retrain:
        try:
            model, tok, info, digest = load_cached(path, _AUTO[spec.head], base)
        except Unusable as why:
            log.warning("cached teacher %s is unusable (%s): removing it and fine-tuning the teacher again under "
                        "the same key", path, why)
            remove(path, why)
        else:
            return _reuse(model.to(device) if device else model, tok, info, digest, base, path, spec, settings, evaluate)

    started = time.time()
    head_kw = {"num_labels": spec.num_labels} if spec.num_labels is not None else {}
    # A new head is drawn from torch's RNG: seed it from the teacher seed (in a forked RNG, the caller's stream
    # untouched) so the fine-tuned teacher depends only on what its cache key names, not on what ran before.
    with torch.random.fork_rng(devices=[], enabled=spec.seed_head):
        if spec.seed_head:
            torch.manual_seed(seed)
        model, tok = load_model(teacher, head=spec.head, **head_kw)
    train, dev, extra = prepare(tok)
    args = training_args(path / "trainer", seed=seed, epochs=settings["epochs"], lr=settings["lr"],
                         batch_size=settings["batch_size"], weight_decay=settings["weight_decay"],
                         warmup_steps=settings["warmup_ratio"], report_to=report_to, disable_tqdm=disable_tqdm,
                         group_by_length=group_by_length, **({"use_cpu": device == "cpu"} if device else {}))
    refuse_fsdp_on_cpu(args)                         # before the Trainer sets up accelerate
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics)
    live_log(trainer)                                # in a notebook: one loss table instead of printed dicts
    trainer.train()
    metrics = evaluate(model, tok, trainer)
    if trainer.is_world_process_zero():
        model.save_pretrained(path)
        tok.save_pretrained(path)
        digest = sha256_folder(path)
        scores = {"metrics": metrics} if spec.eval_key is None else {"evals": {spec.eval_key: metrics}}
        write_json(info_path, {"teacher": teacher, "resolved": resolve(teacher), "base_sha256": base,
                               "task": spec.task, **extra,
                               "data_files_sha256": spec.files, "seed": seed, "settings": settings, **scores,
                               "checkpoint_sha256": digest, **({"head_init_seed": seed} if spec.seed_head else {}),
                               "wall_time_s": round(time.time() - started, 1)})
    trainer.accelerator.wait_for_everyone()
    digest = json.loads(info_path.read_text())["checkpoint_sha256"]
    return TeacherResult(model.eval(), tok, path, metrics, digest, settings)


def _reuse(model, tok, info: dict, digest: str, base: str | None, path: Path, spec: TeacherSpec,
           settings: dict[str, Any], evaluate: Callable) -> TeacherResult:
    """The cached teacher as a result; records a missing hash (trust on first use) or a new evaluation set."""
    changed = "checkpoint_sha256" not in info
    if changed:
        info["checkpoint_sha256"] = digest
        log.info("cached teacher %s has no stored checkpoint sha256 (saved by an earlier makd): recorded %s, "
                 "trusting it from now on", path, digest)
    if "base_sha256" not in info and base is not None:
        info["base_sha256"], changed = base, True
        log.info("cached teacher %s does not record which base model files it was fine-tuned from (saved by an "
                 "earlier makd): recorded the current ones (%s...), trusting it from now on", path, base[:12])
    if spec.eval_key is None:
        metrics = info["metrics"]
    else:
        if spec.eval_key not in info["evals"]:
            info["evals"][spec.eval_key] = evaluate(model.eval(), tok, None)
            changed = True
        metrics = info["evals"][spec.eval_key]
    if changed and is_main_process():
        write_json(path / "teacher_info.json", info)
    log.info("reusing fine-tuned teacher %s (dev %s)", path, metrics)
    return TeacherResult(model.eval(), tok, path, metrics, digest, settings, reused=True)
