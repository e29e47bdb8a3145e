"""The typed configuration of ``python -m makd squad``: the shared parts of :mod:`makd.experiments.config`
(student size, objective, training, teacher, output) plus the SQuAD data, windows and evaluation options.

Light (standard library only), like :mod:`makd.experiments.config`: a wrong value is refused before any model
or data is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from makd.experiments.config import ObjectiveConfig, OutputConfig, SizeConfig, TeacherConfig, TrainConfig
from makd.experiments.options import Config, option

VERSIONS = ("1.1", "2.0")
SOURCES = ("auto", "local", "hub")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SquadDataConfig(Config):
    """SQuAD data, the sliding windows and the answer post-processing."""
    GROUP = "data and teacher"
    version: str = option("1.1", "SQuAD version", choices=VERSIONS)
    data_dir: str | None = option(None, "folder with squad/dev-v{1.1,2.0}.json (default $MAKD_DATA_DIR; else the hub "
                                  "rajpurkar/squad[_v2])", path=True)
    source: str = option("auto", "where the data comes from", choices=SOURCES)
    split_articles: tuple[int, int] | None = option(
        None, "split the dev set by article into train / held-out (default when no train file is available: "
        "38 10 for v1.1, 28 7 for v2.0; stated in every result)", low=1, metavar=("N_TRAIN", "N_HELDOUT"))
    teacher: str = option("minilm-l6", "embedded name (minilm-l6), local folder or hub id; an encoder with a QA "
                          "head or none", path=True, model=True)
    max_length: int = option(384, "tokens per window (question + context slice)", low=8)
    stride: int = option(128, "overlap between consecutive windows (tokens), smaller than max_length", low=0)
    max_train_features: int | None = option(None, "subsample the student's train windows (seeded)", low=1)
    max_eval: int | None = option(None, "subsample the held-out questions (seeded)", low=1)
    n_best: int = option(20, "span candidates per window", low=1)
    max_answer_length: int = option(30, "tokens", low=1)
    null_threshold: float = option(0.0, "v2.0: answer '' when null − best span > this")
    eval_batch_size: int = option(64, "windows per prediction batch", low=1)
    device: str = option("auto", "auto: CUDA when available", choices=DEVICES)

    def check(self) -> None:
        super().check()
        if self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be smaller than max_length ({self.max_length}): "
                             "consecutive windows overlap by stride tokens")


@dataclass(frozen=True)
class SquadTeacherConfig(TeacherConfig):
    """The QA teacher's fine-tuning (cached by teacher, data, article split, seed and settings)."""
    teacher_only: bool = option(False, "fine-tune / evaluate the teacher and stop")
    teacher_batch_size: int = option(16, "batch size of the teacher's fine-tuning", low=1)
    teacher_max_train_features: int | None = option(None, "subsample the teacher's train windows", low=1)


@dataclass(frozen=True)
class SquadConfig(OutputConfig, SquadTeacherConfig, TrainConfig, ObjectiveConfig, SizeConfig, SquadDataConfig):
    """``python -m makd squad``: extractive QA (SQuAD v1.1 / v2.0), teacher fine-tuning, distillation, EM/F1."""
    PROG = "python -m makd squad"
    EPILOG = """examples:
  # offline: SQuAD v1.1 dev split by article (38 train / 10 held out), MiniLM-L6 teacher, half the layer parameters
  python -m makd squad --version 1.1 --data-dir ../shared/data --layer-ratio 0.5 --objective hierarchical
  # the teacher alone / the SVD student without training, at the same budget
  python -m makd squad --data-dir ../shared/data --teacher-only ; ... --objective none
  # SQuAD v2.0 (no-answer threshold on null − best span score), online with the official train set
  python -m makd squad --version 2.0 --source hub --teacher bert-base-uncased --budget 0.25
"""
    epochs: float = option(2.0, "training epochs of the student", low=0.0, low_open=True)
    batch_size: int = option(16, "windows per device and step", low=1)

    def teacher_settings(self) -> dict:
        """What the cached QA teacher is keyed by (with the data files and the article split)."""
        return {"epochs": self.teacher_epochs, "lr": self.teacher_lr, "batch_size": self.teacher_batch_size,
                "max_length": self.max_length, "stride": self.stride,
                "max_train_features": self.teacher_max_train_features}

    def eval_settings(self) -> dict:
        """The answer post-processing and prediction batch of every evaluation."""
        return {"n_best": self.n_best, "max_answer_length": self.max_answer_length,
                "null_threshold": self.null_threshold, "batch_size": self.eval_batch_size}
