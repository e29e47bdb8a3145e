"""Inference scaling of the Transformer teacher and its subquadratic students (issue 21): prefill time and peak
memory over the prompt length, per-token generation latency and the generation state over the context length.

    python benchmarks/bench_subquadratic.py                      # embedded SmolLM2-135M, T = 256 1k 4k 8k, batch 1
    python benchmarks/bench_subquadratic.py --quick              # tiny random Llama, seconds
    python benchmarks/bench_subquadratic.py --mixers gla mlstm --lengths 256 1024
    python benchmarks/bench_subquadratic.py --layers 3 --lengths 4096 8192 --contexts --runs 3 --out /tmp/b.json

Writes benchmarks/results/subquadratic.json (``--out``) and a log-log figure beside it (``.png``). The teacher runs
with its default attention (SDPA) and KV cache; the prompt pass computes the last position's logits only, as
``generate`` does; every student prefills with its chunked parallel form (K/V at the teacher's GQA widths, the
layout of :mod:`makd.students.qkv`; ``--repeat-kv`` for the earlier one-K/V-per-query-head layout) and
generates through its recurrent form (:mod:`makd.students.subquadratic`). Models are timed in interleaved rounds
(each round times every model once; generation continues the same sequence in every round, each model's cache or
state kept from its prompt), the median reported, so load from other processes hits all alike; the load average is
recorded at the start and the end. ``--layers N`` keeps the teacher's first N layers (and builds
the students from them): every layer costs the same, so the ratios to the teacher are those of the whole model
within the noise, at 30/N of the time — for quick comparisons on a busy machine.

Peak memory is the process's peak resident set above its resident set before the call (Linux: the peak is reset
through ``/proc/self/clear_refs`` before each timed call; elsewhere it is not measured). The generation state is
counted exactly: the teacher's KV cache tensors, the students' recurrent states.

Targets (reported, not asserted; README table): at T = 8k every student's prefill ≤ 1/2 of the teacher's time; the
state constant in T and ≤ 1/10 of the teacher's KV cache at 8k; per-token latency at context 8k ≤ 1/2 of the
teacher's.
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

from makd.assets.models import load_model  # noqa: E402
from makd.notebook.mixing_views import plot_scaling  # noqa: E402
from makd.students import qkv  # noqa: E402
from makd.students.mixers.registry import SUBQUADRATIC  # noqa: E402


def _status(field: str) -> int | None:
    """A VmRSS / VmHWM line of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measured(fn):
    """(seconds, peak resident bytes above the start or None, result) of one call."""
    ok = _reset_peak()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") if ok else None
    return seconds, (max(0, peak - before) if peak is not None and before is not None else None), out


def cache_bytes(cache) -> int:
    """Bytes of a generation cache: a transformers DynamicCache's key/value tensors or a MixerCache's states."""
    if hasattr(cache, "state_bytes"):
        return cache.state_bytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if isinstance(t, torch.Tensor))


def prefill(model, ids):
    """The prompt pass of generation: the cache (KV or recurrent state) filled, logits of the last position only
    (``logits_to_keep=1``, as ``generate`` asks for)."""
    return model(input_ids=ids, use_cache=True, logits_to_keep=1)


