"""``python -m makd subquadratic``: a Llama teacher distilled into a subquadratic student (arXiv 2504.14366).

One run: the teacher (eager attention: stage 1 needs its probabilities) → packed blocks of text split by document
(:mod:`makd.tasks.lm_blocks`) → the student (:func:`makd.students.stages.student_for`: the mixer, QKV copy or
random init, seeded) → the three stages (:func:`makd.students.stages.run_stages`: matrix mixing, hidden-state
alignment, end-to-end KD; each with its budget, rate and schedule; checkpoints under ``OUT/checkpoints`` that
``--resume`` continues) → evaluation of the teacher and the student on held-out blocks (CE, perplexity, KL to the
teacher, top-1 agreement: :func:`makd.tasks.lm_eval.evaluate_lm`), optionally pass-key retrieval
(:mod:`makd.tasks.passkey`; the teacher on the contexts its positions allow) and zero-shot classification
(:mod:`makd.tasks.zeroshot`) → ``OUT/metrics.json``: ``mixer`` at its top level, per-stage loss histories, token
budgets and CPU time, the evaluation, the run record. The options are the fields of
:class:`makd.experiments.subquadratic_config.SubquadraticConfig` (``python -m makd subquadratic --help``).
"""
from __future__ import annotations

import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makd.assets.models import load_model
from makd.assets.runfolder import estimate_run_bytes, params_hint, run_folder
from makd.experiments.options import config_from_kwargs
from makd.experiments.runrecord import make_record, write_metrics
from makd.experiments.subquadratic_config import STAGES, SubquadraticConfig, parse
from makd.students.qkv import check_teacher, describe, save_student
from makd.students.stage_loop import StageSpec
from makd.students.stages import run_stages, student_for
from makd.tasks.lm_blocks import check_block_length, lm_blocks
from makd.tasks.lm_eval import evaluate_lm
from makd.tasks.passkey import MAX_NEW_TOKENS, passkey_accuracy, passkey_prompt
from makd.tasks.zeroshot import zero_shot

log = logging.getLogger("makd.subquadratic")


def stage_specs(cfg: SubquadraticConfig) -> list[StageSpec]:
    """The three stages in order, as the configuration sets them (a budget of 0: skipped)."""
    return [StageSpec(s, getattr(cfg, f"{s}_tokens"), getattr(cfg, f"{s}_lr"), getattr(cfg, f"{s}_schedule"),
                      getattr(cfg, f"{s}_warmup")) for s in STAGES]


def evaluate(cfg: SubquadraticConfig, model, teacher, tok, held: dict | None) -> dict[str, Any]:
    """LM metrics on the held-out blocks (KL / top-1 against ``teacher`` unless ``model`` is the teacher; with the
    per-block sums, for intervals over blocks), pass-key accuracy and zero-shot accuracies, as configured."""
    out: dict[str, Any] = {}
    if held is not None:
        out["lm"] = evaluate_lm(model, None if model is teacher else teacher, held, cfg.eval_batch_size,
                                per_block=True)
    if cfg.passkey_contexts:
        limit = teacher.config.max_position_embeddings - MAX_NEW_TOKENS if model is teacher else None
        contexts = [c for c in cfg.passkey_contexts if limit is None or c <= limit]
        if contexts:
            out["passkey"] = passkey_accuracy(model, tok, contexts=contexts, depths=cfg.passkey_depths,
                                              n_per_cell=cfg.passkey_per_cell, seed=cfg.seed)
        if len(contexts) < len(cfg.passkey_contexts):
            out["passkey_skipped_contexts"] = [c for c in cfg.passkey_contexts if c not in contexts]
    if cfg.zero_shot:
        out["zero_shot"] = {t: zero_shot(model, tok, t, data_dir=cfg.data_dir, max_examples=cfg.zero_shot_examples,
                                         batch_size=cfg.eval_batch_size) for t in cfg.zero_shot}
    return out


