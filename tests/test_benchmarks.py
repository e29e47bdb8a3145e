"""The benchmark scripts run (tiny random models via --quick) and write the JSON their README rows come from.
Speed targets are not asserted here: they are measured by the scripts and recorded in the README."""
from __future__ import annotations

import json
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


def test_decoder_svd_benchmark_writes_a_row_per_ratio_and_weighting(tmp_path):
    res = _run("bench_decoder_svd.py", tmp_path / "d.json")
    kinds = [(r["layer_ratio"], r["weighting"]) for r in res["rows"]]
    assert kinds == [(1.0, "-"), (0.9, "none"), (0.9, "activation"), (0.5, "none"), (0.5, "activation")]
    assert all(r["response_ce"] > 0 for r in res["rows"]) and res["uniform_ce"] > 0
    params = [r["params"] for r in res["rows"]]
    assert params[0] > params[1] > params[3]                       # smaller ratio, fewer parameters


@pytest.mark.parametrize("script", ["bench_factorize.py", "bench_step.py"])
def test_encoder_benchmarks_write_json(tmp_path, script):
    extra = ("--no-memory",) if script == "bench_step.py" else ()
    res = _run(script, tmp_path / "b.json", *extra)
    assert res["quick"] is True and set(res["targets"])
    if script == "bench_factorize.py":
        assert res["rows"][0]["model"] == "teacher" and res["rows"][0]["speedup"] == 1.0
        assert all(r["tokens_per_s"] > 0 for r in res["rows"]) and len(res["rows"]) >= 4
    else:
        by = {r["config"]: r for r in res["rows"]}
        assert {"finetune", "model-only", "hierarchical"} <= set(by) and by["model-only"]["vs_logit_kd"] == 1.0
        assert all(r["median_s"] > 0 for r in res["rows"])
