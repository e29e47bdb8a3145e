"""`python -m makd distill`: teacher fine-tuning → factorisation → distillation → evaluation → metrics.json.

One command runs the paper's main experiment on one task. It works unchanged under ``torchrun`` and
``accelerate launch`` (the Trainer picks up the process group). Every run writes ``<out>/metrics.json``
with the teacher's and the student's dev metrics, the loss history and a run record (config, seed, git
commit, library versions, data sha256, teacher checkpoint sha256).
"""
from __future__ import annotations

import argparse
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

from makd.core import factorize as fz
from makd.core.losses import NonFiniteLossError
from makd.core.objective import PRESETS, MaKDObjective, check_compatible
from makd.core.checkpoint import save_student
from makd.assets.files import write_json
from makd.experiments.runrecord import make_record
from makd.tasks.teacher import check_teacher, finetune_teacher, metrics_fn, training_args
from makd.core.trainer import DistillTrainer, loss_history

log = logging.getLogger("makd.distill")

EPILOG = """examples:
  # the embedded default (no network): rt-polarity (a proxy for SST-2), MiniLM-L6 teacher, half the layer parameters
  python -m makd distill --task rt-polarity --layer-ratio 0.5 --objective hierarchical
  # real GLUE dev files from a data folder
  python -m makd distill --task rte --data-dir ../shared/data --layer-ratio 0.5
  # baselines at the same budget: no training / fine-tuning without a teacher / logit KD
  python -m makd distill --objective none ; ... --objective finetune ; ... --objective model-only
  # several GPUs (the same command)
  accelerate launch -m makd distill --task sst2 --teacher bert-base-uncased --budget 0.5
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m makd distill", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("task and models")
    g.add_argument("--task", default="rt-polarity", help="GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte) or "
                   "the embedded proxy rt-polarity (default)")
    g.add_argument("--data-dir", default=None, help="folder with glue/TASK/{train,dev}.tsv (default $MAKD_DATA_DIR; "
                   "else the hub)")
    g.add_argument("--teacher", default="minilm-l6", help="embedded name (minilm-l6), local folder or hub id")
    g.add_argument("--max-train", type=int, default=None, help="subsample the train split (seeded)")
    g.add_argument("--max-dev", type=int, default=None, help="subsample the dev split (seeded)")
    g.add_argument("--max-length", type=int, default=128)
    s = p.add_argument_group("student size (exactly one; default --layer-ratio 0.5)")
    s.add_argument("--layer-ratio", type=float, default=None,
                   help="fraction of the dense matrices' parameters the factors keep (0.75 0.5 0.25 0.1)")
    s.add_argument("--budget", type=float, default=None,
                   help="total student parameters: an int, or a fraction of the teacher's total (embeddings included)")
    s.add_argument("--rank", type=float, default=None, help="one rank for every matrix (int) or a fraction of full rank")
    s.add_argument("--factorize-embeddings", action="store_true",
                   help="also factorise the word embedding (for budgets below the non-factorised floor)")
    s.add_argument("--student", default="svd",
                   help="'svd' (default: the factorised teacher at the size above), 'layers:K' (DistilBERT-style "
                   "dense student: K of the teacher's layers, evenly spaced, copied), or a model name/folder "
                   "sharing the teacher's tokenizer (e.g. minilm-l3, the real pretrained 3-layer MiniLM); dense "
                   "students of another depth support the presets without matrix/layer aspects")
    s.add_argument("--weighting", default="none", choices=("none", "activation"),
                   help="plain SVD or activation-aware (ASVD-style, from a calibration batch of train data)")
    o = p.add_argument_group("objective")
    o.add_argument("--objective", default="hierarchical", choices=sorted(PRESETS) + ["none"],
                   help="preset; 'none' evaluates the SVD student without training, 'finetune' trains "
                   "without a teacher, 'model-only' is logit KD")
    o.add_argument("--weights", type=json.loads, default=None, help='per-aspect weights, JSON: {"mha": 1, "attn": 0}')
    o.add_argument("--split", type=int, default=None, help="shallow/deep layer boundary (default n_layers // 2)")
    o.add_argument("--temperature", type=float, default=2.0)
    o.add_argument("--alpha", type=float, default=0.5, help="weight of KD vs gold CE in the model aspect")
    o.add_argument("--teacher-forcing", action="store_true", help="matrix terms feed the student matrix the teacher's input")
    o.add_argument("--mse", default="plain", choices=("plain", "relative"),
                   help="matrix/hidden-state MSE: plain (METHOD.md) or relative (divided by the teacher's energy; "
                        "the decoder default)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--max-steps", type=int, default=-1)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--group-by-length", action="store_true",
                   help="batch examples of similar length (transformers' LengthGroupedSampler) for the teacher's "
                        "fine-tuning and the distillation: far less padding, so ~1.5-1.9x faster on CPU for "
                        "short-text tasks (rt-polarity: 1.9x fewer padded tokens); the batches differ, so results "
                        "differ slightly from a run without it")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    t.add_argument("--save-steps", type=int, default=200, help="checkpoint every N steps (resume with --resume)")
    t.add_argument("--logging-steps", type=int, default=10)
    t.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")
    t.add_argument("--report-to", default="tensorboard", help="tensorboard (default), none, wandb, ...")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    f = p.add_argument_group("teacher fine-tuning (cached by teacher, task, seed and settings)")
    f.add_argument("--teacher-seed", type=int, default=None,
                   help="seed of the teacher's fine-tuning (default --seed); fix it to vary only the student's "
                   "training seed across runs (one cached teacher)")
    f.add_argument("--teacher-epochs", type=float, default=2.0)
    f.add_argument("--teacher-lr", type=float, default=5e-5)
    f.add_argument("--teacher-max-train", type=int, default=None)
    f.add_argument("--force-teacher", action="store_true", help="distil even if the teacher is at chance level")
    f.add_argument("--retrain-teacher", action="store_true", help="ignore the cached teacher")
    p.add_argument("--no-save-student", dest="save_student", action="store_false",
                   help="do not save the trained student to OUT/student (saved by default; load with "
                   "makd.core.checkpoint.load_student)")
    p.add_argument("--out", default=None, help="run folder (default runs/distill/TASK-OBJECTIVE-rRATIO-sSEED)")
    return p


def student_size(args) -> dict[str, Any]:
    given = {k: v for k, v in (("layer_ratio", args.layer_ratio), ("budget", args.budget), ("rank", args.rank))
             if v is not None}
    if len(given) > 1:
        raise SystemExit(f"error: give only one of --layer-ratio, --budget, --rank (got {sorted(given)})")
    if not given:
        given = {"layer_ratio": 0.5}
    for key in ("budget", "rank"):
        if key in given and given[key] >= 1:
            given[key] = int(given[key])
    return given


def default_out(args, size: dict[str, Any]) -> Path:
    tag = "-".join(f"{k.replace('_', '')}{v}" for k, v in size.items())
    if args.student != "svd":
        tag = "dense-" + args.student.replace(":", "").replace("/", "-")
    return Path("runs") / "distill" / f"{args.task}-{args.objective}-{tag}-s{args.seed}"


def dense_student(spec: str, teacher, tokenizer, num_labels: int):
    """A dense student: ``layers:K`` copies K evenly spaced teacher layers (DistilBERT-style initialisation);
    anything else is loaded with :func:`makd.assets.models.load_model` (its task head is new) and must share the
    teacher's tokenizer."""
    from makd.core.families import copy_layers, evenly_spaced, get_layers
    from makd.assets.models import load_model, vocab_check

    if spec.startswith("layers:"):
        n = len(get_layers(teacher))
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if not 1 <= k <= n:
            raise SystemExit(f"error: --student {spec}: K must be an int in 1..{n} (the teacher has {n} layers)")
        keep = evenly_spaced(n, k)
        student = copy_layers(teacher, keep)
        student.makd_dense = {"teacher_layers": keep}
        return student
    student, tok = load_model(spec, head="cls", num_labels=num_labels)
    vocab_check(tokenizer, tok, teacher, student)
    student.makd_dense = {"model": spec}
    return student


