"""`python -m makd squad`: extractive QA (SQuAD v1.1 / v2.0) — teacher fine-tuning → factorisation →
distillation → EM/F1 → metrics.json.

The QA counterpart of :mod:`makd.experiments.distill`. The teacher gets a QA head (start/end logits per token),
is fine-tuned on the train questions (cached: :mod:`makd.experiments.squad_teacher`), factorised into a
low-rank student and distilled with :class:`makd.core.objective.MaKDObjective` (the model aspect is
``(pred(start) + pred(end)) / 2``, each ``alpha · t² · KL + (1 − alpha) · CE``). Offline there is no SQuAD train
set: the official dev set is split by article (v1.1: 38 articles to train, 10 held out; v2.0: 28 / 7) and every
result says so in ``notes``. The options are the fields of :class:`makd.experiments.squad_config.SquadConfig`,
checked before any model or data is loaded.
"""
from __future__ import annotations

import json
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
from makd.assets.models import load_model
from makd.assets.runfolder import check_free_space, estimate_run_bytes, last_checkpoint, params_hint, run_folder
from makd.core import factorize as fz
from makd.core.losses import NonFiniteLossError
from makd.core.objective import check_compatible
from makd.core.trainer import DistillTrainer, loss_history
from makd.experiments.options import build_parser as config_parser
from makd.experiments.options import config_from_kwargs, parse_config
from makd.experiments.runrecord import make_record, path_roots, portable, write_metrics
from makd.experiments.squad_config import SquadConfig
from makd.experiments.squad_teacher import (check_qa_teacher, check_qa_teacher_model, evaluate_qa,
                                            finetune_qa_teacher, resolve_device)
from makd.experiments.students import check_objective, check_size, objective_from
from makd.students.hf_folder import save_student
from makd.tasks.data import _subsample
from makd.tasks.squad_data import SquadData, load_squad
from makd.tasks.qa import prepare_train_features
from makd.tasks.teacher import training_args

log = logging.getLogger("makd.experiments.squad")

DEFAULT_SPLIT = {"1.1": (38, 10), "2.0": (28, 7)}   # (train articles, held-out articles) of the dev set


def build_parser():
    """The command line (built from :class:`SquadConfig`'s fields)."""
    return config_parser(SquadConfig)


def load_data(args) -> SquadData:
    """SQuAD with the article split when no train set is available, and the seeded held-out subsample."""
    split = tuple(args.split_articles) if args.split_articles else None
    if split is None:
        squad = load_squad(args.version, args.source, args.data_dir, dev_only=True, seed=args.seed)
        if squad.train is None:
            split = DEFAULT_SPLIT[args.version]
    if split is not None:
        squad = load_squad(args.version, args.source, args.data_dir, split_dev_by_article=split, seed=args.seed)
    squad.dev = _subsample(squad.dev, args.max_eval, args.seed, "held-out questions", squad.notes)
    return squad


def preflight(args: SquadConfig, size: dict[str, Any]) -> None:
    """Teacher kind, window size, student size and objective, checked before any long work (the stride and
    every other value alone: by :class:`SquadConfig`)."""
    check_qa_teacher_model(args.teacher)
    model, _ = load_model(args.teacher, head="qa")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and args.max_length > positions:
        raise ValueError(f"max_length {args.max_length} exceeds the teacher's {positions} positions: give "
                         f"--max-length {positions} or less")
    check_size(model, size, args.factorize_embeddings)
    check_objective(args, model.config.num_hidden_layers)


def run(args: SquadConfig, callbacks: list | None = None, command: str | None = None) -> dict[str, Any]:
    """One SQuAD run described by ``args`` (a :class:`SquadConfig`); returns what metrics.json holds."""
    if not isinstance(args, SquadConfig):
        raise TypeError(f"run() takes a SquadConfig, got {type(args).__name__}: build it with "
                        "config_from_kwargs(SquadConfig, ...) or call distill_squad(**options)")
    started = time.time()
    size = args.size()
    tag = "teacher" if args.teacher_only else f"{args.objective}-" + "-".join(f"{k.replace('_', '')}{v}"
                                                                             for k, v in size.items())
    out = Path(args.out) if args.out else Path("runs") / "squad" / f"v{args.version}-{tag}-s{args.seed}"
    trains = not args.teacher_only
    needed = estimate_run_bytes(params_hint(args.teacher), trainings=int(trains and args.objective != "none"),
                                save_student=trains and args.save_student)
    with run_folder(out, needed=needed, command=command):   # locked, writable, room enough: before any loading
        return _run(args, out, size, started, callbacks, command)


