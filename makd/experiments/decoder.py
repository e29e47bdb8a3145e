"""Decoder distillation: SFT, KD, SeqKD and MaKD for causal LMs, evaluated by Rouge-L.

Every method runs through the same :class:`makd.core.trainer.DistillTrainer` and :class:`makd.core.objective.MaKDObjective`
(``causal_lm=True``; loss only on response tokens, labels −100 on the prompt):

* ``sft``   — the student fine-tuned on the gold responses, no teacher (preset ``finetune``);
* ``kd``    — token-level forward KL(teacher ‖ student) mixed with the LM loss 0.5/0.5 (MiniLLM's KD);
* ``seqkd`` — SFT on the TEACHER's generated responses (generated once, cached on disk and reused);
* ``makd``  — the hierarchical objective: matrix aspects on the shallow half, layer aspects on the deep
  half (causal attention, response tokens only), and the model aspect (= KD) — a RECONSTRUCTED default.

Students: the factorised teacher at a stated layer ratio / budget (``svd``) or a dense copy of K teacher
layers (``layers:K``, DistilBERT-style). One prompt template per run (the tokenizer's chat template when it
has one, else MiniLLM's Alpaca-style template) is recorded in every result, with the frozen generation
settings (:mod:`makd.tasks.generate`). ``python -m makd decoder --help``.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch

from makd.core import factorize as fz
from makd.core.families import copy_layers, evenly_spaced, num_layers
from makd.tasks.generate import GenerationSettings, evaluate_rouge, generate
from makd.assets.models import load_model, vocab_check
from makd.core.objective import MaKDObjective
from makd.assets.paths import cache_dir
from makd.assets.files import write_json
from makd.experiments.runrecord import make_record

log = logging.getLogger("makd.decoder")
METHODS = ("sft", "kd", "seqkd", "makd")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")


# ------------------------------------------------------------------------------------------- prompts
def prompt_text(tokenizer, instruction: str, inp: str = "", template: str = "auto") -> str:
    """The prompt string for one example: the chat template (``auto`` when the tokenizer has one) or ``alpaca``."""
    if template not in ("auto", "chat", "alpaca"):
        raise ValueError(f"template must be 'auto', 'chat' or 'alpaca', got {template!r}")
    use_chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' but the tokenizer has no chat template; use 'alpaca'")
        content = instruction if not inp else f"{instruction}\n\n{inp}"
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    block = f"### Input:\n{inp}\n\n" if inp else ""
    return ALPACA.format(instruction=instruction, input_block=block)


def template_name(tokenizer, template: str) -> str:
    return "chat" if template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None)) \
        else "alpaca"


def sft_features(rows, tokenizer, *, max_length: int = 512, max_prompt_tokens: int = 256,
                 template: str = "auto") -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenised (prompt + response + eos) with labels −100 on the prompt; (dataset, counts of cuts).

    Prompts over ``max_prompt_tokens`` keep their last tokens, sequences over ``max_length`` lose the end of
    the response; both are counted, never silent. Examples with an empty response are dropped (counted)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: a response must end with one")
    feats, counts = [], {"prompt_truncated": 0, "response_truncated": 0, "empty_response_dropped": 0}
    for r in rows:
        if not (r["output"] or "").strip():
            counts["empty_response_dropped"] += 1
            continue
        p = tokenizer(prompt_text(tokenizer, r["instruction"], r.get("input", ""), template),
                      add_special_tokens=False)["input_ids"]
        if len(p) > max_prompt_tokens:
            p, counts["prompt_truncated"] = p[-max_prompt_tokens:], counts["prompt_truncated"] + 1
        a = tokenizer(r["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(p) + len(a) > max_length:
            a, counts["response_truncated"] = a[:max_length - len(p)], counts["response_truncated"] + 1
        feats.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    if not feats:
        raise ValueError("no training example left (all responses empty?)")
    return datasets.Dataset.from_list(feats), counts


class CausalCollator:
    """Right-pad input_ids (pad id), labels (−100) and build the attention mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)       # (B, T)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)          # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)                 # (B, T)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ------------------------------------------------------------------------------------------ students
