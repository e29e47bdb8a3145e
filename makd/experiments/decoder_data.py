"""What a decoder comparison is trained and scored on: instruction rows, evaluation prompts and references (plus
further evaluation sets), the response cross-entropy batch and the held-out Wikipedia windows, and the one frozen
generation setting (:mod:`makd.experiments.decoder` runs the comparison)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from makd.assets.paths import data_dir as find_data_dir
from makd.experiments.decoder_config import NO_ANSWERS, TRAIN_SETS, DecoderConfig
from makd.experiments.decoder_methods import seqkd_decoding, teacher_responses
from makd.tasks.generate import GenerationSettings, generate
from makd.tasks.instructions import load_instructions
from makd.tasks.prompts import CausalCollator, prompt_text, sft_features
from makd.tasks.wiki import heldout_windows, train_windows


@dataclass
class EvalSet:
    """Templated prompts of one evaluation set and one reference answer per prompt."""
    name: str
    source: str
    prompts: list[str]
    references: list[str]
    reference_kind: str              # "human" or "teacher answers (...)": Vicuna has no references
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class DecoderData:
    """What every model of a comparison is trained and scored on."""
    rows: list[dict]                 # training examples {instruction, input, output}
    prompts: list[str]               # evaluation prompts, templated
    references: list[str]            # one reference answer per prompt
    reference_kind: str              # "human" or "teacher answers (...)": Vicuna has no references
    eval_set: str
    eval_source: str
    train_set: str
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, EvalSet] = field(default_factory=dict)   # further evaluation sets (``extra_eval``)
    calibration_rows: list[dict] | None = None   # rows calibrating the student (None: ``rows``)

    @property
    def calibration(self) -> list[dict]:
        """The rows that calibrate the factorisation and feed the layer-local stage."""
        return self.rows if self.calibration_rows is None else self.calibration_rows


def generation_settings(cfg: DecoderConfig) -> GenerationSettings:
    """The one frozen generation setting of the evaluation (greedy, or sampling with the config's seeds)."""
    common = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_new_tokens=cfg.max_new_tokens,
                  batch_size=cfg.gen_batch_size)
    if cfg.decoding == "greedy":
        return GenerationSettings.greedy(**common)
    return GenerationSettings(do_sample=True, seeds=tuple(cfg.seeds), **common)


def resolve_eval_set(eval_set: str, data_dir: str | None) -> str:
    """``auto``: Self-Instruct when the data folder holds it, else the embedded ChatterBot test split."""
    if eval_set != "auto":
        return eval_set
    root = find_data_dir(data_dir)
    return "selfinst" if root and (Path(root) / "instruct" / "selfinst-252.jsonl").is_file() else "chatterbot"


def load_eval_set(cfg: DecoderConfig, name: str, teacher, tokenizer) -> EvalSet:
    """The first ``cfg.max_eval`` test prompts of ``name``, templated, with their references (the teacher's greedy
    answers where the set has none: Vicuna — never comparable with the paper's numbers)."""
    ev = load_instructions(name, cfg.data_dir, seed=cfg.seed)
    test = ev.test.select(range(min(len(ev.test), cfg.max_eval)))
    prompts = [prompt_text(tokenizer, r["instruction"], r.get("input", ""), cfg.template) for r in test]
    references, kind = [r["output"] for r in test], "human"
    if ev.reference_kind == "none":
        settings = generation_settings(cfg)
        references = generate(teacher, tokenizer, prompts, GenerationSettings.greedy(
            max_prompt_tokens=settings.max_prompt_tokens, max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size), seed=0)["texts"]
        kind = "teacher answers (not comparable with the paper)"
    return EvalSet(ev.name, ev.source, prompts, references, kind, dict(ev.files), list(ev.notes))


