"""Which models a decoder comparison scores, and which of them an earlier run in the same folder already holds.

:func:`run_names` names the models of ``python -m makd decoder`` in the order they are scored; with ``--resume``,
:func:`earlier_results` keeps those scored before under the same configuration (the options of
:data:`RESUMABLE` may differ; for the teacher and the controls, never trained, also those of
:data:`TRAINING_ONLY`) and refuses a folder scored with other options, in one line that names them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from makd.core.errors import UsageError
from makd.experiments.decoder_config import CONTROLS, DecoderConfig
from makd.experiments.runrecord import path_roots, portable


def run_names(cfg: DecoderConfig) -> list[str]:
    """The scored models of a comparison, in order: ``teacher``, the controls (not trained: scored once, under their
    own name), then each trained method — with ``train_seeds``, seed by seed (``method/seed-S``: every method of
    the first seed before the second seed, so an interrupted run leaves whole seeds)."""
    controls = [m for m in cfg.methods if m in CONTROLS]
    trained = [m for m in cfg.methods if m not in CONTROLS]
    if not cfg.train_seeds:
        return ["teacher", *controls, *trained]
    return ["teacher", *controls, *(f"{m}/seed-{s}" for s in cfg.train_seeds for m in trained)]


# options that do not change a model's numbers: a resumed run may differ in them
RESUMABLE = ("methods", "train_seeds", "extra_eval", "out", "resume", "quiet", "command", "report_to",
             "logging_steps", "save_steps")
# options that change the trained models only: the teacher and the controls (never trained) are kept when only
# these differ (not batch_size: it also batches the calibration and the Wikipedia scoring)
TRAINING_ONLY = ("epochs", "max_steps", "lr", "grad_accum", "mse", "bf16", "wiki_train_windows",
                 "kd_responses", "makd_weights", "mix_train_set")


def earlier_results(cfg: DecoderConfig, out: Path, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of :func:`run_names` already scored in ``out`` by a run of the same configuration (``--resume``):
    {name: result}. A model scored under another configuration is refused (one line naming the options that
    differ; the teacher and the controls only when an option other than :data:`TRAINING_ONLY` differs; an option
    a record predates counts as its default), one without an ``extra_eval`` set asked for now is scored again."""
    now = portable(options, path_roots(cfg.data_dir))
    defaults = {f.name: f.default for f in dataclasses.fields(DecoderConfig)}
    found: dict[str, dict[str, Any]] = {}
    for name in run_names(cfg):
        path = out / name / "metrics.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        then = res.get("record", {}).get("config", {})
        ignore = RESUMABLE + (TRAINING_ONLY if name == "teacher" or name in CONTROLS else ())
        differ = sorted(k for k in set(now) | set(then)
                        if k not in ignore and now.get(k, defaults.get(k)) != then.get(k, defaults.get(k)))
        if differ:
            raise UsageError(f"{path} was scored with other options ({', '.join(differ)} differ): resume with the "
                             "same options, or give another --out")
        if set(cfg.extra_eval) - {res.get("eval_set")} <= set(res.get("eval_sets", {})):
            found[name] = res
    return found
