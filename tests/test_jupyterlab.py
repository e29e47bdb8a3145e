"""JupyterLab opens a jupytext ``.py`` notebook AS A NOTEBOOK (cells), not as a text file.

Starts ``jupyter lab`` from this environment on 127.0.0.1 (free port, no token, temp runtime/settings
dirs) over a temporary copy of notebooks/ + jupytext.toml, with the repository's lab configuration
``binder/jupyter`` on JUPYTER_CONFIG_PATH (what binder/postBuild installs: the "Jupytext Notebook"
default viewer for .py files). Headless Chromium then (1) dumps the DOM, which must hold notebook
markdown and code cells, and (2) saves a screenshot to tests/artifacts/ that must be non-trivial.

It renders notebooks/01_svd_decomposition.py, and falls back to 00_overview.py while 01 does not exist.
Skipped (with the reason) when chromium is not installed: `apt-get install chromium`.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from makd.notebook.helpers import NOTEBOOKS_DIR, read_notebook, title
from makd.assets.paths import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
TARGET = "01_svd_decomposition" if (NOTEBOOKS_DIR / "01_svd_decomposition.py").is_file() else "00_overview"
SETTINGS = {  # user settings for this test only: no autosave, no news fetching
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false"}',
}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(url: str, profile: Path, *extra: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,1000", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, timeout=180)


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(NOTEBOOKS_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(REPO_ROOT / "jupytext.toml", root / "jupytext.toml")
    settings = tmp_path / "settings"
    for name, text in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(REPO_ROOT / "binder" / "jupyter"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={root}"]
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 60 s: " + (tmp_path / "lab.log").read_text()[-2000:])
        if proc.poll() is not None:
            pytest.fail("jupyter lab exited: " + (tmp_path / "lab.log").read_text()[-2000:])
        yield base, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_lab_renders_the_py_notebook_as_a_notebook(lab):
    base, tmp = lab
    url = f"{base}/lab/tree/notebooks/{TARGET}.py"
    dom = chromium(url, tmp / "chrome-dom", "--dump-dom").stdout.decode("utf-8", "replace")
    classes = re.findall(r'class="[^"]*\b(jp-MarkdownCell|jp-CodeCell|jp-FileEditor)\b', dom)
    assert classes.count("jp-MarkdownCell") >= 1 and classes.count("jp-CodeCell") >= 2, \
        f"{TARGET}.py did not open as a notebook (cells: {sorted(set(classes))}): check binder/jupyter labconfig"
    heading = title(read_notebook(NOTEBOOKS_DIR / f"{TARGET}.py"))
    assert heading.split("·")[-1].strip()[:20] in dom, "the notebook's title should be rendered"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"jupyterlab_{TARGET}.png"
    shot.unlink(missing_ok=True)
    chromium(url, tmp / "chrome-shot", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or tiny"
    from matplotlib.image import imread
    pixels = imread(shot)  # (H, W, C) floats
    assert pixels.shape[:2] == (1000, 1400)
    assert pixels[..., :3].reshape(-1, 3).std(axis=0).max() > 0.05, "the screenshot is (nearly) one colour"