def _run(args: SquadConfig, out: Path, size: dict[str, Any], started: float, callbacks: list | None,
         command: str | None) -> dict[str, Any]:
    device = resolve_device(args.device)
    squad = load_data(args)
    preflight(args, size)
    ev = args.eval_settings()
    teacher = finetune_qa_teacher(args.teacher, squad, seed=args.seed, force_retrain=args.retrain_teacher,
                                  eval_settings=ev, settings=args.teacher_settings(), disable_tqdm=args.quiet or None,
                                  device=device)
    check_qa_teacher(teacher.metrics, squad, force=args.force_teacher)
    info = json.loads((teacher.path / "teacher_info.json").read_text())
    notes = squad.notes + [n for n in info.get("notes", []) if n not in squad.notes] + [
        f"windows of {args.max_length} tokens, stride {args.stride}; n_best {args.n_best}, max answer "
        f"{args.max_answer_length} tokens" + (f", null threshold {args.null_threshold}" if squad.version_2 else "")]
    tok, params = teacher.tokenizer, fz.count_parameters(teacher.model)
    result: dict[str, Any] = {
        "task": f"squad-v{squad.version}", "version": squad.version, "source": squad.source, "notes": notes,
        "metric": "f1", "objective": "teacher" if args.teacher_only else args.objective,
        "teacher": {"id": args.teacher, "metrics": teacher.metrics, "params": params, "path": str(teacher.path),
                    "settings": teacher.settings, "train_features": info.get("train_features")},
        "eval": {"questions": len(squad.dev), "features": teacher.metrics["features"]}}
    train_info: dict[str, Any] = {"steps": 0}
    trainer = None
    student = None
    if not args.teacher_only:
        student = fz.factorize(teacher.model, factorize_embeddings=args.factorize_embeddings, **size)
        check_compatible(teacher.model, student)
        totals = fz.report_totals(student, teacher.model)
        check_free_space(out, estimate_run_bytes(totals["student_params"], trainings=int(args.objective != "none"),
                                                 save_student=args.save_student))
        if args.objective != "none":
            feats = prepare_train_features(squad.train, tok, args.max_length, args.stride, padding=False)
            feats = _subsample(feats, args.max_train_features, args.seed, "student train features", notes)
            trainer, train_info = train_student(args, student, teacher.model, feats, tok, out, device, callbacks)
        metrics = evaluate_qa(student, tok, squad, max_length=args.max_length, stride=args.stride, **ev)
        result["student"] = {"metrics": metrics, "params": totals["student_params"], "size": size,
                             "layer_ratio": totals["layer_ratio"], "ratio": totals["ratio"]}
        result["relative_to_teacher"] = metrics["f1"] / teacher.metrics["f1"] if teacher.metrics["f1"] else None
    result["train"] = train_info
    config = args.to_dict() | ({"command": command} if command else {}) | {"size": size}
    result["record"] = make_record(config, seed=args.seed, data_files=squad.files,
                                   teacher_hash=teacher.checkpoint_sha256, started=started)
    if trainer is None or trainer.is_world_process_zero():
        if student is not None and args.save_student:
            save_student(student, out / "student", tok, run=portable(result, path_roots(args.data_dir)))
        write_metrics(out / "metrics.json", result, args.data_dir)
        log.info("wrote %s", out / "metrics.json")
    return result


def train_student(args, student, teacher_model, feats, tok, out: Path, device: str, callbacks=None):
    """Distil ``student`` from ``teacher_model`` on the QA train windows ``feats`` with the MaKD objective
    (checkpoints in ``out/checkpoints``, resumed with ``--resume``); returns (trainer, train info)."""
    objective = objective_from(args, student.config.num_hidden_layers)
    targs = training_args(out / "checkpoints", seed=args.seed, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, max_steps=args.max_steps, report_to=args.report_to,
                          gradient_accumulation_steps=args.grad_accum, logging_steps=args.logging_steps,
                          save_strategy="steps", save_steps=args.save_steps, save_total_limit=2,
                          disable_tqdm=args.quiet or None, warmup_steps=0.06, weight_decay=0.01,
                          group_by_length=True, use_cpu=device == "cpu")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    trainer = DistillTrainer(model=student, args=targs, teacher=teacher_model, objective=objective,
                             train_dataset=feats, data_collator=DataCollatorWithPadding(tok), callbacks=callbacks)
    resume = last_checkpoint(out / "checkpoints") if args.resume else None   # the newest complete one
    try:
        res = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except NonFiniteLossError as err:
        write_json(out / "error.json", {"error": str(err), "step": trainer.state.global_step})
        raise
    return trainer, {"steps": trainer.state.global_step, "runtime_s": round(res.metrics["train_runtime"], 1),
                     "features": len(feats), "resumed": resume is not None, "history": loss_history(trainer)}


def distill_squad(**options: Any) -> dict[str, Any]:
    """Python entry point: ``distill_squad(version="1.1", data_dir=..., layer_ratio=0.5, objective="hierarchical")``.

    Keyword names are the fields of :class:`makd.experiments.squad_config.SquadConfig` (``python -m makd squad
    --help``): an unknown name is a TypeError listing the valid ones, a wrong value a ValueError, both before any
    model or data is loaded. Returns the dict written to metrics.json.
    """
    cfg = config_from_kwargs(SquadConfig, **options)
    torch.manual_seed(cfg.seed)
    return run(cfg)


def main(argv: list[str] | None = None, config: SquadConfig | None = None) -> int:
    """``python -m makd squad``; ``config``: ``argv`` already parsed (by :mod:`makd.cli`)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = config or parse_config(SquadConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(cfg.seed)
    res = run(cfg, command="python -m makd squad " + shlex.join(argv))
    if not cfg.quiet:
        t = res["teacher"]["metrics"]
        line = f"SQuAD v{res['version']} ({res['eval']['questions']} held-out questions): teacher EM/F1 " \
               f"{t['exact_match']:.2f}/{t['f1']:.2f}"
        if "student" in res:
            s = res["student"]["metrics"]
            line += (f"  student[{res['objective']}] EM/F1 {s['exact_match']:.2f}/{s['f1']:.2f}"
                     f"  ({res['student']['params']:,} / {res['teacher']['params']:,} params)")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
