"""Decoder distillation: SFT, KD, SeqKD and MaKD for causal LMs, evaluated by Rouge-L (``python -m makd decoder``).

:func:`compare_methods` is the experiment, shared by the command (:func:`run`) and notebook 10: the teacher is
scored, then for each method a fresh student (the same one: seeded, built from the same teacher) is trained
(:mod:`makd.experiments.decoder_methods`) and scored by Rouge-L with ONE frozen generation setting, plus its
response cross-entropy on a few training examples and its language-model cross-entropy / perplexity on held-out
Wikipedia windows (``wiki_windows``; :mod:`makd.tasks.wiki`: the embedded articles split by article, the held-out
titles recorded in every metrics.json). Training stays on instruction pairs: Wikipedia windows have no prompt
(SeqKD has nothing to generate from), so they are an evaluation set here, not a ``train_set``. SeqKD's teacher
generations decode like the evaluation, first seed only (:func:`makd.experiments.decoder_methods.seqkd_decoding`
says why).

One prompt template per run (the tokenizer's chat template when it has one, else MiniLLM's Alpaca-style
template) is recorded in every result, with the generation settings (:mod:`makd.tasks.generate`). The options
are the fields of :class:`makd.experiments.decoder_config.DecoderConfig`: ``python -m makd decoder --help``.
"""
from __future__ import annotations

import copy
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from makd.assets.files import write_json
from makd.assets.models import load_model
from makd.assets.runfolder import estimate_run_bytes, params_hint, run_folder
from makd.core import factorize as fz
from makd.core.families import num_layers
from makd.core.local import local_stage
from makd.experiments.decoder_config import DecoderConfig, parse
from makd.experiments.decoder_data import (DecoderData, EvalSet, ce_batch, generation_settings, load_data,
                                           resolve_eval_set, wiki_heldout, wiki_train)
from makd.experiments.decoder_methods import (CONTROLS, calibration_batches, check_pair, make_student,
                                              seqkd_decoding, train_student)
from makd.experiments.decoder_prepared import cached_prepare
from makd.experiments.decoder_runs import earlier_results, run_names
from makd.experiments.options import config_from_kwargs
from makd.experiments.runrecord import make_record, write_metrics
from makd.experiments.students import check_size
from makd.tasks.generate import evaluate_rouge
from makd.tasks.instructions import PROXY_SETS
from makd.tasks.metrics import lm_perplexity
from makd.tasks.prompts import template_name

log = logging.getLogger("makd.decoder")
UNTRAINED = "SVD student, untrained"   # the response-CE row of the student before any training


def response_ce(model, batch: dict[str, torch.Tensor]) -> float:
    """The model's mean cross-entropy on the response tokens of ``batch`` (labels −100 on the prompt)."""
    with torch.no_grad():
        return float(model(**batch).loss)


def scores(cfg: DecoderConfig, model, batch: dict[str, torch.Tensor], wiki) -> dict[str, Any]:
    """``response_ce`` and, with held-out Wikipedia windows, ``wiki_heldout``: {"ce", "ppl", "tokens"}."""
    out: dict[str, Any] = {"response_ce": response_ce(model, batch)}
    if wiki is not None:
        out["wiki_heldout"] = lm_perplexity(model, wiki, batch_size=cfg.batch_size)
    return out


