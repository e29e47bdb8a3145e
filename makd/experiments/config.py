"""One typed configuration: frozen dataclasses validated on construction, from which the command lines are built.

Light on purpose (standard library only): ``python -m makd distill --weighting asvd`` is refused by
:mod:`makd.cli` before torch or transformers are imported, and ``distill(weighting="asvd")`` before any model
or data is loaded. The shared parts, one per argument group, are combined by inheritance::

    SizeConfig       layer_ratio | budget | rank, factorize_embeddings      (student size)
    ObjectiveConfig  objective, weights (JSON accepted), split, temperature, alpha, teacher_forcing, mse
    TrainConfig      epochs, max_steps, lr, batch_size, grad_accum, seed, save/logging steps, resume, report_to, quiet
    TeacherConfig    teacher_epochs, teacher_lr, force_teacher, retrain_teacher
    OutputConfig     save_student (--no-save-student), out
    DistillConfig    the GLUE command: the above + task, data, student kind, weighting, ...

(``SquadConfig`` lives in :mod:`makd.experiments.squad_config`.) A field is declared with :func:`option`
(default, help, choices, range); :class:`Config` checks every field's type, choice and range, then the
cross-field rules of each part (``check``). :func:`parse_config` builds the argparse command line from the fields
(one group per part; a wrong value is an argparse ``error:``, exit 2); :func:`config_from_kwargs` is the Python
entry (an unknown name is a TypeError listing the valid ones, a wrong value a ValueError).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from makd.experiments.options import Config, coerce_numbers, config_from_kwargs, option, parse_config  # noqa: F401

# Names the choices need, kept here so that validating a configuration imports nothing heavy;
# tests/test_config.py checks they equal the heavy modules' own lists.
PRESETS = ("hierarchical", "hierarchical-inverted", "all", "layer-only", "model-only", "tinybert", "minilm",
           "finetune")                                              # makd.core.objective.PRESETS
OBJECTIVES = PRESETS + ("none",)                                    # "none": the SVD student without training
ASPECTS = ("mha", "ffn", "attn", "hidn", "pred", "vr")              # core.objective.ASPECTS + EXTRA_ASPECTS
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte")   # makd.tasks.glue.GLUE_TASKS
TASKS = GLUE_TASKS + ("rt-polarity",)                               # makd.tasks.glue: GLUE_TASKS + PROXY_TASKS
TEACHER_ALIASES = ("minilm-l6", "minilm-l3", "smollm2-135m-instruct", "tiny-bert", "tiny-gpt2", "tiny-llama")
SIZE_KEYS = ("layer_ratio", "budget", "rank")
WEIGHTINGS = ("none", "activation", "whiten", "whiten-sequential", "whiten-compensated")  # makd.core.factorize.WEIGHTINGS
RANK_RULES = ("uniform", "auto")                                    # makd.core.factorize.RANK_RULES


@dataclass(frozen=True)
class SizeConfig(Config):
    """Student size: exactly one of layer_ratio, budget, rank (none given: layer_ratio 0.5)."""
    GROUP = "student size (exactly one; default --layer-ratio 0.5)"
    layer_ratio: float | None = option(None, "fraction of the dense matrices' parameters the factors keep "
                                       "(0.75 0.5 0.25 0.1)", low=0.0, high=1.0, low_open=True)
    budget: int | float | None = option(None, "total student parameters: an int count (17390594), or a fraction "
                                        "in (0, 1] of the teacher's total, embeddings included (0.5)")
    rank: int | float | None = option(None, "one rank for every matrix: an int >= 1 (64), or a fraction in (0, 1] "
                                      "of each matrix's full rank (0.25)")
    factorize_embeddings: bool = option(False, "also factorise the word embedding (for budgets below the "
                                        "non-factorised floor)")

    def check(self) -> None:
        super().check()
        given = [k for k in SIZE_KEYS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of layer_ratio, budget, rank (--layer-ratio, --budget, --rank), "
                             f"got {given}")
        for key, count in (("budget", "a count of parameters, e.g. 17390594"), ("rank", "e.g. 64")):
            v = getattr(self, key)
            if v is not None and not (0 < v <= 1 if isinstance(v, float) else v >= 1):
                raise ValueError(f"{key} must be an integer >= 1 ({count}) or a fraction in (0, 1], got {v!r}: "
                                 f"a float is a fraction and must be <= 1, an integer count >= 1; give e.g. "
                                 f"--{key} {count.split()[-1]} or --{key} 0.5")

    def size(self) -> dict[str, int | float]:
        """The student size as the factoriser takes it: ``{"budget": 17390594}`` (an int: a count),
        ``{"rank": 0.25}`` (a float: a fraction in (0, 1]); ``{"layer_ratio": 0.5}`` when none is given."""
        return {k: getattr(self, k) for k in SIZE_KEYS if getattr(self, k) is not None} or {"layer_ratio": 0.5}


@dataclass(frozen=True)
class InitConfig(Config):
    """How the factors start from the teacher (:func:`makd.core.factorize.factorize`)."""
    GROUP = "student initialisation"
    weighting: str = option("none", "none (plain truncated SVD), activation (ASVD-style scaling), whiten (SVD-LLM "
                            "whitening on the teacher's inputs: the closed-form optimum of the teacher-forced "
                            "matrix aspect), whiten-sequential (layer by layer on the student's own inputs) or "
                            "whiten-compensated (layer by layer, each matrix fitted to the teacher's output at the "
                            "same tokens: it also corrects the error its input carries); all but none calibrate on "
                            "training examples", choices=WEIGHTINGS)
    ranks: str = option("uniform", "uniform (one parameter fraction per matrix) or auto (the same parameter count "
                        "spread where it removes the most relative truncation error)", choices=RANK_RULES)
    damping: float = option(1e-4, "whitening damping λ, a fraction of the Gram matrix's mean diagonal", low=0.0)

    def check(self) -> None:
        super().check()
        if self.ranks == "auto" and getattr(self, "rank", None) is not None:
            raise ValueError("ranks 'auto' spreads a budget or layer ratio over the matrices: with --rank give "
                             "--ranks uniform, or give --budget / --layer-ratio")

    def init_options(self) -> dict:
        """The keywords of :func:`makd.core.factorize.factorize` this part sets."""
        return {"weighting": self.weighting, "ranks": self.ranks, "damping": self.damping}


@dataclass(frozen=True)
class ObjectiveConfig(Config):
    """The multi-aspect objective (:class:`makd.core.objective.MaKDObjective`)."""
    GROUP = "objective"
    objective: str = option("hierarchical", "preset; 'none' evaluates the SVD student without training, 'finetune' "
                            "trains without a teacher, 'model-only' is logit KD", choices=OBJECTIVES)
    weights: dict | None = option(None, 'per-aspect weights, JSON: {"mha": 1, "attn": 0}', json=True)
    split: int | None = option(None, "shallow/deep layer boundary (default n_layers // 2)", low=0)
    temperature: float = option(2.0, "softmax temperature of the KD terms", low=0.0, low_open=True)
    alpha: float = option(0.5, "weight of KD vs gold CE in the model aspect", low=0.0, high=1.0)
    teacher_forcing: bool = option(False, "matrix terms feed the student matrix the teacher's input")
    mse: str = option("plain", "matrix/hidden-state MSE: plain (METHOD.md) or relative (divided by the teacher's "
                      "energy; the decoder default)", choices=("plain", "relative"))

    def check(self) -> None:
        super().check()
        check_weights(self.weights)


def check_weights(weights: dict | None, name: str = "weights", aspects: tuple[str, ...] = ASPECTS) -> None:
    """Per-aspect weights ({aspect: number >= 0} over ``aspects``, or None for the preset's) or one ValueError
    naming ``name``."""
    if weights is None:
        return
    unknown = sorted(set(weights) - set(aspects))
    if unknown:
        raise ValueError(f"{name}: unknown aspect(s) {unknown}; the aspects are {', '.join(aspects)}: drop "
                         f'{unknown} (e.g. {name}={{"mha": 0, "ffn": 0}})')
    bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"{name}: every weight must be a finite number >= 0, got {bad}")


@dataclass(frozen=True)
class TrainConfig(Config):
    """The student's training (transformers TrainingArguments)."""
    GROUP = "training"
    epochs: float = option(3.0, "training epochs of the student", low=0.0, low_open=True)
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: the epochs decide)", low=-1)
    lr: float = option(1e-4, "learning rate", low=0.0, low_open=True)
    batch_size: int = option(32, "examples per device and step", low=1)
    grad_accum: int = option(1, "gradient accumulation steps", low=1)
    seed: int = option(0, "training seed (data order, subsamples; the teacher's too unless set)", low=0)
    save_steps: int = option(200, "checkpoint every N steps (resume with --resume)", low=1)
    logging_steps: int = option(10, "log the loss terms every N steps", low=1)
    resume: bool = option(False, "resume from the last checkpoint in --out")
    report_to: str = option("tensorboard", "tensorboard (default), none, wandb, ...")
    quiet: bool = option(False, "no progress bars")


