"""The benchmark scripts run (tiny random models via --quick) and write the JSON their README rows come from.
Speed targets are not asserted here (they are measured by the scripts and recorded in the README); what is
asserted holds on any machine: sizes and their ordering, positive finite timings, ratios consistent with them; and
makd's and TextBrewer's losses differ only by the teacher's entropy with the same student gradients (TextBrewer is a
benchmark-only dependency: its tests are skipped without it)."""
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


def test_decoder_step_benchmark_times_both_precisions_of_every_method(tmp_path):
    res = _run("bench_decoder_step.py", tmp_path / "s.json")
    assert list(res["methods"]) == ["sft", "kd", "makd"] and res["student_params"] > 0
    for row in res["methods"].values():
        assert _positive(row["float32_s"]) and _positive(row["bfloat16_s"])
        assert row["bf16_speedup"] == pytest.approx(row["float32_s"] / row["bfloat16_s"])
        assert row["float32_s"] == statistics.median(row["times_float32_s"])
        # the same step in both precisions: bfloat16 products move the loss by rounding only
        assert row["first_loss_bfloat16"] == pytest.approx(row["first_loss_float32"], rel=0.02)
    assert any(r["first_loss_bfloat16"] != r["first_loss_float32"] for r in res["methods"].values())  # autocast ran
    assert res["tokens"] <= res["padded_shape"][0] * res["padded_shape"][1] and set(res["cpu"]) <= {
        "model", "avx512_bf16", "amx_bf16"}


