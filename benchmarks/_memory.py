"""Peak resident-set increase of one piece of work, for the benchmarks' fresh-process memory rows (Linux), the
options every benchmark with such rows shares (and the step shape the two training-step benchmarks share), and the
two moves they share: :func:`start_run` (threads, the --quick sizes) and :func:`child_memory` (one memory row from a
fresh process of the same script).

Used by ``bench_step.py``, ``bench_vs_textbrewer.py`` and ``bench_generate.py`` (run as scripts, so this folder is
on ``sys.path``): VmHWM, reset to the current RSS through ``/proc/self/clear_refs``, minus VmRSS just before the
work; where the reset is not allowed, the ``ru_maxrss`` delta (which includes anything earlier that peaked higher).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


def status_kb(key: str) -> int:
    """A ``/proc/self/status`` line (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_delta(work: Callable[[], Any], what: str = "the step") -> dict[str, Any]:
    """Run ``work()``; return ``{"peak_rss_delta_mib", "memory_method"}``."""
    rss0 = status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")                 # reset VmHWM to the current RSS
        hwm = True
    except OSError:
        hwm = False
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work()
    if hwm:
        return {"peak_rss_delta_mib": (status_kb("VmHWM") - rss0) / 1024,
                "memory_method": f"VmHWM after /proc/self/clear_refs reset, minus VmRSS before {what}"}
    return {"peak_rss_delta_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max0) / 1024,
            "memory_method": "ru_maxrss delta (includes model loading if that peaked higher)"}


def add_step_options(p: argparse.ArgumentParser) -> None:
    """The training-step shape of ``bench_step.py`` and ``bench_vs_textbrewer.py``: --batch, --seq, --runs, --warmup,
    --layer-ratio (the student's)."""
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layer-ratio", type=float, default=0.5)


def add_run_options(p: argparse.ArgumentParser, *, quick: str, memory: str, out: Path) -> None:
    """--threads, --quick (``quick``: what it runs), --no-memory (``memory``: what it skips), the internal --memory
    child mode and --out (default ``out``)."""
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--no-memory", action="store_true", help=f"skip the {memory} memory subprocesses")
    p.add_argument("--memory-repeats", type=int, default=None, metavar="N",
                   help="fresh processes per memory row, the median reported (default 3, 1 with --quick: one "
                        "process's peak RSS moves by up to ~10 %% with the allocator's history)")
    p.add_argument("--memory", default=None, help=argparse.SUPPRESS)   # internal: child process mode
    p.add_argument("--out", type=Path, default=out)


def start_run(args: argparse.Namespace, quick: dict[str, Any]) -> None:
    """--threads sets torch's thread count; --quick replaces the options named in ``quick`` by its values;
    --memory-repeats defaults to 3 (1 with --quick) and must be >= 1."""
    if getattr(args, "memory_repeats", 1) is None:
        args.memory_repeats = 1 if args.quick else 3
    if getattr(args, "memory_repeats", 1) < 1:
        raise SystemExit(f"--memory-repeats must be at least 1, got {args.memory_repeats}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)


def child_memory(script: str | Path, mode: str, args: argparse.Namespace, options: list[str]) -> dict[str, Any]:
    """Run ``script --memory mode *options`` (plus --quick and --threads as this run has them) in
    ``args.memory_repeats`` fresh processes, one after the other; the row of the median peak (the children's
    :func:`peak_rss_delta` rows, from the JSON of each one's last output line), with every child's peak in
    ``peak_rss_delta_mib_runs`` (measured: the same MiniLM-L6 logit-KD step peaked at 919, 983 and 1,025 MiB in
    three processes — glibc's allocator returns and reuses large blocks differently from run to run)."""
    cmd = [sys.executable, str(script), "--memory", mode, *options] + (["--quick"] if args.quick else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    rows = []
    for _ in range(getattr(args, "memory_repeats", None) or 1):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
        rows.append(json.loads(out[-1]))
    runs = [r["peak_rss_delta_mib"] for r in rows]
    return {**sorted(rows, key=lambda r: r["peak_rss_delta_mib"])[(len(rows) - 1) // 2],
            "peak_rss_delta_mib": statistics.median(runs), "peak_rss_delta_mib_runs": runs}
