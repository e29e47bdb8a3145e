"""A grid file turned into runs: validation (structure, option names, types and ranges: each cell builds its
command's configuration, :class:`makd.experiments.config.DistillConfig` or, with ``command: subquadratic``,
:class:`makd.experiments.subquadratic_config.SubquadraticConfig`), option merging, ``budget_of`` resolution and the
config hash. The grid's ``tasks`` fill the command's task option (:data:`COMMANDS`: ``task``, or ``text`` — the text
source — for subquadratic).

Light (no torch, no model): :func:`precheck` lets the command line refuse a bad grid file, option or ``--set``
before the heavy :mod:`makd.experiments.grid` (which runs the cells) is imported; ``budget_of`` is resolved by
:mod:`makd.experiments.grid_budget`. Every error is a ValueError naming the grid file and
the cell, raised before any cell runs. The config hash (sha256 of the resolved options without the VOLATILE ones,
a given data folder written ``$MAKD_DATA_DIR`` wherever it lies) is what a finished cell is recognised by
(tests/test_config.py recomputes the committed cells' hashes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from makd.assets.paths import expand_env
from makd.core.errors import ArgumentParser, DataError, MissingInputError, UsageError
from makd.experiments.config import SIZE_KEYS, DistillConfig
from makd.experiments.options import Config, coerce_numbers, config_from_kwargs, field_names
from makd.experiments.subquadratic_config import SubquadraticConfig

# options that change where/how a run is reported, never its result: left out of the config hash
VOLATILE = ("out", "resume", "quiet", "report_to", "save_student", "logging_steps", "save_steps", "eval_steps",
            "save_every", "keep_checkpoints")
# the commands a grid runs (top-level ``command``, default distill): configuration and the option ``tasks`` fill
COMMANDS: dict[str, tuple[type[Config], str]] = {"distill": (DistillConfig, "task"),
                                                 "subquadratic": (SubquadraticConfig, "text")}
GROUPS = ("method", "baseline", "ablation", "budget")
DATA_PLACEHOLDER = "$MAKD_DATA_DIR"          # a given data folder, as cell.json and the config hash see it


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and validate a grid file (.yaml/.yml/.json); returns the dict with defaults filled in.

    ``extends: OTHER.yaml`` (a path relative to the file) starts from that grid: the file's own top-level keys
    replace the other's, except ``shared`` and ``task_options``, whose options are merged over the other's (the
    same cells at another budget, say, in a few lines)."""
    return validate_grid(_extended(Path(path), ()), where=str(path))


def _extended(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The raw grid of ``path`` with its ``extends`` chain merged in (a cycle is an error)."""
    grid = _read(path)
    if not isinstance(grid, dict) or "extends" not in grid:
        return grid
    base_path = (path.parent / str(grid.pop("extends"))).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ValueError(f"{path}: 'extends' makes a cycle through {base_path}")
    base = _extended(base_path, (*seen, path.resolve()))
    if not isinstance(base, dict):
        raise ValueError(f"{path}: 'extends' names {base_path}, which is not a grid mapping")
    merged = {**base, **grid}
    merged["shared"] = {**base.get("shared", {}), **grid.get("shared", {})}
    options = {**base.get("task_options", {})}
    for task, extra in (grid.get("task_options") or {}).items():
        options[task] = {**options.get(task, {}), **extra}
    if options:
        merged["task_options"] = options
    return merged


def _read(path: Path) -> Any:
    """A grid file's parsed content, or one error naming the file (and line) to fix."""
    if not path.is_file():
        raise MissingInputError(f"grid file {path} does not exist: give a grid file (examples: grids/*.yaml)")
    text = path.read_text()
    fix = "Fix the file (examples: grids/*.yaml; the grid format: python -m makd grid --help)"
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}). {fix}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise DataError(f"{path}{line}: not valid YAML ({problem}). {fix}") from None


