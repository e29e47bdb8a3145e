#!/usr/bin/env python
"""Regenerate every notebooks/<stem>.ipynb from its jupytext source notebooks/<stem>.py, outputs stripped.

    python tools/sync_notebooks.py            # write the stale .ipynb
    python tools/sync_notebooks.py --check    # exit 1 listing the stale .ipynb, write nothing (for CI/hooks)

Same as `python -m makd reproduce --sync`. Edit the .py, never the .ipynb by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from makd.notebook.helpers import NOTEBOOKS_DIR, sync_notebooks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(NOTEBOOKS_DIR), help="notebook folder (default notebooks/)")
    parser.add_argument("--check", action="store_true", help="only report stale .ipynb (exit 1 when any)")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        parser.error(f"{args.folder} is not a folder")
    changed = sync_notebooks(args.folder, check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'wrote'} {path}")
    if not changed:
        print("all .ipynb in sync with their .py")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