def train_rows(cfg: DecoderConfig, name: str, limit: int, teacher, tokenizer) -> tuple[list[dict], list[str],
                                                                                   dict[str, str]]:
    """The first ``limit`` training rows of the set ``name`` (seeded split), with the notes and files of the set.
    A set without answers (:data:`NO_ANSWERS`) gets the teacher's generated answers (SeqKD's cached generations,
    :func:`makd.experiments.decoder_methods.teacher_responses`), so calibration, the layer-local stage and the
    response cross-entropy see answers: the teacher's."""
    ins = load_instructions(name, cfg.data_dir, seed=cfg.seed)
    if ins.train is None:
        raise ValueError(f"{name} has no train split; use one of {', '.join(TRAIN_SETS)}")
    rows, notes = list(ins.train.select(range(min(len(ins.train), limit)))), []
    if name in NO_ANSWERS:
        rows = teacher_responses(teacher, tokenizer, rows, seqkd_decoding(generation_settings(cfg)),
                                 template=cfg.template)
        notes = [*ins.notes, f"{name}: the teacher's generated answers as the training answers (SeqKD's data), "
                 "also in calibration, the layer-local stage and the response cross-entropy"]
    return rows, notes, dict(ins.files)


def load_data(cfg: DecoderConfig, teacher, tokenizer) -> DecoderData:
    """Training rows (:func:`train_rows`; those of ``cfg.mix_train_set`` appended after the train set's), the
    calibration rows (the train set's own, or those of ``cfg.calibration_set`` when it is another set), the
    evaluation set's templated prompts and references, and the ``extra_eval`` sets."""
    rows, notes, files = train_rows(cfg, cfg.train_set, cfg.max_train, teacher, tokenizer)
    calibration, train_set = rows, cfg.train_set
    if cfg.mix_train_set is not None:                          # appended: rows[:n] stay the train set's own
        mixed, more, mix_files = train_rows(cfg, cfg.mix_train_set, cfg.max_train, teacher, tokenizer)
        notes += [*more, f"training rows: the first {len(rows)} of {cfg.train_set} and the first {len(mixed)} of "
                  f"{cfg.mix_train_set}, shuffled together by the Trainer"]
        rows, train_set = rows + mixed, f"{cfg.train_set}+{cfg.mix_train_set}"
        files.update(mix_files)
    if cfg.calibration_set not in (None, cfg.train_set):
        calibration, more, cal_files = train_rows(cfg, cfg.calibration_set, cfg.calibration_examples, teacher,
                                                  tokenizer)
        notes += [*more, f"calibration and the layer-local stage: the first {cfg.calibration_examples} rows of "
                  f"{cfg.calibration_set}, not of the train set {cfg.train_set}"]
        files.update(cal_files)
    main = load_eval_set(cfg, resolve_eval_set(cfg.eval_set, cfg.data_dir), teacher, tokenizer)
    extra = {name: load_eval_set(cfg, name, teacher, tokenizer) for name in cfg.extra_eval if name != main.name}
    files = {**main.files, **files, **{k: v for e in extra.values() for k, v in e.files.items()}}
    return DecoderData(rows, main.prompts, main.references, main.reference_kind, main.name, main.source,
                       train_set, files, list(main.notes) + notes, extra, calibration)


def ce_batch(cfg: DecoderConfig, tokenizer, rows: list[dict], device) -> dict[str, torch.Tensor]:
    """The first ``cfg.ce_examples`` training examples, tokenised like training, as one padded batch."""
    features, _ = sft_features(rows[:cfg.ce_examples], tokenizer, max_length=cfg.max_length,
                               max_prompt_tokens=cfg.max_prompt_tokens, template=cfg.template)
    batch = CausalCollator(tokenizer.pad_token_id)([features[i] for i in range(len(features))])
    return {k: v.to(device) for k, v in batch.items()}


def wiki_heldout(cfg: DecoderConfig, tokenizer) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """``cfg.wiki_windows`` evenly spaced windows of ``cfg.max_length`` tokens of the held-out Wikipedia articles and
    the description of the set (articles, titles, windows, file sha256); ``(None, None)`` when ``wiki_windows`` is 0."""
    if not cfg.wiki_windows:
        return None, None
    return heldout_windows(tokenizer, cfg.wiki_windows, cfg.max_length)


def wiki_train(cfg: DecoderConfig, tokenizer) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """``cfg.wiki_train_windows`` evenly spaced windows of ``cfg.max_length`` tokens of the TRAIN Wikipedia articles
    (training text beside the instruction pairs) and the description of the set; ``(None, None)`` when 0."""
    if not cfg.wiki_train_windows:
        return None, None
    return train_windows(tokenizer, cfg.wiki_train_windows, cfg.max_length)
