"""The notebook runner (`python -m makd reproduce`), profiles, parameter checking and figures.

Execution tests use the two fixture notebooks in tests/fixtures/notebooks (about 1 s per kernel run);
`test_smoke_profile_all_notebooks` runs the smoke profile over every real notebook (slow).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest

from makd.assets.paths import REPO_ROOT
from makd.notebook import expected as xp
from makd.notebook import runner as rp
from makd.notebook.helpers import NOTEBOOKS_DIR, read_metrics, write_metrics
from makd.notebook.plotting import publish, savefig
from makd.notebook.profiles import Param, parse_parameters, profile_overrides, resolve_value, validate

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture
def nbs(tmp_path):
    folder = tmp_path / "nbs"
    shutil.copytree(FIXTURES, folder)
    return folder


def args(nbs, out, *extra):
    return ["--profile", "smoke", "--notebooks", str(nbs), "--out", str(out), *extra]


def test_smoke_execution_writes_notebook_metrics_and_manifest(nbs, tmp_path, capsys):
    out = tmp_path / "run"
    assert rp.main(args(nbs, out, "--only", "01", "-p", "scale", "2.5", "-p", "label", "x y")) == 0
    executed = nbformat.read(out / "notebooks" / "01_fixture.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "scale = 2.5" in injected[0].source and f'run_dir = "{out}"' in injected[0].source
    assert read_metrics(out, "01_fixture") == {"value": 5.0, "seed": 0, "label": "x y"}
    entry = json.loads((out / "manifest.json").read_text())["notebooks"]["01_fixture"]
    assert entry["status"] == "ok" and entry["runtime_s"] > 0 and entry["parameters"]["scale"] == 2.5
    text = capsys.readouterr().out
    assert "[1/1] 01_fixture" in text and "total" in text  # progress line and summary table
    assert not (out / "notebooks" / "02_second.ipynb").exists()


@pytest.mark.parametrize("extra, message", [
    (["-p", "bogus", "1"], "unknown parameter 'bogus'"),
    (["-p", "scale", "abc"], "wrong type for 'scale': expected float, got str 'abc'"),
    (["-p", "fail", "1"], "wrong type for 'fail': expected bool, got int 1"),
])
def test_bad_parameters_rejected_before_execution(nbs, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert rp.main(args(nbs, out, "--only", "01", *extra)) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "scale: float = 1.0  # the metric is 2 * scale" in err  # lists the declared parameters with help
    assert not out.exists(), "nothing may run (or be written) when a parameter is bad"


def test_bad_profile_entry_rejected_before_execution(nbs, tmp_path):
    profiles = {"p": {"*": {"undeclared_anywhere": 1}, "02": {"scale": 2.0}}}  # 02 has no `scale`
    with pytest.raises(ValueError, match="notebook 02_second: unknown parameter 'scale'"):
        rp.run("p", notebooks=nbs, out=tmp_path / "run", profiles=profiles)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="-p bogus: no selected notebook declares it"):
        rp.run("smoke", notebooks=nbs, out=tmp_path / "run", params={"bogus": 1})
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        rp.run("nope", notebooks=nbs, out=tmp_path / "run")


def test_failing_notebook_stops_the_run_and_names_the_saved_notebook(nbs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(rp.NotebookError) as info:
        rp.run("smoke", notebooks=nbs, out=out, params={"fail": True}, log=lambda s: None)
    saved = out / "notebooks" / "01_fixture.ipynb"
    assert str(saved) in str(info.value) and "RuntimeError: fixture failure requested" in str(info.value)
    assert saved.is_file() and not (out / "notebooks" / "02_second.ipynb").exists()
    assert json.loads((out / "manifest.json").read_text())["notebooks"]["01_fixture"]["status"] == "failed"


def test_resume_skips_completed_notebooks_with_same_parameters(nbs, tmp_path):
    out, lines = tmp_path / "run", []
    rp.run("smoke", notebooks=nbs, out=out, only=["01"], log=lines.append)
    first = (out / "notebooks" / "01_fixture.ipynb").stat().st_mtime_ns
    lines.clear()
    rp.run("smoke", notebooks=nbs, out=out, only=["01"], resume=True, log=lines.append)
    assert any("01_fixture" in ln and "skipped" in ln for ln in lines)
    assert (out / "notebooks" / "01_fixture.ipynb").stat().st_mtime_ns == first
    lines.clear()
    rp.run("smoke", notebooks=nbs, out=out, only=["01"], resume=True, params={"scale": 3.0}, log=lines.append)
    assert any("01_fixture" in ln and " ok " in ln for ln in lines), "changed parameters must re-run"
    assert read_metrics(out, "01_fixture")["value"] == 6.0


def test_only_and_from_selection():
    stems = ["00_a", "01_b", "02_c", "05_d"]
    assert rp.select(stems, None, None) == stems
    assert rp.select(stems, ["01", "05_d"], None) == ["01_b", "05_d"]
    assert rp.select(stems, None, "02") == ["02_c", "05_d"]
    assert rp.select(stems, ["00", "05"], "01") == ["05_d"]
    with pytest.raises(ValueError, match="no notebook '07'"):
        rp.select(stems, ["07"], None)
    with pytest.raises(ValueError, match="leaves no notebook"):
        rp.select(stems, ["00"], "02")


def makd_cli(*argv: str) -> subprocess.CompletedProcess:
    """``python -m makd ARGV...`` in a fresh interpreter, from the repository root."""
    return subprocess.run([sys.executable, "-m", "makd", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_reproduce_help_names_the_entry_point():
    out = makd_cli("reproduce", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m makd reproduce")
    assert "python -m makd reproduce --profile smoke" in out.stdout and "--publish-figures" in out.stdout
    assert "makd.reproduce" not in out.stdout and "makd.notebook.runner" not in out.stdout, "the old entry point"


def test_cli_reproduce_list_and_errors(nbs):
    out = makd_cli("reproduce", "--list", "--notebooks", str(nbs))
    assert out.returncode == 0, out.stderr
    assert "01_fixture  Fixture notebook for the runner tests" in out.stdout and "02_second" in out.stdout
    assert "scale: float = 1.0  # the metric is 2 * scale" in out.stdout and "profile smoke" in out.stdout
    bad = makd_cli("reproduce", "--profile", "nope", "--notebooks", str(nbs), "--out", str(nbs / "run"))
    assert bad.returncode == 1 and "python -m makd reproduce: error: unknown profile 'nope'" in bad.stderr
    assert not (nbs / "run").exists()


def test_the_runner_imports_no_plotting_or_model_library():
    code = "import sys, makd.notebook.runner; print(sorted({'matplotlib', 'pandas', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_list_shows_titles_parameters_and_profiles(nbs, capsys):
    assert rp.main(["--list", "--notebooks", str(nbs)]) == 0
    text = capsys.readouterr().out
    assert "01_fixture  Fixture notebook for the runner tests" in text
    assert "fail: bool = False  # raise in the last cell" in text and "profile smoke" in text


def test_parse_value_like_papermill():
    assert [rp.parse_value(v) for v in ("3", "2.5", "True", "true", "None", "[1, 2]", "1e-3", "abc", "a b")] == \
        [3, 2.5, True, True, None, [1, 2], 0.001, "abc", "a b"]


def test_parameters_cell_parsing_and_types():
    src = ('seed: int = 0  # seed\nrun_dir: str = "x"  # where\nopt: str | None = None\n'
           'ranks: list[int] = [8, 16]  # ranks\nw: dict[str, float] = {"a": 1.0}\nlr: float = 1e-3\n')
    ps = parse_parameters(src)
    assert ps["seed"].help == "seed" and ps["opt"].help == "" and ps["ranks"].default == [8, 16]
    ok = {"seed": (1, "t"), "opt": ("s", "t"), "ranks": ([1], "t"), "w": ({"b": 2}, "t"), "lr": (1, "t")}
    assert validate("nb", {**ps, "device": ps["run_dir"]}, ok)["lr"] == 1.0  # int accepted (as float) for float
    for name, bad in [("seed", True), ("seed", 1.5), ("ranks", [1.5]), ("w", {"b": "x"}), ("opt", 3)]:
        with pytest.raises(ValueError, match=f"wrong type for '{name}'"):
            validate("nb", {**ps, "device": ps["run_dir"]}, {name: (bad, "t")})
    for bad in ("x = 1\n", "y: int = 1 + 1\n", "import os\n", "z: int = 'a'\n"):
        with pytest.raises((ValueError, TypeError)):
            parse_parameters(bad)
    with pytest.raises(ValueError, match="must declare seed, device, run_dir"):
        validate("nb", {"opt": ps["opt"]}, {})


def test_profiles_filter_star_entries_and_expand_env(nbs, tmp_path, monkeypatch):
    declared = {"label": Param("label", "str", "", "", None), "seed": Param("seed", "int", 0, "", None)}
    profiles = {"p": {"*": {"label": "${MAKD_TEST_VAR}/x", "not_declared": 1}, "01": {"seed": 3}}}
    assert profile_overrides("p", "01_fixture", declared, profiles) == \
        {"label": ("${MAKD_TEST_VAR}/x", "profile p (*)"), "seed": (3, "profile p (01)")}
    files = rp.discover(nbs)
    monkeypatch.delenv("MAKD_TEST_VAR", raising=False)
    with pytest.raises(ValueError, match=r"needs the environment variable \$MAKD_TEST_VAR"):
        rp.plan("p", files, ["01_fixture"], {}, tmp_path, profiles)
    monkeypatch.setenv("MAKD_TEST_VAR", "abc")
    (job,) = rp.plan("p", files, ["01_fixture"], {}, tmp_path, profiles)
    assert job["params"]["label"] == "abc/x" and job["params"]["seed"] == 3


def test_relative_path_parameters_resolve_against_the_repository():
    assert resolve_value("data_dir", "tests/fixtures") == str(REPO_ROOT / "tests" / "fixtures")
    assert resolve_value("teacher_path", "/abs/x") == "/abs/x" and resolve_value("label", "a/b") == "a/b"


def test_publish_figures_refused_for_smoke(nbs):
    with pytest.raises(ValueError, match="not for the smoke profile"):
        rp.run("smoke", notebooks=nbs, publish_figures=True)


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager
    import sys
    exe = KernelSpecManager().get_kernel_spec(rp.resolve_kernel()).argv[0]
    assert exe in ("python", "python3") or Path(exe).resolve() == Path(sys.executable).resolve()


def test_savefig_is_deterministic_and_checks_names(tmp_path):
    def figure():
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        return fig
    a = savefig(figure(), "curve", tmp_path / "a")
    b = savefig(figure(), "curve", tmp_path / "b")
    assert [p.name for p in a] == ["curve.png", "curve.pdf"] and a[0].parent == tmp_path / "a" / "figures"
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b)), "same figure, same bytes"
    assert b"CreationDate" not in a[1].read_bytes()
    with pytest.raises(ValueError, match="figure name"):
        savefig(figure(), "Curve.png", tmp_path)
    plt.close("all")


def test_write_metrics_rejects_non_finite(tmp_path):
    with pytest.raises(ValueError, match="not finite"):
        write_metrics(tmp_path, "x", {"a": {"b": [1.0, math.nan]}})
    assert write_metrics(tmp_path, "x", {"a": 1}) == tmp_path / "metrics" / "x.json"


REGENERATE = ("regenerate with python -m makd reproduce --profile smoke --out /tmp/ref && "
              "python -m makd reproduce --write-expected /tmp/ref --profile smoke")


def _numbers(obj):
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in _numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.slow
def test_smoke_profile_all_notebooks(tmp_path):
    """The whole smoke profile over every notebook in notebooks/: each writes finite metrics, and every number
    matches notebooks/expected/smoke.json within its tolerance (the verdict of the run)."""
    out = tmp_path / "smoke"
    manifest = rp.run("smoke", out=out, log=print)
    stems = list(rp.discover(NOTEBOOKS_DIR))
    assert stems and list(manifest["notebooks"]) == stems
    for stem in stems:
        assert manifest["notebooks"][stem]["status"] == "ok"
        values = _numbers(read_metrics(out, stem))
        assert values and all(math.isfinite(v) for v in values), f"{stem} wrote no finite metrics"
        assert (out / "notebooks" / f"{stem}.ipynb").is_file()
    verdict = json.loads((out / "reproduction.json").read_text())
    assert not verdict["unchecked"], f"no expected smoke values for {verdict['unchecked']}: {REGENERATE}"
    assert verdict["reproduced"], f"{verdict['line']}:\n{xp.table(verdict, only_misses=True)}\n" \
        f"(a deliberate change? {REGENERATE})"


def test_publish_copies_run_figures(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    savefig(fig, "line", tmp_path / "run", formats=("png",))
    plt.close(fig)
    assert publish(tmp_path / "run", tmp_path / "figures") == [tmp_path / "figures" / "line.png"]


def test_notebook_without_metrics_breaks_the_contract(nbs, tmp_path):
    (nbs / "03_silent.py").write_text('# %% tags=["parameters"]\nseed: int = 0  # s\ndevice: str = "cpu"  # d\n'
                                      'run_dir: str = "x"  # r\n\n# %%\nx = 1\n')
    with pytest.raises(rp.NotebookError, match=r"03_silent ran but broke the contract: .*03_silent.json does not exist"):
        rp.run("smoke", notebooks=nbs, out=tmp_path / "run", only=["03"], log=lambda s: None)


def test_kernel_is_registered_when_python3_runs_another_interpreter(monkeypatch):
    from jupyter_client import kernelspec
    import ipykernel.kernelspec

    class Spec:
        argv = ["/some/other/python", "-m", "ipykernel_launcher"]

    def get(self, name):
        if name == "python3":
            return Spec()
        raise kernelspec.NoSuchKernel(name)
    installed = []
    monkeypatch.setattr(kernelspec.KernelSpecManager, "get_kernel_spec", get)
    monkeypatch.setattr(ipykernel.kernelspec, "install", lambda **kw: installed.append(kw))
    name = rp.resolve_kernel()
    assert name.startswith("makd-") and installed and installed[0]["kernel_name"] == name
    assert rp.resolve_kernel("mine") == "mine"
