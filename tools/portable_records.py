"""Rewrite committed metrics.json files so that no absolute machine path is left in them (run records included).

    python tools/portable_records.py results/ --data-root /work/shared/data --cache-root /work/main/data/cache \
        --repo-root /work/main --home /root

Every absolute path inside a string (keys and values, nested) becomes ``$MAKD_DATA_DIR/...``,
``$MAKD_CACHE_DIR/...``, a path relative to the repository, ``~/...`` or ``<outside>/NAME`` — the same rule
``makd.experiments.runrecord.make_record`` applies to new records (``portable``), with the roots of the machine
that wrote the committed files given explicitly. Idempotent; sha256 values and numbers are untouched. The
committed records also gain the ``paths`` legend. Grid ``cell.json`` files get their options as the grid runner
now writes them (``makd.experiments.grid_plan.portable_options``: a given data folder is ``$MAKD_DATA_DIR``) and
the config hash of those options — only where the stored hash is the one the old options gave (checked first:
a cell whose options do not give back its own hash is reported and left alone).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from makd.assets.files import write_json  # noqa: E402
from makd.experiments.grid_plan import VOLATILE, config_hash, portable_options  # noqa: E402
from makd.experiments.runrecord import ROOTS_LEGEND, portable  # noqa: E402


def _legacy_hash(opts: dict) -> str:
    """The config hash as the grid runner computed it before data folders were written portably."""
    kept = {k: v for k, v in opts.items() if k not in VOLATILE and k != "budget_of"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rewrite_cells(folder: Path) -> tuple[int, list[Path]]:
    """(cells rewritten, cells left alone because their options do not give back their stored hash)."""
    changed, odd = 0, []
    for path in sorted(folder.rglob("cell.json")):
        info = json.loads(path.read_text())
        extra = {"budget_of": info["budget_of"]} if info.get("budget_of") else {}
        opts = {**info.get("options", {}), **extra}
        new_opts = portable_options(info.get("options", {}))
        if new_opts == info.get("options") and config_hash({**new_opts, **extra}) == info.get("config_hash"):
            continue
        if _legacy_hash(opts) != info.get("config_hash"):
            odd.append(path)
            continue
        write_json(path, {**info, "options": new_opts, "config_hash": config_hash({**new_opts, **extra})})
        changed += 1
    return changed, odd


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
    cells, odd = rewrite_cells(args.folder)
    print(f"rewrote {cells} cell.json files under {args.folder}" + "".join(f"\n  left alone (hash does not match "
                                                                        f"its options): {p}" for p in odd))
    return 1 if odd else 0


if __name__ == "__main__":
    sys.exit(main())
