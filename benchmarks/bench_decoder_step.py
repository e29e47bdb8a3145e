"""Cost of ONE decoder distillation step in float32 and in mixed precision (``python -m makd decoder --bf16``), CPU.

    python benchmarks/bench_decoder_step.py           # SmolLM2-135M-Instruct teacher, its SVD student at ratio 0.8
    python benchmarks/bench_decoder_step.py --quick   # tiny random Llama smoke run (seconds)

A step is what the decoder command's trainer does for SFT, KD and MaKD (:func:`makd.experiments.decoder_methods.
objective_for`): ``objective.compute`` (the teacher once under inference mode, the student with its graph, the
terms), backward, AdamW step. Mixed precision as the Trainer's ``bf16=True`` sets it up: each model's ``forward``
wrapped in ``torch.autocast("cpu", dtype=torch.bfloat16)`` (accelerate wraps the prepared student and the prepared
teacher alike), the loss terms — which upcast half-precision captures — backward and the optimizer outside it,
parameters float32. The batch: the first ``--batch`` training pairs of the embedded ChatterBot proxy, tokenised as the
command tokenises them (chat template, ``--max-length``), right-padded. The student is the plain-SVD one at uniform
ranks: a step's cost depends on the factors' shapes, not their values, so it is also the cost of the recorded
study's whitened student (``--weighting whiten``, uniform ranks: the same shapes). Wall time: median over ``--runs``
steps after ``--warmup``, method by method with its two precisions interleaved round by round (load from other
processes hits both alike), the load average recorded before and after, with the CPU model and whether it has
AVX512-BF16 / AMX — where it has neither, bfloat16 products are emulated and the speedup may be below 1.
Writes benchmarks/results/decoder_step.json (``--out``): per method the median seconds per step in each precision
and ``bf16_speedup`` = float32 over bfloat16, and the loss of the first step in both (how far mixed precision moves
it). Reported, not asserted.
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

from makd.assets.models import load_model  # noqa: E402
from makd.core import factorize as fz  # noqa: E402
from makd.core.families import num_layers  # noqa: E402
from makd.experiments.decoder_methods import objective_for  # noqa: E402
from makd.notebook.expected import machine  # noqa: E402
from makd.tasks.instructions import load_instructions  # noqa: E402
from makd.tasks.prompts import CausalCollator, sft_features  # noqa: E402

METHODS = ("sft", "kd", "makd")


def cpu_info() -> dict:
    """CPU model name (:func:`makd.notebook.expected.machine`) and the flags that decide bfloat16 speed (Linux
    /proc/cpuinfo; False elsewhere)."""
    try:
        flags = set(next(ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("flags")))
    except (OSError, StopIteration):
        flags = set()
    return {"model": machine()["cpu"], "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def autocast_forward(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a copy's attribute) with its forward under bfloat16 autocast, as accelerate's prepare_model does."""
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    return model


def make_batch(tok, n: int, max_length: int) -> dict[str, torch.Tensor]:
    train = load_instructions("chatterbot").train                                    # datasets.Dataset
    rows = [dict(r) for r in train.select(range(min(n, len(train))))]
    feats, _ = sft_features(rows, tok, max_length=max_length)
    return CausalCollator(tok.pad_token_id)([feats[i] for i in range(len(feats))])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="Llama-family teacher (embedded name)")
    p.add_argument("--ratio", type=float, default=0.8, help="the student's layer ratio (plain SVD: the speed of a "
                   "step does not depend on how the factors were initialised)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch", type=int, default=8, help="training pairs per step (the decoder command's default)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny random Llama, 1 run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decoder_step.json")
    args = p.parse_args(argv)
    if args.quick:
        args.teacher, args.runs, args.warmup = "tiny-llama", 1, 1
    if args.batch < 1 or args.runs < 1 or args.warmup < 0 or not 0 < args.ratio < 1:
        p.error("--batch and --runs must be positive, --warmup >= 0, 0 < --ratio < 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    teacher, tok = load_model(args.teacher, head="lm")
    teacher.eval().requires_grad_(False)
    base = fz.factorize(teacher, layer_ratio=args.ratio)
    batch = make_batch(tok, args.batch, args.max_length)
    n_layers = num_layers(teacher.config)
    fast_teacher = autocast_forward(copy.deepcopy(teacher))

    def one(state) -> tuple[float, float]:
        student, t, opt, obj = state
        t0 = time.perf_counter()
        total, _, _ = obj.compute(student, t if obj.needs_teacher else None, batch)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, float(total.detach())

    rows = {}
    for method in args.methods:          # one method at a time (two students + optimizer states alive, not six)
        states = {}
        for precision in ("float32", "bfloat16"):
            student = copy.deepcopy(base).train()
            if precision == "bfloat16":
                autocast_forward(student)
            opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=5e-5)
            states[precision] = (student, teacher if precision == "float32" else fast_teacher, opt,
                                 objective_for(method, n_layers))
        first = {k: one(s)[1] for k, s in states.items()}                  # step 0 (the first warm-up): its loss
        for _ in range(args.warmup - 1):
            for s in states.values():
                one(s)
        times: dict[str, list[float]] = {k: [] for k in states}
        for _ in range(args.runs):                                         # the two precisions interleaved
            for k, s in states.items():
                times[k].append(one(s)[0])
        del states
        f32, b16 = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
        rows[method] = {"float32_s": f32, "bfloat16_s": b16, "bf16_speedup": f32 / b16,
                        "times_float32_s": times["float32"], "times_bfloat16_s": times["bfloat16"],
                        "first_loss_float32": first["float32"], "first_loss_bfloat16": first["bfloat16"]}
        print(f"{method:5s} float32 {f32:7.2f} s  bfloat16 {b16:7.2f} s  ({f32 / b16:.2f}x)  first loss "
              f"{first['float32']:.4f} / {first['bfloat16']:.4f}", flush=True)
    result = {
        "what": "one decoder distillation step (objective.compute + backward + AdamW), float32 vs bfloat16 autocast",
        "teacher": args.teacher, "student_layer_ratio": args.ratio, "student_params": fz.count_parameters(base),
        "batch": args.batch, "tokens": int(batch["attention_mask"].sum()),
        "padded_shape": list(batch["input_ids"].shape),
        "runs": args.runs, "warmup": args.warmup, "quick": args.quick, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "cpu": cpu_info(), "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(), "torch": torch.__version__, "platform": platform.platform(),
        "methods": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
