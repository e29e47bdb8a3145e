"""Rewrite committed metrics.json files so that no absolute machine path is left in them (run records included).

    python tools/portable_records.py results/ --data-root /work/shared/data --cache-root /work/main/data/cache \
        --repo-root /work/main --home /root

Every absolute path inside a string (keys and values, nested) becomes ``$MAKD_DATA_DIR/...``,
``$MAKD_CACHE_DIR/...``, a path relative to the repository, ``~/...`` or ``<outside>/NAME`` — the same rule
``makd.experiments.runrecord.make_record`` applies to new records (``portable``), with the roots of the machine
that wrote the committed files given explicitly. Idempotent; sha256 values and numbers are untouched. The
committed records also gain the ``paths`` legend. grid ``cell.json`` files are not run records and are left alone
(their options feed the config hash).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from makd.assets.files import write_json  # noqa: E402
from makd.experiments.runrecord import ROOTS_LEGEND, portable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--data-root", required=True)
    p.add_argument("--cache-root", required=True)
    p.add_argument("--repo-root", required=True)
    p.add_argument("--home", required=True)
    args = p.parse_args(argv)
    roots = sorted([(args.data_root, "$MAKD_DATA_DIR"), (args.cache_root, "$MAKD_CACHE_DIR"),
                    (args.repo_root, "."), (args.home, "~")], key=lambda pair: -len(pair[0]))
    changed = 0
    for path in sorted(args.folder.rglob("metrics.json")):
        old = json.loads(path.read_text())
        new = portable(old, roots)
        if isinstance(new.get("record"), dict):
            new["record"].setdefault("paths", ROOTS_LEGEND)
        if new != old:
            write_json(path, new)
            changed += 1
    print(f"rewrote {changed} metrics.json files under {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
