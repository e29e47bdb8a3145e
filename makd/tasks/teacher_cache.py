"""The fine-tuned teacher cache checks itself: its own weights, and the base model it was fine-tuned from.

A cached teacher (``cache_dir()/teachers/<key>/``, written by :func:`makd.tasks.teacher.finetune_cached`) records in
``teacher_info.json`` the sha256 of its weight files (``checkpoint_sha256``) and the fingerprint of the base model
folder it was fine-tuned from (``base_sha256``: :func:`base_fingerprint`). The key names the base model by its
resolved *location*, not its content, so a base folder rebuilt in place (a tiny preset whose recipe changed, a
user's own folder overwritten) keeps the key; the fingerprint is what notices it. :func:`load_cached` refuses a
folder whose weights no longer hash to the stored value, that cannot be read, or whose base fingerprint differs
from the current base model's; the caller warns once, :func:`remove` moves the folder aside and deletes it, and
the teacher is fine-tuned again under the same key. A folder saved before a hash was stored is trusted once and
the hash recorded (said in one log line by the caller). Hub ids have no local folder to fingerprint: ``None``,
nothing checked.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer

from makd.assets.files import sha256_folder
from makd.core.errors import CacheError

# what makes a base model the same base model: its weights, its configuration and its tokenizer's files
BASE_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "vocab.json", "merges.txt", "special_tokens_map.json")


class Unusable(Exception):
    """Why a cached teacher cannot be reused (the message names the cause)."""


def base_fingerprint(resolved: str) -> str | None:
    """:func:`~makd.assets.files.sha256_folder` over the base model folder's weight, configuration and tokenizer
    files (:data:`BASE_FILES`); ``None`` for a hub id (no local folder)."""
    folder = Path(resolved)
    return sha256_folder(folder, BASE_FILES) if folder.is_dir() else None


def load_cached(path: Path, auto: Any, base: str | None) -> tuple[Any, Any, dict, str]:
    """(model, tokenizer, info, sha256 of the weight files) of the teacher cached in ``path``, loaded with the
    transformers auto class ``auto``; ``base``: the current base model's :func:`base_fingerprint`.

    :class:`Unusable` when ``teacher_info.json`` or the weights cannot be read, the weights do not hash to the
    ``checkpoint_sha256`` stored when they were saved, or the stored ``base_sha256`` is not ``base``.
    """
    try:
        info = json.loads((path / "teacher_info.json").read_text())
        digest = sha256_folder(path)
    except (OSError, ValueError) as err:
        raise Unusable(f"{type(err).__name__}: {err}") from err
    if not isinstance(info, dict):
        raise Unusable("teacher_info.json does not hold a JSON object")
    stored = info.get("checkpoint_sha256")
    if stored is not None and stored != digest:
        raise Unusable(f"its weights hash to {digest[:12]}..., not to the {stored[:12]}... stored when they "
                       "were saved: the file was changed or truncated")
    was = info.get("base_sha256")
    if was is not None and base is not None and was != base:
        raise Unusable(f"it was fine-tuned from another version of its base model {info.get('resolved', '')} "
                       f"(files then {was[:12]}..., now {base[:12]}...): the base folder was rebuilt or replaced")
    try:
        model = auto.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        reason = (str(err).splitlines() or [""])[0]
        raise Unusable(f"it cannot be read: {type(err).__name__}: {reason}") from err
    return model, tok, info, digest


def is_main_process() -> bool:
    """Process zero of a torchrun / accelerate launch (or the only process): the one that writes the cache."""
    return int(os.environ.get("RANK", "0")) == 0


def remove(path: Path, why: Exception, what: str = "cached teacher") -> None:
    """Move a broken cache folder (a teacher, or ``what`` else) aside (one atomic rename), then delete it; only
    process zero does. A folder that cannot be moved: one CacheError saying to delete it."""
    if not is_main_process():
        return
    aside = path.with_name(path.name + ".broken")
    try:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    except OSError as err:
        raise CacheError(f"{what} {path} is unusable ({why}) and could not be removed ({err}): delete "
                         "it and run again") from err
    shutil.rmtree(aside, ignore_errors=True)