def make_student(teacher, kind: str = "svd", **size: Any):
    """``svd`` (factorised teacher; size = layer_ratio / budget / rank) or ``layers:K`` (dense copy)."""
    if kind == "svd":
        return fz.factorize(teacher, **(size or {"layer_ratio": 0.5}))
    if kind.startswith("layers:"):
        n = num_layers(teacher.config)
        k = kind.split(":", 1)[1]
        if not k.isdigit():
            raise ValueError(f"student {kind!r}: use layers:K with K in 1..{n}")
        return copy_layers(teacher, evenly_spaced(n, int(k)))
    raise ValueError(f"unknown student kind {kind!r}: 'svd' or 'layers:K'")


# MaKD's matrix/hidden MSE for causal LMs (our choice, not the paper's; see objective_for)
DEFAULT_MSE = "relative"


def objective_for(method: str, n_layers: int, *, mse: str = DEFAULT_MSE, **kw: Any) -> MaKDObjective:
    """The objective of ``method``; MaKD's matrix/hidden MSEs are ``relative`` by default (normalised by the
    teacher's energy: SmolLM2's hidden states reach |h| ~ 10³ and the plain MSE, ~8,000 at the first log,
    drowned the model term — our choice, not the paper's; ``mse="plain"`` restores it)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in ("sft", "seqkd"):
        return MaKDObjective(n_layers, "finetune", causal_lm=True)
    if method == "kd":
        return MaKDObjective(n_layers, "model-only", causal_lm=True, lm_weight=0.5, **kw)
    return MaKDObjective(n_layers, "hierarchical", causal_lm=True, lm_weight=0.5, response_only_layers=True,
                         mse=mse, **kw)


def check_pair(teacher, teacher_tok, student, student_tok) -> int:
    """Same tokenizer and the same (padded) vocabulary rows, else one ValueError saying what to do."""
    n = vocab_check(teacher_tok, student_tok, teacher, student)
    t_out, s_out = teacher.get_output_embeddings(), student.get_output_embeddings()
    if t_out is not None and s_out is not None and t_out.weight.shape[0] != s_out.weight.shape[0]:
        raise ValueError(f"output vocabularies differ (teacher {t_out.weight.shape[0]} rows, student "
                         f"{s_out.weight.shape[0]}): resize with model.resize_token_embeddings(n)")
    return n


# ----------------------------------------------------------------------------------------- SeqKD data
def teacher_responses(teacher, tokenizer, rows, settings: GenerationSettings, *, template: str = "auto",
                      cache: Path | None = None) -> list[dict]:
    """``rows`` with ``output`` replaced by the teacher's generation; cached by teacher, prompts and settings.
    At least one new token per prompt (an empty response would leave the example without a training token)."""
    settings = replace(settings, min_new_tokens=max(1, settings.min_new_tokens))
    prompts = [prompt_text(tokenizer, r["instruction"], r.get("input", ""), template) for r in rows]
    key = hashlib.sha256(json.dumps({"teacher": getattr(teacher.config, "_name_or_path", ""),
                                     "params": sum(p.numel() for p in teacher.parameters()),
                                     "prompts": prompts, "settings": settings.as_dict()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = (cache or cache_dir() / "seqkd") / f"{key}.json"
    if path.is_file():
        log.info("SeqKD: reusing %d cached teacher generations %s", len(rows), path)
        texts = json.loads(path.read_text())["texts"]
    else:
        texts = generate(teacher, tokenizer, prompts, settings, seed=settings.seeds[0])["texts"]
        write_json(path, {"texts": texts, "settings": settings.as_dict()})
    return [{**r, "output": t} for r, t in zip(rows, texts)]


# ------------------------------------------------------------------------------------------ training
def train_student(method: str, teacher, student, tokenizer, rows, *, out: Path, seed: int = 0,
                  epochs: float = 1.0, max_steps: int = -1, lr: float = 5e-5, batch_size: int = 8,
                  max_length: int = 512, max_prompt_tokens: int = 256, template: str = "auto",
                  seqkd_settings: GenerationSettings | None = None, logging_steps: int = 10,
                  save_steps: int = 200, resume: bool = False, report_to: str = "none",
                  quiet: bool = False, mse: str = DEFAULT_MSE) -> dict[str, Any]:
    """Train ``student`` in place with ``method``; {steps, runtime_s, history, cuts}."""
    from makd.tasks.teacher import training_args
    from makd.core.trainer import DistillTrainer, loss_history

    if method == "seqkd":
        rows = teacher_responses(teacher, tokenizer, rows, seqkd_settings or GenerationSettings.greedy(
            max_new_tokens=64), template=template)
    data, cuts = sft_features(rows, tokenizer, max_length=max_length, max_prompt_tokens=max_prompt_tokens,
                              template=template)
    objective = objective_for(method, num_layers(student.config), mse=mse)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    args = training_args(out / "checkpoints", seed=seed, epochs=epochs, lr=lr, batch_size=batch_size,
                         max_steps=max_steps, report_to=report_to, logging_steps=logging_steps,
                         save_strategy="steps", save_steps=save_steps, save_total_limit=1,
                         remove_unused_columns=False, disable_tqdm=quiet or None, warmup_steps=0.05)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher if objective.needs_teacher else None,
                             objective=objective, train_dataset=data,
                             data_collator=CausalCollator(tokenizer.pad_token_id))
    resume_from = resume and any((out / "checkpoints").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume_from else None)
    student.eval()
    return {"steps": trainer.state.global_step, "runtime_s": round(result.metrics["train_runtime"], 1),
            "history": loss_history(trainer), "examples": len(data), "cuts": cuts, "resumed": bool(resume_from)}


# ------------------------------------------------------------------------------------------ the command
EPILOG = """examples:
  # embedded default, no network: SmolLM2-135M-Instruct teacher, chatterbot proxy train set, SelfInst-252 eval
  python -m makd decoder --data-dir ../shared/data --methods sft kd seqkd makd --max-train 256 --max-eval 40
  # MiniLLM's decoding protocol (sampling, top-p 1, temperature 1, 5 seeds) instead of greedy
  python -m makd decoder ... --decoding sample
  # the paper's setting on a GPU box with the hub: GPT-2 family
  python -m makd decoder --teacher gpt2-xl --train-set dolly --eval-set dolly --decoding sample
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m makd decoder", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="embedded name, local folder or hub id (decoder)")
    p.add_argument("--train-set", default="chatterbot", help="chatterbot (embedded proxy) or dolly")
    p.add_argument("--eval-set", default="selfinst", help="selfinst, vicuna (teacher answers as references), "
                   "dolly or chatterbot")
    p.add_argument("--data-dir", default=None, help="folder with instruct/*.jsonl (default $MAKD_DATA_DIR)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--student", default="svd", help="'svd' (factorised teacher) or 'layers:K' (dense copy)")
    p.add_argument("--layer-ratio", type=float, default=0.5, help="size of the svd student")
    p.add_argument("--template", default="auto", choices=("auto", "chat", "alpaca"),
                   help="prompt template: the tokenizer's chat template when it has one (auto), or alpaca")
    p.add_argument("--max-train", type=int, default=256, help="training examples (first N of the seeded split)")
    p.add_argument("--max-eval", type=int, default=40, help="evaluation prompts (first N)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256, help="training sequence length (prompt + response)")
    p.add_argument("--decoding", default="greedy", choices=("greedy", "sample"),
                   help="greedy (one run) or MiniLLM's sampling (top-p 1, temperature 1, --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 20, 30, 40, 50], help="sampling seeds")
    p.add_argument("--max-new-tokens", type=int, default=64, help="cap on generated tokens (MiniLLM: up to 512 total)")
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--mse", default=DEFAULT_MSE, choices=("relative", "plain"),
                   help="MaKD's matrix/hidden-state MSE: relative (divided by the teacher's energy; default, our "
                        "choice: LLM hidden states reach |h| ~ 10^3) or plain (METHOD.md's MSE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/decoder", help="writes OUT/<method>/metrics.json, OUT/teacher/, OUT/speed.json")
    p.add_argument("--resume", action="store_true", help="resume interrupted training from OUT/<method>/checkpoints")
    p.add_argument("--quiet", action="store_true")
    return p


def settings_from(args) -> GenerationSettings:
    common = dict(max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens, batch_size=8)
    if args.decoding == "greedy":
        return GenerationSettings.greedy(**common)
    return GenerationSettings(do_sample=True, seeds=tuple(args.seeds), **common)


def run(args) -> dict[str, Any]:
    from makd.tasks.data import load_instructions

    started = time.time()
    settings = settings_from(args)
    out = Path(args.out)
    teacher, tok = load_model(args.teacher, head="lm")
    n = num_layers(teacher.config)
    if args.student != "svd" and not (args.student.startswith("layers:") and args.student[7:].isdigit()
                                      and 1 <= int(args.student[7:]) <= n):
        raise SystemExit(f"error: --student {args.student}: use 'svd' or layers:K with K in 1..{n}")
    if args.student == "svd":                           # size checks before any long work
        try:
            fz.plan_ranks(teacher, layer_ratio=args.layer_ratio)
        except ValueError as err:
            raise SystemExit(f"error: --layer-ratio {args.layer_ratio}: {err}") from None
    train = load_instructions(args.train_set, args.data_dir, seed=args.seed).train
    if train is None:
        raise SystemExit(f"error: {args.train_set} has no train split; use chatterbot or dolly")
    rows = list(train.select(range(min(len(train), args.max_train))))
    ev = load_instructions(args.eval_set, args.data_dir, seed=args.seed)
    test = ev.test.select(range(min(len(ev.test), args.max_eval)))
    prompts = [prompt_text(tok, r["instruction"], r.get("input", ""), args.template) for r in test]
    results: dict[str, Any] = {}
    reference_note = "human references"
    references = [r["output"] for r in test]
    t_eval = evaluate_rouge(teacher, tok, prompts, references, settings) if ev.reference_kind != "none" else None
    if ev.reference_kind == "none":                      # Vicuna-80: no references -> the teacher's own answers
        references = generate(teacher, tok, prompts, GenerationSettings.greedy(
            max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens), seed=0)["texts"]
        reference_note = "NO human references: the teacher's greedy answers are the references (not comparable with the paper)"
        t_eval = evaluate_rouge(teacher, tok, prompts, references, settings)
    common = {"eval_set": ev.name, "eval_source": ev.source, "reference": reference_note, "train_set": args.train_set,
              "train_is_proxy": args.train_set == "chatterbot", "template": template_name(tok, args.template),
              "generation": settings.as_dict(), "notes": ev.notes}
    t_params = fz.count_parameters(teacher)
    record = make_record(vars(args), seed=args.seed, data_files={**ev.files}, started=started)
    write_json(out / "teacher" / "metrics.json", {**common, "method": "teacher", "model": args.teacher,
                                                  "params": t_params, "eval": t_eval, "record": record})
    speed = {"teacher": {"tokens_per_s": t_eval["tokens_per_s"], "params": t_params}}
    for method in args.methods:
        torch.manual_seed(args.seed)
        student = make_student(teacher, args.student, layer_ratio=args.layer_ratio)
        check_pair(teacher, tok, student, tok)
        info = train_student(method, teacher, student, tok, rows, out=out / method, seed=args.seed,
                             epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                             max_length=args.max_length, max_prompt_tokens=args.max_prompt_tokens,
                             template=args.template, resume=args.resume, quiet=args.quiet, mse=args.mse,
                             seqkd_settings=GenerationSettings.greedy(max_prompt_tokens=args.max_prompt_tokens,
                                                                      max_new_tokens=args.max_new_tokens))
        s_eval = evaluate_rouge(student, tok, prompts, references, settings)
        s_params = fz.count_parameters(student)
        results[method] = {**common, "method": method, "student": args.student, "params": s_params,
                           "teacher_params": t_params, "eval": s_eval, "train": info,
                           "record": make_record(vars(args), seed=args.seed, data_files={**ev.files}, started=started)}
        write_json(out / method / "metrics.json", results[method])
        speed[method] = {"tokens_per_s": s_eval["tokens_per_s"], "params": s_params}
        log.info("%s: Rouge-L %.2f (teacher %.2f)", method, s_eval["rougeL"], t_eval["rougeL"])
    write_json(out / "speed.json", {"what": f"generation tokens/s, batch {settings.batch_size}, prompts ≤ "
                                    f"{settings.max_prompt_tokens} tokens, ≤ {settings.max_new_tokens} new tokens, "
                                    f"{len(prompts)} {ev.name} prompts, CPU threads {torch.get_num_threads()}",
                                    "models": speed})
    return {"teacher": t_eval, **{m: r["eval"] for m, r in results.items()}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = "python -m makd decoder " + shlex.join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args)
    for name, ev in res.items():
        print(f"{name:8s} Rouge-L {ev['rougeL']:.2f} ± {ev['rougeL_std']:.2f}  ({ev['tokens_per_s']:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
