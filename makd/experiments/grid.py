"""`python -m makd grid`: baselines and ablations declared as data, run over tasks × seeds, resumable.

A grid is a YAML/JSON file (see ``grids/``)::

    name: rt-polarity
    tasks: [rt-polarity]            # one folder per task
    seeds: [0, 1, 2]
    shared: {teacher: minilm-l6, layer_ratio: 0.5, epochs: 1, max_length: 64}   # pipeline options
    task_options: {rte: {max_length: 128}}                                     # optional, per task
    cells:
      - {name: makd, group: method, label: "MaKD (hierarchical)", options: {objective: hierarchical}}
      - {name: no-matrix, group: ablation, options: {weights: {mha: 0, ffn: 0}}}
      - {name: svd-at-l3, group: baseline, options: {objective: model-only, budget: {budget_of: "layers:3"}}}

Every cell × seed × task runs :func:`makd.experiments.distill.distill` into ``OUT/<task>/<cell>/s<seed>/`` with
options = shared ∪ task_options[task] ∪ cell.options (later wins; a cell's size key — ``layer_ratio``,
``budget``, ``rank`` — replaces the shared one; a dense ``student`` drops them). ``{budget_of: SPEC}``
is the exact total parameter count of the dense student SPEC (``layers:K`` or a model name such as
``minilm-l3``) built for this teacher and task, so the SVD student is compared at the SAME total count.
With ``command: subquadratic`` (``grids/subquadratic.yaml``) every cell runs
:func:`makd.experiments.subquadratic.subquadratic` instead, its options those of ``python -m makd subquadratic``
and the grid's ``tasks`` its text sources (``--text``: wiki, data); the score is the student's top-1 agreement.

A cell is SKIPPED when its ``metrics.json`` exists and its ``cell.json`` records the same config hash
(sha256 of the resolved options); an interrupted cell (checkpoints, no metrics.json) resumes from its last
checkpoint; a cell whose options changed is re-run from scratch. ``OUT/grid_run.json`` accumulates the
CPU and wall time of every executed cell (``time.process_time``: all threads of this process).
A finished cell whose fine-tuned teacher checkpoint (sha256 in its run record) differs from the other finished
cells of its task is flagged with a WARNING and listed in the summary's ``teacher_mismatch``: a grid compares cells
under ONE teacher. The teacher's new head is seeded from the teacher seed (before 2026-12-05 it followed the RNG
state of whichever cell triggered the fine-tuning, so a teacher re-trained from another seed's cell differed), but
fine-tuning on another CPU type, thread count or library version may still not be bitwise identical.
"""
from __future__ import annotations

import gc
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from makd.assets.files import write_json
from makd.assets.runfolder import run_folder
from makd.core.errors import RunFolderError
from makd.experiments import stats, teachers  # the teacher-checkpoint check after each finished cell
from makd.experiments.distill import distill
from makd.experiments.subquadratic import subquadratic
from makd.experiments.grid_budget import budget_of, resolve_options  # noqa: F401
from makd.experiments.grid_plan import (COMMANDS, GROUPS, SIZE_KEYS, VOLATILE, _parse_set, build_parser,  # noqa: F401
                                        cell_options, check_options, coerce_types, config_hash, load_grid, plan,
                                        portable_options,
                                        validate_grid)

log = logging.getLogger("makd.experiments.grid")
RUNNERS: dict[str, Callable[..., dict]] = {"distill": distill, "subquadratic": subquadratic}   # grid_plan.COMMANDS




# ------------------------------------------------------------------------------------------ running
def cell_dir(out_dir: str | Path, task: str, cell: str, seed: int) -> Path:
    return Path(out_dir) / task / cell / f"s{seed}"


def status(folder: Path, digest: str) -> str:
    """'done' (metrics.json + same hash), 'resume' (same hash, checkpoints), 'stale' (other hash) or 'new'."""
    info_path = folder / "cell.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    same = info.get("config_hash") == digest
    if same and (folder / "metrics.json").is_file() and info.get("status") == "done":
        return "done"
    if same and any((folder / "checkpoints").glob("checkpoint-*")):
        return "resume"
    if same:                                    # started with these options, stopped before a checkpoint
        return "new"
    return "stale" if info or (folder / "metrics.json").is_file() else "new"


