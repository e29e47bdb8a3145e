"""The prepared decoder student, cached: the factorised teacher after the layer-local stage, which every method of a
decoder comparison starts from (:func:`makd.experiments.decoder.prepare_student`). For SmolLM2 the preparation
(whitening on 128 calibration pairs, one layer-local epoch) takes 12 minutes of an idle 2-core CPU and half an hour
under load — which every resumed comparison would otherwise spend again before its next model.

Cached under ``cache_dir()/decoder-students/<key>/``: the student folder of :func:`makd.core.checkpoint.save_student`
plus ``prepared.json`` (what was done to the student — timings, the layer-local loss history — whether it ran fused,
and the sha256 of its weights). The key hashes everything the preparation reads: the teacher's name and the
fingerprint of its files, the preparation's options (:data:`KEY_FIELDS`: student kind and size, weighting, ranks,
calibration examples, batch size, lengths, template, layer-local epochs and learning rate, seed) and the calibration
rows themselves. A hit is verified: weights that do not hash to the stored sha256, or a folder that cannot be read,
are removed with a warning and the student is prepared again. Only factorised students (``student="svd"``) are
cached, and only when the control ``init`` (the student *before* the layer-local stage) is not needed any more.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from makd.assets.files import sha256_folder, write_json
from makd.assets.models import resolve
from makd.assets.paths import cache_dir
from makd.core.checkpoint import load_student, save_student
from makd.core.fused import fuse, is_fused
from makd.tasks.teacher_cache import base_fingerprint, remove

log = logging.getLogger("makd.decoder")
INFO = "prepared.json"
KEY_FIELDS = ("teacher", "student", "weighting", "ranks", "calibration_examples", "batch_size", "max_length",
              "max_prompt_tokens", "template", "local_epochs", "local_lr", "seed", "factorize_embeddings")


def prepared_key(cfg, rows: list[dict]) -> str:
    """``<teacher>-<sha256[:16]>`` of the teacher's files, :data:`KEY_FIELDS`, the size and factorisation options
    and the calibration rows (the first ``cfg.calibration_examples``)."""
    blob = json.dumps({"teacher_files": base_fingerprint(resolve(cfg.teacher)),
                       "options": {f: getattr(cfg, f, None) for f in KEY_FIELDS},
                       "size": cfg.size(), "init": cfg.init_options(),
                       "rows": rows[:cfg.calibration_examples]}, sort_keys=True, default=str)
    return f"{Path(cfg.teacher).name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def load_prepared(path: Path, teacher, device) -> tuple[Any, dict[str, Any]] | None:
    """(student, preparation info) from ``path``, or None when nothing usable is there (a damaged entry is
    removed, with a warning saying why)."""
    if not (path / INFO).is_file():
        return None
    try:
        info = json.loads((path / INFO).read_text())
        if sha256_folder(path) != info["weights_sha256"]:
            raise ValueError("its weights do not hash to the sha256 stored when they were saved")
        student = load_student(path, device=device)
    except (OSError, ValueError, KeyError) as why:
        log.warning("cached prepared student %s is unusable (%s): removing it and preparing the student again",
                    path, why)
        remove(path, why, what="cached prepared student")
        return None
    if info.get("fused"):
        fuse(student)
    student.generation_config = copy.deepcopy(teacher.generation_config)   # as factorize's copy of the teacher has
    return student.train(info.get("training", False)), info["prepared"]


def save_prepared(path: Path, student, prepared: dict[str, Any]) -> None:
    """Write the student and ``prepared.json`` (last, so a folder without it is never read as a hit)."""
    save_student(student, path)
    write_json(path / INFO, {"prepared": prepared, "fused": is_fused(student), "training": student.training,
                             "weights_sha256": sha256_folder(path)})


def cached_prepare(cfg, rows: list[dict], teacher, device, prepare: Callable[[], tuple[Any, dict, Any]],
                   need_before: bool) -> tuple[Any, dict[str, Any], Any]:
    """``prepare()`` -> (student, info, student before the layer-local stage or None), through the cache when the
    student is factorised; ``info["cache"]`` names the entry and whether it was reused. ``need_before`` (the
    control ``init`` is still to be scored, which needs the student from before the layer-local stage): the cache
    is not read, but the prepared student is still written, so the next run (or a second runner) reuses it."""
    if cfg.student != "svd":
        return prepare()
    key = prepared_key(cfg, rows)
    path = cache_dir() / "decoder-students" / key
    hit = None if need_before else load_prepared(path, teacher, device)
    if hit is not None:
        log.info("reusing the prepared student %s", path)
        return hit[0], {**hit[1], "cache": {"key": key, "reused": True}}, None
    student, info, before = prepare()
    save_prepared(path, student, info)
    return student, {**info, "cache": {"key": key, "reused": False}}, before