def test_decoder_svd_benchmark_writes_a_row_per_ratio_and_weighting(tmp_path):
    res = _run("bench_decoder_svd.py", tmp_path / "d.json")
    kinds = [(r["layer_ratio"], r["weighting"], r.get("ranks")) for r in res["rows"]]
    per_ratio = [("none", "uniform")] + [(w, rule) for w in ("activation", "whiten", "whiten-sequential",
                                                                      "whiten-compensated")
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
    assert res["quick"] is True and set(res["targets"]) == {"half_ratio_speedup>=1.75", "no_student_slower"}
    load = res["load_average"]
    assert len(load["before"]) == len(load["after"]) == 3 and len(load["per_round_1min"]) == res["runs"]
    teacher, students = res["rows"][0], res["rows"][1:]
    ratios = [1.0, 0.9, 0.75, 0.5, 0.25]
    assert teacher["model"] == "teacher" and [(r["layer_ratio"], r["fused"]) for r in students] == \
        [(x, on) for x in ratios for on in (False, True)]                 # each ratio unfused, then fused
    params = [teacher["params"]] + [r["params"] for r in students if r["fused"]]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(ratios) + 1
    for plain, fast in zip(students[::2], students[1::2]):                  # one factorisation, two executions
        assert plain["params"] == fast["params"] and plain["factorize_s"] == fast["factorize_s"]
        assert fast["shared_gemms"] == 2 and plain["shared_gemms"] == plain["dense_matrices"] == 0  # Q|K|V, 2 layers
    assert students[1]["dense_matrices"] > 0 and all(r["dense_matrices"] == 0 for r in students[3:])  # break-even
    assert set(res["fused_gain"]) == {str(x) for x in ratios}
    for r in students:
        assert abs(r["achieved_layer_ratio"] - r["layer_ratio"]) <= 0.01, r     # the solver met the ratio
        assert _positive(r["factorize_s"])
    for r in res["rows"]:
        assert _positive(r["tokens_per_s"]) and _positive(r["median_s"]) and len(r["times_s"]) == res["runs"]
        assert r["median_s"] == pytest.approx(statistics.median(r["times_s"])) and r["min_s"] == min(r["times_s"])
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
    res = _run("bench_subquadratic.py", tmp_path / "q.json", "--mixers", "gla", "mamba2", "--runs", "2")
    assert set(res["params"]) == {"teacher", "gla", "mamba2"}
    for T in ("32", "64"):
        assert all(_positive(v["seconds"]) for v in res["prefill"][T].values())
    kv = {C: res["generation"][C]["teacher"]["state_bytes"] for C in ("32", "64")}
    assert kv["64"] == 2 * kv["32"] > 0                                   # the KV cache grows with the context
    for name in ("gla", "mamba2"):                                        # a recurrent state does not
        states = {res["generation"][C][name]["state_bytes"] for C in ("32", "64")}
        assert len(states) == 1 and states.pop() > 0
        assert all(_positive(res["generation"][C][name]["seconds_per_token"]) for C in ("32", "64"))
    for entry in res["generation"].values():                              # interleaved rounds, their median
        for e in entry.values():
            assert len(e["rounds"]) == 2 and e["seconds_per_token"] == statistics.median(e["rounds"])
    assert (tmp_path / "q.png").stat().st_size > 1000


# ------------------------------------------------- makd vs TextBrewer, generation speed (issue 24 items 3-4)
def _load_fields(res: dict) -> None:
    assert len(res["load_avg_before"]) == 3 and len(res["load_avg_after"]) == 3
    assert isinstance(res["threads"], int) and res["threads"] >= 1 and res["quick"] is True
    assert {"makd", "torch", "transformers", "python"} <= set(res["versions"])


def test_textbrewer_benchmark_same_objective_same_gradients(tmp_path):
    pytest.importorskip("textbrewer", reason="benchmark-only dependency (pip install --no-deps textbrewer)")
    res = _run("bench_vs_textbrewer.py", tmp_path / "tb.json")
    _load_fields(res)
    assert res["versions"]["textbrewer"].startswith("0.2.1")
    assert set(res["objectives"]) == {"intermediate", "logit-kd"}
    for name, entry in res["objectives"].items():
        for fw in ("makd", "textbrewer"):
            row = entry[fw]
            assert len(row["times_s"]) == res["runs"] and all(_positive(t) for t in row["times_s"])
            assert row["median_s"] == pytest.approx(statistics.median(row["times_s"]))
            assert _positive(row["peak_rss_delta_mib"]), (name, fw, row)
        ratio = entry["makd"]["median_s"] / entry["textbrewer"]["median_s"]
        assert entry["makd_over_textbrewer"] == pytest.approx(ratio)
        check = entry["step0"]
        assert check["grad_cosine"] == pytest.approx(1.0, abs=1e-4) and check["grad_rel_diff"] < 1e-3
        assert check["grad_numel"] == check["grad_numel_textbrewer"]
        terms = {t["term"]: t for t in check["terms"]}
        assert {"logit KD (t = 2)", "gold CE", "total"} <= set(terms)
        assert ("attention, all layers" in terms) == (name == "intermediate")
        for t in check["terms"]:                       # every difference is the teacher's entropy, nothing else
            assert abs(t["unexplained"]) <= 1e-4 * max(1.0, abs(t["textbrewer"])), t


def test_textbrewer_benchmark_says_how_to_install_it(tmp_path):
    """Without TextBrewer the script stops at once with the exact pip command (simulated by hiding the module)."""
    code = ("import sys, runpy; sys.modules['textbrewer'] = None; "
            f"sys.argv = ['bench_vs_textbrewer.py', '--quick', '--out', {str(tmp_path / 'x.json')!r}]; "
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'bench_vs_textbrewer.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "pip install --no-deps textbrewer==0.2.1.post1" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_generate_benchmark_reports_speedup_per_student_and_batch(tmp_path):
    res = _run("bench_generate.py", tmp_path / "g.json", "--batches", "1", "2", "--dense-from", "1", "0.5")
    _load_fields(res)
    assert res["teacher"] == "tiny-llama" and res["batches"] == [1, 2]
    rows = {(r["model"], r["batch"]): r for r in res["rows"]}
    students = ("student@0.8", "student@0.8/dense>=0.5", "student@0.5", "student@0.5/dense>=0.5")
    assert set(rows) == {(m, b) for m in ("teacher", *students) for b in (1, 2)}
    assert rows["teacher", 1]["params"] > rows["student@0.8", 1]["params"] > rows["student@0.5", 1]["params"]
    # dense_from 0.5: every matrix of the ratio-0.8 student runs dense (its factors cost ~0.8 of the matrix), none
    # at the default 1.0; the same parameters either way
    dense = rows["student@0.8/dense>=0.5", 1]
    assert dense["matrices_dense"] == dense["matrices"] > 0 and rows["student@0.8", 1]["matrices_dense"] == 0
    assert dense["params"] == rows["student@0.8", 1]["params"] and dense["dense_from"] == 0.5
    for (model, batch), r in rows.items():
        assert len(r["times_s"]) == res["runs"] and r["median_s"] == pytest.approx(statistics.median(r["times_s"]))
        assert r["tokens_per_s"] == pytest.approx(batch * res["new_tokens"] / r["median_s"])
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / rows["teacher", batch]["tokens_per_s"])
        assert _positive(r["peak_rss_delta_mib"]), r
    assert set(res["speedup"]) == set(students)
    for model, per_batch in res["speedup"].items():
        assert per_batch == {str(b): pytest.approx(rows[model, b]["speedup"]) for b in (1, 2)}
    assert set(res["targets"]) == {"student@0.5_speedup>=1.6_batch_1", "student@0.5_speedup>=1.6_batch_2"}


def test_chunk_size_benchmark_times_every_chunk_size_and_names_the_fastest(tmp_path):
    res = _run("bench_chunk_size.py", tmp_path / "c.json", "--mixers", "gla", "mamba2")
    assert res["chunks"] == [4, 8, 16] and res["defaults"] == {"gla": 64, "mamba2": 64}
    for T in ("32", "64"):
        for name in ("gla", "mamba2"):
            med = res["seconds"][T][name]
            assert set(med) == {"4", "8", "16", "64"} and all(_positive(s) for s in med.values())   # + the default
            assert med[str(res["best"][T][name])] == min(med.values())
            ratio = res["default_over_best"][T][name]
            assert ratio == pytest.approx(med["64"] / min(med.values())) and ratio >= 1


def test_memory_rows_are_the_median_of_fresh_processes(tmp_path):
    """child_memory runs the script --memory-repeats times and reports the median peak with every run's peak."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import argparse

    from _memory import child_memory, start_run
    script = tmp_path / "fake.py"                   # each run reports the next peak of a list, as the children would
    script.write_text("import json, pathlib\np = pathlib.Path(__file__).with_suffix('.n')\n"
                      "n = int(p.read_text()) if p.exists() else 0\np.write_text(str(n + 1))\n"
                      "print('noise')\nprint(json.dumps({'peak_rss_delta_mib': [900.0, 1000.0, 950.0][n], "
                      "'memory_method': 'fake'}))\n")
    args = argparse.Namespace(quick=False, threads=None, memory_repeats=None)
    start_run(args, {})
    assert args.memory_repeats == 3
    row = child_memory(script, "x", args, [])
    assert row == {"peak_rss_delta_mib": 950.0, "peak_rss_delta_mib_runs": [900.0, 1000.0, 950.0],
                   "memory_method": "fake"}
    quick = argparse.Namespace(quick=True, threads=None, memory_repeats=None)
    start_run(quick, {})
    assert quick.memory_repeats == 1
    with pytest.raises(SystemExit, match="--memory-repeats must be at least 1"):
        start_run(argparse.Namespace(quick=False, threads=None, memory_repeats=0), {})