def run_grid(grid: dict[str, Any] | str | Path, out_dir: str | Path, *, only: list[str] | None = None,
             seeds: list[int] | None = None, tasks: list[str] | None = None,
             overrides: dict[str, Any] | None = None, stop_on_error: bool = False, keep_checkpoints: bool = False,
             run_fn: Callable[..., dict] | None = None, echo: Callable[[str], None] = print,
             command: str | None = None) -> dict[str, Any]:
    """Run (or skip / resume) every cell; returns {"runs": [...], "cpu_s", "wall_s", counts}.

    ``run_fn(**options)`` defaults to the grid's command (:data:`RUNNERS`: :func:`makd.experiments.distill.distill`,
    or :func:`makd.experiments.subquadratic.subquadratic` for ``command: subquadratic``; tests pass a wrapper to
    interrupt a run). A failing cell is recorded in its ``cell.json`` (status "error") and the grid goes on unless
    ``stop_on_error``. A finished cell's checkpoints (needed only to resume) are deleted unless
    ``keep_checkpoints``. The summary is also merged into ``OUT/grid_run.json``. ``OUT`` is locked for the
    whole run (:func:`makd.assets.runfolder.run_folder`; ``command`` is shown to a second runner, which is refused
    with a RunFolderError); a lock left by a killed runner is taken over.
    """
    if not isinstance(grid, dict):
        grid = load_grid(grid)
    run_fn = RUNNERS[grid.get("command", "distill")] if run_fn is None else run_fn
    out_dir = Path(out_dir)
    jobs = plan(grid, only=only, seeds=seeds, tasks=tasks, overrides=overrides)
    # one grid runner per folder (a second one would run the same cells); each cell's run locks its own folder
    with run_folder(out_dir, command=command, what="the grid"):
        return _run_jobs(grid, jobs, out_dir, stop_on_error=stop_on_error, keep_checkpoints=keep_checkpoints,
                         run_fn=run_fn, echo=echo)


