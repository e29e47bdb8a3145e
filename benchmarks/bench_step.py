"""Cost of ONE distillation training step per objective preset (CPU).

    python benchmarks/bench_step.py            # MiniLM-L6 teacher (cls head), student layer_ratio 0.5, 16 x 128
    python benchmarks/bench_step.py --quick    # tiny random BERT smoke run (seconds)

A step is what DistillTrainer does: ``objective.compute`` (the teacher once under torch.inference_mode, the
student's forward with its graph; attention maps one layer at a time) + objective, the captures dropped, then
backward + AdamW step; "finetune" skips the teacher. Wall time: median over ``--runs`` steps after
``--warmup`` steps, the presets interleaved round by round (load from other processes hits all alike). Peak memory:
each preset runs once more in each of --memory-repeats fresh subprocesses (median; default 3), each reporting its
peak resident-set increase over the RSS just before its first step (Linux VmHWM after resetting it through
/proc/self/clear_refs; where that is not allowed, the ru_maxrss delta of the subprocess — see ``memory_method`` in
the JSON).
Writes benchmarks/results/step.json (``--out``), with the load average before and after the timings.
Targets (reported, not asserted): every MaKD preset's step <= 1.3x the logit-KD (model-only) step
(``targets``); issue 24's lighter step: hierarchical <= 1.10x logit KD's step and <= 1.3x its peak RSS
increase (``targets_lighter_step``).
"""
from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "benchmarks"))                     # _memory.py, also under runpy

from _memory import add_run_options, add_step_options, child_memory, peak_rss_delta, start_run  # noqa: E402
from makd.core import factorize as fz  # noqa: E402
from makd.core.objective import MaKDObjective  # noqa: E402

CONFIGS = ("finetune", "model-only", "hierarchical", "hierarchical-inverted", "all", "layer-only",
           "tinybert", "minilm")
MAKD = ("hierarchical", "hierarchical-inverted", "all", "layer-only")


def load_teacher(quick: bool):
    import transformers as tf
    if quick:
        torch.manual_seed(0)
        cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)
        return tf.BertForSequenceClassification(cfg).eval(), "tiny random BERT (hidden 32, 2 layers)"
    try:
        from makd.assets.models import load_model
        model, _ = load_model("minilm-l6", head="cls")
        return model.eval(), "minilm-l6 (embedded all-MiniLM-L6-v2, cls head)"
    except Exception as err:  # noqa: BLE001 - fall back to the same shape, say so in the JSON
        print(f"minilm-l6 unavailable ({type(err).__name__}: {err}); using a random BertConfig of its shape")
        torch.manual_seed(0)
        cfg = tf.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536)
        return tf.BertForSequenceClassification(cfg).eval(), "random BERT of MiniLM-L6's shape"


def setup(args):
    teacher, source = load_teacher(args.quick)
    teacher.requires_grad_(False)
    student = fz.factorize(teacher, layer_ratio=args.layer_ratio).train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, teacher.config.vocab_size, (args.batch, args.seq), generator=g),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),     # (B, T)
             "labels": torch.randint(0, 2, (args.batch,), generator=g)}                # (B,)
    return teacher, student, batch, source


def make_step(name: str, teacher, student, batch):
    obj = MaKDObjective(student.config.num_hidden_layers, name)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def step():                                                     # DistillTrainer._objective + Trainer
        total = obj.compute(student, teacher, batch)[0]             # the captures are gone before backward
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return step


def measure_memory(args) -> dict:
    """Run in a fresh process: one step of ``args.memory`` and its peak RSS increase (MiB)."""
    teacher, student, batch, _ = setup(args)
    step = make_step(args.memory, teacher, student, batch)

    def two_steps():
        step()
        step()                                                      # AdamW state exists from the 2nd step on
    return peak_rss_delta(two_steps, "the step")


def targets(rows: list[dict]) -> dict[str, bool]:
    """The default MaKD preset, and every MaKD preset, within 1.3x of the logit-KD step."""
    ratio = {r["config"]: r["vs_logit_kd"] for r in rows}
    out = {"hierarchical_step<=1.3x_logit_kd": ratio["hierarchical"] <= 1.3} if "hierarchical" in ratio else {}
    out["every_makd_preset<=1.3x_logit_kd"] = all(ratio[c] <= 1.3 for c in MAKD if c in ratio)
    return out


def lighter_step_targets(rows: list[dict]) -> dict[str, bool]:
    """Issue 24 (lighter capture): hierarchical within 1.10x of the logit-KD step and 1.3x of its peak memory."""
    by = {r["config"]: r for r in rows}
    if "hierarchical" not in by or "model-only" not in by:
        return {}
    out = {"hierarchical_step<=1.10x_logit_kd": by["hierarchical"]["vs_logit_kd"] <= 1.10}
    if "peak_rss_delta_mib" in by["hierarchical"]:
        out["hierarchical_peak_rss<=1.3x_logit_kd"] = (by["hierarchical"]["peak_rss_delta_mib"]
                                                       <= 1.3 * by["model-only"]["peak_rss_delta_mib"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    add_run_options(p, quick="tiny random BERT, batch 4 x 16, 3 runs", memory="per-preset",
                    out=ROOT / "benchmarks" / "results" / "step.json")
    args = p.parse_args(argv)
    start_run(args, {"batch": 4, "seq": 16, "runs": 3, "warmup": 1})
    if args.memory:
        print(json.dumps(measure_memory(args)))
        return 0
    teacher, student, batch, source = setup(args)
    steps = {name: make_step(name, teacher, student, batch) for name in args.configs}
    times: dict[str, list[float]] = {k: [] for k in steps}
    load_before = os.getloadavg()
    for step in steps.values():
        for _ in range(args.warmup):
            step()                                                  # warm-up (and AdamW state)
    for _ in range(args.runs):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    rows = []
    kd = statistics.median(times["model-only"]) if "model-only" in times else None
    for name, ts in times.items():
        row = {"config": name, "median_s": statistics.median(ts), "times_s": ts,
               "vs_logit_kd": statistics.median(ts) / kd if kd else None}
        if not args.no_memory:
            row.update(child_memory(__file__, name, args, ["--batch", str(args.batch), "--seq", str(args.seq),
                                                           "--layer-ratio", str(args.layer_ratio)]))
        rows.append(row)
        mem = f", peak +{row['peak_rss_delta_mib']:.0f} MiB" if "peak_rss_delta_mib" in row else ""
        ratio = f" ({row['vs_logit_kd']:.2f}x logit KD)" if kd else ""
        print(f"{name:>22}: {row['median_s']:.3f} s/step{ratio}{mem}", flush=True)
    result = {
        "teacher": source, "student_layer_ratio": args.layer_ratio,
        "student_params": fz.count_parameters(student), "teacher_params": fz.count_parameters(teacher),
        "batch": args.batch, "seq": args.seq, "runs": args.runs, "warmup": args.warmup, "quick": args.quick,
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "loadavg_before": load_before, "loadavg_after": load_after, "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "step": "objective.compute (teacher in inference mode, student with graph, terms) + backward + AdamW step",
        "rows": rows,
        "targets": targets(rows) if kd else {},
        "targets_lighter_step": lighter_step_targets(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["targets"] | result["targets_lighter_step"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
