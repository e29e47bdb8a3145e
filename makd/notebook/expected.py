"""Expected numbers per profile as data, and the verdict at the end of every reproduction: did it give them back?

Where they live: ``notebooks/expected/<profile>.json``, beside the notebooks whose ``metrics/<stem>.json`` they
describe. The runner reads ``<notebook folder>/expected/<profile>.json``, so a folder passed with ``--notebooks``
brings its own values (the runner tests' fixture notebooks never meet the real ones). They are made from reference
run folders, never typed by hand::

    python -m makd reproduce --profile smoke --out /tmp/ref-a           # one or more reference runs
    python -m makd reproduce --write-expected /tmp/ref-a /tmp/ref-b --profile smoke
    python -m makd reproduce --readme README.md                         # the README's demo block from demo.json

Headline quantities: every number (int or float, not bool) of a notebook's metrics file, nested dicts flattened
to dotted names (``per_task.rte.student``). Lists, strings and booleans are not checked, and never a runtime or a
throughput (a name part that is or contains ``runtime``, ``time``, ``seconds``, ``speed``, ``throughput``,
``per_s``, or ends in ``_s``): those depend on the machine; each notebook's runtime is recorded beside the verdict
with the machine's CPU, core count and load average at start, and the reference runtimes sit in the expected file.
Nor are the counts of the repository's own files that ``00_overview`` reports (`INVENTORY`: modules, layers,
notebooks present): they move whenever a module or a notebook is added, not when a result does; nor the counts of
recorded runs that ``90_results`` reads from ``results/`` (runs, rows of ours in the paper-vs-ours table): they
move whenever a run is recorded.

Tolerances (absolute; ``|got - expected| <= tolerance`` passes), from the reference runs' values of a quantity:

- always at least the numerical-noise floor ``max(1e-6, 1e-4 × |value|)``: float rounding that differs across CPU
  types, thread counts and library builds, not a change of the method (smoke profile: 1 vs 4 threads agree
  bitwise, AVX-512 vs AVX2 — ``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2`` —
  within 3e-5 relative); the checked-in smoke file: two default runs + one AVX2 run, each with a fresh cache;
- 3 or more runs: the value is their mean and the tolerance ``3 × std`` (sample std) when larger than the floor,
  labelled seed variation when the runs' ``seed`` parameters differ, run-to-run variation when they do not;
- 1 or 2 runs: numerical noise only: the floor, or twice the two runs' difference when that is larger;
- a rounding error of an identity (`ROUNDING`: the largest gap between two forms of one computation) passes from 0
  up to ``ROUNDING_K`` × the reference: summation order, which moves with the CPU's vector width, sets its size (the
  float32 maxima of notebook 11's demo, 1e-3 to 3e-2); a broken identity is off by the size of the outputs.

The verdict (``reproduction.json`` and ``reproduction.md`` in the run folder) is one table "notebook | quantity |
expected | got | tolerance | within tolerance?" and one closing line: "reproduced", "not reproduced: N quantities
outside tolerance", or "no expected values for profile X". The runner must not import pandas (its test says so),
so this module writes its Markdown tables itself, in the unpadded format of ``makd.experiments.tables``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

from makd.assets.files import write_json
from makd.experiments.runrecord import git_commit

NOISE_ATOL, NOISE_RTOL, SPREAD_K = 1e-6, 1e-4, 3.0
ROUNDING_K = 10.0
ROUNDING = re.compile(r"(^|\.)max_parallel_vs_recurrent(\.|$)|(^|\.)max_abs_diff")   # rounding errors of identities
RUNTIME = re.compile(r"runtime|time|seconds|speed|throughput|per_s(ec)?$|_s$")
INVENTORY = {"00_overview": ("modules", "layers", "notebooks_present"),   # counts of the package's own files ...
             "90_results": ("n_runs", "table_rows", "ours_rows")}      # ... and of its recorded runs (results/)


def headline(metrics: dict[str, Any], prefix: str = "") -> dict[str, int | float]:
    """The checked quantities of one metrics file: numbers of nested dicts under dotted names, runtimes left out."""
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if RUNTIME.search(str(key)):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(headline(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = value
    return out


def checked(stem: str, metrics: dict[str, Any]) -> dict[str, int | float]:
    """The quantities of notebook ``stem`` that a reproduction checks: its headline numbers less `INVENTORY`."""
    return {k: v for k, v in headline(metrics).items() if k not in INVENTORY.get(stem, ())}


def machine() -> dict[str, Any]:
    """CPU model, core count, load average (1, 5, 15 min) and platform, now; no heavy import."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": load, "platform": platform.platform()}


