"""Chunk size of every subquadratic mixer's chunked prefill form: which chunk length L is fastest on this CPU.

A chunked form does O(T·L·d) work inside chunks of L tokens and a loop of T / L state updates across them, so the
best L depends on the mixer (per-channel or per-head decays, the delta rule's triangular solves) and the machine,
not on the values it computes (every L gives the same outputs to rounding; the tests check it). This times ONE
mixer module — projections, chunked core, output — at the teacher's geometry (SmolLM2: 576 wide, 9 query heads,
3 key/value heads), initialised by QKV copy from the teacher's first layer and fed that layer's normalised
inputs for random tokens, for each chunk size, in interleaved rounds (median; load from other processes hits
every chunk size alike). The mixers' ``chunk_size`` defaults come from this measurement.

    python benchmarks/bench_chunk_size.py                     # T = 4096 8192, L = 16 32 64 128, 2 threads
    python benchmarks/bench_chunk_size.py --quick             # tiny random Llama, seconds
    python benchmarks/bench_chunk_size.py --mixers gla mamba2 --lengths 8192 --runs 7

Writes benchmarks/results/chunk_size.json (``--out``): per length, mixer and chunk size the median seconds, the
fastest chunk size and the time at the mixer's default relative to the fastest (``default_over_best``).
"""
from __future__ import annotations

import argparse
import inspect
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
from makd.students import qkv  # noqa: E402
from makd.students.mixers.registry import SUBQUADRATIC, mixer_class  # noqa: E402


def default_chunk(name: str) -> int:
    """The ``chunk_size`` a mixer is built with when none is given."""
    return inspect.signature(mixer_class(name).__init__).parameters["chunk_size"].default


def mixers_of(teacher, names: list[str]) -> dict[str, torch.nn.Module]:
    """Each mixer of a student of ``teacher`` (QKV copy of the teacher's first layer): its first layer's."""
    out = {}
    for name in names:
        student = qkv.make_student(teacher, name)
        out[name] = student.model.layers[0].mixer.eval()
    return out


def layer_input(teacher, length: int, seed: int = 0) -> torch.Tensor:
    """The first layer's normalised input for ``length`` random tokens: (1, T, D)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, teacher.config.vocab_size, (1, length), generator=g)
    with torch.inference_mode():
        return teacher.model.layers[0].input_layernorm(teacher.model.embed_tokens(ids))


def time_chunks(mixer, x: torch.Tensor, chunks: list[int], runs: int) -> dict[int, float]:
    """Median seconds of ``mixer(x)`` per chunk size, the sizes interleaved within every round (one warm-up)."""
    original = mixer.chunk_size
    times: dict[int, list[float]] = {c: [] for c in chunks}
    try:
        with torch.inference_mode():
            for c in chunks:                                   # warm-up: allocator and kernels, every size once
                mixer.chunk_size = c
                mixer(x)
            for _ in range(runs):
                for c in chunks:
                    mixer.chunk_size = c
                    start = time.perf_counter()
                    mixer(x)
                    times[c].append(time.perf_counter() - start)
    finally:
        mixer.chunk_size = original
    return {c: statistics.median(t) for c, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="Llama-family teacher (embedded name)")
    p.add_argument("--mixers", nargs="+", default=list(SUBQUADRATIC), choices=SUBQUADRATIC,
                   help="mixers to time (default: every subquadratic mixer)")
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192], help="prefill lengths T")
    p.add_argument("--chunks", nargs="+", type=int, default=[16, 32, 64, 128], help="chunk sizes L")
    p.add_argument("--runs", type=int, default=5, help="interleaved rounds (median)")
    p.add_argument("--quick", action="store_true", help="tiny random Llama, short lengths (a smoke run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "chunk_size.json"))
    args = p.parse_args(argv)
    if any(c < 1 for c in args.chunks) or any(t < 1 for t in args.lengths) or args.runs < 1:
        p.error("--chunks, --lengths and --runs take positive integers")
    if args.quick:
        args.teacher, args.lengths, args.chunks, args.runs = "tiny-llama", [32, 64], [4, 8, 16], 2
    torch.manual_seed(0)
    teacher, _ = load_model(args.teacher, head="lm")
    teacher.eval()
    teacher.model.layers = teacher.model.layers[:1]                 # one layer is all a mixer needs
    teacher.config.num_hidden_layers = 1
    mixers = mixers_of(teacher, args.mixers)
    first = next(iter(mixers.values()))
    result: dict = {"what": "one mixer module's chunked prefill (projections, core, output), batch 1, CPU, float32",
                    "teacher": args.teacher, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_avg_start": os.getloadavg(), "platform": platform.platform(), "torch": torch.__version__,
                    "geometry": {"hidden": teacher.config.hidden_size, "heads": first.num_heads,
                                 "kv_heads": first.num_kv_heads, "head_dim": first.head_dim},
                    "runs": args.runs, "chunks": args.chunks,
                    "defaults": {m: default_chunk(m) for m in args.mixers}, "seconds": {}, "best": {},
                    "default_over_best": {}}
    for T in args.lengths:
        x = layer_input(teacher, T)
        for key in ("seconds", "best", "default_over_best"):
            result[key][str(T)] = {}
        for name, mixer in mixers.items():
            chunks = sorted(set(args.chunks) | {result["defaults"][name]})
            med = time_chunks(mixer, x, chunks, args.runs)
            best = min(med, key=med.get)
            result["seconds"][str(T)][name] = {str(c): s for c, s in med.items()}
            result["best"][str(T)][name] = best
            result["default_over_best"][str(T)][name] = med[result["defaults"][name]] / med[best]
            print(f"T={T:5d} {name:15s} " + "  ".join(f"L={c}: {s * 1000:7.1f} ms" for c, s in med.items())
                  + f"  -> best L={best} (default {result['defaults'][name]}: "
                    f"{result['default_over_best'][str(T)][name]:.2f}x)", flush=True)
    result["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