def objective_from(args, n_layers: int) -> MaKDObjective:
    """The MaKD objective the command line describes (shared by the GLUE and SQuAD commands)."""
    return MaKDObjective(n_layers, args.objective, weights=args.weights, split=args.split,
                         temperature=args.temperature, alpha=args.alpha, teacher_forcing=args.teacher_forcing,
                         mse=args.mse)


def preflight(args, size: dict[str, Any], task) -> None:
    """Check the student size and the objective against the (not yet fine-tuned) teacher before any long work."""
    from makd.assets.models import load_model

    model, tok = load_model(args.teacher, head="cls", num_labels=1 if task.is_regression else task.num_labels)
    n_layers = model.config.num_hidden_layers
    if args.student == "svd":
        try:
            fz.plan_ranks(model, factorize_embeddings=args.factorize_embeddings, **size)
        except ValueError as err:
            raise SystemExit(f"error: student size {size}: {err}") from None
    elif args.student.startswith("layers:"):
        k = args.student.split(":", 1)[1]
        if not k.isdigit() or not 1 <= int(k) <= n_layers:
            raise SystemExit(f"error: --student {args.student}: K must be an int in 1..{n_layers} "
                             f"(the teacher has {n_layers} layers)")
        if int(k) != n_layers and args.objective not in ("model-only", "finetune", "none"):
            raise SystemExit(f"error: the dense student has {k} layers and the teacher {n_layers}: objective "
                             f"{args.objective!r} compares layers 1:1; use --objective model-only (logit KD) "
                             "or finetune")
    else:                                                   # a pretrained dense student: same tokenizer?
        from makd.assets.models import vocab_check
        student, student_tok = load_model(args.student, head="cls", num_labels=model.config.num_labels)
        try:
            vocab_check(tok, student_tok, model, student)
        except ValueError as err:
            raise SystemExit(f"error: --student {args.student}: {err}") from None
    if args.objective != "none":
        try:
            objective_from(args, n_layers)
        except ValueError as err:
            raise SystemExit(f"error: objective: {err}") from None


