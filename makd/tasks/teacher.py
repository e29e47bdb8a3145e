"""Fine-tune the teacher on the task first, and cache it.

Distilling from a teacher that never saw the task is the most common reproduction trap (METHOD.md): the
pretrained encoders ship without task heads. ``finetune_teacher`` trains the teacher's task head and body
on the task's train split, evaluates it on dev, and caches the result under
``cache_dir()/teachers/<key>/`` keyed by teacher, task, data files, seed and settings; a second call
with the same key reuses it. The new task head is initialised from the teacher seed, so a re-training on the
same CPU reproduces the checkpoint bit for bit whatever ran before it. ``check_teacher`` refuses a teacher whose dev score is at chance level.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

from makd.assets.models import load_model, resolve
from makd.assets.paths import cache_dir
from makd.assets.files import sha256_folder, write_json

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = {"epochs": 1.0, "lr": 5e-5, "batch_size": 32, "max_length": 128, "weight_decay": 0.01,
                    "warmup_ratio": 0.06, "max_train": None}


class TeacherAtChanceError(RuntimeError):
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


def cache_key(teacher: str, task, settings: dict[str, Any], seed: int) -> str:
    blob = json.dumps({"teacher": resolve(teacher), "task": task.name, "files": task.files,
                       "settings": settings, "seed": seed}, sort_keys=True, default=str)
    slug = Path(str(teacher)).name.replace("/", "-")
    return f"{slug}-{task.name}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


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
    """Fine-tune ``teacher`` on ``task`` (a :class:`makd.tasks.data.TaskData`) or reuse the cached result."""
    from makd.tasks.data import tokenize_task

    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    key = cache_key(teacher, task, settings, seed)
    path = cache_dir() / "teachers" / key
    info_path = path / "teacher_info.json"
    num_labels = 1 if task.is_regression else task.num_labels
    if info_path.is_file() and not force_retrain:
        info = json.loads(info_path.read_text())
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        log.info("reusing fine-tuned teacher %s (dev %s)", path, info["metrics"])
        return TeacherResult(model, tok, path, info["metrics"], info["checkpoint_sha256"], settings, reused=True)

    started = time.time()
    # The new classification head is drawn from torch's RNG: seed it from the teacher seed (in a forked RNG, the
    # caller's stream untouched) so the fine-tuned teacher depends only on what its cache key names, not on what
    # ran earlier in the process (which grid cell triggered it, how many budgets were resolved before).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tok = load_model(teacher, head="cls", num_labels=num_labels)
    if task.train is None:
        raise ValueError(f"task {task.name} has no train split here ({task.source}); the teacher cannot be "
                         "fine-tuned on it. Give a data folder with its train file or use the hub.")
    train, dev = tokenize_task(task, tok, max_length=settings["max_length"])
    if settings.get("max_train"):
        train = train.shuffle(seed=seed).select(range(min(len(train), int(settings["max_train"]))))
    args = training_args(path / "trainer", seed=seed, epochs=settings["epochs"], lr=settings["lr"],
                         batch_size=settings["batch_size"], weight_decay=settings["weight_decay"],
                         warmup_steps=settings["warmup_ratio"], report_to=report_to, disable_tqdm=disable_tqdm,
                         group_by_length=bool(settings.get("group_by_length")))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics_fn(task))
    trainer.train()
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    if trainer.is_world_process_zero():
        model.save_pretrained(path)
        tok.save_pretrained(path)
        digest = sha256_folder(path)
        write_json(info_path, {"teacher": teacher, "resolved": resolve(teacher), "task": task.name,
                               "source": task.source, "data_files_sha256": task.files, "seed": seed,
                               "settings": settings, "metrics": metrics, "checkpoint_sha256": digest, "head_init_seed": seed,
                               "train_examples": len(train), "wall_time_s": round(time.time() - started, 1)})
    trainer.accelerator.wait_for_everyone()
    digest = json.loads(info_path.read_text())["checkpoint_sha256"]
    return TeacherResult(model.eval(), tok, path, metrics, digest, settings)
