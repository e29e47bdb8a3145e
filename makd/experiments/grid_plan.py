"""A grid file turned into runs: validation (structure, option names, types and ranges: each cell builds a
:class:`makd.experiments.config.DistillConfig`), option merging, ``budget_of`` resolution and the config hash.

Used by :mod:`makd.experiments.grid` (which runs the cells). Every error is a ValueError naming the grid file and
the cell, raised before any cell runs. The config hash (sha256 of the resolved options without the VOLATILE ones)
is what a finished cell is recognised by: it is unchanged from the first grids (tests/test_config.py recomputes
the committed cells' hashes).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from makd.assets.models import load_model
from makd.assets.paths import expand_env
from makd.core.factorize import count_parameters
from makd.experiments.config import SIZE_KEYS, DistillConfig
from makd.experiments.options import coerce_numbers, config_from_kwargs, field_names
from makd.experiments.students import dense_student
from makd.tasks.glue import load_task

# options that change where/how a run is reported, never its result: left out of the config hash
VOLATILE = ("out", "resume", "quiet", "report_to", "save_student", "logging_steps", "save_steps", "eval_steps")
GROUPS = ("method", "baseline", "ablation", "budget")


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and validate a grid file (.yaml/.yml/.json); returns the dict with defaults filled in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist (examples: grids/*.yaml)")
    text = path.read_text()
    if path.suffix == ".json":
        grid = json.loads(text)
    else:
        grid = yaml.safe_load(text)
    return validate_grid(grid, where=str(path))


def validate_grid(grid: dict[str, Any], where: str = "grid") -> dict[str, Any]:
    """Check the grid's structure, option names and values (each task × cell builds a DistillConfig) before any
    run starts."""
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: a grid is a mapping with tasks, seeds, shared, cells")
    unknown_top = set(grid) - {"name", "description", "tasks", "seeds", "shared", "task_options", "cells"}
    if unknown_top:
        raise ValueError(f"{where}: unknown top-level key(s) {sorted(unknown_top)}")
    valid = set(field_names(DistillConfig))
    grid = {"name": Path(where).stem, "description": "", "seeds": [0], "shared": {}, "task_options": {}, **grid}
    if not grid.get("tasks"):
        raise ValueError(f"{where}: 'tasks' must list at least one task (e.g. [rt-polarity])")
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
        if "task" in opts or "seed" in opts:
            raise ValueError(f"{where}: {what}: give tasks and seeds at the top level, not as options")
    for task in grid["tasks"]:
        for cell in cells:
            check_options(cell_options(grid, cell, task, grid["seeds"][0]), f"{where}: cell {cell['name']!r} ({task})")
    return grid


def check_options(opts: dict[str, Any], where: str) -> DistillConfig:
    """The DistillConfig these (not yet resolved) options describe; a wrong name, type, choice or range is a
    ValueError starting with ``where`` (an unset ``${VAR}`` is left for :func:`resolve_options` to report)."""
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
        return config_from_kwargs(DistillConfig, **opts)
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
    return {**opts, "task": task, "seed": seed}


def budget_of(student: str, teacher: str = "minilm-l6", num_labels: int = 2) -> int:
    """Exact total parameter count of the dense student ``student`` (``layers:K`` or a model name) with a
    ``num_labels`` classification head, built as :mod:`makd.experiments.distill` builds it (the fine-tuned teacher
    has the same shapes as the pretrained one, so the count does not need the fine-tuning)."""
    model, tok = load_model(teacher, head="cls", num_labels=num_labels)
    return count_parameters(dense_student(student, model, tok, num_labels))


def _num_labels(task: str, data_dir: str | None) -> int:
    t = load_task(task, data_dir=data_dir, max_dev=8, seed=0)
    return 1 if t.is_regression else t.num_labels


def resolve_options(opts: dict[str, Any], cache: dict | None = None) -> dict[str, Any]:
    """Replace ``budget: {budget_of: SPEC}`` by the dense student's exact count (memoised in ``cache``) and
    ``${VAR}`` in string options by the environment variable (an unset one is an error saying what to set)."""
    try:
        opts = coerce_types({k: expand_env(v, k) for k, v in opts.items()})
    except ValueError as err:
        raise ValueError(str(err).replace("or pass -p", "or pass --set").replace(" VALUE", "=VALUE")) from None
    b = opts.get("budget")
    if not isinstance(b, dict):
        return opts
    if set(b) != {"budget_of"}:
        raise ValueError(f"budget {b!r}: a mapping budget must be {{budget_of: STUDENT}} (e.g. layers:3)")
    teacher = opts.get("teacher", "minilm-l6")
    key = (b["budget_of"], teacher, opts["task"], opts.get("data_dir"))
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = budget_of(b["budget_of"], teacher, _num_labels(opts["task"], opts.get("data_dir")))
    return {**opts, "budget": cache[key], "budget_of": b["budget_of"]}


def coerce_types(opts: dict[str, Any]) -> dict[str, Any]:
    """Give each number the type of its DistillConfig field (``epochs: 1`` in YAML -> 1.0), so a grid cell and the
    same command line produce the same run config (and the same cached-teacher key)."""
    return coerce_numbers(DistillConfig, opts)


def config_hash(opts: dict[str, Any]) -> str:
    """sha256 (16 hex) of the resolved options without the VOLATILE ones (and without the budget_of label)."""
    kept = {k: v for k, v in opts.items() if k not in VOLATILE and k != "budget_of"}
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
                    check_options(opts, f"cell {cell['name']!r} ({task}, seed {seed}) with --set {overrides}")
                jobs.append({"task": task, "seed": seed, "cell": cell, "options": opts})
    return jobs


