"""Inference throughput of the MiniLM-L6 teacher and its truncated-SVD students, unfused and fused; factorisation time.

    python benchmarks/bench_factorize.py                 # embedded MiniLM-L6, batch 32 x 128, CPU
    python benchmarks/bench_factorize.py --quick         # tiny random BERT smoke run (seconds)

Each layer ratio gives two rows: ``student@r`` (plain two-GEMM LowRankLinear forward, ``fused=False``) and
``fused@r`` (:func:`makd.core.fused.fuse`, what ``factorize`` returns by default: Q/K/V share one GEMM, matrices whose
factors are not cheaper run dense). Rounds are interleaved and the load average is recorded (before, after and per
round): on a shared machine read the ratios, not the seconds. Writes JSON to benchmarks/results/factorize.json
(``--out`` to change). Targets (reported, not asserted), on the fused students: the layer-ratio-0.5 student >= 1.75x
the teacher's tokens/s, and no ratio slower than the teacher.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from makd.core import factorize as fz  # noqa: E402
from makd.core import fused  # noqa: E402
from makd.core.lowrank import LowRankLinear  # noqa: E402

TARGET = 1.75   # fused ratio-0.5 student vs teacher, tokens/s


def load_teacher(name: str, quick: bool):
    import transformers as tf

    if quick:
        torch.manual_seed(0)
        cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)
        return tf.BertModel(cfg).eval(), "tiny random BERT (hidden 32, 2 layers)"
    from makd.assets.models import load_model

    model, _ = load_model(name, head="base")
    return model.eval(), name


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def throughput(models: dict, batch: int, seq: int, runs: int, vocab: int) -> tuple[dict[str, dict], list]:
    """Median tokens/s per model over ``runs`` rounds after two warm-ups (inference_mode), and the 1-minute load
    average after each round.

    Rounds are interleaved (each round times every model once, starting one model later each round), so load from
    other processes on a shared machine hits all models alike instead of whichever happened to run at that moment.
    """
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1, vocab, (batch, seq), generator=g),   # (B, T)
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    times: dict[str, list[float]] = {k: [] for k in models}
    names, loads = list(models), []
    with torch.inference_mode():
        for model in models.values():
            for _ in range(2):  # warm-up
                model(**inputs)
        for i in range(runs):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                models[name](**inputs)
                times[name].append(time.perf_counter() - t0)
            loads.append(_load()[0])
    return {k: {"tokens_per_s": batch * seq / statistics.median(v), "median_s": statistics.median(v), "min_s": min(v),
                "times_s": v} for k, v in times.items()}, loads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="minilm-l6")
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.9, 0.75, 0.5, 0.25])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--dense-from", type=float, default=fused.DENSE_FROM,
                   help="fused students run a matrix dense when r(d_in+d_out) >= this x d_in d_out")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, batch 4 x 16, 3 runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "factorize.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.seq, args.runs = 4, 16, 3
    load_before = _load()
    teacher, source = load_teacher(args.teacher, args.quick)
    vocab = teacher.config.vocab_size
    models, rows = {"teacher": teacher}, [{"model": "teacher", "layer_ratio": 1.0, "fused": False,
                                          "params": fz.count_parameters(teacher), "factorize_s": 0.0,
                                          "dense_matrices": 0, "shared_gemms": 0}]
    for ratio in args.ratios:
        t0 = time.perf_counter()
        student = fz.factorize(teacher, layer_ratio=ratio, fused=False)
        took = time.perf_counter() - t0
        fast = fused.fuse(copy.deepcopy(student), dense_from=args.dense_from)
        totals = fz.report_totals(student, teacher)
        dense = sum(fused.runs_dense(m, args.dense_from) for m in fast.modules() if isinstance(m, LowRankLinear))
        for name, model, on in ((f"student@{ratio}", student, False), (f"fused@{ratio}", fast, True)):
            models[name] = model
            rows.append({"model": name, "layer_ratio": ratio, "fused": on,
                         "achieved_layer_ratio": totals["layer_ratio"], "params": totals["student_params"],
                         "factorize_s": took, "dense_matrices": dense if on else 0,
                         "shared_gemms": len(fused.sibling_groups(fast)) if on else 0})
        print(f"student layer_ratio={ratio}: {rows[-1]['params']:,} params, factorised in {took:.2f}s, "
              f"{dense} matrices run dense when fused", flush=True)
    speed, loads = throughput(models, args.batch, args.seq, args.runs, vocab)
    for row in rows:
        row.update(speed[row["model"]])
        row["speedup"] = row["tokens_per_s"] / speed["teacher"]["tokens_per_s"]
        row["speedup_of_min"] = speed["teacher"]["min_s"] / row["min_s"]      # less sensitive to other load
        print(f"{row['model']:>16}: {row['tokens_per_s']:8.0f} tokens/s ({row['speedup']:.2f}x median, "
              f"{row['speedup_of_min']:.2f}x fastest round)")
    fast_rows = [r for r in rows if r["fused"]]
    half = next((r for r in fast_rows if r["layer_ratio"] == 0.5), None)
    plain = {r["layer_ratio"]: r for r in rows[1:] if not r["fused"]}
    result = {
        "teacher": source, "batch": args.batch, "seq": args.seq, "runs": args.runs, "quick": args.quick,
        "device": "cpu", "threads": torch.get_num_threads(), "dense_from": args.dense_from,
        "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "load_average": {"before": load_before, "after": _load(), "per_round_1min": loads},
        "rows": rows,
        "targets": {f"half_ratio_speedup>={TARGET}": bool(half and half["speedup"] >= TARGET),
                    "no_student_slower": all(r["speedup"] >= 1.0 for r in fast_rows)},
        "unfused": {"half_ratio_speedup": plain[0.5]["speedup"] if 0.5 in plain else None,
                    "no_student_slower": all(r["speedup"] >= 1.0 for r in plain.values())},
        "fused_gain": {str(r["layer_ratio"]): r["tokens_per_s"] / plain[r["layer_ratio"]]["tokens_per_s"]
                       for r in fast_rows},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({**result["targets"], "fused_gain": result["fused_gain"], "load_average": _load()}),
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