def run(cfg: SubquadraticConfig, *, command: str | None = None,
        on_step: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """The whole run into ``cfg.out`` (locked while it runs); returns what metrics.json holds. ``on_step``:
    called after every training step with (stage, log entry), e.g. to stop a run in a test."""
    out = Path(cfg.out)
    needed = estimate_run_bytes(params_hint(cfg.teacher), save_total_limit=1, save_student=cfg.save_student)
    with run_folder(out, needed=needed, command=command, what="the subquadratic run"):
        return _run(cfg, out, command, on_step)


def _run(cfg: SubquadraticConfig, out: Path, command: str | None, on_step) -> dict[str, Any]:
    started = time.time()
    teacher, tok = load_model(cfg.teacher, head="lm", attn_implementation="eager")
    check_teacher(teacher, cfg.mixer, cfg.init)                      # a non-Llama teacher: one clear error
    check_block_length(cfg.block_length, teacher.config)
    for context in cfg.passkey_contexts:              # a context too short for this tokenizer: refused now
        passkey_prompt(tok, context, cfg.passkey_depths[0], "12345")
    train, held, data = lm_blocks(tok, cfg.block_length, cfg.text, cfg.data_dir, max_positions_config=teacher.config,
                                  held_out_blocks=cfg.eval_blocks or None)
    student = student_for(teacher, cfg.mixer, cfg.init, cfg.seed)
    checkpoints = out / "checkpoints"
    if not cfg.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    specs = stage_specs(cfg)
    results = run_stages(student, teacher, train, specs, batch_size=cfg.batch_size, seed=cfg.seed,
                         checkpoints=checkpoints, resume=cfg.resume, save_every=cfg.save_every,
                         max_grad_norm=cfg.max_grad_norm or None, hidden_kind=cfg.hidden_loss,
                         hidden_params=cfg.hidden_params, ce_weight=cfg.ce_weight, kl_weight=cfg.kl_weight,
                         temperature=cfg.temperature, kl_reduction=cfg.kl_reduction, progress=not cfg.quiet,
                         on_step=on_step)
    stages = {}
    for spec in specs:
        r = results.get(spec.name)
        stages[spec.name] = {"tokens_budget": spec.tokens, "lr": spec.lr, "schedule": spec.schedule,
                             "warmup": spec.warmup, "ran": r is not None}
        if r is not None:
            stages[spec.name].update(tokens=r["tokens"], steps=r["steps"], cpu_s=r["cpu_s"], wall_s=r["wall_s"],
                                     resumed=r["resumed"], first=r["history"][0] if r["history"] else None,
                                     final=r["history"][-1] if r["history"] else None, history=r["history"])
    held_blocks = held if cfg.eval_blocks else None
    t0 = time.process_time()
    evaluation = {"teacher": evaluate(cfg, teacher, teacher, tok, held_blocks),
                  "student": evaluate(cfg, student, teacher, tok, held_blocks)}
    eval_cpu = round(time.process_time() - t0, 2)
    if cfg.save_student:
        save_student(student, out / "student", tok)
    student_lm, teacher_lm = ({k: v for k, v in evaluation[who].get("lm", {}).items() if k != "blocks"}
                              for who in ("student", "teacher"))
    sizes = describe(student, teacher)
    result = {
        "command": "subquadratic", "task": cfg.text, "mixer": cfg.mixer, "init": cfg.init, "teacher_name": cfg.teacher,
        "seed": cfg.seed, "metric": "top1" if "top1" in student_lm else None,
        "student": {**sizes, "metrics": student_lm},
        "teacher": {"params": sizes["teacher_params"],
                    "metrics": teacher_lm},
        "evaluation": evaluation,
        "token_budgets": {s.name: s.tokens for s in specs},
        "tokens_used": {k: v["tokens"] for k, v in results.items()},
        "cpu_s": {**{k: v["cpu_s"] for k, v in results.items()}, "evaluation": eval_cpu},
        "stages": stages, "data": data,
        "train": {"resumed": any(r["resumed"] for r in results.values()), "block_length": cfg.block_length,
                  "batch_size": cfg.batch_size},
    }
    result["record"] = make_record(cfg.to_dict(), seed=cfg.seed, data_files=data.get("files"), started=started,
                                   command=command)
    write_metrics(out / "metrics.json", result, cfg.data_dir)
    if not cfg.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def subquadratic(**options: Any) -> dict[str, Any]:
    """The Python entry: ``subquadratic(teacher="tiny-llama", mixer="gla", ...)`` (the command's options; an
    unknown name is a TypeError, a wrong value a ValueError, before any model is loaded)."""
    return run(config_from_kwargs(SubquadraticConfig, **options))


def main(argv: list[str] | None = None, config: SubquadraticConfig | None = None) -> int:
    """``python -m makd subquadratic``; ``config``: ``argv`` already parsed (by :mod:`makd.cli`)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = config or parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(cfg, command="python -m makd subquadratic " + shlex.join(argv))
    for name, stage in res["stages"].items():
        if stage["ran"]:
            print(f"stage {name}: loss {stage['first']['loss']:.4g} -> {stage['final']['loss']:.4g} "
                  f"({stage['tokens']:,} tokens, {stage['cpu_s']:.0f} s CPU)")
    for who in ("teacher", "student"):
        m = res[who]["metrics"]
        if m:
            extra = f"  KL {m['kl']:.4f}  top-1 {m['top1']:.3f}" if "kl" in m else ""
            print(f"{who:8s} ppl {m['ppl']:.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
