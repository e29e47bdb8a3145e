"""The typed configuration of ``python -m makd decoder`` (and of notebook 10): the shared student-size and
training parts of :mod:`makd.experiments.config` plus the instruction data, the methods and ONE frozen
generation setting.

Light (standard library only), like :mod:`makd.experiments.config`: ``--methods bogus`` or ``--decoding beam``
is refused before torch, a model or data is loaded. Two options take one or more values (``methods``, ``seeds``:
``tuple[str, ...]`` / ``tuple[int, ...]``, ``nargs="+"`` on the command line).
"""
from __future__ import annotations

from dataclasses import dataclass

from makd.experiments.config import InitConfig, SizeConfig, TrainConfig, check_weights
from makd.experiments.options import Config, build_parser as _options_parser, option, parse_config

# kept here so that validating imports nothing heavy; tests/test_lm.py checks them against the heavy modules
METHODS = ("sft", "kd", "seqkd", "makd")                        # makd.experiments.decoder_methods.METHODS
CONTROLS = ("untrained", "init")                               # makd.experiments.decoder_methods.CONTROLS
INSTRUCTION_SETS = ("selfinst", "vicuna", "dolly", "chatterbot")  # makd.tasks.instructions.INSTRUCTION_SETS
TRAIN_SETS = ("chatterbot", "dolly", "wikiprompts")             # the sets with a train split
NO_ANSWERS = ("wikiprompts",)                                  # train sets without answers: the teacher's are used
MAKD_ASPECTS = ("mha", "ffn", "attn", "hidn", "pred")          # the 'hierarchical' preset's (makd.core.objective)


@dataclass(frozen=True)
class DecoderDataConfig(Config):
    """The causal-LM teacher, the instruction data and the prompt template."""
    GROUP = "data and teacher"
    teacher: str = option("smollm2-135m-instruct", "embedded name (smollm2-135m-instruct; tiny-llama / tiny-gpt2 for "
                          "smoke tests), local folder or hub id of a causal LM", path=True, model=True)
    train_set: str = option("chatterbot", "training prompts/responses: chatterbot (embedded PROXY), dolly, or "
                            "wikiprompts (embedded PROXY: instruction templates over the Wikipedia train articles, "
                            "no answers — every method trains on the teacher's: seqkd, and kd / makd with "
                            "--kd-responses teacher)", choices=TRAIN_SETS)
    eval_set: str = option("selfinst", "selfinst, vicuna (teacher answers as references), dolly, chatterbot, or "
                           "auto (selfinst when data_dir has it, else chatterbot)", choices=INSTRUCTION_SETS + ("auto",))
    data_dir: str | None = option(None, "folder with instruct/*.jsonl (default $MAKD_DATA_DIR)", path=True)
    template: str = option("auto", "prompt template: the tokenizer's chat template when it has one (auto), or alpaca",
                           choices=("auto", "chat", "alpaca"))
    max_train: int = option(256, "training examples (first N of the seeded split)", low=1)
    max_eval: int = option(40, "evaluation prompts (first N)", low=1)
    max_length: int = option(256, "training sequence length (prompt + response)", low=8)
    max_prompt_tokens: int = option(256, "prompt tokens kept (the last ones) in training and generation", low=1)
    extra_eval: tuple[str, ...] = option((), "further evaluation sets: every model is also scored on each "
                                         "(results under eval_sets.<name>; vicuna: the teacher's answers as "
                                         "references)", choices=INSTRUCTION_SETS, metavar="SET")
    wiki_windows: int = option(16, "held-out Wikipedia windows of max_length tokens (embedded `wiki` asset, split by "
                               "article, makd.tasks.wiki) on which every model's LM cross-entropy and perplexity are "
                               "reported beside response_ce; 0: off", low=0)
    wiki_train_windows: int = option(0, "Wikipedia windows of max_length tokens from the TRAIN articles (disjoint "
                                     "from the held-out ones) added to every method's training data, loss on every "
                                     "token (SFT / SeqKD: the LM loss; KD / MaKD: their distillation terms) — "
                                     "real text beside the instruction pairs, as MiniLLM mixes pre-training text "
                                     "in; 0: none", low=0)


