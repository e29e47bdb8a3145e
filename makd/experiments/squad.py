"""`python -m makd squad`: extractive QA (SQuAD v1.1 / v2.0) — teacher fine-tuning → factorisation →
distillation → EM/F1 → metrics.json.

The QA counterpart of :mod:`makd.experiments.distill`. The teacher gets a QA head (start/end logits per token),
is fine-tuned on the train questions (cached under ``cache_dir()/teachers/<key>/``), factorised into a
low-rank student and distilled with :class:`makd.core.objective.MaKDObjective` (the model aspect is
``(pred(start) + pred(end)) / 2``, each ``alpha · t² · KL + (1 − alpha) · CE``). Predictions are the best
span over the sliding windows (:mod:`makd.tasks.qa`); v2.0 answers "" when ``null − best_span > null_threshold``.
Offline there is no SQuAD train set: the official dev set is split by article (v1.1: 38 articles to train,
10 held out; v2.0: 28 / 7) and every result says so in ``notes``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer

from makd.core import factorize as fz
from makd.tasks.data import SquadData, _subsample, load_squad
from makd.core.losses import NonFiniteLossError
from makd.tasks.metrics import squad_metrics
from makd.assets.models import ENCODER_TYPES, load_model, resolve
from makd.core.objective import check_compatible
from makd.assets.paths import cache_dir
from makd.experiments.distill import build_parser as glue_parser
from makd.experiments.distill import objective_from, student_size
from makd.tasks.qa import postprocess_predictions, prepare_eval_features, prepare_train_features
from makd.assets.files import sha256_folder, write_json
from makd.experiments.runrecord import make_record
from makd.tasks.teacher import TeacherAtChanceError, TeacherResult, training_args
from makd.core.trainer import DistillTrainer, loss_history

log = logging.getLogger("makd.experiments.squad")

DEFAULT_SPLIT = {"1.1": (38, 10), "2.0": (28, 7)}   # (train articles, held-out articles) of the dev set
DEFAULT_QA_SETTINGS = {"epochs": 2.0, "lr": 5e-5, "batch_size": 16, "max_length": 384, "stride": 128,
                       "weight_decay": 0.01, "warmup_ratio": 0.1, "max_train_features": None}
EVAL_DEFAULTS = {"n_best": 20, "max_answer_length": 30, "null_threshold": 0.0, "batch_size": 64}


# ------------------------------------------------------------------------------------------- evaluation
def predict_logits(model, tokenizer, features, batch_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start/end logits per feature (each row cut to its own length), batches sorted by length to pad little."""
    cols = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]
    data = {c: features[c] for c in cols}
    n = len(features)
    order = np.argsort([-len(x) for x in data["input_ids"]], kind="stable")
    starts: list = [None] * n
    ends: list = [None] * n
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size].tolist()
            batch = tokenizer.pad([{c: data[c][j] for c in cols} for j in idx], return_tensors="pt")
            out = model(**{k: v.to(device) for k, v in batch.items()})
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()  # (B, T)
            for row, j in enumerate(idx):
                t = len(data["input_ids"][j])
                starts[j], ends[j] = s[row, :t], e[row, :t]
    model.train(was_training)
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
    from transformers import AutoConfig
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


