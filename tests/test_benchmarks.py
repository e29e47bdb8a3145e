"""The benchmark scripts run (tiny random models via --quick) and write the JSON their README rows come from.
Speed targets are not asserted here (they are measured by the scripts and recorded in the README); what is
asserted holds on any machine: sizes and their ordering, positive finite timings, ratios consistent with them."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_decoder_svd_benchmark_writes_a_row_per_ratio_and_weighting(tmp_path):
    res = _run("bench_decoder_svd.py", tmp_path / "d.json")
    kinds = [(r["layer_ratio"], r["weighting"], r.get("ranks")) for r in res["rows"]]
    per_ratio = [("none", "uniform")] + [(w, rule) for w in ("activation", "whiten", "whiten-sequential")
                                         for rule in ("uniform", "auto")]
    assert kinds == [(1.0, "-", None)] + [(ratio, w, rule) for ratio in (0.9, 0.5) for w, rule in per_ratio]
    assert all(r["response_ce"] > 0 for r in res["rows"]) and res["uniform_ce"] > 0
    assert all(_positive(r["wiki_ce"]) for r in res["rows"])            # held-out Wikipedia LM CE, every model
    wiki = res["wiki_heldout"]
    assert wiki["windows"] == 4 and wiki["window_tokens"] == res["max_length"] and wiki["held_out_titles"]
    assert all(_positive(r["factorise_s"]) or r["factorise_s"] == 0 for r in res["rows"][1:])
    params = {(r["layer_ratio"], r["weighting"], r.get("ranks")): r["params"] for r in res["rows"]}
    assert params[(1.0, "-", None)] > params[(0.9, "none", "uniform")] > params[(0.5, "none", "uniform")]
    for (ratio, w, rule), n in params.items():                     # every initialisation of a ratio: one size
        if rule is not None:
            assert abs(n - params[(ratio, "none", "uniform")]) <= 0.005 * n, (ratio, w, rule)


def test_factorize_benchmark_students_shrink_with_the_ratio(tmp_path):
    res = _run("bench_factorize.py", tmp_path / "b.json")
    assert res["quick"] is True and set(res["targets"]) == {"half_ratio_speedup>=1.3", "no_student_slower"}
    teacher, students = res["rows"][0], res["rows"][1:]
    assert teacher["model"] == "teacher" and [r["layer_ratio"] for r in students] == [0.75, 0.5, 0.25]
    params = [teacher["params"]] + [r["params"] for r in students]
    assert params == sorted(params, reverse=True) and len(set(params)) == 4   # strictly fewer at each ratio
    for r in students:
        assert abs(r["achieved_layer_ratio"] - r["layer_ratio"]) <= 0.01, r     # the solver met the ratio
        assert _positive(r["factorize_s"])
    for r in res["rows"]:
        assert _positive(r["tokens_per_s"]) and _positive(r["median_s"]) and len(r["times_s"]) == res["runs"]
        assert r["median_s"] == pytest.approx(statistics.median(r["times_s"]))
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / teacher["tokens_per_s"])


def _check_step(res: dict) -> dict:
    by = {r["config"]: r for r in res["rows"]}
    assert set(by) == {"finetune", "model-only", "hierarchical", "hierarchical-inverted", "all", "layer-only",
                       "tinybert", "minilm"}
    assert res["student_params"] < res["teacher_params"]              # the layer-ratio-0.5 SVD student is smaller
    kd = by["model-only"]["median_s"]
    for r in by.values():
        assert _positive(r["median_s"]) and len(r["times_s"]) == res["runs"] and all(map(_positive, r["times_s"]))
        assert r["vs_logit_kd"] == pytest.approx(r["median_s"] / kd)
    assert set(res["targets"]) == {"hierarchical_step<=1.3x_logit_kd", "every_makd_preset<=1.3x_logit_kd"}
    return by


def test_step_benchmark_times_every_preset(tmp_path):
    by = _check_step(_run("bench_step.py", tmp_path / "s.json", "--no-memory"))
    assert not any("peak_rss_delta_mib" in r for r in by.values())


@pytest.mark.slow
def test_step_benchmark_measures_each_presets_peak_memory(tmp_path):
    by = _check_step(_run("bench_step.py", tmp_path / "s.json"))
    for r in by.values():                           # a peak minus the resident size before it: never negative
        assert math.isfinite(r["peak_rss_delta_mib"]) and r["peak_rss_delta_mib"] >= 0 and r["memory_method"]


def test_subquadratic_benchmark_times_every_student_and_counts_states(tmp_path):
    res = _run("bench_subquadratic.py", tmp_path / "q.json", "--mixers", "gla", "mamba2")
    assert set(res["params"]) == {"teacher", "gla", "mamba2"}
    for T in ("32", "64"):
        assert all(_positive(v["seconds"]) for v in res["prefill"][T].values())
    kv = {C: res["generation"][C]["teacher"]["state_bytes"] for C in ("32", "64")}
    assert kv["64"] == 2 * kv["32"] > 0                                   # the KV cache grows with the context
    for name in ("gla", "mamba2"):                                        # a recurrent state does not
        states = {res["generation"][C][name]["state_bytes"] for C in ("32", "64")}
        assert len(states) == 1 and states.pop() > 0
        assert all(_positive(res["generation"][C][name]["seconds_per_token"]) for C in ("32", "64"))
    assert (tmp_path / "q.png").stat().st_size > 1000
