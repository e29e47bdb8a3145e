"""Greedy generation speed of the SmolLM2-135M-Instruct teacher and its truncated-SVD students (CPU, float32).

    python benchmarks/bench_generate.py            # embedded SmolLM2-135M-Instruct, students at 0.8 and 0.5
    python benchmarks/bench_generate.py --quick    # tiny random Llama smoke run (seconds)

Each model runs ``generate`` greedily (KV cache, the model's default SDPA attention) on prompts of exactly
``--prompt`` tokens (held-out windows of the embedded Wikipedia articles, :func:`makd.tasks.wiki.heldout_windows`)
and produces exactly ``--new`` tokens (``min_new_tokens`` = ``max_new_tokens``: no early end of sequence; checked
on every call), at batch 1 and 8. tokens/s = batch · new tokens / the wall time of the whole ``generate`` call (the
prompt's prefill included). Students: :func:`makd.core.factorize.factorize` at each ``--ratios`` layer ratio, plain
SVD, fused execution (the default; matrices whose factors are not cheaper run dense). The factorisation runs on one
thread (LAPACK's multi-threaded SVD is slow on a shared CPU); generation on ``--threads``. ``--dense-from F ...``
adds, per ratio and per F other than the default 1.0, the same student fused with ``dense_from=F`` (a matrix runs
its dense product A·B when r·(d_in + d_out) ≥ F·d_in·d_out), named ``student@<ratio>/dense>=<F>``: whether two
thin GEMVs per matrix cost a decoded token more than one dense GEMV (the row's ``matrices_dense`` counts the
matrices that run dense; measured on 2026-12-07 at F = 0.8: no, see the README).

Wall time: median over ``--runs`` calls after one warm-up call, the models interleaved round by round per batch size
(load from other processes hits all alike). Peak memory: each (model, batch) once more in --memory-repeats fresh
subprocesses (median, default 3), its peak resident-set increase over the RSS just before the call (VmHWM reset
through /proc/self/clear_refs; every weight read once before, so a memory-mapped checkpoint's pages are not counted
as the call's); the students reach it through a temporary :func:`makd.core.checkpoint.save_student` folder (no SVD
there).
Writes benchmarks/results/generate.json (``--out``), with ``speedup`` = student tokens/s over the teacher's per student
and batch size. Target (reported, not asserted): the ratio-0.5 student >= 1.6x the teacher at batch 1 and 8.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))                     # _memory.py, also under runpy

from _memory import add_run_options, child_memory, peak_rss_delta, start_run  # noqa: E402
import makd  # noqa: E402
from makd.assets.models import load_model  # noqa: E402
from makd.core import factorize as fz  # noqa: E402
from makd.core.fused import DENSE_FROM, fuse, runs_dense  # noqa: E402
from makd.core.lowrank import LowRankLinear  # noqa: E402
from makd.tasks.wiki import heldout_windows  # noqa: E402

TARGET = 1.6


def prompts(tok, n: int, length: int) -> tuple[torch.Tensor, dict]:
    """``n`` held-out Wikipedia windows of exactly ``length`` tokens, (n, length), and their description."""
    windows, info = heldout_windows(tok, n, length)
    return windows["input_ids"], {k: info[k] for k in ("windows", "window_tokens", "articles_scored")}


def run_generate(model, ids: torch.Tensor, new: int, tok) -> float:
    """Seconds of one greedy ``generate`` of exactly ``new`` tokens after the (B, T) prompt ``ids``."""
    mask = torch.ones_like(ids)                                                # (B, T) no padding
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,    # no_grad inside
                         min_new_tokens=new, use_cache=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, top_p=None, top_k=None, temperature=None)
    seconds = time.perf_counter() - t0
    if tuple(out.shape) != (ids.shape[0], ids.shape[1] + new):
        raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(ids.shape[0], ids.shape[1] + new)}")
    return seconds


def measure_memory(args) -> dict:
    """Fresh process: one generate of ``args.memory`` = "teacher|<student folder>:<batch>", peak RSS increase."""
    from makd.core.checkpoint import load_student, load_tokenizer
    from makd.core.fused import fuse
    where, batch, dense_from = args.memory.rsplit(":", 2)
    if where == "teacher":
        model, tok = load_model(args.teacher, head="lm")
    else:
        model, tok = fuse(load_student(where), dense_from=float(dense_from)), load_tokenizer(where)
    ids, _ = prompts(tok, int(batch), args.prompt)
    with torch.no_grad():                              # page in weights a memory-mapped checkpoint has not read yet,
        for t in [*model.parameters(), *model.buffers()]:   # else the teacher's first call counts them as its peak
            t.sum()
    return peak_rss_delta(lambda: run_generate(model, ids, args.new, tok), "the call")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="Llama-family teacher (embedded name)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.8, 0.5])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="generated tokens (exactly)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dense-from", type=float, nargs="+", default=[DENSE_FROM], metavar="F",
                   help=f"fused students' dense_from values (default {DENSE_FROM}: a matrix runs dense when its "
                        "factors are not cheaper); each other value adds a student per ratio")
    add_run_options(p, quick="tiny random Llama, prompt 32, 16 new tokens, 2 runs", memory="per-(model, batch)",
                    out=ROOT / "benchmarks" / "results" / "generate.json")
    args = p.parse_args(argv)
    start_run(args, {"teacher": "tiny-llama", "prompt": 32, "new": 16, "runs": 2})
    if min(args.batches) < 1 or args.prompt < 1 or args.new < 1 or args.runs < 1 or min(args.dense_from) <= 0:
        p.error("--batches, --prompt, --new, --runs and --dense-from must be positive")
    if args.memory:
        print(json.dumps(measure_memory(args)))
        return 0
    load_before = os.getloadavg()
    teacher, tok = load_model(args.teacher, head="lm")
    all_ids, prompt_info = prompts(tok, max(args.batches), args.prompt)
    models = {"teacher": teacher}
    info = {"teacher": {"layer_ratio": 1.0, "params": fz.count_parameters(teacher), "dense_from": None}}
    threads = torch.get_num_threads()
    for ratio in args.ratios:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        student = fz.factorize(teacher, layer_ratio=ratio).eval()
        took = time.perf_counter() - t0
        torch.set_num_threads(threads)
        low = [m for m in student.modules() if isinstance(m, LowRankLinear)]      # the same in every fusion
        sizes = {"layer_ratio": ratio, "params": fz.count_parameters(student), "factorize_s": took,
                 "achieved_layer_ratio": fz.report_totals(student, teacher)["layer_ratio"], "matrices": len(low)}
        for f in dict.fromkeys(args.dense_from):
            name = f"student@{ratio}" + ("" if f == DENSE_FROM else f"/dense>={f:g}")
            models[name] = fuse(student if f == DENSE_FROM else copy.deepcopy(student), dense_from=f)
            info[name] = {**sizes, "dense_from": f, "matrices_dense": sum(runs_dense(m, f) for m in low)}
            print(f"{name}: {info[name]['params']:,} params, {info[name]['matrices_dense']} of {len(low)} matrices "
                  f"dense, factorised in {took:.1f} s", flush=True)
    rows = []
    for batch in args.batches:
        ids = all_ids[:batch]                                                  # (B, prompt)
        for model in models.values():
            run_generate(model, ids, args.new, tok)                            # warm-up
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.runs):
            for name, model in models.items():
                times[name].append(run_generate(model, ids, args.new, tok))
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"model": name, "batch": batch, "median_s": med, "times_s": ts,
                         "tokens_per_s": batch * args.new / med, **info[name]})
        teacher_tps = next(r["tokens_per_s"] for r in rows if r["model"] == "teacher" and r["batch"] == batch)
        for r in rows[-len(models):]:
            r["speedup"] = r["tokens_per_s"] / teacher_tps
            print(f"batch {batch}: {r['model']:>12} {r['tokens_per_s']:8.1f} tokens/s ({r['speedup']:.2f}x)",
                  flush=True)
    load_after = os.getloadavg()
    if not args.no_memory:
        from makd.core.checkpoint import save_student
        tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
        try:
            where = {"teacher": "teacher"}
            for name, model in models.items():
                if name != "teacher":
                    where[name] = str(save_student(model, tmp / name.replace("/", "_"), tokenizer=tok))
            for r in rows:
                dense = r["dense_from"] or DENSE_FROM
                r.update(child_memory(__file__, f"{where[r['model']]}:{r['batch']}:{dense}", args, [
                    "--teacher", args.teacher, "--prompt", str(args.prompt), "--new", str(args.new)]))
                print(f"batch {r['batch']}: {r['model']:>12} peak +{r['peak_rss_delta_mib']:.0f} MiB", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    speedup = {name: {str(r["batch"]): r["speedup"] for r in rows if r["model"] == name} for name in models
               if name != "teacher"}
    half = speedup.get("student@0.5", {})
    result = {
        "what": "greedy generate (KV cache, SDPA), CPU, float32: batch x new tokens / wall time of the call",
        "teacher": args.teacher, "prompt_tokens": args.prompt, "new_tokens": args.new, "batches": args.batches,
        "runs": args.runs, "quick": args.quick, "prompts": prompt_info, "device": "cpu", "threads": threads,
        "cpu_count": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": load_after,
        "versions": {"makd": makd.__version__, "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__, "python": platform.python_version()},
        "platform": platform.platform(), "rows": rows, "speedup": speedup,
        "targets": {f"student@0.5_speedup>={TARGET}_batch_{b}": half[b] >= TARGET for b in half},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
