"""`python -m makd factorize`: build a truncated-SVD student of a teacher, print its report, optionally save it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from makd.assets.models import load_model
from makd.core.checkpoint import save_student
from makd.core.factorize import factorize, report, report_totals

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


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value > 1 or ("." not in text and "e" not in text.lower()) else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m makd factorize",
        description="Build a truncated-SVD student of a teacher (every MHA/FFN matrix W -> A B, "
                    "A = U_r S_r^1/2, B = S_r^1/2 V_r^T), print the per-matrix report and totals, "
                    "optionally save it (makd.core.checkpoint format + report.csv/report.json).",
        epilog="examples:\n"
               "  python -m makd factorize --layer-ratio 0.5\n"
               "  python -m makd factorize --budget 0.6 --out runs/students/minilm-b0.6\n"
               "  python -m makd factorize --budget 15000000 --weighting activation\n"
               "  python -m makd factorize --teacher path/to/finetuned-bert --rank 64\n"
               "  python -m makd factorize --rank 0.25          # a quarter of each matrix's full rank\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="minilm-l6",
                   help="'minilm-l6' (the embedded all-MiniLM-L6-v2, default), a local folder or a hub id")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=_number, help="rank of every matrix: int, or a float in (0, 1] = "
                      "fraction of each matrix's full rank")
    size.add_argument("--budget", type=_number, help="TOTAL student parameters (embeddings included): "
                      "int, or a float in (0, 1] = fraction of the teacher's")
    size.add_argument("--layer-ratio", type=float, help="fraction of the dense matrices' parameters kept "
                      "(0.75, 0.5, 0.25, 0.1 in our experiments)")
    p.add_argument("--weighting", choices=["none", "activation"], default="none",
                   help="'activation': ASVD-style scaling from calibration text (default: plain SVD)")
    p.add_argument("--calibration-text", type=Path, help="text file, one calibration sentence per line "
                   "(default: 8 built-in sentences)")
    p.add_argument("--factorize-embeddings", action="store_true",
                   help="also factorise the word-embedding table (budgets below the floor)")
    p.add_argument("--out", type=Path, help="save the student here (makd.core.checkpoint) with report.csv and report.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    texts = CALIBRATION_TEXT
    if args.calibration_text is not None:
        if not args.calibration_text.is_file():
            raise SystemExit(f"error: --calibration-text {args.calibration_text} is not a file")
        texts = [t.strip() for t in args.calibration_text.read_text().splitlines() if t.strip()]
        if not texts:
            raise SystemExit(f"error: --calibration-text {args.calibration_text} has no non-empty line")
    teacher, tok = load_model(args.teacher, head="base")
    calibration = (dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
                   if args.weighting == "activation" else None)
    try:
        student = factorize(teacher, rank=args.rank, budget=args.budget, layer_ratio=args.layer_ratio,
                            weighting=args.weighting, calibration=calibration,
                            factorize_embeddings=args.factorize_embeddings)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    table, totals = report(student, teacher), report_totals(student, teacher)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.precision", 4):
        print(table.drop(columns=["module"]).to_string(index=False))
    print(json.dumps(totals, indent=2))
    if args.out is not None:
        save_student(student, args.out, tokenizer=tok)
        table.to_csv(args.out / "report.csv", index=False)
        (args.out / "report.json").write_text(json.dumps(
            {"totals": totals, "matrices": table.to_dict(orient="records")}, indent=2))
        print(f"saved the student to {args.out}", file=sys.stderr)
    return 0