def validate_grid(grid: dict[str, Any], where: str = "grid") -> dict[str, Any]:
    """Check the grid's structure, option names and values (each task × cell builds a DistillConfig) before any
    run starts."""
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: a grid is a mapping with tasks, seeds, shared, cells")
    unknown_top = set(grid) - {"name", "description", "command", "tasks", "seeds", "shared", "task_options", "cells"}
    if unknown_top:
        raise ValueError(f"{where}: unknown top-level key(s) {sorted(unknown_top)}")
    grid = {"name": Path(where).stem, "description": "", "command": "distill", "seeds": [0], "shared": {},
            "task_options": {}, **grid}
    if grid["command"] not in COMMANDS:
        raise ValueError(f"{where}: command {grid['command']!r}: a grid runs one of {', '.join(COMMANDS)}")
    cls, task_key = COMMANDS[grid["command"]]
    valid = set(field_names(cls))
    if not grid.get("tasks"):
        raise ValueError(f"{where}: 'tasks' must list at least one task (e.g. [rt-polarity])")
    bad_tasks = [t for t in grid["tasks"] if not isinstance(t, str) or "/" in t or t in ("", ".", "..")]
    if bad_tasks:
        raise ValueError(f"{where}: tasks {bad_tasks}: a task names a folder under OUT, without '/' (subquadratic: "
                         "wiki, or data for <data_dir>/text/)")
    if not grid["seeds"] or not all(isinstance(s, int) for s in grid["seeds"]):
        raise ValueError(f"{where}: 'seeds' must be a list of ints, got {grid['seeds']!r}")
    cells = grid.get("cells") or []
    if not cells:
        raise ValueError(f"{where}: 'cells' is empty")
    blocks = [("shared", grid["shared"])] + [(f"task_options[{t}]", o) for t, o in grid["task_options"].items()]
    names = set()
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or "name" not in cell:
            raise ValueError(f"{where}: cell {i} needs a 'name'")
        bad = set(cell) - {"name", "label", "group", "options", "note"}
        if bad:
            raise ValueError(f"{where}: cell {cell['name']!r} has unknown key(s) {sorted(bad)} "
                             "(pipeline options go under 'options')")
        if cell["name"] in names or "/" in cell["name"]:
            raise ValueError(f"{where}: cell name {cell['name']!r} is repeated or contains '/'")
        names.add(cell["name"])
        cell.setdefault("label", cell["name"])
        cell.setdefault("group", "method")
        cell.setdefault("options", {})
        if cell["group"] not in GROUPS:
            raise ValueError(f"{where}: cell {cell['name']!r} group {cell['group']!r}: use one of {GROUPS}")
        blocks.append((f"cell {cell['name']!r}", cell["options"]))
    for what, opts in blocks:
        sizes = [k for k in SIZE_KEYS if k in opts]
        if len(sizes) > 1:
            raise ValueError(f"{where}: {what} gives {sizes}: give one student size per block (a cell's size "
                             "key replaces the shared one)")
        bad = set(opts) - valid - {"task", "seed"}
        if bad:
            raise ValueError(f"{where}: {what} has unknown pipeline option(s) {sorted(bad)}; valid: {sorted(valid)}")
        if {"task", task_key, "seed"} & set(opts):
            raise ValueError(f"{where}: {what}: give tasks and seeds at the top level, not as options")
    for task in grid["tasks"]:
        for cell in cells:
            check_options(cell_options(grid, cell, task, grid["seeds"][0]), f"{where}: cell {cell['name']!r} ({task})",
                          cls)
    return grid


def check_options(opts: dict[str, Any], where: str, cls: type[Config] = DistillConfig) -> Config:
    """The ``cls`` configuration these (not yet resolved) options describe; a wrong name, type, choice or range is
    a ValueError starting with ``where`` (an unset ``${VAR}`` is left for :func:`resolve_options` to report)."""
    opts = dict(opts)
    b = opts.get("budget")
    if isinstance(b, dict):
        if set(b) != {"budget_of"} or not isinstance(b["budget_of"], str):
            raise ValueError(f"{where}: budget {b!r}: a mapping budget must be {{budget_of: STUDENT}} (e.g. layers:3)")
        opts["budget"] = None
    for key, value in opts.items():
        try:
            opts[key] = expand_env(value, key)
        except ValueError:
            pass
    try:
        return config_from_kwargs(cls, **opts)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def cell_options(grid: dict[str, Any], cell: dict[str, Any], task: str, seed: int) -> dict[str, Any]:
    """shared ∪ task_options[task] ∪ cell.options with the size-key rule (budget_of not yet resolved)."""
    opts: dict[str, Any] = {}
    for layer in (grid["shared"], grid["task_options"].get(task, {}), cell["options"]):
        if any(k in layer for k in SIZE_KEYS):
            for k in SIZE_KEYS:
                opts.pop(k, None)
        opts.update(json.loads(json.dumps(layer)))          # a deep copy
    if opts.get("student", "svd") != "svd":
        for k in SIZE_KEYS:                                 # a dense student has its own size
            opts.pop(k, None)
    return {**opts, COMMANDS[grid.get("command", "distill")][1]: task, "seed": seed}


