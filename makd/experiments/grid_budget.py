"""A grid cell's ``budget: {budget_of: STUDENT}`` made exact: the dense student's parameter count, and the
cell's options resolved (``${VAR}`` expanded, numbers typed) — the heavy half of planning (it loads the teacher).
"""
from __future__ import annotations

from typing import Any

from makd.assets.models import load_model
from makd.assets.paths import expand_env
from makd.core.factorize import count_parameters
from makd.experiments.config import DistillConfig
from makd.experiments.grid_plan import coerce_types
from makd.experiments.options import Config
from makd.experiments.students import dense_student
from makd.tasks.glue import load_task


def budget_of(student: str, teacher: str = "minilm-l6", num_labels: int = 2) -> int:
    """Exact total parameter count of the dense student ``student`` (``layers:K`` or a model name) with a
    ``num_labels`` classification head, built as :mod:`makd.experiments.distill` builds it (the fine-tuned teacher
    has the same shapes as the pretrained one, so the count does not need the fine-tuning)."""
    model, tok = load_model(teacher, head="cls", num_labels=num_labels)
    return count_parameters(dense_student(student, model, tok, num_labels))


def _num_labels(task: str, data_dir: str | None) -> int:
    t = load_task(task, data_dir=data_dir, max_dev=8, seed=0)
    return 1 if t.is_regression else t.num_labels


def resolve_options(opts: dict[str, Any], cache: dict | None = None,
                    cls: type[Config] = DistillConfig) -> dict[str, Any]:
    """Replace ``budget: {budget_of: SPEC}`` by the dense student's exact count (memoised in ``cache``) and
    ``${VAR}`` in string options by the environment variable (an unset one is an error saying what to set);
    numbers typed as ``cls``'s fields."""
    try:
        opts = coerce_types({k: expand_env(v, k) for k, v in opts.items()}, cls)
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
