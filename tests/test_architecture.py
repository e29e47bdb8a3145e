"""The import contract of the package's layout (see the map in ``makd/__init__.py``).

Layers, lowest first: ``core`` (the method) < ``assets`` < ``tasks`` < ``students`` < ``experiments`` <
``notebook`` < ``cli``. A module imports only from its own layer or lower ones, imports the package's modules
at module level (no import hidden inside a function, where cycles go unseen), and the module graph has no
cycle. No module shadows a standard-library name, and none grows far past ~300 lines.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "makd"
LAYERS = ["core", "assets", "tasks", "students", "experiments", "notebook", "cli"]
MAX_LINES = 320  # "~300": a little slack for a docstring, never a 400-line module


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported makd module, line, inside a function or class) for every import of the package."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []
    module = _module_name(path)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base == "makd" or base.startswith("makd."):
                for alias in node.names:  # `from makd.core import losses` imports makd.core.losses
                    sub = f"{base}.{alias.name}"
                    names.append(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() else base)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name == "makd" or a.name.startswith("makd.")]
        found += [(name, node.lineno, node.col_offset > 0) for name in names]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in MODULES:
        module = _module_name(path)
        assert module in ("makd", "makd.__main__") or _layer(module), \
            f"{module} sits outside the layers {LAYERS}: move it into one of the subpackages"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_go_down_the_layers_only(path):
    module = _module_name(path)
    own = _layer(module)
    for target, line, _ in _imports(path):
        dep = _layer(target)
        if own is None or dep is None:
            continue
        assert LAYERS.index(dep) <= LAYERS.index(own), \
            f"{module}:{line} imports {target}: the {own} layer must not depend on the higher {dep} layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_package_import_hides_inside_a_function(path):
    nested = [(t, line) for t, line, inside in _imports(path) if inside]
    assert not nested, f"{_module_name(path)} imports {nested} inside functions: import at the top of the module"


def test_the_module_graph_has_no_cycle():
    graph = {_module_name(p): {t for t, _, _ in _imports(p) if t != _module_name(p)} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else stack + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(dep) is None:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_core_imports_nothing_outside_core():
    for path in (PACKAGE / "core").rglob("*.py"):
        outside = [t for t, _, _ in _imports(path) if t != "makd" and _layer(t) != "core"]
        assert not outside, f"{_module_name(path)} imports {outside}: the method core stands alone"


def test_no_module_shadows_the_standard_library():
    clashes = [p for p in MODULES if p.stem in sys.stdlib_module_names]
    assert not clashes, f"rename {clashes}: they shadow standard-library modules"


def test_modules_stay_small():
    long = {_module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concept (limit ~300 lines): {long}"


def test_the_package_map_names_every_subpackage_and_module():
    import makd
    doc = makd.__doc__ or ""
    missing = [_module_name(p).removeprefix("makd.") for p in MODULES
               if p.name not in ("__init__.py", "__main__.py") and _module_name(p).removeprefix("makd.") not in doc]
    assert not missing, f"makd/__init__.py's architecture map does not mention {missing}"
