"""Small helpers for the notebooks, and for reading/syncing the notebook files themselves.

Inside a notebook (they talk to each other only through files in ``run_dir``)::

    from makd.notebook.helpers import resolve_path, set_seed, pick_device, write_metrics, read_metrics, show
    run_dir = resolve_path(run_dir)                 # relative paths are relative to the repository root
    write_metrics(run_dir, "04_matrix_distillation", {"loss": 0.12})   # run_dir/metrics/<name>.json

For the runner and the hygiene tests: `read_notebook` (``.py`` percent source or ``.ipynb``),
`parameters_cell`, `title`, `sync_notebooks` (regenerate every output-free ``.ipynb`` from its ``.py``).
For notebook 00: `package_map` (every module of ``makd/``, its layer and what it does, from the docstrings).
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any

import makd
from makd.assets.paths import REPO_ROOT, resolve_path  # noqa: F401  (notebooks import it from here)
from makd.notebook.plotting import use_style

GITHUB = "makd-project/makd"  # change for a fork (badges and the Colab install line use it)
BRANCH = "main"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# the layers of makd/__init__.py's map, lowest first (tests/test_architecture.py holds the same list)
LAYERS = ("core", "assets", "tasks", "students", "experiments", "notebook", "cli")


# ---------------------------------------------------------------- inside notebooks
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (when installed)."""
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def start(run_dir: str | os.PathLike, seed: int, device: str = "auto") -> tuple[Path, str]:
    """The first lines of every notebook: (absolute run_dir, device); seeds everything and sets the plot style."""
    set_seed(seed)
    use_style()
    return resolve_path(run_dir), pick_device(device)


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; other names are checked and returned."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible: use device='cpu' or 'auto'")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def check_metrics(obj: Any, path: str = "metrics") -> None:
    """Raise ValueError on a NaN/inf anywhere in ``obj`` (numbers, strings, lists, dicts)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        if not math.isfinite(obj):
            raise ValueError(f"{path} = {obj} is not finite: metrics must be finite numbers")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_metrics(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_metrics(v, f"{path}[{i}]")
    else:
        raise TypeError(f"{path} has type {type(obj).__name__}: metrics hold numbers, strings, lists, dicts")


def write_metrics(run_dir: str | os.PathLike, name: str, metrics: dict[str, Any]) -> Path:
    """Write ``run_dir/metrics/<name>.json`` (finite numbers only, keys sorted); return its path."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("metrics must be a non-empty dict")
    metrics = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    check_metrics(metrics)
    path = resolve_path(run_dir) / "metrics" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def read_metrics(run_dir: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """One notebook's metrics (``name``), or ``{notebook: metrics}`` for every file in ``run_dir/metrics``."""
    folder = resolve_path(run_dir) / "metrics"
    if name is not None:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run notebook {name} first (same run_dir)")
        return json.loads(path.read_text())
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def show(obj: Any, digits: int = 4) -> None:
    """Display a DataFrame/dict/list compactly (numbers rounded to ``digits``); a cell can end with it."""
    import pandas as pd
    if isinstance(obj, dict):
        obj = pd.DataFrame([obj]) if all(not isinstance(v, (dict, list)) for v in obj.values()) \
            else pd.DataFrame(obj)
    elif isinstance(obj, list):
        obj = pd.DataFrame(obj)
    if isinstance(obj, pd.DataFrame):
        obj = obj.round(digits)
    try:
        from IPython.display import display
        display(obj)
    except ImportError:
        print(obj)


def colab_install(github: str = GITHUB, branch: str = BRANCH) -> str:
    """The guarded install cell every notebook carries (a no-op outside Colab)."""
    return ('import sys\n'
            'if "google.colab" in sys.modules:  # Colab only: install makd from GitHub; no-op elsewhere\n'
            '    import subprocess\n'
            f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", '
            f'"makd @ git+https://github.com/{github}@{branch}"], check=True)')


def badges(stem: str, github: str = GITHUB, branch: str = BRANCH) -> str:
    """Markdown Colab + Binder badges for ``notebooks/<stem>.ipynb``."""
    colab = f"https://colab.research.google.com/github/{github}/blob/{branch}/notebooks/{stem}.ipynb"
    binder = f"https://mybinder.org/v2/gh/{github}/{branch}?labpath=notebooks%2F{stem}.ipynb"
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})")