def run_record() -> dict[str, Any]:
    """What the runner records at the start of a run: time, machine, commit."""
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(), "commit": git_commit()}


def tolerance(values: list[float], seeds: list[Any], name: str = "") -> tuple[float, float, str]:
    """(expected value, tolerance, why) from the reference runs' values of quantity ``name`` (module docstring)."""
    center, tol, why = _tolerance(values, seeds)
    if ROUNDING.search(name) and (ROUNDING_K - 1) * abs(center) > tol:
        return center, (ROUNDING_K - 1) * abs(center), (
            f"rounding error of an identity: 0 to {ROUNDING_K:g} * the reference passes (the summation order moves "
            f"with the CPU); {why}")
    return center, tol, why


def _tolerance(values: list[float], seeds: list[Any]) -> tuple[float, float, str]:
    same = all(v == values[0] for v in values)
    center = values[0] if same else statistics.fmean(values)
    floor = max(NOISE_ATOL, NOISE_RTOL * abs(center))
    noise = f"numerical noise: max({NOISE_ATOL:g}, {NOISE_RTOL:g} * |value|)"
    if len(values) >= 3:
        spread = SPREAD_K * statistics.stdev(values)
        kind = f"seed variation over seeds {sorted(set(seeds), key=str)}" if len(set(map(str, seeds))) > 1 else \
            f"run-to-run variation (seed {seeds[0]})"
        if spread > floor:
            return center, spread, f"{kind}: {SPREAD_K:g} * std over {len(values)} reference runs"
        return center, floor, f"{noise}; {len(values)} reference runs, {kind} smaller"
    if len(values) == 2 and 2 * abs(values[1] - values[0]) > floor:
        return center, 2 * abs(values[1] - values[0]), "numerical noise: twice the 2 reference runs' difference"
    runs = "one reference run" if len(values) == 1 else "2 reference runs " + \
        ("agree exactly" if same else f"differ by {abs(values[1] - values[0]):.2g}")
    return center, floor, f"{noise}; {runs}"


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"notebooks": {}}


def build_expected(run_dirs: list[Path], profile: str) -> dict[str, Any]:
    """The expected-values document of ``profile`` from reference run folders (same notebooks, same profile)."""
    if not run_dirs:
        raise ValueError("--write-expected needs at least one reference run folder")
    runs, manifests = [], []
    for d in run_dirs:
        files = sorted((d / "metrics").glob("*.json"))
        if not files:
            raise FileNotFoundError(f"{d} holds no metrics/*.json: pass the --out folder of a finished reproduce run")
        man = _manifest(d)
        if man.get("profile", profile) != profile:
            raise ValueError(f"{d} is a run of profile {man['profile']!r}, not {profile!r}: pass --profile "
                             f"{man['profile']} or runs of {profile}")
        runs.append({p.stem: json.loads(p.read_text()) for p in files})
        manifests.append(man)
    stems = list(runs[0])
    for d, r in zip(run_dirs[1:], runs[1:]):
        if list(r) != stems:
            raise ValueError(f"{d} ran notebooks {sorted(r)}, {run_dirs[0]} ran {stems}: reference runs must match")
    notebooks = {}
    for stem in stems:
        entries = [m.get("notebooks", {}).get(stem, {}) for m in manifests]
        seeds = [e.get("parameters", {}).get("seed") for e in entries]
        per_run = [checked(stem, r[stem]) for r in runs]
        quantities = {}
        for name in per_run[0]:
            values = [h.get(name) for h in per_run]
            if any(v is None for v in values):
                continue  # not in every run: nothing to compare it with
            value, tol, why = tolerance(values, seeds, name)
            quantities[name] = {"value": value, "tolerance": tol, "why": why, "runs": values}
        notebooks[stem] = {"runtime_s": [e.get("runtime_s") for e in entries], "quantities": quantities}
    return {"profile": profile,
            "command": f"python -m makd reproduce --write-expected <{len(run_dirs)} run folder(s)> --profile {profile}",
            "rule": {"noise_atol": NOISE_ATOL, "noise_rtol": NOISE_RTOL, "spread_k": SPREAD_K},
            "reference": {"runs": len(run_dirs), "started": [m.get("started") for m in manifests],
                          "machine": [m.get("machine") for m in manifests],
                          "commit": [m.get("commit") for m in manifests]},
            "notebooks": notebooks}


