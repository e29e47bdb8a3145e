"""The README's demo block: the picked quantities of ``notebooks/expected/demo.json`` with their tolerances.

``python -m makd reproduce --readme README.md`` rewrites the text between the two `README_MARKERS` lines; the test
of the committed README checks that it equals :func:`readme_text` of the committed file (never typed by hand).
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from makd.experiments.readme_blocks import read_block, write_block
from makd.notebook.expected import markdown

README_PROFILE = "demo"
README_MARKERS = ("<!-- makd reproduce --readme: demo numbers -->", "<!-- /makd reproduce --readme -->")
# the demo quantities the README states (fnmatch patterns "<notebook>:<quantity>"); all others are in the file
README_PICKS = ("06_hierarchical_training:teacher", "06_hierarchical_training:student_untrained",
                "06_hierarchical_training:student", "08_glue:per_task.*.teacher",
                "08_glue:per_task.*.student_untrained", "08_glue:per_task.*.student",
                "01_svd_decomposition:max_abs_diff_makd_vs_eckart_young", "10_decoder_rouge:rougeL.*")


def readme_text(expected_file: Path) -> str:
    """The README's demo block: the picked quantities of ``expected_file``, or a note that it does not exist yet."""
    if not expected_file.is_file():
        return (f"No expected values for the {README_PROFILE} profile yet (`notebooks/expected/{README_PROFILE}.json`"
                f"), so no demo numbers are stated here. A reference run makes them: `python -m makd reproduce "
                f"--profile {README_PROFILE} --out runs/{README_PROFILE}`, then `python -m makd reproduce "
                f"--write-expected runs/{README_PROFILE} --profile {README_PROFILE}` and `python -m makd reproduce "
                f"--readme README.md`.")
    doc = json.loads(expected_file.read_text())
    rows = [[stem, name, q["value"], f"± {q['tolerance']:.2g}", q["why"]]
            for stem, nb in doc["notebooks"].items() for name, q in nb["quantities"].items()
            if any(fnmatch.fnmatchcase(f"{stem}:{name}", p) for p in README_PICKS)]
    refs = [nb.get("reference", doc["reference"]) for nb in doc["notebooks"].values()] or [doc["reference"]]
    machines = {f"{m['cpu']}, {m['cores']} cores" for r in refs for m in r["machine"] if m} or {"an unrecorded machine"}
    starts = sorted(s[:10] for r in refs for s in r["started"] if s) or ["an unrecorded date"]
    counts = sorted({r["runs"] for r in refs})                    # notebooks re-referenced alone (--only) differ
    runs = (f"{counts[0]} reference run(s)" if len(counts) == 1
            else f"{counts[0]}–{counts[-1]} reference runs per notebook")
    n = sum(len(nb["quantities"]) for nb in doc["notebooks"].values())
    return (f"Expected values of the {doc['profile']} profile (`notebooks/expected/{doc['profile']}.json`, "
            f"{runs}), measured on {starts[-1]} on {'; '.join(sorted(machines))}; "
            f"every run checks all {n} quantities of that file and ends with the verdict.\n\n"
            + markdown(["notebook", "quantity", "expected", "tolerance", "why"], rows))


MISSING = "the README has no demo block: put the lines {!r} and {!r} where it belongs".format(*README_MARKERS)


def readme_block(text: str) -> str:
    """The text between the README's two demo marker lines."""
    return read_block(text, README_MARKERS, MISSING)


def replace_readme_block(text: str, block: str) -> str:
    return write_block(text, block, README_MARKERS, MISSING)


def update_readme(readme: Path, expected_file: Path) -> str:
    """Rewrite ``readme``'s demo block from ``expected_file`` (see :func:`readme_text`); return what was done."""
    readme.write_text(replace_readme_block(readme.read_text(), readme_text(expected_file)))
    return f"wrote the demo block of {readme} from {expected_file}"