def qa_cache_key(teacher: str, squad: SquadData, settings: dict[str, Any], seed: int) -> str:
    blob = json.dumps({"teacher": resolve(teacher), "task": f"squad-v{squad.version}", "files": squad.files,
                       "split": squad.notes[:1], "settings": settings, "seed": seed}, sort_keys=True, default=str)
    slug = Path(str(teacher)).name.replace("/", "-")
    return f"{slug}-squad{squad.version}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


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
    path = cache_dir() / "teachers" / qa_cache_key(teacher, squad, settings, seed)
    info_path = path / "teacher_info.json"
    ekey = eval_key(squad, {k: ev[k] for k in ("n_best", "max_answer_length", "null_threshold")} |
                    {"max_length": settings["max_length"], "stride": settings["stride"]})
    evaluate = lambda m, t: evaluate_qa(m, t, squad, max_length=settings["max_length"],  # noqa: E731
                                        stride=settings["stride"], **ev)
    if info_path.is_file() and not force_retrain:
        info = json.loads(info_path.read_text())
        model = AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch.float32).to(device).eval()
        tok = AutoTokenizer.from_pretrained(path)
        if ekey not in info["evals"]:
            info["evals"][ekey] = evaluate(model, tok)
            write_json(info_path, info)
        log.info("reusing fine-tuned QA teacher %s", path)
        return TeacherResult(model, tok, path, info["evals"][ekey], info["checkpoint_sha256"], settings, reused=True)

    started = time.time()
    check_qa_teacher_model(teacher)
    model, tok = load_model(teacher, head="qa")
    if squad.train is None:
        raise ValueError(f"SQuAD v{squad.version} from {squad.source} has no train split: the teacher cannot be "
                         "fine-tuned (split the dev set by article: --split-articles 38 10)")
    feats = prepare_train_features(squad.train, tok, settings["max_length"], settings["stride"], padding=False)
    notes: list[str] = []
    feats = _subsample(feats, settings["max_train_features"], seed, "teacher train features", notes)
    args = training_args(path / "trainer", seed=seed, epochs=settings["epochs"], lr=settings["lr"],
                         batch_size=settings["batch_size"], weight_decay=settings["weight_decay"],
                         warmup_steps=settings["warmup_ratio"], report_to=report_to, disable_tqdm=disable_tqdm,
                         group_by_length=True, use_cpu=device == "cpu")
    trainer = Trainer(model=model, args=args, train_dataset=feats, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    if trainer.is_world_process_zero():
        model.save_pretrained(path)
        tok.save_pretrained(path)
        metrics = evaluate(model, tok)
        write_json(info_path, {"teacher": teacher, "resolved": resolve(teacher), "task": f"squad-v{squad.version}",
                               "source": squad.source, "notes": squad.notes + notes, "data_files_sha256": squad.files,
                               "seed": seed, "settings": settings, "train_features": len(feats),
                               "train_questions": len(squad.train), "checkpoint_sha256": sha256_folder(path),
                               "evals": {ekey: metrics}, "wall_time_s": round(time.time() - started, 1)})
    trainer.accelerator.wait_for_everyone()
    info = json.loads(info_path.read_text())
    return TeacherResult(model.eval(), tok, path, info["evals"][ekey], info["checkpoint_sha256"], settings)


# ------------------------------------------------------------------------------------------- command line
EPILOG = """examples:
  # offline: SQuAD v1.1 dev split by article (38 train / 10 held out), MiniLM-L6 teacher, half the layer parameters
  python -m makd squad --version 1.1 --data-dir ../shared/data --layer-ratio 0.5 --objective hierarchical
  # the teacher alone / the SVD student without training, at the same budget
  python -m makd squad --data-dir ../shared/data --teacher-only ; ... --objective none
  # SQuAD v2.0 (no-answer threshold on null − best span score), online with the official train set
  python -m makd squad --version 2.0 --source hub --teacher bert-base-uncased --budget 0.25
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m makd squad", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and teacher")
    g.add_argument("--version", default="1.1", choices=("1.1", "2.0"), help="SQuAD version (default 1.1)")
    g.add_argument("--data-dir", default=None, help="folder with squad/dev-v{1.1,2.0}.json (default $MAKD_DATA_DIR; "
                   "else the hub rajpurkar/squad[_v2])")
    g.add_argument("--source", default="auto", choices=("auto", "local", "hub"))
    g.add_argument("--split-articles", type=int, nargs=2, default=None, metavar=("N_TRAIN", "N_HELDOUT"),
                   help="split the dev set by article into train / held-out (default when no train file is "
                   "available: 38 10 for v1.1, 28 7 for v2.0; stated in every result)")
    g.add_argument("--teacher", default="minilm-l6", help="embedded name (minilm-l6), local folder or hub id; an "
                   "encoder with a QA head or none")
    g.add_argument("--max-length", type=int, default=384, help="tokens per window (question + context slice)")
    g.add_argument("--stride", type=int, default=128, help="overlap between consecutive windows (tokens)")
    g.add_argument("--max-train-features", type=int, default=None,
                   help="subsample the student's train windows (seeded)")
    g.add_argument("--max-eval", type=int, default=None, help="subsample the held-out questions (seeded)")
    g.add_argument("--n-best", type=int, default=20)
    g.add_argument("--max-answer-length", type=int, default=30, help="tokens")
    g.add_argument("--null-threshold", type=float, default=0.0, help="v2.0: answer '' when null − best span > this")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    # student size, objective and training options are the GLUE command's (python -m makd distill)
    shared = {"student size (exactly one; default --layer-ratio 0.5)": ("--layer-ratio", "--budget", "--rank",
                                                                          "--factorize-embeddings"),
              "objective": ("--objective", "--weights", "--split", "--temperature", "--alpha", "--teacher-forcing",
                            "--mse"),
              "training": ("--epochs", "--max-steps", "--lr", "--batch-size", "--grad-accum", "--seed",
                           "--save-steps", "--logging-steps", "--resume", "--report-to", "--quiet")}
    src = {a.option_strings[0]: a for a in glue_parser()._actions if a.option_strings}
    for title, flags in shared.items():
        grp = p.add_argument_group(title)
        for flag in flags:
            a = src[flag]
            kw = {"dest": a.dest, "default": a.default, "help": a.help}
            if a.nargs == 0:
                kw["action"] = "store_true"
            else:
                kw.update(type=a.type, choices=a.choices)
            grp.add_argument(flag, **kw)
    p.set_defaults(epochs=2.0, batch_size=16)
    f = p.add_argument_group("teacher fine-tuning (cached by teacher, data, split, seed and settings)")
    f.add_argument("--teacher-only", action="store_true", help="fine-tune / evaluate the teacher and stop")
    f.add_argument("--teacher-epochs", type=float, default=2.0)
    f.add_argument("--teacher-lr", type=float, default=5e-5)
    f.add_argument("--teacher-batch-size", type=int, default=16)
    f.add_argument("--teacher-max-train-features", type=int, default=None, help="subsample the teacher's train windows")
    f.add_argument("--force-teacher", action="store_true", help="distil even if the teacher is at chance level")
    f.add_argument("--retrain-teacher", action="store_true", help="ignore the cached teacher")
    p.add_argument("--no-save-student", dest="save_student", action="store_false", help="do not save OUT/student")
    p.add_argument("--out", default=None, help="run folder (default runs/squad/v1.1-OBJECTIVE-SIZE-sSEED)")
    return p


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


def preflight(args, size: dict[str, Any]) -> None:
    """Teacher kind, window sizes, student size and objective, checked before any long work."""
    check_qa_teacher_model(args.teacher)
    model, _ = load_model(args.teacher, head="qa")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and args.max_length > positions:
        raise SystemExit(f"error: --max-length {args.max_length} exceeds the teacher's {positions} positions")
    if not 0 <= args.stride < args.max_length:
        raise SystemExit(f"error: --stride ({args.stride}) must be >= 0 and smaller than --max-length "
                         f"({args.max_length})")
    try:
        fz.plan_ranks(model, factorize_embeddings=args.factorize_embeddings, **size)
        if args.objective != "none":
            objective_from(args, model.config.num_hidden_layers)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def run(args, callbacks: list | None = None) -> dict[str, Any]:
    """One SQuAD run described by ``args`` (the parsed command line); returns what metrics.json holds."""

    started = time.time()
    size = student_size(args)
    tag = "teacher" if args.teacher_only else f"{args.objective}-" + "-".join(f"{k.replace('_', '')}{v}"
                                                                             for k, v in size.items())
    out = Path(args.out) if args.out else Path("runs") / "squad" / f"v{args.version}-{tag}-s{args.seed}"
    squad = load_data(args)
    preflight(args, size)
    device = resolve_device(args.device)
    ev = {"n_best": args.n_best, "max_answer_length": args.max_answer_length, "null_threshold": args.null_threshold,
          "batch_size": args.eval_batch_size}
    teacher = finetune_qa_teacher(
        args.teacher, squad, seed=args.seed, force_retrain=args.retrain_teacher, eval_settings=ev,
        settings={"epochs": args.teacher_epochs, "lr": args.teacher_lr, "batch_size": args.teacher_batch_size,
                  "max_length": args.max_length, "stride": args.stride,
                  "max_train_features": args.teacher_max_train_features}, disable_tqdm=args.quiet or None,
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
        if args.objective != "none":
            feats = prepare_train_features(squad.train, tok, args.max_length, args.stride, padding=False)
            feats = _subsample(feats, args.max_train_features, args.seed, "student train features", notes)
            trainer, train_info = train_student(args, student, teacher.model, feats, tok, out, device, callbacks)
        metrics = evaluate_qa(student, tok, squad, max_length=args.max_length, stride=args.stride, **ev)
        result["student"] = {"metrics": metrics, "params": totals["student_params"], "size": size,
                             "layer_ratio": totals["layer_ratio"], "ratio": totals["ratio"]}
        result["relative_to_teacher"] = metrics["f1"] / teacher.metrics["f1"] if teacher.metrics["f1"] else None
    result["train"] = train_info
    result["record"] = make_record(vars(args) | {"size": size}, seed=args.seed, data_files=squad.files,
                                   teacher_hash=teacher.checkpoint_sha256, started=started)
    if trainer is None or trainer.is_world_process_zero():
        if student is not None and args.save_student:
            from makd.core.checkpoint import save_student
            save_student(student, out / "student", tok)
        write_json(out / "metrics.json", result)
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
    resume = args.resume and any((out / "checkpoints").glob("checkpoint-*"))
    try:
        res = trainer.train(resume_from_checkpoint=True if resume else None)
    except NonFiniteLossError as err:
        write_json(out / "error.json", {"error": str(err), "step": trainer.state.global_step})
        raise
    return trainer, {"steps": trainer.state.global_step, "runtime_s": round(res.metrics["train_runtime"], 1),
                     "features": len(feats), "resumed": bool(resume), "history": loss_history(trainer)}


def distill_squad(**options: Any) -> dict[str, Any]:
    """Python entry point: ``distill_squad(version="1.1", data_dir=..., layer_ratio=0.5, objective="hierarchical")``.

    Keyword names are the command's options with ``_`` for ``-`` (``python -m makd squad --help``); an
    unknown name is a TypeError listing the valid ones. Returns the dict written to metrics.json.
    """
    args = build_parser().parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(vars(args))}")
    for key, value in options.items():
        setattr(args, key, value)
    torch.manual_seed(args.seed)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = "python -m makd squad " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    res = run(args)
    if not args.quiet:
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
