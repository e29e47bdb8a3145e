"""How much each SVD initialisation damages a decoder before any training: response-token LM loss.

    python benchmarks/bench_decoder_svd.py            # embedded SmolLM2-135M-Instruct, chatterbot pairs, CPU
    python benchmarks/bench_decoder_svd.py --quick    # tiny random Llama (seconds)

For the teacher and its SVD students at several layer-parameter ratios — plain SVD, activation-aware SVD,
whitened SVD (teacher-forced: the closed-form optimum of the matrix aspect) and sequentially whitened SVD, the
last three calibrated on other training pairs — the mean cross-entropy on the response tokens of held-out
chatterbot pairs (the loss SFT minimises; log(vocabulary) is the uniform guess), the language-model cross-entropy
``wiki_ce`` on windows of held-out Wikipedia articles (the embedded ``wiki`` asset split by article,
:mod:`makd.tasks.wiki`; ``--wiki-windows`` evenly spaced windows of ``--max-length`` tokens; ppl = exp(wiki_ce)), and
the factorisation time.
Writes benchmarks/results/decoder_svd.json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from makd.core import factorize as fz  # noqa: E402
from makd.core.local import local_stage  # noqa: E402
from makd.tasks.instructions import load_instructions  # noqa: E402
from makd.tasks.metrics import lm_perplexity  # noqa: E402
from makd.tasks.prompts import CausalCollator, sft_features  # noqa: E402
from makd.tasks.wiki import heldout_windows  # noqa: E402
from makd.assets.models import load_model  # noqa: E402


def batch_of(rows, tok, max_length: int) -> dict[str, torch.Tensor]:
    feats, _ = sft_features(rows, tok, max_length=max_length)
    return dict(CausalCollator(tok.pad_token_id)([feats[i] for i in range(len(feats))]))


@torch.no_grad()
def response_ce(model, batch) -> float:
    """Mean CE over response tokens (labels != -100), as the model's own shifted LM loss."""
    return float(model(**batch).loss)