def compare_methods(cfg: DecoderConfig, teacher, tokenizer, data: DecoderData, *,
                    on_result: Callable[[str, dict[str, Any]], None] | None = None,
                    wiki: dict[str, torch.Tensor] | None = None,
                    done: dict[str, dict[str, Any]] | None = None,
                    lm_text: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """The teacher, then each of ``cfg.methods`` (once per training seed) on a fresh copy of the same student.

    Returns ``{name: {"eval": evaluate_rouge(...), "params": int, "response_ce": float, "train": info,
    "student_init": how the student was prepared}}`` for every name of :func:`run_names` (``train`` and
    ``student_init`` for methods only; the controls are not trained: ``untrained`` is the prepared student,
    ``init`` the student before the layer-local stage), plus ``UNTRAINED`` ({"response_ce", "params", "init",
    "local"}) for the prepared student (:func:`prepare_student`, through the cache of
    :mod:`makd.experiments.decoder_prepared`; left out when every name is in ``done``). With
    ``cfg.extra_eval`` each entry holds ``eval_sets`` = {set: evaluate_rouge(...)}; with ``cfg.wiki_windows``
    ``wiki_heldout`` = {"ce", "ppl", "tokens"} on the held-out Wikipedia windows (``wiki``: those of
    :func:`wiki_heldout`, built here when None). ``lm_text``: Wikipedia train windows (:func:`wiki_train`) added
    to every method's training data, built here from ``cfg.wiki_train_windows`` when None. ``done``: results
    already scored (a resumed run), kept as they are. Students live on the teacher's device; checkpoints go to
    ``cfg.out/<name>/``. ``on_result(name, result)`` is called as soon as a model is scored."""
    settings = generation_settings(cfg)
    device = next(teacher.parameters()).device
    batch = ce_batch(cfg, tokenizer, data.rows, device)
    wiki = wiki if wiki is not None else wiki_heldout(cfg, tokenizer)[0]
    lm_text = lm_text if lm_text is not None else wiki_train(cfg, tokenizer)[0]
    done = dict(done or {})

    def evaluate(model) -> dict[str, Any]:
        res = {"eval": evaluate_rouge(model, tokenizer, data.prompts, data.references, settings),
               "params": fz.count_parameters(model), **scores(cfg, model, batch, wiki)}
        if data.extra:
            res["eval_sets"] = {k: evaluate_rouge(model, tokenizer, e.prompts, e.references, settings)
                                for k, e in data.extra.items()}
        return res

    results: dict[str, dict[str, Any]] = {}
    for name in run_names(cfg):
        if name in done:
            results[name] = done[name]
            log.info("%s: kept from the earlier run (Rouge-L %.2f)", name, done[name]["eval"]["rougeL"])
            continue
        if name == "teacher":
            results[name] = evaluate(teacher)
        else:
            if UNTRAINED not in results:
                need_before = "init" in cfg.methods and "init" not in done   # the control still to score
                base, prepared, before_local = cached_prepare(
                    cfg, data.calibration, teacher, device,
                    lambda: prepare_student(cfg, teacher, tokenizer, data.calibration, device), need_before)
                results[UNTRAINED] = {**scores(cfg, base, batch, wiki), "params": fz.count_parameters(base),
                                      **prepared}
            method, _, seed = name.partition("/seed-")
            seed = int(seed) if seed else cfg.seed
            torch.manual_seed(seed)
            student = copy.deepcopy(before_local if method == "init" else base)   # every method starts alike
            info = {"steps": 0} if method in CONTROLS else train_student(
                method, teacher, student, tokenizer, data.rows, out=Path(cfg.out) / name, seed=seed,
                epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr, batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum, max_length=cfg.max_length, max_prompt_tokens=cfg.max_prompt_tokens,
                template=cfg.template, seqkd_settings=seqkd_decoding(settings), logging_steps=cfg.logging_steps,
                save_steps=cfg.save_steps, resume=cfg.resume, report_to=cfg.report_to, quiet=cfg.quiet,
                mse=cfg.mse, bf16=cfg.bf16, lm_windows=None if lm_text is None else lm_text["input_ids"],
                responses=cfg.kd_responses, weights=cfg.makd_weights)
            results[name] = {**evaluate(student), "train": {**info, "seed": seed}, "student_init": prepared}
            log.info("%s: Rouge-L %.2f (teacher %.2f)", name, results[name]["eval"]["rougeL"],
                     results["teacher"]["eval"]["rougeL"])
        if on_result:
            on_result(name, results[name])
    return results


def prepare_student(cfg: DecoderConfig, teacher, tokenizer, rows: list[dict], device
                    ) -> tuple[Any, dict[str, Any], Any]:
    """The student every method starts from: the factorised teacher (``cfg.weighting`` calibrated on the first
    ``cfg.calibration_examples`` training examples, ``cfg.ranks``) or a dense layer copy, then ``cfg.local_epochs``
    of the layer-local stage. Returns it (seeded with ``cfg.seed``), what was done to it (with timings) and, when
    the control ``init`` is asked for, a copy from before the layer-local stage (else None)."""
    torch.manual_seed(cfg.seed)
    needs_batches = cfg.student == "svd" and cfg.weighting != "none" or cfg.local_epochs > 0
    batches = [{k: v.to(device) for k, v in b.items()} for b in calibration_batches(
        rows, tokenizer, cfg.calibration_examples, batch_size=cfg.batch_size, max_length=cfg.max_length,
        max_prompt_tokens=cfg.max_prompt_tokens, template=cfg.template)] if needs_batches else []
    t0 = time.perf_counter()
    if cfg.student == "svd":
        student = make_student(teacher, "svd", factorize_embeddings=cfg.factorize_embeddings,
                               calibration=batches if cfg.weighting != "none" else None, **cfg.init_options(),
                               **cfg.size())
    else:
        student = make_student(teacher, cfg.student)
    student.to(device)
    check_pair(teacher, tokenizer, student, tokenizer)
    info: dict[str, Any] = {"init": {"weighting": cfg.weighting, "ranks": cfg.ranks, "factorise_s": round(
        time.perf_counter() - t0, 1), "calibration_examples": cfg.calibration_examples if batches else 0}}
    before = copy.deepcopy(student) if "init" in cfg.methods else None
    if cfg.local_epochs:
        t0 = time.perf_counter()
        history = local_stage(student, teacher, batches, epochs=cfg.local_epochs, lr=cfg.local_lr,
                              progress=not cfg.quiet)
        info["local"] = {"epochs": cfg.local_epochs, "lr": cfg.local_lr, "steps": len(history),
                         "runtime_s": round(time.perf_counter() - t0, 1), "history": history,
                         "loss_block_first": history[0]["loss_block"], "loss_block_last": history[-1]["loss_block"]}
    return student, info, before


def preflight(cfg: DecoderConfig, teacher) -> None:
    """The student kind and size fit this teacher (before any data or training)."""
    n = num_layers(teacher.config)
    if cfg.student.startswith("layers:") and not 1 <= int(cfg.student[7:]) <= n:
        raise ValueError(f"student {cfg.student!r}: K must be in 1..{n} (the teacher has {n} layers)")
    if cfg.student == "svd":
        check_size(teacher, cfg.size(), cfg.factorize_embeddings)


def run(cfg: DecoderConfig, command: str | None = None) -> dict[str, Any]:
    """``python -m makd decoder``: OUT/teacher/metrics.json, OUT/<method>/metrics.json (each as soon as it is
    scored) and OUT/speed.json; returns {name: Rouge-L evaluation}."""
    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"run() takes a DecoderConfig, got {type(cfg).__name__}: build it with "
                        "config_from_kwargs(DecoderConfig, ...) or call compare(**options)")
    started, out = time.time(), Path(cfg.out)
    # one training per method, each keeping save_total_limit=1 checkpoint: locked and checked before any loading
    needed = estimate_run_bytes(params_hint(cfg.teacher), save_total_limit=1, trainings=len(run_names(cfg)) - 1,
                                save_student=False)
    with run_folder(out, needed=needed, command=command):
        return _run(cfg, out, started, command)