# ---------------------------------------------------------------- notebook files
def read_notebook(path: str | os.PathLike):
    """A NotebookNode from a ``.py`` (jupytext percent) or ``.ipynb`` file."""
    import jupytext
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    return jupytext.read(path)


def parameters_cell(nb, where: str = "notebook"):
    """The one code cell tagged ``parameters`` (ValueError when there are none or several)."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{where}: expected exactly one cell tagged 'parameters', found {len(cells)} "
                         "(in percent format: `# %% tags=[\"parameters\"]`)")
    if cells[0].cell_type != "code":
        raise ValueError(f"{where}: the 'parameters' cell must be a code cell")
    return cells[0]


def title(nb) -> str:
    """The first markdown heading of the notebook ('' when there is none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def strip_outputs(nb):
    """Remove outputs, execution counts and run-time metadata, in place; returns ``nb``."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    return nb


def sync_notebooks(folder: str | os.PathLike = NOTEBOOKS_DIR, check: bool = False) -> list[Path]:
    """Regenerate every ``<stem>.ipynb`` from ``<stem>.py`` (outputs stripped); return the changed files.

    With ``check=True`` nothing is written: the returned list names the ``.ipynb`` that are stale.
    """
    import jupytext
    changed = []
    for py in sorted(Path(folder).glob("*.py")):
        nb = strip_outputs(jupytext.read(py))
        for i, cell in enumerate(nb.cells):  # deterministic cell ids: re-syncing an unchanged .py is a no-op
            cell["id"] = hashlib.sha256(f"{py.stem}:{i}".encode()).hexdigest()[:8]
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        nb.metadata["jupytext"].pop("text_representation", None)
        text = jupytext.writes(nb, fmt="ipynb")
        target = py.with_suffix(".ipynb")
        if not target.is_file() or target.read_text() != text:
            changed.append(target)
            if not check:
                target.write_text(text)
    return changed


# ---------------------------------------------------------------- the package itself
def first_doc_line(path: str | os.PathLike) -> str:
    """The first paragraph of a Python file's module docstring, on one line ('' when it has none)."""
    doc = ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8"))) or ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def package_map(package_dir: str | os.PathLike | None = None):
    """Every module of ``makd`` (subpackages read recursively, nothing imported) as a DataFrame.

    Columns ``layer`` (the subpackage: core, assets, ...; ``cli`` for ``makd.cli`` and ``makd.__main__``;
    ``package`` for ``makd`` itself), ``module`` (dotted name; a subpackage's ``__init__`` is the package)
    and ``what`` (first paragraph of its docstring). Rows go by layer, lowest first, then by module.
    """
    import pandas as pd
    root = Path(package_dir if package_dir is not None else makd.__path__[0]).resolve()
    if not (root / "__init__.py").is_file():
        raise ValueError(f"{root} is not a Python package (no __init__.py): pass the folder of makd")
    order = ("package",) + LAYERS
    rows = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and (root / parts[0]).is_dir():  # inside a subpackage: the subpackage is the layer
            layer = parts[0]
        else:  # the package itself, or a top-level module: makd.cli and makd.__main__ are the cli layer
            layer = "cli" if parts in (("cli",), ("__main__",)) else "package"
        rows.append({"layer": layer, "module": ".".join((root.name,) + parts), "what": first_doc_line(path)})
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda r: (rank.get(r["layer"], len(order)), r["layer"], r["module"]))
    return pd.DataFrame(rows, columns=["layer", "module", "what"])
