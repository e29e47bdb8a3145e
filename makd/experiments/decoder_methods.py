"""The four ways to train a causal-LM student: SFT, KD, SeqKD and MaKD, through one trainer and one objective.

Every method runs through the same :class:`makd.core.trainer.DistillTrainer` and :class:`makd.core.objective.MaKDObjective`
(``causal_lm=True``; loss only on response tokens, labels −100 on the prompt):

* ``sft``   — the student fine-tuned on the gold responses, no teacher (preset ``finetune``);
* ``kd``    — token-level forward KL(teacher ‖ student) mixed with the LM loss 0.5/0.5 (MiniLLM's KD);
* ``seqkd`` — SFT on the TEACHER's generated responses (generated once, cached on disk and reused);
* ``makd``  — the hierarchical objective: matrix aspects on the shallow half, layer aspects on the deep
  half (causal attention, response tokens only), and the model aspect (= KD) — a RECONSTRUCTED default.

Students: the factorised teacher at a stated layer ratio / budget / rank (``svd``) or a dense copy of K teacher
layers (``layers:K``, DistilBERT-style). SeqKD's teacher generations decode like the evaluation, first seed
only (:func:`seqkd_decoding`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch

from makd.assets.files import write_json
from makd.assets.models import vocab_check
from makd.assets.paths import cache_dir
from makd.core import factorize as fz
from makd.core.families import copy_layers, evenly_spaced, num_layers
from makd.core.objective import MaKDObjective
from makd.core.trainer import DistillTrainer, loss_history
from makd.tasks.generate import GenerationSettings, generate
from makd.tasks.prompts import CausalCollator, prompt_text, sft_features
from makd.tasks.teacher import training_args

log = logging.getLogger("makd.decoder")
METHODS = ("sft", "kd", "seqkd", "makd")
RESPONSES = ("gold", "teacher")   # what KD and MaKD train on (decoder_config.DecoderConfig.kd_responses)
CONTROLS = ("untrained", "init")   # not trained: the student as prepared (factorised, layer-local stage if any) /
                                   # as factorised, before the layer-local stage


def make_student(teacher, kind: str = "svd", **size: Any):
    """``svd`` (factorised teacher; size = layer_ratio / budget / rank, and factorize's other keywords:
    weighting, calibration, ranks, damping) or ``layers:K`` (dense copy)."""
    if kind == "svd":
        if not any(k in size for k in ("layer_ratio", "budget", "rank")):
            size = {**size, "layer_ratio": 0.5}
        return fz.factorize(teacher, **size)
    if kind.startswith("layers:"):
        n = num_layers(teacher.config)
        k = kind.split(":", 1)[1]
        if not k.isdigit():
            raise ValueError(f"student {kind!r}: use layers:K with K in 1..{n}")
        return copy_layers(teacher, evenly_spaced(n, int(k)))
    raise ValueError(f"unknown student kind {kind!r}: 'svd' or 'layers:K'")


# MaKD's matrix/hidden MSE for causal LMs (our choice, not the paper's; see objective_for)
DEFAULT_MSE = "relative"


def calibration_batches(rows: list[dict], tokenizer, n: int, *, batch_size: int, max_length: int,
                        max_prompt_tokens: int, template: str = "auto") -> list[dict]:
    """The first ``n`` training examples, tokenised like SFT, as padded batches of (input_ids, attention_mask):
    what a weighted factorisation calibrates on and the layer-local stage trains on."""
    features, _ = sft_features(rows[:n], tokenizer, max_length=max_length, max_prompt_tokens=max_prompt_tokens,
                               template=template)
    collate = CausalCollator(tokenizer.pad_token_id)
    batches = [collate([features[j] for j in range(i, min(i + batch_size, len(features)))])
               for i in range(0, len(features), batch_size)]
    if not batches:
        raise ValueError("no calibration example left after tokenising: give more --calibration-examples")
    return [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches]


def objective_for(method: str, n_layers: int, *, mse: str = DEFAULT_MSE, weights: dict | None = None,
                  **kw: Any) -> MaKDObjective:
    """The objective of ``method``; MaKD's matrix/hidden MSEs are ``relative`` by default (normalised by the
    teacher's energy: SmolLM2's hidden states reach |h| ~ 10³ and the plain MSE, ~8,000 at the first log,
    drowned the model term — our choice, not the paper's; ``mse="plain"`` restores it). ``weights``: MaKD's
    per-aspect weights (``MaKDObjective(weights=...)``; None: every aspect 1); the other methods ignore them."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in ("sft", "seqkd"):
        return MaKDObjective(n_layers, "finetune", causal_lm=True)
    if method == "kd":
        return MaKDObjective(n_layers, "model-only", causal_lm=True, lm_weight=0.5, **kw)
    return MaKDObjective(n_layers, "hierarchical", causal_lm=True, lm_weight=0.5, response_only_layers=True,
                         mse=mse, weights=weights, **kw)


