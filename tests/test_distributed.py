"""`python -m makd distill` under `accelerate launch` with 2 CPU processes (gloo, tiny models), from a generated
accelerate config file: DDP trains and reports world size 2; FSDP, which accelerate 1.15 cannot shard on CPUs (it
fails in its plugin or silently trains with DDP), is refused with one clear line before any training.
accelerate's own CPU type (``--cpu`` / ``MULTI_CPU``) starts several processes only through ``mpirun``; without
it, it runs ONE process. Its torchrun launcher (``MULTI_GPU``) with no GPU visible starts CPU processes over gloo
(makd trains on the CPU when CUDA is unavailable): that is what these tests launch.
The same run under torchrun: tests/test_pipeline.py::test_two_cpu_processes_with_torchrun."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "glue"
CMD = ["-m", "makd", "distill", "--task", "sst2", "--data-dir", str(FIXTURES), "--teacher", "tiny-bert",
       "--teacher-epochs", "1", "--force-teacher", "--report-to", "none", "--quiet", "--max-steps", "3",
       "--batch-size", "2", "--logging-steps", "1", "--objective", "hierarchical"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache with the tiny teacher fine-tuned once (one process), shared by the launches below."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "MAKD_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    for key in [k for k in env if k.startswith(("ACCELERATE_", "FSDP_"))]:
        del env[key]
    subprocess.run([sys.executable, *CMD, "--objective", "none", "--out", str(cache.parent / "warm")], env=env,
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    return env


def _launch(tmp_path: Path, env: dict, config: str, out: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config> -m makd distill ...` with 2 processes on this machine."""
    path = tmp_path / "accelerate.yaml"
    path.write_text("compute_environment: LOCAL_MACHINE\nnum_machines: 1\nmachine_rank: 0\nnum_processes: 2\n"
                    f"main_process_ip: 127.0.0.1\nmain_process_port: {_free_port()}\nmixed_precision: 'no'\n"
                    + config)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return subprocess.run([accelerate, "launch", "--config_file", str(path), *CMD, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_two_cpu_processes_with_accelerate_launch_ddp(tmp_path, env):
    proc = _launch(tmp_path, env, "distributed_type: MULTI_GPU\n", tmp_path / "ddp")   # no GPU: CPU + gloo
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert saved["train"]["steps"] == 3
    assert [{"loss_attn", "loss_hidn"} <= set(e) for e in saved["train"]["history"]] == [True] * 3
    assert saved["record"]["machine"]["world_size"] == 2


@pytest.mark.parametrize("sync", ["true", "false"])
def test_fsdp_on_two_cpu_processes_is_refused_with_one_line(tmp_path, env, sync):
    # sync_module_states true (accelerate's default): its FSDP plugin raises "There are currently no available
    # devices found"; false: the run would silently train with DDP. Either way makd refuses first.
    config = ("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 1\n  fsdp_sharding_strategy: FULL_SHARD\n"
              f"  fsdp_sync_module_states: {sync}\n  fsdp_cpu_ram_efficient_loading: false\n"
              "  fsdp_use_orig_params: true\n")
    proc = _launch(tmp_path, env, config, tmp_path / "fsdp")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("FSDP cannot shard on CPU processes" in line for line in errors), proc.stderr[-3000:]
    assert "no available devices" not in proc.stderr and "]: Traceback" not in proc.stderr   # no rank's traceback
    assert not (tmp_path / "fsdp" / "metrics.json").exists()
