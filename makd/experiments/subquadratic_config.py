"""The typed configuration of ``python -m makd subquadratic``: a Llama teacher distilled into a subquadratic student
(arXiv 2504.14366) through three stages, each with its own token budget, learning rate and schedule.

Light (standard library only), like :mod:`makd.experiments.decoder_config`: what the command line alone shows —
an unknown mixer, every stage budget zero, an embedded teacher that is not a Llama, a block length above an
embedded teacher's positions, a text folder without ``.txt`` files — is refused by :meth:`SubquadraticConfig.check`
before torch or a model is loaded. The names below are kept equal to the heavy modules' own lists by
tests/test_subquadratic_stages.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from makd.assets.paths import data_dir as find_data_dir
from makd.experiments.options import Config, option, parse_config

# makd.students.mixers.registry.NAMES, kept here so that validating imports nothing heavy
MIXERS = ("deltanet", "gated_deltanet", "gla", "linear", "mamba2", "metala", "mlstm", "retnet", "softmax")
INITS = ("qkv", "random")                                     # makd.students.qkv.INITS
STAGES = ("mixing", "hidden", "kd")                           # makd.students.stages.STAGES
SCHEDULES = ("cosine", "constant")                            # makd.students.stage_loop.SCHEDULES
HIDDEN_KINDS = ("l2", "mse")                                  # makd.core.mixing_losses.HIDDEN_KINDS
KL_REDUCTIONS = ("mean", "sum")                               # makd.core.mixing_losses.KL_REDUCTIONS
HIDDEN_PARAMS = ("mixer", "block")                            # makd.students.stages.HIDDEN_PARAMS
ZERO_SHOT = ("rt-polarity", "sst2", "rte", "mrpc", "qnli")
NOT_LLAMA = ("tiny-bert", "tiny-gpt2", "minilm-l6", "minilm-l3")               # embedded teachers of other kinds
TEACHER_POSITIONS = {"tiny-llama": 128, "smollm2-135m-instruct": 8192}         # their max_position_embeddings


@dataclass(frozen=True)
class StagesConfig(Config):
    """Per stage (mixing = matrix mixing, hidden = hidden-state alignment, kd = end-to-end CE + KL): the token
    budget (0: the stage is off; steps = ceil(tokens / (batch_size · block_length))), the peak learning rate, the
    schedule (cosine decay to 0 or constant) and the warm-up fraction of its steps. Defaults: ours, untuned."""
    GROUP = "stages (each: tokens, lr, schedule, warmup; 0 tokens = off)"
    mixing_tokens: int = option(131_072, "stage 1, matrix mixing: training tokens", low=0)
    mixing_lr: float = option(1e-3, "stage 1 learning rate", low=0.0, low_open=True)
    mixing_schedule: str = option("cosine", "stage 1 schedule", choices=SCHEDULES)
    mixing_warmup: float = option(0.1, "stage 1 warm-up fraction", low=0.0, high=1.0, high_open=True)
    hidden_tokens: int = option(262_144, "stage 2, hidden-state alignment: training tokens", low=0)
    hidden_lr: float = option(1e-3, "stage 2 learning rate", low=0.0, low_open=True)
    hidden_schedule: str = option("cosine", "stage 2 schedule", choices=SCHEDULES)
    hidden_warmup: float = option(0.1, "stage 2 warm-up fraction", low=0.0, high=1.0, high_open=True)
    kd_tokens: int = option(262_144, "stage 3, end-to-end KD: training tokens", low=0)
    kd_lr: float = option(3e-4, "stage 3 learning rate", low=0.0, low_open=True)
    kd_schedule: str = option("cosine", "stage 3 schedule", choices=SCHEDULES)
    kd_warmup: float = option(0.1, "stage 3 warm-up fraction", low=0.0, high=1.0, high_open=True)
    hidden_loss: str = option("l2", "stage 2 loss: l2 (the study's per-token L2 norm) or mse", choices=HIDDEN_KINDS)
    hidden_params: str = option("mixer", "stage 2 trains the mixers (MLPs and norms stay the teacher's) or whole "
                                "blocks", choices=HIDDEN_PARAMS)
    ce_weight: float = option(1.0, "stage 3 weight of the next-token cross-entropy", low=0.0)
    kl_weight: float = option(1.0, "stage 3 weight of KL(teacher || student)", low=0.0)
    temperature: float = option(1.0, "stage 3 KL temperature (the KL is scaled by its square)", low=0.0,
                                low_open=True)
    kl_reduction: str = option("mean", "stage 3 KL: mean over tokens (ours) or summed over positions and averaged "
                               "over sequences (the study's code)", choices=KL_REDUCTIONS)
    max_grad_norm: float = option(1.0, "gradient-norm clipping of every stage (0: none)", low=0.0)

    def check(self) -> None:
        super().check()
        if not any(getattr(self, f"{s}_tokens") for s in STAGES):
            raise ValueError("every stage budget is zero (--mixing-tokens, --hidden-tokens, --kd-tokens): give at "
                             "least one stage some tokens")
        if self.kd_tokens and not (self.ce_weight or self.kl_weight):
            raise ValueError("stage 3 has tokens but ce_weight and kl_weight are both 0: give one a weight")


@dataclass(frozen=True)
class SubquadraticConfig(StagesConfig):
    """``python -m makd subquadratic``: a Llama teacher distilled into a subquadratic student in three stages."""
    GROUP = "teacher, student and data"
    PROG = "python -m makd subquadratic"
    EPILOG = """examples:
  # seconds: the tiny random Llama, tiny budgets
  python -m makd subquadratic --teacher tiny-llama --mixer gla --block-length 64 --mixing-tokens 2048 \\
      --hidden-tokens 2048 --kd-tokens 2048 --out runs/subq-smoke
  # the embedded SmolLM2-135M teacher on the embedded Wikipedia articles (offline)
  python -m makd subquadratic --mixer mlstm --out runs/subq-mlstm
  # the identity check: softmax attention as the "mixer" (stage 1 and 2 losses are exactly 0)
  python -m makd subquadratic --teacher tiny-llama --mixer softmax --block-length 64 --out runs/subq-identity
