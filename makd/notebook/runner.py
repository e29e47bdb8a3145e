"""`python -m makd reproduce`: execute the notebooks headless, in order, with a profile.

    python -m makd reproduce --profile smoke                 # seconds per notebook, tiny random models
    python -m makd reproduce --profile demo --from 05        # embedded real assets, from notebook 05 on
    python -m makd reproduce --profile full --only 08 09 -p data_dir ../shared/data
    python -m makd reproduce --list                          # notebooks, titles, each profile's parameters
    python -m makd reproduce --sync                          # regenerate notebooks/*.ipynb from the .py
    python -m makd reproduce --write-expected RUN [RUN ...] --profile smoke   # expected values from reference runs

Every run writes under ``run_dir`` (default ``runs/<profile>/``): executed notebooks in ``notebooks/``,
each notebook's ``metrics/<notebook>.json`` and ``figures/``, and ``manifest.json`` (parameters hash,
status, runtime, outputs) that ``--resume`` uses to skip notebooks already done with the same
parameters and source. All parameters are checked against each notebook's parameters cell BEFORE
anything runs (unknown names and wrong types are errors, not papermill warnings). Every run ends with
the verdict against ``notebooks/expected/<profile>.json`` (``reproduction.md`` / ``.json`` in run_dir:
"reproduced" or "not reproduced: N quantities outside tolerance"); ``--strict`` makes a miss exit 1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from makd.assets.paths import REPO_ROOT, expand_env, resolve_path
from makd.core.errors import ArgumentParser
from makd.notebook import expected as xp
from makd.notebook import expected_readme as xr
from makd.notebook import helpers as nbk
from makd.notebook.plotting import publish
from makd.notebook.profiles import (PROFILES, parse_parameters, parse_value, profile_overrides, resolve_value,
                                    validate)

STEM = re.compile(r"^\d\d_[A-Za-z0-9_]+$")


class NotebookError(RuntimeError):
    """A notebook failed (or broke the contract) while executing; the message names the saved notebook."""


def discover(folder: Path) -> dict[str, Path]:
    """stem -> input file (the ``.ipynb``, else the jupytext ``.py``), in notebook order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"notebook folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.py")) + sorted(folder.glob("*.ipynb")):
        if STEM.match(path.stem):
            found[path.stem] = path  # .ipynb (later in the list) wins over .py
    return dict(sorted(found.items()))


def select(stems: list[str], only: list[str] | None, start: str | None) -> list[str]:
    """Apply ``--only`` (stems or numbers) and ``--from`` (stem or number) to the ordered stems."""
    def find(token: str) -> str:
        hits = [s for s in stems if token in (s, s.split("_", 1)[0])]
        if not hits:
            raise ValueError(f"no notebook {token!r}: choose from {', '.join(stems) or '(none)'}")
        return hits[0]
    chosen = [s for s in stems if not only or s in {find(t) for t in only}]
    if start is not None:
        first = stems.index(find(start))
        chosen = [s for s in chosen if stems.index(s) >= first]
    if not chosen:
        raise ValueError("the selection (--only/--from) leaves no notebook to run")
    return chosen


def plan(profile: str, files: dict[str, Path], chosen: list[str], cli: dict[str, Any], run_dir: Path,
         profiles: dict | None = None) -> list[dict[str, Any]]:
    """Validate every selected notebook's parameters; return one job per notebook (nothing executed)."""
    jobs, declared_any = [], set()
    for stem in chosen:
        nb = nbk.read_notebook(files[stem])
        declared = parse_parameters(nbk.parameters_cell(nb, stem).source, stem)
        declared_any |= set(declared)
        values = profile_overrides(profile, stem, declared, profiles)
        values.update({k: (v, "-p") for k, v in cli.items() if k in declared or len(chosen) == 1})
        values["run_dir"] = (str(run_dir), "the runner")
        params = validate(stem, declared, values)
        params = {k: resolve_value(k, expand_env(v, k)) for k, v in params.items()}
        digest = hashlib.sha256(json.dumps({"p": params, "src": [c.source for c in nb.cells]},
                                           sort_keys=True, default=str).encode()).hexdigest()
        jobs.append({"stem": stem, "nb": nb, "input": files[stem], "params": params, "hash": digest,
                     "title": nbk.title(nb)})
    unused = sorted(set(cli) - declared_any)
    if unused:
        raise ValueError(f"-p {', '.join(unused)}: no selected notebook declares it (see --list)")
    return jobs


