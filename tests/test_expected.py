"""Expected values as data and the verdict of a reproduction (`makd.notebook.expected`, `reproduce --strict`).

The end-to-end tests run the two fixture notebooks of tests/fixtures/notebooks (about 1 s per kernel run); the
smoke profile's committed expected values are checked by `test_smoke_profile_all_notebooks` in test_reproduce.py,
which reuses its one smoke run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from makd.assets.paths import REPO_ROOT
from makd.notebook import expected as xp
from makd.notebook import expected_readme as xr
from makd.notebook import runner as rp
from makd.notebook.helpers import NOTEBOOKS_DIR, read_metrics, write_metrics

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture
def nbs(tmp_path):
    folder = tmp_path / "nbs"
    shutil.copytree(FIXTURES, folder)
    return folder


def fake_run(folder: Path, profile: str, metrics: dict[str, dict], seed: int = 0) -> Path:
    """A run folder as the runner leaves it: metrics files and a manifest (no notebook executed)."""
    for stem, values in metrics.items():
        write_metrics(folder, stem, values)
    notebooks = {s: {"status": "ok", "runtime_s": 1.5, "parameters": {"seed": seed}} for s in metrics}
    (folder / "manifest.json").write_text(json.dumps({"profile": profile, "notebooks": notebooks,
                                                      **xp.run_record()}))
    return folder


def test_headline_quantities_are_numbers_without_runtimes():
    metrics = {"acc": 0.5, "n": 3, "flag": True, "task": "rte", "per_layer": [1.0, 2.0], "train_runtime_s": 1.2,
               "cpu_s": 7.0, "tokens_per_s": {"kd": 30.0}, "per_task": {"rte": {"student": 0.25}}, "steps": 2,
               "wall_time": 3.0}
    assert xp.headline(metrics) == {"acc": 0.5, "n": 3, "per_task.rte.student": 0.25, "steps": 2}
    inventory = {"modules": 90, "layers": 7, "notebooks_present": 12, "n_layers": 4}
    assert xp.checked("00_overview", inventory) == {"n_layers": 4} and xp.checked("01_x", inventory) == inventory
    recorded = {"n_runs": 270, "table_rows": 40, "ours_rows": 20, "published_rows": 20, "makd_minus_best_baseline": {"g:rte": -0.02}}
    assert xp.checked("90_results", recorded) == {"published_rows": 20, "makd_minus_best_baseline.g:rte": -0.02}


def test_tolerance_from_reference_runs():
    value, tol, why = xp.tolerance([0.5], [0])
    assert (value, tol) == (0.5, 0.5 * xp.NOISE_RTOL) and "one reference run" in why
    assert xp.tolerance([1e-9], [0])[1] == xp.NOISE_ATOL  # the absolute floor near zero
    value, tol, why = xp.tolerance([0.50, 0.51], [0, 0])
    assert value == pytest.approx(0.505) and tol == pytest.approx(0.02) and "twice" in why
    value, tol, why = xp.tolerance([0.70, 0.74, 0.72], [0, 1, 2])
    assert value == pytest.approx(0.72) and tol == pytest.approx(3 * 0.02) and why.startswith("seed variation")
    value, tol, why = xp.tolerance([3, 3, 3], [0, 0, 0])
    assert value == 3 and tol == 3 * xp.NOISE_RTOL and "run-to-run variation (seed 0)" in why
    # the rounding error of an identity: 0 up to ROUNDING_K x the reference passes, whatever the name's prefix
    for name in ("max_parallel_vs_recurrent.gla", "max_abs_diff_makd_vs_eckart_young", "x.max_parallel_vs_recurrent"):
        value, tol, why = xp.tolerance([0.003, 0.003, 0.003], [0, 0, 0], name)
        assert tol == pytest.approx((xp.ROUNDING_K - 1) * 0.003) and why.startswith("rounding error of an identity")
        assert abs(0.0 - value) <= tol and abs(xp.ROUNDING_K * 0.003 - value) <= tol * (1 + 1e-12)
        assert abs(1.01 * xp.ROUNDING_K * 0.003 - value) > tol
    assert xp.tolerance([0.3], [0], "mha_rel_error_after")[1] == 0.3 * xp.NOISE_RTOL      # others: the old rule
    assert xp.tolerance([0.3], [0], "max_parallel_vs_recurrently")[1] == 0.3 * xp.NOISE_RTOL
    assert xp.tolerance([1e-9], [0], "max_abs_diff_x")[1] == xp.NOISE_ATOL              # the floor when larger


def test_write_expected_then_every_run_ends_with_the_verdict(nbs, tmp_path, capsys):
    ref, again, moved = tmp_path / "ref", tmp_path / "again", tmp_path / "moved"
    base = ["--profile", "smoke", "--notebooks", str(nbs)]
    assert rp.main([*base, "--out", str(ref), "--strict"]) == 0  # no file yet: reported, not a miss
    assert "no expected values for profile smoke" in capsys.readouterr().out
    assert json.loads((ref / "reproduction.json").read_text())["reproduced"] is None

    assert rp.main(["--write-expected", str(ref), *base]) == 0
    doc = json.loads((nbs / "expected" / "smoke.json").read_text())
    value = doc["notebooks"]["01_fixture"]["quantities"]["value"]
    assert value["value"] == read_metrics(ref, "01_fixture")["value"] and value["runs"] == [value["value"]]
    assert "label" not in doc["notebooks"]["01_fixture"]["quantities"]  # strings are not checked
    assert doc["reference"]["machine"][0]["cores"] == os.cpu_count() and str(ref) not in json.dumps(doc)

    assert rp.main([*base, "--out", str(again), "--strict"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("reproduced: all 3 quantities within tolerance")
    verdict = json.loads((again / "reproduction.json").read_text())
    assert verdict["reproduced"] is True and set(verdict["runtime_s"]) == {"01_fixture", "02_second"}
    assert verdict["machine"]["cores"] == os.cpu_count() and len(verdict["machine"]["load_avg"]) == 3
    md = (again / "reproduction.md").read_text()
    assert "| notebook | quantity | expected | got | tolerance | within tolerance? |" in md
    assert "| 01_fixture | value | 2 | 2 | ± 0.0002 | yes |" in md and "Runtimes (not checked)" in md

    assert rp.main([*base, "--out", str(moved), "-p", "scale", "3.0", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "| 01_fixture | value | 2 | 6 | ± 0.0002 | NO |" in out
    assert "| 02_second | value_plus_one | 3 | 7 | ± 0.0003 | NO |" in out
    assert out.rstrip().endswith("not reproduced: 2 quantities outside tolerance")
    assert rp.main([*base, "--out", str(moved), "-p", "scale", "3.0", "--resume"]) == 0  # default: report only
    assert json.loads((moved / "reproduction.json").read_text())["misses"] == 2


def test_write_expected_refuses_mismatched_reference_runs(tmp_path):
    smoke = fake_run(tmp_path / "a", "smoke", {"01_x": {"v": 1.0}})
    with pytest.raises(ValueError, match="is a run of profile 'smoke', not 'demo'"):
        xp.build_expected([smoke], "demo")
    other = fake_run(tmp_path / "b", "smoke", {"01_x": {"v": 1.0}, "02_y": {"w": 2.0}})
    with pytest.raises(ValueError, match="reference runs must match"):
        xp.build_expected([smoke, other], "smoke")
    with pytest.raises(FileNotFoundError, match="holds no metrics"):
        xp.build_expected([tmp_path / "empty"], "smoke")
    runs = [fake_run(tmp_path / f"s{i}", "smoke", {"01_x": {"v": v}}, seed=i) for i, v in enumerate([1, 2, 3])]
    q = xp.build_expected(runs, "smoke")["notebooks"]["01_x"]["quantities"]["v"]
    assert (q["value"], q["tolerance"], q["runs"]) == (2.0, 3.0, [1, 2, 3]) and "seeds [0, 1, 2]" in q["why"]


def test_readme_demo_block_comes_from_the_demo_expected_file(tmp_path):
    start, end = xr.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{start}\n\nold numbers\n\n{end}\n\nafter\n")
    demo = tmp_path / "demo.json"
    xr.update_readme(readme, demo)
    assert "No expected values for the demo profile yet" in xr.readme_block(readme.read_text())
    run = fake_run(tmp_path / "run", "demo", {"06_hierarchical_training": {"teacher": 0.8, "student": 0.7,
                                                                          "student_untrained": 0.6, "steps": 100}})
    xp.write_expected([run], "demo", demo)
    xr.update_readme(readme, demo)
    text = readme.read_text()
    block = xr.readme_block(text)
    assert text.startswith("# title\n\n") and text.endswith(f"{end}\n\nafter\n") and "old numbers" not in text
    assert block == xr.readme_text(demo) and f"{os.cpu_count()} cores" in block and "measured on 20" in block
    assert "| 06_hierarchical_training | teacher | 0.8 | ± 8e-05 |" in block and "| steps |" not in block
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="put the lines"):
        xr.update_readme(readme, demo)


def test_committed_readme_demo_block_is_generated():
    # the README's demo numbers are `python -m makd reproduce --readme README.md` from notebooks/expected/demo.json
    text = (REPO_ROOT / "README.md").read_text()
    assert xr.readme_block(text) == xr.readme_text(NOTEBOOKS_DIR / "expected" / "demo.json"), (
        "README's demo block is stale: run python -m makd reproduce --readme README.md")


def test_committed_smoke_expected_values_cover_every_notebook():
    path = NOTEBOOKS_DIR / "expected" / "smoke.json"
    doc = json.loads(path.read_text())
    assert doc["profile"] == "smoke" and doc["command"].startswith("python -m makd reproduce --write-expected")
    assert list(doc["notebooks"]) == list(rp.discover(NOTEBOOKS_DIR)), (
        "a notebook was added or removed: regenerate with python -m makd reproduce --write-expected RUN --profile smoke")
    for stem, nb in doc["notebooks"].items():
        assert nb["quantities"], f"{stem}: no checked quantity"
        for name, q in nb["quantities"].items():
            assert not xp.RUNTIME.search(name.split(".")[-1]), f"{stem}.{name}: runtimes are not checked"
            assert name not in xp.INVENTORY.get(stem, ()), f"{stem}.{name}: a count of the repository's files is not checked"
            assert q["tolerance"] >= max(xp.NOISE_ATOL, xp.NOISE_RTOL * abs(q["value"])) and q["why"]
            assert len(q["runs"]) == doc["reference"]["runs"]


def test_a_run_of_some_notebooks_replaces_only_their_expected_values(tmp_path):
    full = fake_run(tmp_path / "full", "smoke", {"01_a": {"x": 1.0}, "02_b": {"y": 2.0}})
    path = xp.write_expected([full], "smoke", tmp_path / "smoke.json")
    part = fake_run(tmp_path / "part", "smoke", {"02_b": {"y": 3.0, "z": 4.0}})
    xp.write_expected([part], "smoke", path)
    doc = json.loads(path.read_text())
    assert doc["notebooks"]["01_a"]["quantities"]["x"]["value"] == 1.0            # kept
    assert doc["notebooks"]["02_b"]["quantities"]["y"]["value"] == 3.0            # replaced
    assert set(doc["notebooks"]["02_b"]["quantities"]) == {"y", "z"}
    assert all("reference" in e for e in doc["notebooks"].values())
    xp.write_expected([fake_run(tmp_path / "other", "smoke", {"03_c": {"w": 1.0}})], "smoke", path)
    assert list(json.loads(path.read_text())["notebooks"]) == ["01_a", "02_b", "03_c"]   # a new notebook added
    assert "1 reference run(s)" in xr.readme_text(path)
    twice = [fake_run(tmp_path / f"twice-{i}", "smoke", {"02_b": {"y": 3.0, "z": 4.0}}) for i in range(2)]
    xp.write_expected(twice, "smoke", path)                                      # 02_b re-referenced alone
    assert "1–2 reference runs per notebook" in xr.readme_text(path)
    xp.write_expected([fake_run(tmp_path / "demo", "demo", {"03_c": {"w": 1.0}})], "demo", path)
    assert list(json.loads(path.read_text())["notebooks"]) == ["03_c"]                   # another profile: anew