def scores(model, held, wiki) -> dict[str, float]:
    """response_ce on the held-out pairs and, with Wikipedia windows, wiki_ce (token-weighted LM CE, nats)."""
    out = {"response_ce": response_ce(model, held)}
    if wiki is not None:
        out["wiki_ce"] = lm_perplexity(model, wiki, batch_size=8)["ce"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="smollm2-135m-instruct")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.5])
    p.add_argument("--weightings", nargs="+", default=list(fz.WEIGHTINGS), choices=fz.WEIGHTINGS)
    p.add_argument("--damping", type=float, default=1e-4, help="whitening damping λ (of the mean diagonal)")
    p.add_argument("--rank-rules", nargs="+", default=["uniform", "auto"], choices=fz.RANK_RULES,
                   help="uniform ranks, and/or ranks by budget (auto; weighted factorisations only)")
    p.add_argument("--local-epochs", type=int, default=0,
                   help="also score each uniform-rank student of --local-for after this many epochs of the "
                        "layer-local stage on the calibration pairs (makd.core.local; 0: none)")
    p.add_argument("--local-for", nargs="+", default=["whiten"], choices=fz.WEIGHTINGS)
    p.add_argument("--local-lr", type=float, default=1e-4)
    p.add_argument("--local-batch", type=int, default=8, help="calibration pairs per layer-local step")
    p.add_argument("--local-matrix-weight", type=float, default=0.1,
                   help="weight of the stage's teacher-forced matrix term (0: block term only, ~3x cheaper)")
    p.add_argument("--examples", type=int, default=16, help="held-out pairs scored")
    p.add_argument("--calibration", type=int, default=128, help="training pairs calibrating the weighted SVDs")
    p.add_argument("--max-length", type=int, default=128, help="tokens per pair and per Wikipedia window")
    p.add_argument("--wiki-windows", type=int, default=16,
                   help="held-out Wikipedia windows scored by wiki_ce (evenly spaced; 0: off)")
    p.add_argument("--quick", action="store_true", help="tiny random Llama, 2 ratios")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder_svd.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.teacher, args.ratios, args.examples, args.calibration = "tiny-llama", [0.9, 0.5], 4, 4
        args.local_epochs = args.local_epochs and 1
        args.wiki_windows = min(args.wiki_windows, 4)
    if args.wiki_windows < 0:
        p.error(f"--wiki-windows must be >= 0, got {args.wiki_windows}")
    teacher, tok = load_model(args.teacher, head="lm")
    teacher.eval()
    train = load_instructions("chatterbot", None, seed=0).train
    held = batch_of(list(train.select(range(args.examples))), tok, args.max_length)
    calib = batch_of(list(train.select(range(args.examples, args.examples + args.calibration))), tok, args.max_length)
    calib = {k: calib[k] for k in ("input_ids", "attention_mask")}
    wiki, wiki_set = heldout_windows(tok, args.wiki_windows, args.max_length) if args.wiki_windows else (None, None)
    rows = [{"model": "teacher", "layer_ratio": 1.0, "weighting": "-", "params": fz.count_parameters(teacher),
             **scores(teacher, held, wiki)}]
    result = {"what": __doc__.split("\n\n")[0], "teacher": args.teacher, "uniform_ce": math.log(len(tok)),
              "held_out_pairs": args.examples, "calibration_pairs": args.calibration, "max_length": args.max_length,
              "calibration_tokens": int(calib["attention_mask"].sum()), "damping": args.damping,
              "data": "chatterbot-corpus==1.3.3 train split (seed 0): first pairs scored, the next ones calibrate",
              "threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
              "wiki_heldout": wiki_set, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for ratio in args.ratios:
        for weighting in args.weightings:
            for rule in args.rank_rules:
                if rule == "auto" and weighting == "none":
                    continue
                t0 = time.perf_counter()
                student = fz.factorize(teacher, layer_ratio=ratio, weighting=weighting, damping=args.damping,
                                       calibration=calib if weighting != "none" else None, ranks=rule)
                rows.append({"model": "SVD student", "layer_ratio": ratio, "weighting": weighting, "ranks": rule,
                             "params": fz.count_parameters(student), **scores(student.eval(), held, wiki),
                             "factorise_s": round(time.perf_counter() - t0, 1)})
                print(rows[-1], flush=True)
                out.write_text(json.dumps(result, indent=1) + "\n")        # after every row: nothing lost
                if args.local_epochs and rule == "uniform" and weighting in args.local_for:
                    t0 = time.perf_counter()
                    batches = [{k: v[i:i + args.local_batch] for k, v in calib.items()}
                               for i in range(0, len(calib["input_ids"]), args.local_batch)]
                    hist = local_stage(student, teacher, batches, epochs=args.local_epochs, lr=args.local_lr,
                                       matrix_weight=args.local_matrix_weight, progress=False)
                    rows.append({**rows[-1], "local_epochs": args.local_epochs, "local_lr": args.local_lr,
                                 "local_matrix_weight": args.local_matrix_weight,
                                 "local_steps": len(hist), "local_loss_block": [hist[0]["loss_block"],
                                                                                hist[-1]["loss_block"]],
                                 **scores(student.eval(), held, wiki),
                                 "local_s": round(time.perf_counter() - t0, 1)})
                    print(rows[-1], flush=True)
                    out.write_text(json.dumps(result, indent=1) + "\n")
                del student
    out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        local = f"+local {r['local_epochs']} ep" if r.get("local_epochs") else ""
        print(f"{r['model']:12s} ratio {r['layer_ratio']:.2f} {r['weighting']:17s} {r.get('ranks', '-'):7s} {local:12s}"
              f"{r['params'] / 1e6:7.1f} M  "
              f"CE {r['response_ce']:.2f}" + (f"  wiki CE {r['wiki_ce']:.2f}" if "wiki_ce" in r else ""))
    print(f"uniform guess: CE {result['uniform_ce']:.2f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