def resolve_kernel(requested: str | None = None) -> str:
    """A kernel running this interpreter: ``python3`` when it does, else a ``makd`` kernelspec registered
    for ``sys.executable`` in ``sys.prefix`` (so a fresh virtual environment works)."""
    if requested:
        return requested
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    ksm, here = KernelSpecManager(), Path(sys.executable).resolve()
    names = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    name = "makd-" + hashlib.sha256(str(here).encode()).hexdigest()[:8]
    for candidate in ("python3", name):
        try:
            exe = ksm.get_kernel_spec(candidate).argv[0]
        except NoSuchKernel:
            continue
        if exe in names or Path(exe).resolve() == here:
            return candidate
    from ipykernel.kernelspec import install
    install(kernel_name=name, display_name=f"Python (makd, {sys.prefix})", prefix=sys.prefix)
    return name


def _load_manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"notebooks": {}}


def _figures(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((run_dir / "figures").glob("*")) if p.is_file()}


def execute(job: dict[str, Any], run_dir: Path, kernel: str) -> dict[str, Any]:
    """Run one notebook with papermill; return its manifest entry (raise NotebookError on failure)."""
    import papermill as pm
    stem, out = job["stem"], run_dir / "notebooks" / f"{job['stem']}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    entry = {"title": job["title"], "input": str(job["input"]), "hash": job["hash"], "parameters": job["params"],
             "notebook": str(out), "status": "running"}
    before = _figures(run_dir)
    metrics = run_dir / "metrics" / f"{stem}.json"
    metrics.unlink(missing_ok=True)  # a stale file from an earlier run must not satisfy the contract check
    t0 = time.perf_counter()
    # our own check (validate) already rejected unknown names and wrong types; papermill's parser does not
    # understand `str | None` annotations or quotes in help comments and would only print false warnings
    logging.getLogger("papermill").setLevel(logging.ERROR)
    try:
        pm.execute_notebook(nbk.strip_outputs(job["nb"]), str(out), parameters=job["params"], kernel_name=kernel,
                            language="python", cwd=str(job["input"].parent), progress_bar=False, log_output=False,
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"])  # quiet kernel chatter
    except pm.PapermillExecutionError as err:
        entry.update(status="failed", runtime_s=round(time.perf_counter() - t0, 2),
                     error=f"{err.ename}: {err.evalue}")
        raise NotebookError(f"notebook {stem} failed in cell In[{err.exec_count}]: {err.ename}: {err.evalue}\n"
                            f"  the failed notebook is saved at {out}") from None
    except Exception as err:  # kernel died, timeout, ...
        entry.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise NotebookError(f"notebook {stem} could not run: {type(err).__name__}: {err}\n"
                            f"  the partial notebook is saved at {out}") from None
    finally:
        entry.setdefault("runtime_s", round(time.perf_counter() - t0, 2))
        job["entry"] = entry
    try:  # the contract: every notebook writes run_dir/metrics/<stem>.json with finite numbers
        nbk.check_metrics(nbk.read_metrics(run_dir, stem), f"metrics/{stem}.json")
    except (FileNotFoundError, ValueError, TypeError) as err:
        entry.update(status="failed", error=str(err))
        raise NotebookError(f"notebook {stem} ran but broke the contract: {err}\n"
                            f"  the executed notebook is saved at {out}") from None
    figures = sorted(p for p, t in _figures(run_dir).items() if before.get(p) != t)  # written by this notebook
    entry.update(status="ok", metrics=str(metrics), figures=figures)
    return entry


def run(profile: str = "demo", *, only: list[str] | None = None, start: str | None = None,
        out: str | Path | None = None, params: dict[str, Any] | None = None, resume: bool = False,
        kernel: str | None = None, notebooks: str | Path | None = None, publish_figures: bool = False,
        profiles: dict | None = None, expected: str | Path | None = None, log=print) -> dict[str, Any]:
    """Validate, execute the selected notebooks in order, then check the numbers against ``expected``
    (default ``<notebooks>/expected/<profile>.json``); return the manifest, the verdict under "reproduction"."""
    if publish_figures and profile == "smoke":
        raise ValueError("--publish-figures copies figures into the repository: not for the smoke profile")
    folder = resolve_path(notebooks) if notebooks else nbk.NOTEBOOKS_DIR
    files = discover(folder)
    run_dir = resolve_path(out) if out else REPO_ROOT / "runs" / profile
    jobs = plan(profile, files, select(list(files), only, start), dict(params or {}), run_dir, profiles)
    for job in jobs:  # warn when a committed .ipynb lags behind its .py source
        py = job["input"].with_suffix(".py")
        if job["input"].suffix == ".ipynb" and py.is_file() and \
                [c.source for c in nbk.read_notebook(py).cells] != [c.source for c in job["nb"].cells]:
            log(f"warning: {job['input'].name} differs from {py.name}: run `python -m makd reproduce --sync`")
    kernel = resolve_kernel(kernel)
    manifest_path = run_dir / "manifest.json"
    manifest = _load_manifest(manifest_path)
    manifest.update(profile=profile, run_dir=str(run_dir), kernel=kernel, **xp.run_record())
    log(f"profile {profile}: {len(jobs)} notebook(s) -> {run_dir} (kernel {kernel})")
    skipped = set()
    for i, job in enumerate(jobs, 1):
        stem, old = job["stem"], manifest["notebooks"].get(job["stem"], {})
        if resume and old.get("status") == "ok" and old.get("hash") == job["hash"] \
                and Path(old.get("notebook", "")).is_file():
            log(f"[{i}/{len(jobs)}] {stem:<30} skipped (done with the same parameters and source)")
            skipped.add(stem)
            continue
        try:
            manifest["notebooks"][stem] = execute(job, run_dir, kernel)
        except NotebookError:
            manifest["notebooks"][stem] = job["entry"]
            log(f"[{i}/{len(jobs)}] {stem:<30} FAILED {job['entry']['runtime_s']:7.1f}s")
            raise
        finally:
            run_dir.mkdir(parents=True, exist_ok=True)
            manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        log(f"[{i}/{len(jobs)}] {stem:<30} ok     {manifest['notebooks'][stem]['runtime_s']:7.1f}s")
    log(summary(manifest, [j["stem"] for j in jobs], skipped))
    verdict = xp.check(resolve_path(expected) if expected else folder / "expected" / f"{profile}.json", run_dir,
                       [j["stem"] for j in jobs], manifest, profile)
    log(xp.write_verdict(run_dir, verdict))
    manifest["reproduction"] = verdict
    if publish_figures:
        copied = publish(run_dir, REPO_ROOT / "figures")
        log(f"published {len(copied)} figure file(s) to {REPO_ROOT / 'figures'}")
    return manifest


def summary(manifest: dict[str, Any], stems: list[str], skipped: set[str] = frozenset()) -> str:
    """The end-of-run table: notebook, status, runtime, number of metric values."""
    rows = [f"{'notebook':<30} {'status':<8} {'time':>8}  metrics"]
    for stem in stems:
        e = manifest["notebooks"].get(stem, {})
        status = "skipped" if stem in skipped else e.get("status", "-")
        path = Path(e.get("metrics", ""))
        n = len(json.loads(path.read_text())) if e.get("metrics") and path.is_file() else 0
        rows.append(f"{stem:<30} {status:<8} {e.get('runtime_s', 0):7.1f}s  {n} value(s)")
    total = sum(manifest["notebooks"].get(s, {}).get("runtime_s", 0) for s in stems)
    return "\n".join(rows + [f"{'total':<30} {'':<8} {total:7.1f}s"])


def list_notebooks(notebooks: str | Path | None = None, profiles: dict | None = None) -> str:
    """Each notebook's title and the overrides each profile gives it."""
    profiles = PROFILES if profiles is None else profiles
    lines = []
    for stem, path in discover(resolve_path(notebooks) if notebooks else nbk.NOTEBOOKS_DIR).items():
        nb = nbk.read_notebook(path)
        declared = parse_parameters(nbk.parameters_cell(nb, stem).source, stem)
        lines.append(f"{stem}  {nbk.title(nb)}")
        lines += [f"    {p.describe()}" for p in declared.values()]
        for name in profiles:
            over = {k: v for k, (v, _) in profile_overrides(name, stem, declared, profiles).items()}
            lines.append(f"    profile {name:<6} {over or '(defaults)'}")
    return "\n".join(lines) or "(no notebooks)"


def build_parser() -> argparse.ArgumentParser:
    head, tail = __doc__.split("\n\n", 1)
    p = ArgumentParser(prog="python -m makd reproduce", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", help=f"one of {', '.join(PROFILES)} (default demo)")
    p.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (numbers or stems)")
    p.add_argument("--from", dest="start", metavar="NB", help="start at this notebook (number or stem)")
    p.add_argument("--out", help="run folder (default runs/<profile>); injected as run_dir")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override one parameter (VALUE parsed as a Python/YAML literal); repeatable")
    p.add_argument("--resume", action="store_true", help="skip notebooks already done with the same parameters")
    p.add_argument("--kernel", help="Jupyter kernel name (default: one running this interpreter)")
    p.add_argument("--notebooks", help="notebook folder (default notebooks/)")
    p.add_argument("--publish-figures", action="store_true", help="copy run_dir/figures into figures/ (not smoke)")
    p.add_argument("--list", action="store_true", help="list notebooks, their parameters and each profile's")
    p.add_argument("--sync", action="store_true", help="regenerate every .ipynb from its .py (outputs stripped)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a quantity is outside its tolerance")
    p.add_argument("--expected", metavar="FILE", help="expected values (default NOTEBOOKS/expected/PROFILE.json)")
    p.add_argument("--write-expected", nargs="+", metavar="RUN_DIR", help="write the expected values of "
                   "--profile from these reference run folders (to --expected or its default), run nothing")
    p.add_argument("--readme", metavar="FILE", help="rewrite FILE's demo block (between the lines "
                   f"{xr.README_MARKERS[0]!r} and {xr.README_MARKERS[1]!r}) from the demo expected values")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.sync:
            changed = nbk.sync_notebooks(resolve_path(args.notebooks) if args.notebooks else nbk.NOTEBOOKS_DIR)
            print("\n".join(f"wrote {p}" for p in changed) or "all .ipynb already in sync")
            return 0
        if args.list:
            print(list_notebooks(args.notebooks))
            return 0
        folder = resolve_path(args.notebooks) if args.notebooks else nbk.NOTEBOOKS_DIR
        if args.write_expected:
            path = resolve_path(args.expected) if args.expected else folder / "expected" / f"{args.profile}.json"
            print(f"wrote {xp.write_expected([resolve_path(d) for d in args.write_expected], args.profile, path)}")
            return 0
        if args.readme:
            print(xr.update_readme(resolve_path(args.readme), folder / "expected" / f"{xr.README_PROFILE}.json"))
            return 0
        manifest = run(args.profile, only=args.only, start=args.start, out=args.out, resume=args.resume,
                       kernel=args.kernel, params={k: parse_value(v) for k, v in args.parameter},
                       notebooks=args.notebooks, publish_figures=args.publish_figures, expected=args.expected,
                       log=lambda s: print(s, flush=True))
    except (ValueError, TypeError, FileNotFoundError, NotebookError) as err:
        print(f"python -m makd reproduce: error: {err}", file=sys.stderr)
        return 1
    return 1 if args.strict and manifest["reproduction"]["reproduced"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
