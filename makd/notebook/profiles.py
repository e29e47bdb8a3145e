"""Run profiles as data, and the strict parameter check the runner applies before executing anything.

A profile maps a notebook (its stem ``"05_model_distillation"``, its number ``"05"``, or ``"*"`` for
every notebook) to parameter overrides. Profiles only *inject* parameters: no notebook branches on a
profile name, and ``demo`` is empty because the notebooks' defaults ARE the demo profile.

- ``"*"`` entries apply to the notebooks that declare that parameter and are ignored elsewhere, so the
  shared names below are conventions for notebook authors: ``teacher``, ``data_dir``, ``task``,
  ``max_steps``, ``device``.
- per-notebook entries are strict: a name the notebook does not declare is an error.
- string values may name environment variables as ``${VAR}``; an unset variable is an error that says
  what to set (only where the value is actually used).

Every notebook's parameters cell holds only ``name: type = literal  # help`` lines; `parse_parameters`
reads it with `ast`, `check_value` checks a value against the annotation (int, float, str, bool, None,
``X | Y``, ``Optional[X]``, ``Literal[...]``, ``list[X]``, ``dict[K, V]``, ``tuple[...]``, ``Any``).
`parse_value` reads a ``-p NAME VALUE`` of the command line; `resolve_value` takes a relative ``*_dir``,
``*_path`` or ``*_file`` value from the repository root.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from makd.assets.paths import REPO_ROOT

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # seconds per notebook: tiny random models, committed fixtures, a few optimisation steps
    "smoke": {
        "*": {"device": "cpu", "teacher": "tiny-bert", "data_dir": "tests/fixtures/glue", "task": "sst2",
              "max_steps": 2},
        "00_overview": {"n_layers": 4},
        "01_svd_decomposition": {"budgets": [0.9, 0.7]},
        "06_hierarchical_training": {"force_teacher": True},
        "08_glue": {"force_teacher": True, "tasks": ["rte"]},
        "07_ablations": {"results_dir": "", "budget_dir": "", "grid": "grids/smoke.yaml", "seeds": [0],
                         "only": ["makd", "svd-logit-kd", "no-layer", "makd-r0.25"]},
        "90_results": {"results_dirs": ["tests/fixtures/results"]},
        "11_subquadratic_students": {"teacher": "tiny-llama", "tokens": 24, "layer": 1,
                                     "benchmark_json": "tests/fixtures/subquadratic_quick.json",
                                     "study_mixers": ["gla", "linear"], "stage_tokens": 1024, "block_length": 64,
                                     "eval_blocks": 4, "passkey_contexts": []},
        "10_decoder_rouge": {"decoder_teacher": "tiny-llama", "max_train": 8, "max_eval": 3, "batch_size": 4,
                             "max_length": 48, "max_new_tokens": 4, "decoding": "sample", "sample_seeds": [1]},
        "09_squad": {"data_dir": "tests/fixtures", "split_articles": [1, 1], "max_length": 128, "stride": 32,
                     "force_teacher": True},
    },
    # the notebooks' own defaults: embedded real assets (PyPI wheels), no network
    "demo": {},
    # real benchmark files (GLUE TSVs, SQuAD JSON, instruction JSONL) from a data folder or the hub
    "full": {
        "*": {"device": "auto", "data_dir": "${MAKD_DATA_DIR}"},
    },
    # the paper's settings: hub BERT-base (encoder) teacher; decoder notebooks use GPT-2 (set per notebook)
    "paper": {
        "*": {"device": "auto", "data_dir": "${MAKD_DATA_DIR}", "teacher": "bert-base-uncased"},
        "00_overview": {"n_layers": 12, "d_model": 768, "d_ffn": 3072},
    },
}

REQUIRED = ("seed", "device", "run_dir")
PATH_PARAMS = re.compile(r"(^|_)(dir|path|file)$")


@dataclass(frozen=True)
class Param:
    """One declared parameter: ``name: annotation = default  # help``."""
    name: str
    annotation: str
    default: Any
    help: str
    node: ast.expr  # the annotation's AST, for `check_value`

    def describe(self) -> str:
        return f"{self.name}: {self.annotation} = {self.default!r}" + (f"  # {self.help}" if self.help else "")