def check_pair(teacher, teacher_tok, student, student_tok) -> int:
    """Same tokenizer and the same (padded) vocabulary rows, else one ValueError saying what to do."""
    n = vocab_check(teacher_tok, student_tok, teacher, student)
    t_out, s_out = teacher.get_output_embeddings(), student.get_output_embeddings()
    if t_out is not None and s_out is not None and t_out.weight.shape[0] != s_out.weight.shape[0]:
        raise ValueError(f"output vocabularies differ (teacher {t_out.weight.shape[0]} rows, student "
                         f"{s_out.weight.shape[0]}): resize with model.resize_token_embeddings(n)")
    return n


def seqkd_decoding(settings: GenerationSettings) -> GenerationSettings:
    """The decoding of SeqKD's teacher generations: the evaluation's own setting, first seed only.

    Decided once, here, for the command and the notebook alike (the command used to decode them greedily
    whatever ``--decoding`` said, the notebook with the evaluation's setting). One frozen generation setting
    for everything a run generates: greedy runs train on the teacher's greedy answers (as the committed
    ``results/decoder/seqkd`` run did: the same cache key), MiniLLM-protocol runs on answers sampled from the
    teacher (top-p 1, temperature 1), as MiniLLM's SeqKD baseline does. One seed: SeqKD trains on one target
    per prompt. (Forcing greedy everywhere was rejected: a tiny random smoke teacher decodes greedily to
    whitespace only, leaving no training target.)"""
    return replace(settings, seeds=settings.seeds[:1])


# ----------------------------------------------------------------------------------------- SeqKD data
SEQKD_BLOCK = 1024   # prompts per cached block of teacher generations (a set of ≤ 1,024 prompts is one block)


def teacher_responses(teacher, tokenizer, rows, settings: GenerationSettings, *, template: str = "auto",
                      cache: Path | None = None) -> list[dict]:
    """``rows`` with ``output`` replaced by the teacher's generation; cached by teacher, prompts and settings.
    At least one new token per prompt (an empty response would leave the example without a training token).

    Generated and cached in consecutive blocks of :data:`SEQKD_BLOCK` prompts (in the rows' order; each block
    batched by length on its own), so a longer train set reuses the blocks of a shorter one and only generates
    its new blocks — with exactly the answers a fresh machine generating the whole set gets. A set of at most one
    block has the key it always had (the caches written before the blocks stay valid)."""
    settings = replace(settings, min_new_tokens=max(1, settings.min_new_tokens))
    prompts = [prompt_text(tokenizer, r["instruction"], r.get("input", ""), template) for r in rows]
    folder = cache or cache_dir() / "seqkd"
    keyed = {"teacher": getattr(teacher.config, "_name_or_path", ""),
             "params": sum(p.numel() for p in teacher.parameters()), "settings": settings.as_dict()}
    texts: list[str] = []
    blocks = range(0, len(prompts), SEQKD_BLOCK)
    for n, start in enumerate(blocks, 1):
        block = prompts[start:start + SEQKD_BLOCK]
        key = hashlib.sha256(json.dumps({**keyed, "prompts": block}, sort_keys=True).encode()).hexdigest()[:16]
        path = folder / f"{key}.json"
        cached = _cached_texts(path)
        if cached is not None and len(cached) == len(block):
            log.info("SeqKD: reusing %d cached teacher generations %s", len(block), path)
        else:                                                   # absent, or a file that does not match: regenerate
            log.info("SeqKD: generating the teacher's answers to %d prompts (block %d of %d) -> %s",
                     len(block), n, len(blocks), path)
            cached = generate(teacher, tokenizer, block, settings, seed=settings.seeds[0])["texts"]
            write_json(path, {"texts": cached, "settings": settings.as_dict()})
        texts += cached
    return [{**r, "output": t} for r, t in zip(rows, texts)]