def write_expected(run_dirs: list[Path], profile: str, path: Path) -> Path:
    """Write the expected values of ``profile``; the notebooks of the runs replace (or add) their entries of an
    existing file of the same profile and the others are kept (``reproduce --only`` updates one notebook), each
    notebook keeping its own reference."""
    new = build_expected(run_dirs, profile)
    for entry in new["notebooks"].values():
        entry["reference"] = new["reference"]
    old = json.loads(path.read_text()) if path.is_file() else None
    if old and old.get("profile") == profile:
        for stem, entry in old["notebooks"].items():
            entry.setdefault("reference", old["reference"])
        new["notebooks"] = {**old["notebooks"], **new["notebooks"]}
        new["notebooks"] = {k: new["notebooks"][k] for k in sorted(new["notebooks"])}
    return write_json(path, new)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "–" if value is None else str(value)


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    """An unpadded GitHub table (the format of ``makd.experiments.tables``), '|' in cells escaped."""
    cell = lambda v: _fmt(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def check(expected_file: Path, run_dir: Path, stems: list[str], manifest: dict[str, Any], profile: str) -> dict:
    """The verdict of a run: every expected quantity of the notebooks in ``stems`` against run_dir/metrics."""
    record = {"profile": profile, "expected_file": str(expected_file), "started": manifest.get("started"),
              "machine": manifest.get("machine"), "rows": [], "unchecked": [], "new": {},
              "runtime_s": {s: manifest.get("notebooks", {}).get(s, {}).get("runtime_s") for s in stems}}
    if not expected_file.is_file():
        return {**record, "reproduced": None, "misses": 0,
                "line": f"no expected values for profile {profile} (no file {expected_file})"}
    expected = json.loads(expected_file.read_text())["notebooks"]
    for stem in stems:
        if stem not in expected:
            record["unchecked"].append(stem)
            continue
        path = run_dir / "metrics" / f"{stem}.json"
        got = checked(stem, json.loads(path.read_text())) if path.is_file() else {}
        record["new"][stem] = sorted(set(got) - set(expected[stem]["quantities"]))
        for name, e in expected[stem]["quantities"].items():
            g = got.get(name)
            ok = g is not None and abs(g - e["value"]) <= e["tolerance"]
            record["rows"].append({"notebook": stem, "quantity": name, "expected": e["value"], "got": g,
                                   "tolerance": e["tolerance"], "ok": ok, "why": e["why"],
                                   "reference_runtime_s": expected[stem].get("runtime_s")})
    misses = sum(not r["ok"] for r in record["rows"])
    if not record["rows"]:
        return {**record, "reproduced": None, "misses": 0,
                "line": f"no expected values for profile {profile} for the notebooks run ({expected_file})"}
    line = f"reproduced: all {len(record['rows'])} quantities within tolerance" if not misses else \
        f"not reproduced: {misses} {'quantity' if misses == 1 else 'quantities'} outside tolerance"
    return {**record, "reproduced": not misses, "misses": misses, "line": line}


def table(verdict: dict[str, Any], only_misses: bool = False) -> str:
    """notebook | quantity | expected | got | tolerance | within tolerance? (``only_misses``: the rows that failed)."""
    rows = [[r["notebook"], r["quantity"], r["expected"], "missing" if r["got"] is None else r["got"],
             f"± {r['tolerance']:.2g}", "yes" if r["ok"] else "NO"]
            for r in verdict["rows"] if not (only_misses and r["ok"])]
    return markdown(["notebook", "quantity", "expected", "got", "tolerance", "within tolerance?"], rows)


def render(verdict: dict[str, Any]) -> str:
    """The verdict as Markdown: the table, notes, runtimes with the machine, and the closing line last."""
    m = verdict.get("machine") or {}
    notes = [f"- no expected values for notebook {s}" for s in verdict["unchecked"]]
    notes += [f"- {stem}: {len(n)} quantities not in the expected file (not checked): {', '.join(n[:8])}"
              for stem, n in verdict["new"].items() if n]
    ref = {r["notebook"]: r["reference_runtime_s"] for r in verdict["rows"]}
    runtimes = [[s, t, ", ".join(_fmt(x) for x in ref.get(s) or []) or "–"] for s, t in verdict["runtime_s"].items()]
    sections = ["## Reproduction", table(verdict) if verdict["rows"] else "", "\n".join(notes),
                f"Runtimes (not checked), started {verdict.get('started')} on {m.get('cpu')}, {m.get('cores')} cores, "
                f"load average {m.get('load_avg')} at start:",
                markdown(["notebook", "runtime (s)", "reference (s)"], runtimes), verdict["line"]]
    return "\n\n".join(x for x in sections if x)


def write_verdict(run_dir: Path, verdict: dict[str, Any]) -> str:
    """Write run_dir/reproduction.json and .md; return the Markdown."""
    text = render(verdict)
    write_json(run_dir / "reproduction.json", verdict)
    (run_dir / "reproduction.md").write_text(text + "\n")
    return text