def _run_jobs(grid: dict[str, Any], jobs: list[dict[str, Any]], out_dir: Path, *, stop_on_error: bool,
              keep_checkpoints: bool, run_fn: Callable[..., dict], echo: Callable[[str], None]) -> dict[str, Any]:
    budgets: dict = {}
    cls = COMMANDS[grid.get("command", "distill")][0]
    runs, t_grid, cpu_grid = [], time.time(), time.process_time()
    done_walls: list[float] = []
    mismatch: set[str] = set()
    for i, job in enumerate(jobs, 1):
        name = f"{job['task']}/{job['cell']['name']}/s{job['seed']}"
        opts = resolve_options(job["options"], budgets, cls)
        digest = config_hash(opts)
        folder = cell_dir(out_dir, job["task"], job["cell"]["name"], job["seed"])
        state = status(folder, digest)
        prefix = f"[{i}/{len(jobs)}] {name}"
        if state == "done":
            echo(f"{prefix}: skipped (finished, same config {digest})")
            runs.append({"name": name, "state": "skipped"})
            continue
        if state == "stale":
            echo(f"{prefix}: options changed since the last run: starting again")
            for sub in ("checkpoints", "student", "tensorboard"):
                shutil.rmtree(folder / sub, ignore_errors=True)
            (folder / "metrics.json").unlink(missing_ok=True)
        left = len(jobs) - i + 1
        eta = f", ~{sum(done_walls) / len(done_walls) * left / 60:.0f} min left" if done_walls else ""
        echo(f"{prefix}: {'resuming' if state == 'resume' else 'running'}{eta}")
        info = {"grid": grid["name"], "cell": job["cell"]["name"], "label": job["cell"]["label"],
                "group": job["cell"]["group"], "task": job["task"], "seed": job["seed"], "config_hash": digest,
                "options": {k: v for k, v in portable_options(opts).items() if k != "budget_of"},
                "budget_of": opts.get("budget_of"), "status": "running"}
        write_json(folder / "cell.json", info)
        run_opts = {**{k: v for k, v in opts.items() if k != "budget_of"}, "out": str(folder),
                    "resume": state == "resume"}
        t0, c0 = time.time(), time.process_time()
        try:
            res = run_fn(**run_opts)
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - recorded, re-raised or skipped
            # user errors the teacher reveals (a size below its floor, a depth an objective cannot use): ValueError
            info.update(status="error", error=f"{type(err).__name__}: {err}",
                        wall_s=round(time.time() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
            write_json(folder / "cell.json", info)
            echo(f"{prefix}: FAILED {info['error']}")
            runs.append({"name": name, "state": "error", "error": info["error"]})
            if stop_on_error or isinstance(err, KeyboardInterrupt):
                raise
            continue
        finally:
            gc.collect()
        wall, cpu = time.time() - t0, time.process_time() - c0
        done_walls.append(wall)
        metric = res["metric"]
        score = res["student"]["metrics"].get(metric)
        info.update(status="done", wall_s=round(wall, 1), cpu_s=round(cpu, 1), metric=metric, score=score,
                    student_params=res["student"]["params"], resumed=bool(res.get("train", {}).get("resumed")))
        write_json(folder / "cell.json", info)
        if not keep_checkpoints:
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        shown = "n/a" if score is None else f"{score:.4f}"
        echo(f"{prefix}: {metric}={shown}  params={res['student']['params']:,}  "
             f"(wall {wall:.0f} s, cpu {cpu:.0f} s)")
        sha = ((res.get("record") or {}).get("teacher_checkpoint_sha256") or "")[:12]
        finished = stats.collect(out_dir / job["task"])
        groups = teachers.mixed_teachers(finished).get(job["task"], {})
        others = sorted(run for other, cells in groups.items() if other != sha for run in cells)
        if sha and others:
            mismatch.add(job["task"])
            echo(f"{prefix}: WARNING: its teacher checkpoint {sha} differs from the one of {len(others)} finished "
                 f"cell(s) of {job['task']} ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): the "
                 "teacher was re-trained differently (other settings, or a cell of another seed before the teacher "
                 "head was seeded); delete one teacher's cells and re-run them so every cell of the task shares one "
                 "teacher")
        elif sha and sha in (retrained := teachers.retrained_teachers(finished).get(job["task"], {})):
            echo(f"{prefix}: note: {teachers.retrained_note(job['task'], retrained)}")
        runs.append({"name": name, "state": "resumed" if info["resumed"] else "ran", "wall_s": round(wall, 1),
                     "cpu_s": round(cpu, 1)})
    summary = {"grid": grid["name"], "runs": runs, "wall_s": round(time.time() - t_grid, 1),
               "cpu_s": round(time.process_time() - cpu_grid, 1),
               "counts": {s: sum(r["state"] == s for r in runs) for s in ("ran", "resumed", "skipped", "error")},
               "teacher_mismatch": sorted(mismatch)}
    _merge_ledger(out_dir / "grid_run.json", summary)
    echo(f"grid {grid['name']}: {summary['counts']}  wall {summary['wall_s'] / 60:.1f} min, "
         f"CPU {summary['cpu_s'] / 60:.1f} min this invocation")
    return summary


def _merge_ledger(path: Path, summary: dict[str, Any]) -> None:
    """Accumulate CPU/wall time over invocations (an interrupted grid re-run adds to the same totals)."""
    ledger = json.loads(path.read_text()) if path.is_file() else {"invocations": [], "cpu_s": 0.0, "wall_s": 0.0}
    ledger["invocations"].append({k: summary[k] for k in ("grid", "wall_s", "cpu_s", "counts")})
    ledger["cpu_s"] = round(ledger["cpu_s"] + summary["cpu_s"], 1)
    ledger["wall_s"] = round(ledger["wall_s"] + summary["wall_s"], 1)
    write_json(path, ledger)


def cpu_seconds(out_dir: str | Path, task: str | None = None) -> float:
    """Total CPU seconds of the finished cells under ``out_dir`` (from their cell.json; teacher
    fine-tuning included in the cell that triggered it)."""
    root = Path(out_dir) / task if task else Path(out_dir)
    return sum(json.loads(p.read_text()).get("cpu_s") or 0.0 for p in root.rglob("cell.json"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = "python -m makd grid " + shlex.join(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        grid = load_grid(args.grid)
        overrides = _parse_set(args.set)
        if not args.verbose:
            overrides.setdefault("quiet", True)
        jobs = plan(grid, only=args.only, seeds=args.seeds, tasks=args.tasks, overrides=overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return _run_cli(args, grid, jobs, overrides)
    except ValueError as err:                       # unset ${VAR}, unreachable budget_of, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFolderError as err:                   # another runner holds OUT, not writable, no space
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _run_cli(args, grid: dict[str, Any], jobs: list[dict[str, Any]], overrides: dict[str, Any]) -> int:
    if args.list:
        budgets: dict = {}
        for job in jobs:
            opts = resolve_options(job["options"], budgets, COMMANDS[grid.get("command", "distill")][0])
            folder = cell_dir(args.out, job["task"], job["cell"]["name"], job["seed"])
            extra = f" (= {opts['budget_of']})" if "budget_of" in opts else ""
            shown = {k: v for k, v in opts.items() if k not in ("task", "seed", "quiet", "budget_of")}
            print(f"{job['task']}/{job['cell']['name']}/s{job['seed']} [{status(folder, config_hash(opts))}]"
                  f"{extra}: {json.dumps(shown, sort_keys=True)}")
        return 0
    summary = run_grid(grid, args.out, only=args.only, seeds=args.seeds, tasks=args.tasks, overrides=overrides,
                       stop_on_error=args.stop_on_error, keep_checkpoints=args.keep_checkpoints,
                       command=args.command)
    return 1 if summary["counts"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