def _comments(source: str) -> dict[int, str]:
    """Line number -> text of the comment on that line."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def parse_parameters(source: str, where: str = "notebook") -> dict[str, Param]:
    """Parse a parameters cell; anything but ``name: type = literal  # help`` lines is a ValueError."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"{where}: the parameters cell is not valid Python: {err}") from None
    comments, params = _comments(source), {}
    for stmt in tree.body:
        line = ast.get_source_segment(source, stmt) or ""
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value):
            raise ValueError(f"{where}: parameters cell line {stmt.lineno} {line!r} is not "
                             "`name: type = literal  # help` (derived values belong in the next cell)")
        try:
            default = ast.literal_eval(stmt.value)
        except ValueError:
            raise ValueError(f"{where}: parameter {stmt.target.id!r} has a non-literal default "
                             f"{ast.unparse(stmt.value)!r}; compute derived values in the next cell") from None
        name = stmt.target.id
        if name in params:
            raise ValueError(f"{where}: parameter {name!r} is declared twice")
        params[name] = Param(name, ast.unparse(stmt.annotation), default, comments.get(stmt.lineno, ""),
                             stmt.annotation)
        check_value(params[name], default, where=f"{where} (its own default)")
    return params


def _matches(value: Any, node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, str):  # None or a string annotation "int"
            return value is None if node.value is None else _matches(value, ast.parse(node.value).body[0].value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _matches(value, node.left) or _matches(value, node.right)
    if isinstance(node, ast.Name) or (isinstance(node, ast.Attribute) and node.attr in ("Any",)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if name == "Any":
            return True
        if name == "None":
            return value is None
        if name in ("int", "float"):
            ok = isinstance(value, int) or (name == "float" and isinstance(value, float))
            return ok and not isinstance(value, bool)
        types = {"str": str, "bool": bool, "list": list, "dict": dict, "tuple": (tuple, list)}
        if name in types:
            return isinstance(value, types[name])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        base, args = node.value.id, (node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice])
        if base == "Optional":
            return value is None or _matches(value, args[0])
        if base == "Union":
            return any(_matches(value, a) for a in args)
        if base == "Literal":
            return any(value == ast.literal_eval(a) and type(value) is type(ast.literal_eval(a)) for a in args)
        if base == "list":
            return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
        if base == "dict":
            return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1])
                                                   for k, v in value.items())
        if base == "tuple":
            if not isinstance(value, (tuple, list)):
                return False
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return all(_matches(v, args[0]) for v in value)
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    raise ValueError(f"unsupported parameter annotation {ast.unparse(node)!r}: use int, float, str, bool, None, "
                     "X | Y, Optional, Literal, list[X], dict[K, V], tuple[...] or Any")


def check_value(param: Param, value: Any, where: str = "") -> None:
    """Raise TypeError when ``value`` does not match the parameter's annotation."""
    if not _matches(value, param.node):
        raise TypeError(f"{where}: wrong type for {param.name!r}: expected {param.annotation}, "
                        f"got {type(value).__name__} {value!r}")


def notebook_keys(stem: str) -> tuple[str, str]:
    """The keys a profile may use for a notebook: its stem and its number prefix."""
    return stem, stem.split("_", 1)[0]


def profile_overrides(profile: str, stem: str, declared: dict[str, Param],
                      profiles: dict | None = None) -> dict[str, tuple[Any, str]]:
    """name -> (value, source) from ``profile`` for notebook ``stem`` ("*" filtered to declared names)."""
    profiles = PROFILES if profiles is None else profiles
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(profiles)}")
    table, out = profiles[profile], {}
    for name, value in table.get("*", {}).items():
        if name in declared:
            out[name] = (value, f"profile {profile} (*)")
    for key in notebook_keys(stem):
        for name, value in table.get(key, {}).items():
            out[name] = (value, f"profile {profile} ({key})")
    return out


def validate(stem: str, declared: dict[str, Param], values: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Check every (value, source) against the declared parameters; one ValueError lists all problems."""
    problems, out = [], {}
    for name, (value, source) in values.items():
        if name not in declared:
            problems.append(f"unknown parameter {name!r} (from {source})")
            continue
        try:
            check_value(declared[name], value, where=source)
            if declared[name].annotation == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # an int given for a float parameter arrives as a float
            out[name] = value
        except TypeError as err:
            problems.append(str(err))
    missing = [n for n in REQUIRED if n not in declared]
    if missing:
        problems.append(f"the parameters cell must declare {', '.join(missing)}")
    if problems:
        listing = "\n".join(f"    {p.describe()}" for p in declared.values()) or "    (none)"
        raise ValueError(f"notebook {stem}: " + "; ".join(problems) +
                         f"\n  {stem} declares these parameters:\n{listing}")
    return out


def parse_value(text: str) -> Any:
    """A ``-p`` value as a Python literal, else YAML (``true``, ``1e-3``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        import yaml
        return yaml.safe_load(text)
    except Exception:
        return text


def resolve_value(name: str, value: Any) -> Any:
    """A relative path given to a ``*_dir`` / ``*_path`` / ``*_file`` parameter, absolute from the repository root."""
    if isinstance(value, str) and value and PATH_PARAMS.search(name) and not Path(value).is_absolute():
        return str((REPO_ROOT / value).resolve())
    return value