@dataclass(frozen=True)
class TeacherConfig(Config):
    """The teacher's task fine-tuning (cached: tasks.teacher)."""
    GROUP = "teacher fine-tuning (cached by teacher, task data, seed and settings)"
    teacher_epochs: float = option(2.0, "epochs of the teacher's fine-tuning", low=0.0, low_open=True)
    teacher_lr: float = option(5e-5, "learning rate of the teacher's fine-tuning", low=0.0, low_open=True)
    force_teacher: bool = option(False, "distil even if the teacher is at chance level")
    retrain_teacher: bool = option(False, "ignore the cached teacher")


@dataclass(frozen=True)
class OutputConfig(Config):
    """Where the run goes."""
    GROUP = "output"
    save_student: bool = option(True, "do not save the trained student to OUT/student (saved by default; load with "
                                "makd.core.checkpoint.load_student)")
    out: str | None = option(None, "run folder (default runs/<command>/<task>-<objective>-<size>-s<seed>)", path=True)


# --------------------------------------------------------------------------------------------- the GLUE command
@dataclass(frozen=True)
class GlueTaskConfig(Config):
    """A GLUE task (or the embedded proxy) and the teacher."""
    GROUP = "task and models"
    task: str = option("rt-polarity", "GLUE task or the embedded proxy rt-polarity (default)", choices=TASKS,
                       group="task and models")
    data_dir: str | None = option(None, "folder with glue/TASK/{train,dev}.tsv (default $MAKD_DATA_DIR; else the hub)",
                                  path=True)
    teacher: str = option("minilm-l6", f"embedded name ({', '.join(TEACHER_ALIASES)}), local folder or hub id",
                          path=True, model=True)
    max_train: int | None = option(None, "subsample the train split (seeded)", low=1)
    max_dev: int | None = option(None, "subsample the dev split (seeded)", low=1)
    max_length: int = option(128, "tokens per example", low=1)