@dataclass(frozen=True)
class GenerationConfig(Config):
    """One frozen generation setting for every model (written into every result)."""
    GROUP = "generation (one setting for every model)"
    decoding: str = option("greedy", "greedy (one run) or MiniLLM's sampling (top-p 1, temperature 1, one run per "
                           "seed); SeqKD's teacher generations too (first seed)", choices=("greedy", "sample"))
    seeds: tuple[int, ...] = option((10, 20, 30, 40, 50), "sampling seeds", low=0, metavar="SEED")
    max_new_tokens: int = option(64, "cap on generated tokens (MiniLLM: up to 512 in total)", low=1)
    gen_batch_size: int = option(8, "prompts per generation batch", low=1)


@dataclass(frozen=True)
class DecoderConfig(TrainConfig, InitConfig, SizeConfig, GenerationConfig, DecoderDataConfig):
    """``python -m makd decoder``: causal-LM distillation (SFT / KD / SeqKD / MaKD) into one student, Rouge-L."""
    PROG = "python -m makd decoder"
    EPILOG = """examples:
  # embedded default, no network: SmolLM2-135M-Instruct teacher, chatterbot proxy train set, SelfInst-252 eval
  python -m makd decoder --data-dir ../shared/data --methods sft kd seqkd makd --max-train 256 --max-eval 40
  # MiniLLM's decoding protocol (sampling, top-p 1, temperature 1, 5 seeds) instead of greedy
  python -m makd decoder ... --decoding sample
  # a student that starts alive: whitened SVD, ranks by budget, a layer-local stage, and the no-training control
  python -m makd decoder ... --weighting whiten --ranks auto --local-epochs 2 --methods untrained sft kd seqkd makd
  # mixed-precision training (bfloat16 autocast; scores stay float32): faster on GPUs and AVX512-BF16 / AMX CPUs
  python -m makd decoder ... --bf16
  # real text beside the instruction pairs: 256 windows of the Wikipedia train articles in every method's data
  python -m makd decoder ... --wiki-train-windows 256
  # KD and MaKD on the teacher's own answers (SeqKD's data) instead of the train set's
  python -m makd decoder ... --kd-responses teacher
  # instruction prompts over Wikipedia (embedded proxy, no answers): every method on the teacher's answers
  python -m makd decoder ... --train-set wikiprompts --kd-responses teacher --methods untrained kd seqkd makd
  # MaKD with each layer aspect as its mean over the 15 layers it covers (SmolLM2: 30 layers, split 15)
  python -m makd decoder ... --methods makd --makd-weights '{"mha": 0.0667, "ffn": 0.0667, "attn": 0.0667, "hidn": 0.0667}'
  # the paper's setting on a GPU box with the hub: GPT-2 family
  python -m makd decoder --teacher gpt2-xl --train-set dolly --eval-set dolly --decoding sample
"""
    methods: tuple[str, ...] = option(METHODS, "methods to train, each on a fresh copy of the same student; "
                                      "controls: 'untrained' scores that student without training, 'init' the "
                                      "student as factorised, before the layer-local stage",
                                      choices=METHODS + CONTROLS, group="methods and student")
    train_seeds: tuple[int, ...] = option((), "training seeds: every method trained once per seed into "
                                          "OUT/<method>/seed-<S>/ (teacher and controls scored once; with "
                                          "--resume, finished seeds are kept); empty: --seed only, "
                                          "OUT/<method>/", low=0, metavar="SEED", group="methods and student")
    student: str = option("svd", "'svd' (the factorised teacher at the size below) or 'layers:K' (dense copy of K "
                          "evenly spaced teacher layers)", group="methods and student")
    mse: str = option("relative", "MaKD's matrix/hidden-state MSE: relative (divided by the teacher's energy; default, "
                      "our choice: LLM hidden states reach |h| ~ 10^3) or plain (METHOD.md's MSE)",
                      choices=("relative", "plain"), group="methods and student")
    makd_weights: dict | None = option(None, "MaKD's per-aspect weights, JSON, e.g. '{\"mha\": 0.0667, \"ffn\": "
                                       "0.0667}' (each layer aspect is summed over its layers; default: every "
                                       "aspect 1, a reconstructed default, not the paper's); KD, SFT and SeqKD "
                                       "ignore it", json=True, group="methods and student")
    epochs: float = option(1.0, "training epochs per method", low=0.0, low_open=True)
    lr: float = option(5e-5, "learning rate", low=0.0, low_open=True)
    batch_size: int = option(8, "training batch size", low=1)
    report_to: str = option("none", "none (default), tensorboard, wandb, ...")
    bf16: bool = option(False, "mixed-precision training: the teacher's and the student's matrix products in "
                        "bfloat16 (autocast), weights, optimizer state and losses in float32; the layer-local "
                        "stage and all scoring stay float32. Faster on CPUs with AVX512-BF16 or AMX (about 2x "
                        "per SmolLM2 step on one; benchmarks/bench_decoder_step.py measures yours), may be slower "
                        "without")
    ce_examples: int = option(16, "training examples of the response cross-entropy table", low=1)
    calibration_examples: int = option(128, "training examples calibrating a weighted factorisation (--weighting) "
                                       "and feeding the layer-local stage", low=1, group=InitConfig.GROUP)
    calibration_set: str | None = option(None, "the train set whose first calibration_examples rows calibrate the "
                                         "factorisation and feed the layer-local stage (default: train_set); e.g. "
                                         "chatterbot with --train-set wikiprompts starts every method from the "
                                         "student prepared for the chatterbot comparisons (the cached one)",
                                         choices=TRAIN_SETS, group=InitConfig.GROUP)
    mix_train_set: str | None = option(None, "a second train set whose first max_train rows join the train set's "
                                       "for training (one list, shuffled together by the Trainer; calibration, the "
                                       "layer-local stage and the response cross-entropy keep the train set's own "
                                       "rows); e.g. chatterbot with --train-set wikiprompts", choices=TRAIN_SETS)
    local_epochs: int = option(0, "epochs of the layer-local stage (each block trained alone on the teacher's "
                               "block inputs, makd.core.local) before every method; 0: none", low=0,
                               group=InitConfig.GROUP)
    local_lr: float = option(1e-4, "learning rate of the layer-local stage", low=0.0, low_open=True,
                             group=InitConfig.GROUP)
    kd_responses: str = option("gold", "the answers KD and MaKD train on: gold (the train set's own; MiniLLM's KD) or "
                               "teacher (the teacher's generated answers, SeqKD's cached data: word-level KD on "
                               "sequence-level KD data, Kim & Rush 2016's Seq-KD + Word-KD); SFT and SeqKD unchanged",
                               choices=("gold", "teacher"), group="methods and student")
    out: str = option("runs/decoder", "writes OUT/<method>/metrics.json, OUT/teacher/, OUT/speed.json", path=True)

    def check(self) -> None:
        super().check()
        if self.student != "svd" and not (self.student.startswith("layers:") and self.student[7:].isdigit()
                                          and int(self.student[7:]) >= 1):
            raise ValueError(f"student must be 'svd' or 'layers:K' with K >= 1, got {self.student!r}")
        if self.max_prompt_tokens >= 512:
            raise ValueError(f"max_prompt_tokens ({self.max_prompt_tokens}) must leave room for the answer in "
                             "the 512 tokens of a generation: give at most 511")
        check_weights(self.makd_weights, "makd_weights", MAKD_ASPECTS)   # the hierarchical preset's aspects
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists one twice: {list(self.methods)}")
        if len(set(self.train_seeds)) != len(self.train_seeds):
            raise ValueError(f"train_seeds lists one twice: {list(self.train_seeds)}")
        if self.mix_train_set is not None and self.mix_train_set == self.train_set:
            raise ValueError(f"mix_train_set is the train set itself ({self.train_set}): give another set, or "
                             "raise --max-train")
        for what, name in (("train_set", self.train_set), ("mix_train_set", self.mix_train_set)):
            if name not in NO_ANSWERS:
                continue
            if "sft" in self.methods:
                raise ValueError(f"{what} {name} has no answers, so SFT has nothing to imitate: drop "
                                 "sft from --methods (SeqKD trains on the teacher's answers)")
            if self.kd_responses != "teacher" and {"kd", "makd"} & set(self.methods):
                raise ValueError(f"{what} {name} has no answers for KD / MaKD to train on: add "
                                 "--kd-responses teacher (the teacher's generated answers)")
        if "init" in self.methods and not self.local_epochs:
            raise ValueError("the control 'init' is the student before the layer-local stage: it needs "
                             "--local-epochs > 0 (without it, 'untrained' is that student)")

    def seed_list(self) -> tuple[int, ...]:
        """The training seeds: ``train_seeds``, or ``(seed,)``."""
        return self.train_seeds or (self.seed,)


def build_parser():
    """The command line of :class:`DecoderConfig` (``--methods`` and ``--seeds`` take one or more values)."""
    return _options_parser(DecoderConfig)


def parse(argv: list[str] | None = None) -> DecoderConfig:
    """``argv`` -> :class:`DecoderConfig`; a wrong value is one argparse ``error:`` line (exit 2)."""
    return parse_config(DecoderConfig, argv)