def _run(cfg: DecoderConfig, out: Path, started: float, command: str | None) -> dict[str, Any]:
    teacher, tok = load_model(cfg.teacher, head="lm")
    preflight(cfg, teacher)
    data = load_data(cfg, teacher, tok)
    settings = generation_settings(cfg)
    wiki, wiki_set = wiki_heldout(cfg, tok)
    lm_text, lm_set = wiki_train(cfg, tok)
    options = {**cfg.to_dict(), "command": command}
    common = {"eval_set": data.eval_set, "eval_source": data.eval_source, "reference": data.reference_kind,
              "train_set": data.train_set, "train_is_proxy": any(s in PROXY_SETS for s in data.train_set.split("+")),
              "template": template_name(tok, cfg.template), "generation": settings.as_dict(), "notes": data.notes,
              "seqkd_generation": seqkd_decoding(settings).as_dict()}
    files = {**data.files, **(wiki_set["files"] if wiki_set else {}),   # the run record hashes the wiki file too
             **(lm_set["files"] if lm_set else {})}
    if wiki_set is not None:
        common["wiki_heldout_set"] = wiki_set
    if lm_set is not None:
        common["wiki_train_set"] = lm_set

    t_params = fz.count_parameters(teacher)

    def write(name: str, res: dict[str, Any]) -> None:   # each model's metrics.json as soon as it is scored
        extra = ({"model": cfg.teacher} if name == "teacher" else
                 {"student": cfg.student, "teacher_params": t_params, "train": res["train"],
                  "student_init": res["student_init"]})
        seed = res.get("train", {}).get("seed", cfg.seed)
        write_metrics(out / name / "metrics.json", {
            **common, "method": name.split("/")[0], "run": name, "params": res["params"],
            "response_ce": res["response_ce"], "eval": res["eval"],
            **{k: res[k] for k in ("eval_sets", "wiki_heldout") if k in res},
            **extra, "record": make_record(options, seed=seed, data_files=files, started=started)}, cfg.data_dir)

    done = earlier_results(cfg, out, options) if cfg.resume else {}
    results = compare_methods(cfg, teacher, tok, data, on_result=write, wiki=wiki, done=done, lm_text=lm_text)
    scored = {k: v for k, v in results.items() if k != UNTRAINED}
    write_json(out / "speed.json", {"what": f"generation tokens/s, batch {settings.batch_size}, prompts ≤ "
                                    f"{settings.max_prompt_tokens} tokens, ≤ {settings.max_new_tokens} new tokens, "
                                    f"{len(data.prompts)} {data.eval_set} prompts, CPU threads {torch.get_num_threads()}",
                                    "models": {k: {"tokens_per_s": v["eval"]["tokens_per_s"], "params": v["params"]}
                                               for k, v in scored.items()}})
    return {k: v["eval"] for k, v in scored.items()}


def compare(**options: Any) -> dict[str, Any]:
    """Python entry point: ``compare(teacher="tiny-llama", methods=["sft", "makd"], max_steps=2, out=...)``;
    keyword names are the fields of :class:`DecoderConfig` (an unknown name: TypeError, a wrong value: ValueError,
    both before any model is loaded)."""
    return run(config_from_kwargs(DecoderConfig, **options))


def main(argv: list[str] | None = None, config: DecoderConfig | None = None) -> int:
    """``python -m makd decoder``; ``config``: ``argv`` already parsed (by :mod:`makd.cli`)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = config or parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(cfg, command="python -m makd decoder " + shlex.join(argv))
    for name, ev in res.items():
        print(f"{name:8s} Rouge-L {ev['rougeL']:.2f} ± {ev['rougeL_std']:.2f}  ({ev['tokens_per_s']:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
