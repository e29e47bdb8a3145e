"""`python -m makd factorize`: build a truncated-SVD student of a teacher, print its report, optionally save it."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from makd.assets.models import load_model
from makd.core.errors import UsageError
from makd.core.factorize import factorize, report, report_totals
from makd.experiments.config import FactorizeConfig
from makd.experiments.options import build_parser as config_parser
from makd.experiments.options import parse_config
from makd.experiments.runrecord import path_roots, portable
from makd.students.hf_folder import save_student

CALIBRATION_TEXT = [
    "The film is a charming, funny and thoughtful look at family life.",
    "A tedious, overlong drama that never finds its footing.",
    "The committee approved the budget after a long debate on Tuesday.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She asked whether the train to Edinburgh would leave on time.",
    "Prices of the new phones rose sharply, surprising most analysts.",
    "In 1905 Einstein published four papers that changed physics.",
    "Add the flour slowly and stir until the batter is smooth.",
]


def build_parser():
    """The command line (built from :class:`FactorizeConfig`'s fields)."""
    return config_parser(FactorizeConfig)


def main(argv: list[str] | None = None, config: FactorizeConfig | None = None) -> int:
    """``python -m makd factorize``; ``config``: ``argv`` already parsed (by :mod:`makd.cli`). A wrong option is
    an argparse error (exit 2) before the teacher is loaded; a size the teacher cannot reach a UsageError."""
    args = config or parse_config(FactorizeConfig, argv)
    texts = CALIBRATION_TEXT
    if args.calibration_text is not None:
        texts = [t.strip() for t in Path(args.calibration_text).read_text().splitlines() if t.strip()]
    teacher, tok = load_model(args.teacher, head="base")
    calibration = (dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
                   if args.weighting != "none" else None)
    try:
        student = factorize(teacher, calibration=calibration, factorize_embeddings=args.factorize_embeddings,
                            **args.init_options(), **args.size())
    except ValueError as err:                               # unreachable budget, rank above full rank, ...
        raise UsageError(f"{err}; give another --layer-ratio, --budget or --rank") from None
    table, totals = report(student, teacher), report_totals(student, teacher)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.precision", 4):
        print(table.drop(columns=["module"]).to_string(index=False))
    print(json.dumps(totals, indent=2))
    if args.out is not None:
        out = Path(args.out)
        argv = sys.argv[1:] if argv is None else argv
        command = portable("python -m makd factorize " + shlex.join(argv), path_roots(None))  # no machine path
        save_student(student, out, tokenizer=tok, command=command)
        table.to_csv(out / "report.csv", index=False)
        (out / "report.json").write_text(json.dumps(
            {"totals": totals, "matrices": table.to_dict(orient="records")}, indent=2))
        print(f"saved the student to {out}", file=sys.stderr)
    return 0