def run(args, callbacks: list | None = None) -> dict[str, Any]:
    """Run one distillation described by ``args`` (the parsed command line); ``callbacks``: extra Trainer
    callbacks (e.g. :class:`makd.core.trainer.StopAtStep` to simulate an interruption)."""
    from makd.tasks.data import load_task, tokenize_task

    started = time.time()
    size = student_size(args)
    out = Path(args.out) if args.out else default_out(args, size)
    # the dev subsample (--max-dev) is fixed (seed 0) so runs with different seeds are evaluated on the same rows
    task = load_task(args.task, data_dir=args.data_dir, max_dev=args.max_dev, seed=0)
    if args.objective != "none" and task.train is None:
        raise SystemExit(f"error: task {task.name} has no train split in {task.source}")
    preflight(args, size, task)
    teacher_seed = args.seed if args.teacher_seed is None else args.teacher_seed
    teacher = finetune_teacher(args.teacher, task, seed=teacher_seed, force_retrain=args.retrain_teacher,
                               settings={"epochs": args.teacher_epochs, "lr": args.teacher_lr,
                                         "max_train": args.teacher_max_train, "max_length": args.max_length,
                                         # only when set, so teachers cached without the option keep their keys
                                         **({"group_by_length": True} if args.group_by_length else {})},
                               disable_tqdm=args.quiet or None)
    check_teacher(teacher.metrics, task, force=args.force_teacher)
    tok = teacher.tokenizer
    train, dev = tokenize_task(task, tok, max_length=args.max_length)
    if args.max_train and train is not None:
        train = train.shuffle(seed=args.seed).select(range(min(len(train), args.max_train)))
    calibration = None
    if args.weighting == "activation":
        collate = DataCollatorWithPadding(tok)
        rows = [{k: v for k, v in train[i].items() if k != "labels"} for i in range(min(64, len(train)))]
        calibration = collate(rows)
    if args.student == "svd":
        student = fz.factorize(teacher.model, weighting=args.weighting, calibration=calibration,
                               factorize_embeddings=args.factorize_embeddings, **size)
    else:
        student = dense_student(args.student, teacher.model, tok, teacher.model.config.num_labels)
        if args.objective in PRESETS and args.objective not in ("model-only", "finetune"):
            student_layers = student.config.num_hidden_layers
            if student_layers != teacher.model.config.num_hidden_layers:
                raise SystemExit(f"error: the dense student has {student_layers} layers and the teacher "
                                 f"{teacher.model.config.num_hidden_layers}: objective {args.objective!r} compares "
                                 "layers 1:1; use --objective model-only (logit KD) or finetune")
    if student.config.num_hidden_layers == teacher.model.config.num_hidden_layers:
        check_compatible(teacher.model, student)
    totals = fz.report_totals(student, teacher.model)

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
        resume = args.resume and any((out / "checkpoints").glob("checkpoint-*"))
        try:
            result = trainer.train(resume_from_checkpoint=True if resume else None)
        except NonFiniteLossError as err:
            write_json(out / "error.json", {"error": str(err), "step": trainer.state.global_step,
                                            "checkpoints": sorted(map(str, (out / "checkpoints").glob("checkpoint-*")))})
            raise
        train_info = {"steps": trainer.state.global_step, "runtime_s": round(result.metrics["train_runtime"], 1),
                      "resumed": bool(resume), "history": loss_history(trainer)}
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    record = make_record(vars(args) | {"size": size}, seed=args.seed, data_files=task.files,
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
            save_student(student, out / "student", tok)
        elif args.save_student:  # dense student: a plain transformers folder
            student.save_pretrained(out / "student")
            tok.save_pretrained(out / "student")
        write_json(out / "metrics.json", result)
        log.info("wrote %s", out / "metrics.json")
    return result


def distill(**options: Any) -> dict[str, Any]:
    """Python entry point: ``distill(task="rte", data_dir=..., layer_ratio=0.5, objective="hierarchical")``.

    Keyword names are the command's options with ``_`` for ``-`` (see ``python -m makd distill --help``);
    an unknown name is a TypeError listing the valid ones. Returns the dict written to metrics.json.
    """
    parser = build_parser()
    args = parser.parse_args([])
    valid = sorted(vars(args))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {valid}")
    for key, value in options.items():
        setattr(args, key, value)
    torch.manual_seed(args.seed)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = "python -m makd distill " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    res = run(args)
    if res and not args.quiet:
        m = res["metric"]
        print(f"{res['task']}{' (proxy)' if res['is_proxy'] else ''}: teacher {m}={res['teacher']['metrics'][m]:.4f}"
              f"  student[{res['objective']}] {m}={res['student']['metrics'][m]:.4f}"
              f"  ({res['student']['params']:,} / {res['teacher']['params']:,} params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