def coerce_types(opts: dict[str, Any], cls: type[Config] = DistillConfig) -> dict[str, Any]:
    """Give each number the type of its ``cls`` field (``epochs: 1`` in YAML -> 1.0), so a grid cell and the
    same command line produce the same run config (and the same cached-teacher key)."""
    return coerce_numbers(cls, opts)


def portable_options(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` as a cell.json records them and the config hash sees them: a data folder given (``data_dir``) is
    written ``$MAKD_DATA_DIR`` wherever it lies. Its location is not part of a run's configuration (the sha256 of
    the data files a run read is in its run record), so a results folder moved to another machine, or run with
    the data elsewhere, keeps its hashes: finished cells are recognised, not run again."""
    return {**opts, "data_dir": DATA_PLACEHOLDER} if opts.get("data_dir") else dict(opts)


def config_hash(opts: dict[str, Any]) -> str:
    """sha256 (16 hex) of the resolved options (:func:`portable_options`) without the VOLATILE ones (and without
    the budget_of label)."""
    kept = {k: v for k, v in portable_options(opts).items() if k not in VOLATILE and k != "budget_of"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(grid: dict[str, Any], *, only: list[str] | None = None, seeds: list[int] | None = None,
         tasks: list[str] | None = None, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every (task, seed, cell) to run, seeds before cells so one seed's cells finish together (and share
    the fine-tuned teacher)."""
    unknown = set(only or []) - {c["name"] for c in grid["cells"]}
    if unknown:
        raise ValueError(f"--only {sorted(unknown)}: not in the grid; cells: {[c['name'] for c in grid['cells']]}")
    jobs = []
    for task in tasks or grid["tasks"]:
        for seed in seeds if seeds is not None else grid["seeds"]:
            for cell in grid["cells"]:
                if only and cell["name"] not in only:
                    continue
                opts = {**cell_options(grid, cell, task, seed), **(overrides or {})}
                if overrides:
                    check_options(opts, f"cell {cell['name']!r} ({task}, seed {seed}) with --set {overrides}",
                                  COMMANDS[grid.get("command", "distill")][0])
                jobs.append({"task": task, "seed": seed, "cell": cell, "options": opts})
    return jobs


# ------------------------------------------------------------------------------ the command line
EPILOG = """examples:
  python -m makd grid grids/smoke.yaml --out runs/grid-smoke            # seconds: tiny-bert, fixtures
  python -m makd grid grids/rt-polarity.yaml --out results/grid --list  # show cells, options and budgets
  python -m makd grid grids/rt-polarity.yaml --out results/grid --only makd svd-finetune --seeds 0
  python -m makd grid grids/glue.yaml --out results/grid --tasks rte mrpc --set data_dir=../shared/data
Re-running the same command skips finished cells and resumes interrupted ones."""


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use KEY=VALUE (VALUE parsed as JSON when possible)")
        key, value = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m makd grid", description="baselines and ablations declared as data, run over "
                       "tasks × seeds, resumable (python -m makd grid --help)",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="grid file (YAML or JSON): tasks, seeds, shared options, cells; 'extends: "
                   "OTHER.yaml' starts from another grid file (its shared options merged under this file's)")
    p.add_argument("--out", required=True, help="results folder: OUT/<task>/<cell>/s<seed>/metrics.json")
    p.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells")
    p.add_argument("--seeds", nargs="+", type=int, help="override the grid's seeds")
    p.add_argument("--tasks", nargs="+", help="override the grid's tasks")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a pipeline option for every cell (e.g. data_dir=../shared/data max_steps=5)")
    p.add_argument("--list", action="store_true", help="print the planned cells with their state and options; run nothing")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failing cell")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep a finished cell's checkpoints (deleted by default: they only serve to resume)")
    p.add_argument("--verbose", action="store_true", help="keep the pipeline's progress bars and logs")
    return p


def precheck(argv: list[str]) -> None:
    """Everything the command line alone can refuse, before torch is imported: the options, the grid file, the
    cells' options and the ``--set`` overrides (a UsageError naming the file and cell: exit 2, like ``grid``'s own)."""
    args = build_parser().parse_args(argv)
    try:
        plan(load_grid(args.grid), only=args.only, seeds=args.seeds, tasks=args.tasks, overrides=_parse_set(args.set))
    except (ValueError, FileNotFoundError) as err:   # a bad grid file is a usage error of grid, as in its main
        raise UsageError(str(err)) from None