"""
    teacher: str = option("smollm2-135m-instruct", "a Llama-family causal LM: embedded name (smollm2-135m-instruct; "
                          "tiny-llama for smoke tests), local folder or hub id", path=True, model=True)
    mixer: str = option("gla", "the student's token mixer (softmax: the teacher's attention, the identity check)",
                        choices=MIXERS)
    init: str = option("qkv", "qkv: the teacher's Q/K/V/O copied into the mixer; random: the mixer's own init",
                       choices=INITS)
    text: str = option("wiki", "training / held-out text, split by document: wiki (embedded Wikipedia articles), "
                       "data (<data_dir>/text/*.txt) or a folder of .txt files (one document per file)", path=True)
    data_dir: str | None = option(None, "data folder (default $MAKD_DATA_DIR): --text data, GLUE zero-shot sets",
                                  path=True)
    block_length: int = option(256, "tokens per packed block (at most the teacher's positions)", low=2)
    batch_size: int = option(8, "blocks per step", low=1)
    seed: int = option(0, "seeds the mixers' new parameters and the batch order", low=0)
    save_every: int = option(50, "checkpoint every N steps of a stage (to resume)", low=1)
    eval_blocks: int = option(64, "held-out blocks the teacher and the student are evaluated on (0: none)", low=0,
                              group="evaluation")
    eval_batch_size: int = option(8, "blocks per evaluation batch", low=1, group="evaluation")
    passkey_contexts: tuple[int, ...] = option((), "pass-key retrieval contexts in tokens (e.g. 256 1024 4096); "
                                               "empty: no probe", low=16, metavar="TOKENS", group="evaluation")
    passkey_depths: tuple[float, ...] = option((0.1, 0.5, 0.9), "depths of the pass key in the context", low=0.0,
                                               high=1.0, metavar="DEPTH", group="evaluation")
    passkey_per_cell: int = option(5, "pass-key trials per context and depth", low=1, group="evaluation")
    zero_shot: tuple[str, ...] = option((), "zero-shot classification sets by label-word likelihood (GLUE ones "
                                        "from the data folder)", choices=ZERO_SHOT, metavar="SET", group="evaluation")
    zero_shot_examples: int = option(200, "examples per zero-shot set", low=1, group="evaluation")
    save_student: bool = option(True, "do not save the student (saved by default into OUT/student with "
                                      "save_pretrained)", group="output")
    keep_checkpoints: bool = option(False, "keep OUT/checkpoints after a finished run (only needed to resume)",
                                    group="output")
    out: str = option("runs/subquadratic", "writes OUT/metrics.json (and OUT/student)", path=True, group="output")
    resume: bool = option(False, "continue from OUT/checkpoints (a finished stage is loaded, not re-run)",
                          group="output")
    quiet: bool = option(False, "no progress bars", group="output")

    def check(self) -> None:
        super().check()
        if self.teacher in NOT_LLAMA:
            raise ValueError(f"teacher {self.teacher!r} is not a Llama-family decoder: subquadratic students "
                             f"replace a Llama's attention; give {' or '.join(TEACHER_POSITIONS)}, or a Llama "
                             "folder / hub id")
        limit = TEACHER_POSITIONS.get(self.teacher)
        if limit is not None and self.block_length > limit:
            raise ValueError(f"block_length {self.block_length} is above the {limit} positions of {self.teacher}: "
                             f"give --block-length {limit} or less")
        self.check_text()

    def check_text(self) -> None:
        """A text folder must exist and hold ``*.txt`` files (``wiki`` needs nothing)."""
        if self.text == "wiki":
            return
        if self.text == "data":
            try:
                root = find_data_dir(self.data_dir)
            except FileNotFoundError as err:
                raise ValueError(str(err)) from None
            if root is None:
                raise ValueError("--text data reads <data_dir>/text/: give --data-dir or set MAKD_DATA_DIR")
            folder = root / "text"
        else:
            folder = Path(os.path.expanduser(self.text))
        if not folder.is_dir():
            raise ValueError(f"text folder {folder} does not exist: give a folder of .txt files (one document per "
                             "file), 'data' for <data_dir>/text/, or 'wiki'")
        if next(folder.rglob("*.txt"), None) is None:
            raise ValueError(f"text folder {folder} holds no .txt file: put UTF-8 .txt documents in it (one per "
                             "file), or use --text wiki")


def parse(argv: list[str] | None = None) -> SubquadraticConfig:
    """``argv`` -> :class:`SubquadraticConfig`; a wrong value is one argparse ``error:`` line (exit 2)."""
    return parse_config(SubquadraticConfig, argv)
