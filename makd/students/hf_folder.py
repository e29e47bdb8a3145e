"""Student folders that transformers loads by itself, with their model card, and the folder a Hub upload sends.

:func:`save_student` writes what :func:`makd.core.checkpoint.save_student` writes (config, factor weights,
factorisation record, tokenizer), plus, in the same atomic replacement:

- ``modeling_makd.py``: :mod:`makd.students.hf_remote`, self-contained (torch and transformers only);
- ``config.json`` extended by :func:`loading_config`: ``model_type`` ``makd_<type>``, the teacher's type, the rank
  of every factorised matrix and an ``auto_map``, so that ``AutoModelFor<Head>.from_pretrained(folder,
  trust_remote_code=True)`` and ``pipeline(..., trust_remote_code=True)`` build the low-rank student (without
  ``trust_remote_code`` transformers refuses the folder rather than build a dense teacher from factor weights);
- ``README.md``: the model card (:mod:`makd.students.card`).

:func:`makd.core.checkpoint.load_student` reads old and new folders alike. :func:`add_loading_code` upgrades a
folder saved before (config.json as the teacher's); :func:`prepare_upload` copies a folder into the exact set of
files ``push_to_hub`` / ``upload_folder`` would send, and :func:`upload` sends it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import HfApi
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from makd.assets.paths import hub_reachable
from makd.core.checkpoint import META, WEIGHTS, read_factorization, replacing_folder
from makd.core.checkpoint import save_student as save_factors
from makd.core.errors import MakdError
from makd.students import card, hf_remote

REMOTE_FILE = "modeling_makd.py"
REMOTE_SOURCE = Path(hf_remote.__file__)


class HubUploadError(MakdError, RuntimeError):
    """The folder for the Hub is ready but could not be uploaded (offline, not logged in, no access)."""


def loading_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a student folder with the entries transformers needs to load the student itself: the
    teacher's own entries kept as saved, ``model_type`` ``makd_<type>``, ``makd_teacher_model_type``,
    ``makd_ranks`` {module: rank} (from the factorisation record), ``architectures`` and ``auto_map``."""
    folder = Path(folder)
    meta = read_factorization(folder)
    raw = json.loads((folder / "config.json").read_text())
    teacher_type = raw.get("makd_teacher_model_type", raw["model_type"])
    if teacher_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"{folder / 'config.json'}: model type {teacher_type!r} is unknown to transformers "
                         f"{transformers.__version__}")
    arch = meta["architecture"]
    _, auto = card.pipeline_of(arch)
    cfg = {k: v for k, v in raw.items() if not k.startswith("makd_") and k != "auto_map"}
    auto_map = {"AutoConfig": f"{REMOTE_FILE[:-3]}.{hf_remote.PREFIX}"
                              f"{transformers.CONFIG_MAPPING[teacher_type].__name__}"}
    if teacher_type in MODEL_MAPPING_NAMES:
        auto_map["AutoModel"] = f"{REMOTE_FILE[:-3]}.{hf_remote.PREFIX}{MODEL_MAPPING_NAMES[teacher_type]}"
    auto_map[auto] = f"{REMOTE_FILE[:-3]}.{hf_remote.PREFIX}{arch}"
    cfg.update({"model_type": f"makd_{teacher_type}", "architectures": [f"{hf_remote.PREFIX}{arch}"],
                "makd_teacher_model_type": teacher_type, "makd_ranks": dict(meta["ranks"]), "auto_map": auto_map})
    return cfg


def add_loading_code(folder: str | os.PathLike) -> Path:
    """Write ``modeling_makd.py`` and the extended ``config.json`` into a student folder (idempotent)."""
    folder = Path(folder)
    cfg = loading_config(folder)
    shutil.copyfile(REMOTE_SOURCE, folder / REMOTE_FILE)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


def save_student(model: nn.Module, path: str | os.PathLike, tokenizer=None, *, run: dict[str, Any] | None = None,
                 command: str | None = None) -> Path:
    """Save a factorised student that both makd and transformers load, with its model card, atomically.

    ``run``: the run's metrics dict (what metrics.json holds, paths made portable) for the card's teacher, data,
    objective, scores and run record; ``command``: the command line, when ``run`` has none (``factorize``)."""
    def extra(folder: Path) -> None:
        add_loading_code(folder)
        card.write_card(folder, run, command)
    return save_factors(model, path, tokenizer, extra=extra)


def is_student_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return all((folder / f).is_file() for f in ("config.json", WEIGHTS, META))


def upload_files(folder: str | os.PathLike) -> list[str]:
    """The files of a prepared folder that an upload sends: every regular file at its top level but hidden ones."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


def prepare_upload(folder: str | os.PathLike, out: str | os.PathLike, hub_id: str | None = None) -> list[str]:
    """Copy the student ``folder`` into ``out`` as the Hub repository will hold it: weights, factorisation record,
    tokenizer, extended config, ``modeling_makd.py`` and the card (written from the record when the folder has
    none; with ``hub_id`` its loading example names the repository). ``out`` is replaced atomically; returns the
    file names."""
    folder = Path(folder)
    read_factorization(folder)                              # a student folder, or FileNotFoundError
    with replacing_folder(out) as tmp:
        for name in upload_files(folder):
            shutil.copy2(folder / name, tmp / name)
        add_loading_code(tmp)
        readme = tmp / "README.md"
        if not readme.is_file():
            card.write_card(tmp)
        if hub_id:
            readme.write_text(readme.read_text().replace(card.REPO, hub_id))
    return upload_files(out)


def upload(folder: str | os.PathLike, hub_id: str, private: bool = False) -> str:
    """Create (or reuse) the model repository ``hub_id`` and upload the prepared ``folder``; the commit URL.
    Offline, not logged in or refused: :class:`HubUploadError`, saying the folder is ready and how to send it."""
    later = (f"the folder {folder} is ready ({len(upload_files(folder))} files); upload it later with "
             f"`hf upload {hub_id} {folder} .` (or rerun this command online, after `hf auth login`)")
    if not hub_reachable():
        raise HubUploadError(f"cannot upload to {hub_id}: offline (HF_HUB_OFFLINE is set or huggingface.co is "
                             f"unreachable); {later}")
    api = HfApi()
    try:
        api.create_repo(hub_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=hub_id, repo_type="model",
                                 allow_patterns=upload_files(folder),
                                 commit_message="Upload a makd low-rank student")
    except Exception as err:                         # noqa: BLE001 - auth, permission, network: one message
        raise HubUploadError(f"upload to {hub_id} failed ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); {later}") from err
    return str(getattr(info, "commit_url", info))