def _cached_texts(path: Path) -> list[str] | None:
    """The texts of one cached block, or None when the file is absent or unreadable (then it is regenerated)."""
    try:
        texts = json.loads(path.read_text())["texts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return texts if isinstance(texts, list) and all(isinstance(t, str) for t in texts) else None


# ------------------------------------------------------------------------------------------ training
def train_student(method: str, teacher, student, tokenizer, rows, *, out: Path, seed: int = 0,
                  epochs: float = 1.0, max_steps: int = -1, lr: float = 5e-5, batch_size: int = 8,
                  max_length: int = 512, max_prompt_tokens: int = 256, template: str = "auto",
                  seqkd_settings: GenerationSettings | None = None, logging_steps: int = 10,
                  save_steps: int = 200, resume: bool = False, report_to: str = "none",
                  quiet: bool = False, mse: str = DEFAULT_MSE, grad_accum: int = 1,
                  callbacks: list | None = None, bf16: bool = False,
                  lm_windows: torch.Tensor | None = None, responses: str = "gold",
                  weights: dict | None = None) -> dict[str, Any]:
    """Train ``student`` in place with ``method``; {steps, runtime_s, history, cuts}. ``seqkd_settings``: how
    SeqKD's teacher responses are generated (default greedy, 64 new tokens; see :func:`seqkd_decoding`).
    A checkpoint every ``save_steps`` steps in ``out/checkpoints`` (the last one kept); ``resume``: continue from it
    (the same weights as an uninterrupted run). ``callbacks``: extra transformers ``TrainerCallback`` objects.
    ``bf16``: mixed precision (``TrainingArguments(bf16=True)``: the Trainer's accelerator runs the student's and
    the prepared teacher's forward under bfloat16 autocast; parameters, optimizer and the loss terms, which upcast
    half-precision inputs, stay float32). ``lm_windows`` (N, L) token ids: plain text added to the training
    examples with a loss on every token (:func:`with_lm_windows`; SeqKD's teacher answers replace the pairs'
    responses only); with them the batches group similar lengths (transformers' LengthGroupedSampler, seeded):
    a batch of pairs is not padded to the windows' length. ``responses``: what KD and MaKD train on — ``gold``
    (the rows' own answers) or ``teacher`` (the teacher's generated answers, SeqKD's cached data: Kim & Rush
    2016's Seq-KD + Word-KD); SFT and SeqKD ignore it. ``weights``: MaKD's per-aspect weights
    (:func:`objective_for`)."""
    if responses not in RESPONSES:
        raise ValueError(f"responses must be one of {RESPONSES}, got {responses!r}")
    on_teacher = method == "seqkd" or (responses == "teacher" and method in ("kd", "makd"))
    if on_teacher:
        rows = teacher_responses(teacher, tokenizer, rows, seqkd_settings or GenerationSettings.greedy(
            max_new_tokens=64), template=template)
    data, cuts = sft_features(rows, tokenizer, max_length=max_length, max_prompt_tokens=max_prompt_tokens,
                              template=template)
    pairs = len(data)
    data = with_lm_windows(data, lm_windows)
    grouped = len(data) > pairs     # text windows are long: batch similar lengths (not every pair padded to them)
    objective = objective_for(method, num_layers(student.config), mse=mse, weights=weights)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    args = training_args(out / "checkpoints", seed=seed, epochs=epochs, lr=lr, batch_size=batch_size,
                         max_steps=max_steps, report_to=report_to, logging_steps=logging_steps,
                         save_strategy="steps", save_steps=save_steps, save_total_limit=1,
                         remove_unused_columns=False, disable_tqdm=quiet or None, warmup_steps=0.05,
                         gradient_accumulation_steps=grad_accum, bf16=bf16, group_by_length=grouped)
    trainer = DistillTrainer(model=student, args=args, teacher=teacher if objective.needs_teacher else None,
                             objective=objective, train_dataset=data,
                             data_collator=CausalCollator(tokenizer.pad_token_id), callbacks=callbacks)
    resume_from = resume and any((out / "checkpoints").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume_from else None)
    student.eval()
    return {"steps": trainer.state.global_step, "runtime_s": round(result.metrics["train_runtime"], 1),
            "history": loss_history(trainer), "examples": len(data), "pairs": pairs, "lm_windows": len(data) - pairs,
            "group_by_length": grouped, "cuts": cuts, "resumed": bool(resume_from),
            "responses": "teacher" if on_teacher else "gold"}


def with_lm_windows(data: datasets.Dataset, windows: torch.Tensor | None) -> datasets.Dataset:
    """The SFT ``data`` (input_ids, labels with −100 on the prompt) followed by one example per row of
    ``windows`` (N, L) token ids, labelled on every token (no prompt): language-model text. The Trainer shuffles
    the whole set with the training seed."""
    if windows is None or len(windows) == 0:
        return data
    if windows.dim() != 2:
        raise ValueError(f"lm_windows must be (N, L) token ids, got shape {tuple(windows.shape)}")
    rows = windows.tolist()
    text = datasets.Dataset.from_list([{"input_ids": r, "labels": r} for r in rows])
    return datasets.concatenate_datasets([data, text.cast(data.features)])