@dataclass(frozen=True)
class DistillConfig(OutputConfig, TeacherConfig, TrainConfig, ObjectiveConfig, InitConfig, SizeConfig, GlueTaskConfig):
    """``python -m makd distill``: teacher fine-tuning, factorisation, distillation, evaluation (one GLUE task)."""
    PROG = "python -m makd distill"
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
    student: str = option("svd", "'svd' (default: the factorised teacher at the size above), 'layers:K' "
                          "(DistilBERT-style dense student: K of the teacher's layers, evenly spaced, copied), or a "
                          "model name/folder sharing the teacher's tokenizer (e.g. minilm-l3); dense students of "
                          "another depth support the presets without matrix/layer aspects", path=True, model=True,
                          group=SizeConfig.GROUP)
    calibration_examples: int = option(64, "training examples calibrating a weighted factorisation (--weighting)",
                                       low=1, group=InitConfig.GROUP)
    group_by_length: bool = option(False, "batch examples of similar length (transformers' LengthGroupedSampler) "
                                   "for the teacher's fine-tuning and the distillation: far less padding, ~1.5-1.9x "
                                   "faster on CPU for short texts; results differ slightly from a run without it",
                                   group=TrainConfig.GROUP)
    eval_steps: int = option(0, "evaluate every N steps (0: at the end only)", low=0, group=TrainConfig.GROUP)
    teacher_seed: int | None = option(None, "seed of the teacher's fine-tuning (default --seed); fix it to vary only "
                                      "the student's training seed across runs (one cached teacher)", low=0,
                                      group=TeacherConfig.GROUP)
    teacher_max_train: int | None = option(None, "subsample the teacher's train split (seeded)", low=1,
                                           group=TeacherConfig.GROUP)

    def check(self) -> None:
        super().check()
        if self.student.startswith("layers:"):
            k = self.student.split(":", 1)[1]
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"student {self.student!r}: K must be an int in 1..(the teacher's layers), "
                                 "e.g. student='layers:3'")
        elif not self.student:
            raise ValueError("student must be 'svd', 'layers:K' or a model name/folder, got ''")

    def teacher_settings(self) -> dict:
        """The settings the cached teacher is keyed by (tasks.teacher.cache_key): unchanged since the first
        grids, ``group_by_length`` only when set so teachers cached without the option keep their keys."""
        return {"epochs": self.teacher_epochs, "lr": self.teacher_lr, "max_train": self.teacher_max_train,
                "max_length": self.max_length, **({"group_by_length": True} if self.group_by_length else {})}


