"""`python -m makd distill`: teacher fine-tuning → factorisation → distillation → evaluation → metrics.json.

One command runs the paper's main experiment on one task. It works unchanged under ``torchrun`` and
``accelerate launch`` (the Trainer picks up the process group). Every run writes ``<out>/metrics.json``
with the teacher's and the student's dev metrics, the loss history and a run record (config, seed, git
commit, library versions, data sha256, teacher checkpoint sha256). The options are the fields of
:class:`makd.experiments.config.DistillConfig`, checked before any model or data is loaded; then the run folder is
locked and checked (writable, room for the checkpoints: :func:`makd.assets.runfolder.run_folder`), still before any
loading. ``--resume`` continues from the newest complete checkpoint.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding

from makd.assets.files import write_json
from makd.assets.runfolder import check_free_space, estimate_run_bytes, last_checkpoint, params_hint, run_folder
from makd.core import factorize as fz
from makd.core.checkpoint import replacing_folder
from makd.core.losses import NonFiniteLossError
from makd.core.objective import MaKDObjective, check_compatible
from makd.core.trainer import DistillTrainer, loss_history
from makd.experiments.config import DistillConfig
from makd.experiments.options import build_parser as config_parser
from makd.experiments.options import config_from_kwargs, parse_config
from makd.experiments.runrecord import make_record, path_roots, portable, write_metrics
from makd.experiments.students import check_depth, dense_student, objective_from, preflight
from makd.students.hf_folder import save_student
from makd.tasks.glue import load_task, tokenize_task
from makd.tasks.teacher import check_teacher, finetune_teacher, metrics_fn, training_args

log = logging.getLogger("makd.distill")


def build_parser():
    """The command line (built from :class:`DistillConfig`'s fields)."""
    return config_parser(DistillConfig)


def default_out(cfg: DistillConfig, size: dict[str, Any]) -> Path:
    tag = "-".join(f"{k.replace('_', '')}{v}" for k, v in size.items())
    if cfg.student != "svd":
        tag = "dense-" + cfg.student.replace(":", "").replace("/", "-")
    return Path("runs") / "distill" / f"{cfg.task}-{cfg.objective}-{tag}-s{cfg.seed}"


def run(args: DistillConfig, callbacks: list | None = None, command: str | None = None) -> dict[str, Any]:
    """Run one distillation described by ``args`` (a :class:`DistillConfig`); ``callbacks``: extra Trainer
    callbacks (e.g. :class:`makd.core.trainer.StopAtStep` to simulate an interruption); ``command``: the command
    line, kept in the run record."""
    if not isinstance(args, DistillConfig):
        raise TypeError(f"run() takes a DistillConfig, got {type(args).__name__}: build it with "
                        "config_from_kwargs(DistillConfig, ...) or call distill(**options)")
    started = time.time()
    size = args.size()
    out = Path(args.out) if args.out else default_out(args, size)
    training = args.objective != "none"
    needed = estimate_run_bytes(params_hint(args.teacher), trainings=int(training), save_student=args.save_student)
    with run_folder(out, needed=needed, command=command):   # locked, writable, room enough: before any loading
        return _run(args, out, size, started, callbacks, command)


def _run(args: DistillConfig, out: Path, size: dict[str, Any], started: float, callbacks: list | None,
         command: str | None) -> dict[str, Any]:
    # the dev subsample (--max-dev) is fixed (seed 0) so runs with different seeds are evaluated on the same rows
    task = load_task(args.task, data_dir=args.data_dir, max_dev=args.max_dev, seed=0)
    if args.objective != "none" and task.train is None:
        raise ValueError(f"task {task.name} has no train split in {task.source}: give a data folder with its "
                         "train file (data_dir) or use objective 'none'")
    preflight(args, 1 if task.is_regression else task.num_labels)
    teacher_seed = args.seed if args.teacher_seed is None else args.teacher_seed
    teacher = finetune_teacher(args.teacher, task, seed=teacher_seed, force_retrain=args.retrain_teacher,
                               settings=args.teacher_settings(), disable_tqdm=args.quiet or None)
    check_teacher(teacher.metrics, task, force=args.force_teacher)
    tok = teacher.tokenizer
    train, dev = tokenize_task(task, tok, max_length=args.max_length)
    if args.max_train and train is not None:
        train = train.shuffle(seed=args.seed).select(range(min(len(train), args.max_train)))
    calibration = None
    if args.weighting != "none":
        collate = DataCollatorWithPadding(tok)
        rows = [{k: v for k, v in train[i].items() if k != "labels"}
                for i in range(min(args.calibration_examples, len(train)))]
        calibration = collate(rows)
    if args.student == "svd":
        student = fz.factorize(teacher.model, calibration=calibration, factorize_embeddings=args.factorize_embeddings,
                               **args.init_options(), **size)
    else:
        student = dense_student(args.student, teacher.model, tok, teacher.model.config.num_labels)
        check_depth(args.objective, student.config.num_hidden_layers, teacher.model.config.num_hidden_layers)
    if student.config.num_hidden_layers == teacher.model.config.num_hidden_layers:
        check_compatible(teacher.model, student)
    totals = fz.report_totals(student, teacher.model)
    check_free_space(out, estimate_run_bytes(totals["student_params"], trainings=int(args.objective != "none"),
                                             save_student=args.save_student))

    objective = None if args.objective == "none" else objective_from(args, student.config.num_hidden_layers)
    targs = training_args(out / "checkpoints", seed=args.seed, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, max_steps=args.max_steps, report_to=args.report_to,
                          gradient_accumulation_steps=args.grad_accum, logging_steps=args.logging_steps,
                          save_strategy="steps", save_steps=args.save_steps, save_total_limit=2,
                          eval_strategy="steps" if args.eval_steps else "no", eval_steps=args.eval_steps or None,
                          disable_tqdm=args.quiet or None, group_by_length=args.group_by_length,
                          warmup_steps=0.06, weight_decay=0.01)  # a float < 1 is a ratio (transformers 5)
    # transformers 5 reads the TensorBoard folder from the environment when the callback is created
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    trainer = DistillTrainer(model=student, args=targs, teacher=teacher.model,
                             objective=objective or MaKDObjective(student.config.num_hidden_layers, "finetune"),
                             train_dataset=train, eval_dataset=dev, data_collator=DataCollatorWithPadding(tok),
                             compute_metrics=metrics_fn(task), callbacks=callbacks)
    train_info: dict[str, Any] = {"steps": 0}
    if objective is not None:
        resume = last_checkpoint(out / "checkpoints") if args.resume else None   # the newest complete one
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except NonFiniteLossError as err:
            write_json(out / "error.json", {"error": str(err), "step": trainer.state.global_step,
                                            "checkpoints": sorted(map(str, (out / "checkpoints").glob("checkpoint-*")))})
            raise
        train_info = {"steps": trainer.state.global_step, "runtime_s": round(result.metrics["train_runtime"], 1),
                      "resumed": resume is not None, "history": loss_history(trainer)}
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    config = args.to_dict() | ({"command": command} if command else {}) | {"size": size}
    record = make_record(config, seed=args.seed, data_files=task.files,
                         teacher_hash=teacher.checkpoint_sha256, started=started)
    result = {
        "task": task.name, "is_proxy": task.is_proxy, "source": task.source, "notes": task.notes,
        "metric": task.metric, "objective": args.objective,
        "teacher": {"id": args.teacher, "metrics": teacher.metrics, "params": totals["teacher_params"],
                    "path": str(teacher.path)},
        "student": {"metrics": metrics, "params": totals["student_params"], "size": size,
                    "layer_ratio": totals["layer_ratio"], "ratio": totals["ratio"]},
        "relative_to_teacher": metrics[task.metric] / teacher.metrics[task.metric]
        if teacher.metrics.get(task.metric) else None,
        "train": train_info, "record": record,
    }
    if trainer.is_world_process_zero():
        if args.save_student and hasattr(student, "makd_factorization"):
            save_student(student, out / "student", tok, run=portable(result, path_roots(args.data_dir)))
        elif args.save_student:  # dense student: a plain transformers folder, replaced atomically too
            with replacing_folder(out / "student") as folder:
                student.save_pretrained(folder)
                tok.save_pretrained(folder)
        write_metrics(out / "metrics.json", result, args.data_dir)
        log.info("wrote %s", out / "metrics.json")
    return result


def distill(**options: Any) -> dict[str, Any]:
    """Python entry point: ``distill(task="rte", data_dir=..., layer_ratio=0.5, objective="hierarchical")``.

    Keyword names are the fields of :class:`makd.experiments.config.DistillConfig` (the command's options with
    ``_`` for ``-``, see ``python -m makd distill --help``): an unknown name is a TypeError listing the valid
    ones, a wrong type, choice or range a ValueError, both before any model or data is loaded. Returns the dict
    written to metrics.json.
    """
    cfg = config_from_kwargs(DistillConfig, **options)
    torch.manual_seed(cfg.seed)
    return run(cfg)


def main(argv: list[str] | None = None, config: DistillConfig | None = None) -> int:
    """``python -m makd distill``; ``config``: ``argv`` already parsed (by :mod:`makd.cli`)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = config or parse_config(DistillConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(cfg.seed)
    res = run(cfg, command="python -m makd distill " + shlex.join(argv))
    if res and not cfg.quiet:
        m = res["metric"]
        print(f"{res['task']}{' (proxy)' if res['is_proxy'] else ''}: teacher {m}={res['teacher']['metrics'][m]:.4f}"
              f"  student[{res['objective']}] {m}={res['student']['metrics'][m]:.4f}"
              f"  ({res['student']['params']:,} / {res['teacher']['params']:,} params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
