"""Inference throughput of the MiniLM-L6 teacher and its truncated-SVD students, and factorisation time.

    python benchmarks/bench_factorize.py                 # embedded MiniLM-L6, batch 32 x 128, CPU
    python benchmarks/bench_factorize.py --quick         # tiny random BERT smoke run (seconds)

Writes JSON to benchmarks/results/factorize.json (``--out`` to change). Targets (reported, not
asserted): the layer-ratio-0.5 student >= 1.3x the teacher's tokens/s, and no student slower.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from makd.core import factorize as fz  # noqa: E402


def load_teacher(name: str, quick: bool):
    import transformers as tf

    if quick:
        torch.manual_seed(0)
        cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)
        return tf.BertModel(cfg).eval(), "tiny random BERT (hidden 32, 2 layers)"
    try:
        from makd.assets.models import load_model
    except ImportError:  # makd.assets.models not available: read the embedded teacher from the asset cache
        from makd.assets.fetch import asset_path

        folder = asset_path("minilm-l6")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"the embedded teacher is not in {folder}: run `python -m makd fetch-assets "
                                    "minilm-l6` first, or use --quick")
        return tf.AutoModel.from_pretrained(folder, dtype=torch.float32).eval(), str(folder)
    model, _ = load_model(name, head="base")
    return model.eval(), name


def throughput(models: dict, batch: int, seq: int, runs: int, vocab: int) -> dict[str, dict]:
    """Median tokens/s per model over ``runs`` rounds after two warm-ups (inference_mode).

    Rounds are interleaved (each round times every model once), so load from other processes on a
    shared machine hits all models alike instead of whichever happened to run at that moment.
    """
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1, vocab, (batch, seq), generator=g),   # (B, T)
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(2):  # warm-up
                model(**inputs)
        for _ in range(runs):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(**inputs)
                times[name].append(time.perf_counter() - t0)
    return {k: {"tokens_per_s": batch * seq / statistics.median(v), "median_s": statistics.median(v),
                "times_s": v} for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="minilm-l6")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, batch 4 x 16, 3 runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "factorize.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.seq, args.runs = 4, 16, 3
    teacher, source = load_teacher(args.teacher, args.quick)
    vocab = teacher.config.vocab_size
    models, rows = {"teacher": teacher}, [{"model": "teacher", "layer_ratio": 1.0,
                                          "params": fz.count_parameters(teacher), "factorize_s": 0.0}]
    for ratio in args.ratios:
        t0 = time.perf_counter()
        student = fz.factorize(teacher, layer_ratio=ratio)
        took = time.perf_counter() - t0
        models[f"student@{ratio}"] = student
        totals = fz.report_totals(student, teacher)
        rows.append({"model": f"student@{ratio}", "layer_ratio": ratio, "achieved_layer_ratio": totals["layer_ratio"],
                     "params": totals["student_params"], "factorize_s": took})
        print(f"student layer_ratio={ratio}: {rows[-1]['params']:,} params, factorised in {took:.2f}s", flush=True)
    speed = throughput(models, args.batch, args.seq, args.runs, vocab)
    for row in rows:
        row.update(speed[row["model"]])
        row["speedup"] = row["tokens_per_s"] / speed["teacher"]["tokens_per_s"]
        print(f"{row['model']:>16}: {row['tokens_per_s']:8.0f} tokens/s ({row['speedup']:.2f}x)")
    half = next((r for r in rows if r["layer_ratio"] == 0.5), None)
    result = {
        "teacher": source, "batch": args.batch, "seq": args.seq, "runs": args.runs, "quick": args.quick,
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "platform": platform.platform(), "processor": platform.processor(), "rows": rows,
        "targets": {"half_ratio_speedup>=1.3": bool(half and half["speedup"] >= 1.3),
                    "no_student_slower": all(r["speedup"] >= 1.0 for r in rows)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["targets"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