class Decoder:
    """Greedy generation after a prompt, timed a token at a time: ``prompt`` runs the prefill (the KV cache or
    the recurrent state, and the state's bytes), then every ``tokens(n)`` call times n more tokens continuing the
    same sequence, so rounds can interleave models without prefilling again."""

    def __init__(self, model, ids: torch.Tensor) -> None:
        out = prefill(model, ids)
        self.model, self.cache, self.state_bytes = model, out.past_key_values, cache_bytes(out.past_key_values)
        self.token = out.logits[:, -1:].argmax(-1)
        self.mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)

    def tokens(self, n: int) -> list[float]:
        """Seconds of each of n greedy steps."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            out = self.model(input_ids=self.token, past_key_values=self.cache, attention_mask=self.mask, use_cache=True)
            times.append(time.perf_counter() - t0)
            self.cache, self.token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            self.mask = torch.cat([self.mask, self.mask[:, :1]], dim=1)
        return times


def decode(models: dict, ids: torch.Tensor, steps: int, runs: int) -> dict[str, dict]:
    """Per model: median seconds per new token over ``runs`` interleaved rounds of ``steps`` greedy tokens each
    after the prompt ``ids`` (each round times every model once, so load from other processes hits all alike),
    the per-round medians, and the state bytes after the prompt."""
    decoders = {name: Decoder(model, ids) for name, model in models.items()}
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, dec in decoders.items():
            rounds[name].append(statistics.median(dec.tokens(steps)))
    return {name: {"seconds_per_token": statistics.median(r), "rounds": r,
                   "state_bytes": decoders[name].state_bytes} for name, r in rounds.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--teacher", default="smollm2-135m-instruct", help="Llama-family teacher (embedded name)")
    p.add_argument("--mixers", nargs="+", default=list(SUBQUADRATIC), choices=SUBQUADRATIC,
                   help="students to time (default: every subquadratic mixer)")
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 4096, 8192], help="prefill lengths")
    p.add_argument("--contexts", nargs="*", type=int, default=[1024, 4096, 8192], help="generation contexts")
    p.add_argument("--steps", type=int, default=8, help="generated tokens timed per context and round (median)")
    p.add_argument("--runs", type=int, default=1,
                   help="interleaved rounds per measurement (median): prefill, and the generated tokens (the same "
                        "sequence continued each round)")
    p.add_argument("--quick", action="store_true", help="tiny random Llama, short lengths (a smoke run)")
    p.add_argument("--layers", type=int, default=None, help="keep the teacher's first N layers (quick ratios)")
    p.add_argument("--repeat-kv", action="store_true", help="students with K/V repeated to every query head")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "subquadratic.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.teacher, args.lengths, args.contexts, args.steps = "tiny-llama", [32, 64], [32, 64], 3
    torch.manual_seed(0)
    teacher, _ = load_model(args.teacher, head="lm")
    teacher.eval()
    if args.layers is not None:
        if not 1 <= args.layers <= len(teacher.model.layers):
            p.error(f"--layers must be between 1 and {len(teacher.model.layers)}, got {args.layers}")
        teacher.model.layers = teacher.model.layers[:args.layers]
        teacher.config.num_hidden_layers = args.layers
    models = {"teacher": teacher, **{m: qkv.make_student(teacher, m, repeat_kv=args.repeat_kv) for m in args.mixers}}
    params = {k: qkv.count(v) for k, v in models.items()}
    vocab = teacher.config.vocab_size
    g = torch.Generator().manual_seed(0)
    result: dict = {"what": "prefill (batch 1) and greedy generation, CPU, float32", "teacher": args.teacher,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
                    "platform": platform.platform(), "torch": torch.__version__, "runs": args.runs,
                    "layers": len(teacher.model.layers), "repeat_kv": args.repeat_kv,
                    "kv_heads": {k: v.model.layers[0].mixer.num_kv_heads for k, v in models.items() if k != "teacher"},
                    "params": params, "prefill": {}, "generation": {}}
    with torch.inference_mode():
        for T in args.lengths:
            ids = torch.randint(3, vocab, (1, T), generator=g)
            rounds: dict[str, list] = {k: [] for k in models}
            for _ in range(args.runs):
                for name, model in models.items():
                    seconds, peak, _ = measured(lambda: prefill(model, ids))
                    rounds[name].append((seconds, peak))
                    print(f"prefill T={T:5d} {name:15s} {seconds:8.3f} s  peak +{(peak or 0) / 2**20:8.1f} MiB",
                          flush=True)
            result["prefill"][str(T)] = {k: {"seconds": statistics.median(s for s, _ in v),
                                             "peak_bytes": max((m for _, m in v if m is not None), default=None)}
                                         for k, v in rounds.items()}
            entry = result["prefill"][str(T)]
            print(f"prefill T={T:5d} student / teacher (median, load {os.getloadavg()[0]:.2f}): " + ", ".join(
                f"{k} {entry[k]['seconds'] / entry['teacher']['seconds']:.2f}" for k in entry if k != "teacher"),
                flush=True)
        for C in args.contexts:
            ids = torch.randint(3, vocab, (1, C), generator=g)
            entry = decode(models, ids, args.steps, args.runs)
            for name, e in entry.items():
                print(f"generate C={C:5d} {name:15s} {1000 * e['seconds_per_token']:8.1f} ms/token  state "
                      f"{e['state_bytes'] / 2**20:8.2f} MiB", flush=True)
            print(f"generate C={C:5d} student / teacher (median, load {os.getloadavg()[0]:.2f}): " + ", ".join(
                f"{k} {entry[k]['seconds_per_token'] / entry['teacher']['seconds_per_token']:.2f}"
                for k in entry if k != "teacher"), flush=True)
            result["generation"][str(C)] = entry
    result["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    figure(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def figure(result: dict, path: Path) -> None:
    """Log-log: prefill seconds vs T, per-token latency vs context, state bytes vs context (notebook 11 too)."""
    import matplotlib
    matplotlib.use("Agg")

    fig = plot_scaling(result)
    fig.suptitle(f"{result['teacher']} and its subquadratic students (batch 1, {result['threads']} CPU threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
