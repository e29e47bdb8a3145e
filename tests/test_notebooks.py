"""Hygiene of every notebook in notebooks/ (whatever exists): the contract of notebooks/README.md.

Static checks only (no kernel): first cell, guarded Colab install cell, one strict parameters cell,
profiles valid for it, metrics written under run_dir, no branching on a profile, and the committed
.ipynb is the output-free jupytext pair of the .py.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

import makd
from makd.notebook.helpers import (GITHUB, LAYERS, NOTEBOOKS_DIR, package_map, parameters_cell, read_notebook,
                                   sync_notebooks)
from makd.notebook.profiles import PROFILES, REQUIRED, parse_parameters, profile_overrides, validate

SOURCES = sorted(p for p in NOTEBOOKS_DIR.glob("*.py") if re.match(r"^\d\d_", p.stem))
ids = [p.stem for p in SOURCES]


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert "00_overview" in ids, "notebooks/00_overview.py must exist"


@pytest.mark.parametrize("py", SOURCES, ids=ids)
def test_first_cell_title_runtime_badges(py):
    first = read_notebook(py).cells[0]
    assert first.cell_type == "markdown", "the first cell must be markdown (title, what it shows, runtimes, badges)"
    lines = [ln for ln in first.source.splitlines() if ln.strip()]
    assert lines[0].startswith("# "), "the first line is the title: '# NN · Title'"
    assert len(lines) >= 3 and not lines[1].startswith("#"), "a sentence on what it shows follows the title"
    text = first.source.lower()
    assert "runtime" in text, "state the runtime per profile"
    for profile in PROFILES:
        assert profile in text, f"the runtime table must mention profile {profile!r}"
    colab = f"https://colab.research.google.com/github/{GITHUB}/blob/main/notebooks/{py.stem}.ipynb"
    binder = f"https://mybinder.org/v2/gh/{GITHUB}/main?labpath=notebooks%2F{py.stem}.ipynb"
    assert colab in first.source, f"missing Colab badge link {colab}"
    assert binder in first.source, f"missing Binder badge link {binder}"


@pytest.mark.parametrize("py", SOURCES, ids=ids)
def test_guarded_colab_install_cell(py):
    nb = read_notebook(py)
    cells = [c for c in code_cells(nb) if '"google.colab" in sys.modules' in c.source]
    assert len(cells) == 1, "exactly one guarded Colab install cell: if \"google.colab\" in sys.modules: ..."
    assert "pip" in cells[0].source and "install" in cells[0].source and f"github.com/{GITHUB}" in cells[0].source
    assert nb.cells.index(cells[0]) < nb.cells.index(parameters_cell(nb)), "install before the parameters"
    namespace: dict = {}
    exec(compile(cells[0].source.replace("%pip", "# %pip"), py.name, "exec"), namespace)  # a no-op here
    assert "subprocess" not in namespace, "the install cell must do nothing outside Colab"


@pytest.mark.parametrize("py", SOURCES, ids=ids)
def test_parameters_cell_contract(py):
    nb = read_notebook(py)
    params = parse_parameters(parameters_cell(nb, py.stem).source, py.stem)  # raises on a bad line
    for name in REQUIRED:
        assert name in params, f"the parameters cell must declare {name}"
    for p in params.values():
        assert p.help, f"parameter {p.name} needs a '# help' comment"
    assert params["run_dir"].annotation == "str" and params["seed"].annotation == "int"


@pytest.mark.parametrize("py", SOURCES, ids=ids)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_is_valid_for_the_notebook(py, profile):
    nb = read_notebook(py)
    declared = parse_parameters(parameters_cell(nb, py.stem).source, py.stem)
    validate(py.stem, declared, profile_overrides(profile, py.stem, declared))  # unknown name / wrong type raise


@pytest.mark.parametrize("py", SOURCES, ids=ids)
def test_writes_its_metrics_and_never_branches_on_a_profile(py):
    nb = read_notebook(py)
    calls, names, constants = [], set(), set()
    for cell in code_cells(nb):
        tree = ast.parse("\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", "")) == "write_metrics":
                calls.append(node)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                constants.add(node.value)
    assert any(len(c.args) >= 2 and isinstance(c.args[1], ast.Constant) and c.args[1].value == py.stem
               and getattr(c.args[0], "id", "") == "run_dir" for c in calls), \
        f'the notebook must call write_metrics(run_dir, "{py.stem}", {{...}})'
    assert "profile" not in names, "notebooks never branch on a profile: profiles inject parameters"
    assert not constants & set(PROFILES), f"profile names used as strings: {constants & set(PROFILES)}"


@pytest.mark.parametrize("py", SOURCES, ids=ids)
def test_ipynb_is_the_output_free_pair(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: run python tools/sync_notebooks.py"
    a, b = jupytext.read(py), jupytext.read(ipynb)
    key = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in a.cells]
    assert key == [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in b.cells], \
        f"{ipynb.name} drifted from {py.name}: run python tools/sync_notebooks.py"
    for cell in code_cells(b):
        assert not cell.outputs and cell.execution_count is None, f"{ipynb.name} has outputs: strip them"
    assert "py:percent" in b.metadata.get("jupytext", {}).get("formats", ""), "pair it: formats ipynb,py:percent"


def test_sync_tool_reports_nothing_stale():
    out = subprocess.run([sys.executable, "tools/sync_notebooks.py", "--check"], cwd=NOTEBOOKS_DIR.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sync_writes_output_free_ipynb_and_is_idempotent(tmp_path):
    src = Path(__file__).parent / "fixtures" / "notebooks" / "01_fixture.py"
    (tmp_path / src.name).write_text(src.read_text())
    assert sync_notebooks(tmp_path) == [tmp_path / "01_fixture.ipynb"]
    assert sync_notebooks(tmp_path, check=True) == []
    nb = jupytext.read(tmp_path / "01_fixture.ipynb")
    assert [c.metadata.get("tags") for c in nb.cells if c.metadata.get("tags")] == [["parameters"]]
    (tmp_path / src.name).write_text(src.read_text().replace("scale: float = 1.0", "scale: float = 2.0"))
    assert sync_notebooks(tmp_path, check=True) == [tmp_path / "01_fixture.ipynb"]


def test_package_map_lists_every_module_by_layer():
    table = package_map()
    root = Path(makd.__path__[0])
    expected = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        expected.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert list(table.columns) == ["layer", "module", "what"]
    assert sorted(table.module) == sorted(expected), "every module of makd, subpackages included, exactly once"
    empty = table[table.what.str.strip() == ""].module.tolist()
    assert not empty, f"modules without a docstring: {empty}"
    layer = dict(zip(table.module, table.layer))
    assert (layer["makd"], layer["makd.core.losses"], layer["makd.notebook.runner"], layer["makd.cli"]) == \
        ("package", "core", "notebook", "cli")
    order = [name for name in ("package",) + LAYERS if name in set(table.layer)]
    assert list(dict.fromkeys(table.layer)) == order, "rows go by layer, lowest first"
    doc = makd.__doc__
    positions = [doc.index(f"\n{name} —") for name in order[1:]]
    assert positions == sorted(positions), "the layers in the order of makd/__init__.py's map"


def test_package_map_reads_any_package_recursively(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "core" / "deep").mkdir(parents=True)
    (pkg / "odd").mkdir()
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "cli.py").write_text('"""Command line."""\n')
    (pkg / "core" / "__init__.py").write_text('"""Core layer."""\n')
    (pkg / "core" / "deep" / "__init__.py").write_text("")
    (pkg / "core" / "deep" / "m.py").write_text('"""First line\n  goes on here.\n\nDetails."""\nx = 1\n')
    (pkg / "odd" / "z.py").write_text("x = 1\n")
    table = package_map(pkg)
    assert table.values.tolist() == [
        ["package", "pkg", "The package."],
        ["core", "pkg.core", "Core layer."],
        ["core", "pkg.core.deep", ""],
        ["core", "pkg.core.deep.m", "First line goes on here."],
        ["cli", "pkg.cli", "Command line."],
        ["odd", "pkg.odd.z", ""],
    ]
    with pytest.raises(ValueError, match="not a Python package"):
        package_map(tmp_path / "pkg" / "odd")