# --------------------------------------------------------------------------------------------- the factorize command
@dataclass(frozen=True)
class FactorizeConfig(InitConfig, SizeConfig):
    """Build a truncated-SVD student of a teacher (every MHA/FFN matrix W -> A B, A = U_r S_r^1/2,
    B = S_r^1/2 V_r^T), print the per-matrix report and totals, optionally save it (makd.core.checkpoint format +
    report.csv/report.json)."""
    GROUP = "student"
    PROG = "python -m makd factorize"
    EPILOG = """examples:
  python -m makd factorize --layer-ratio 0.5
  python -m makd factorize --budget 0.6 --out runs/students/minilm-b0.6
  python -m makd factorize --budget 15000000 --weighting activation
  python -m makd factorize --layer-ratio 0.5 --weighting whiten --ranks auto
  python -m makd factorize --teacher path/to/finetuned-bert --rank 64
  python -m makd factorize --rank 0.25          # a quarter of each matrix's full rank
"""
    teacher: str = option("minilm-l6", "'minilm-l6' (the embedded all-MiniLM-L6-v2), a local folder or a hub id",
                          path=True, model=True)
    calibration_text: str | None = option(None, "text file, one calibration sentence per line (default: 8 built-in "
                                          "sentences)", path=True)
    out: str | None = option(None, "save the student here (makd.core.checkpoint) with report.csv and report.json",
                             path=True)

    def check(self) -> None:
        super().check()
        if all(getattr(self, k) is None for k in SIZE_KEYS):
            raise ValueError("give one of --layer-ratio, --budget, --rank (the student's size)")
        if self.out is not None and Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"out {self.out} is an existing file: give a folder (new, or one to add the student "
                             "and its report to)")
        if self.calibration_text is not None:
            path = Path(self.calibration_text)
            if not path.is_file():
                raise ValueError(f"calibration_text {path} is not a file: give a text file, one sentence per line")
            if not any(line.strip() for line in path.read_text().splitlines()):
                raise ValueError(f"calibration_text {path} has no non-empty line: give a text file with one "
                                 "calibration sentence per line")
