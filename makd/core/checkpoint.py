"""Save and load low-rank students (made by :func:`makd.core.factorize.factorize`) without the teacher.

A student folder holds:

- ``config.json``: the teacher's standard transformers config (``config.save_pretrained``); folders written by
  :func:`makd.students.hf_folder.save_student` extend it so that transformers itself loads the student
  (``model_type`` ``makd_<type>``, ``makd_*`` keys, ``auto_map``; :func:`teacher_config` takes them out again);
- ``model.safetensors``: the student's state dict (``down``/``up`` factors; tied weights stored once);
- ``makd_factorization.json``: ranks per module, size request (rank / budget / layer_ratio), weighting,
  teacher id, family, architecture class, dtype and the makd version;
- the tokenizer files, when one was passed to :func:`save_student`.

:func:`load_student` rebuilds the architecture from the config (``getattr(transformers, architecture)
._from_config``, as ``AutoModel*.from_config`` does), swaps in empty ``LowRankLinear``/``LowRankEmbedding`` modules of the saved ranks (no SVD,
no teacher needed) and loads the weights strictly.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import safetensors.torch
import torch
import transformers
from torch import nn

from makd import __version__
from makd.core.budget import EMBED
from makd.core.lowrank import LowRankEmbedding, LowRankLinear

META = "makd_factorization.json"
WEIGHTS = "model.safetensors"


def save_student(model: nn.Module, path: str | os.PathLike, tokenizer=None,
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` (a factorised student) and optionally its tokenizer into folder ``path``, atomically;
    ``extra(folder)`` writes more files into the new folder before it replaces ``path`` (loading code, card).

    Everything is written into a temporary sibling folder (``.<name>.partial-*``), which then replaces ``path``:
    a save that fails half-way (full disk, kill) leaves the previous student untouched. The previous folder is
    renamed aside (``.<name>.previous-<pid>``) just before the new one is renamed in and removed just after, so
    a kill between the two renames still leaves it on disk.
    """
    info = getattr(model, "makd_factorization", None)
    if info is None:
        raise ValueError("this model has no makd_factorization attribute: build it with "
                         "makd.core.factorize.factorize(...) (or save a dense model with save_pretrained)")
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no transformers config to save")
    with replacing_folder(path) as tmp:
        model.config.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))  # dedupes tied weights
        dtype = next(model.parameters()).dtype
        meta = {**info, "architecture": type(model).__name__, "dtype": str(dtype).removeprefix("torch."),
                "makd_version": __version__}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    return Path(path)


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to write into; when the block ends without an error it replaces ``path``
    (:func:`save_student`; dense students saved with ``save_pretrained`` use it too). On an error it is removed
    and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)                       # mkdtemp makes it private; a student folder is an ordinary one
        _replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, path: Path) -> None:
    """Rename the complete folder ``new`` to ``path``; an existing ``path`` is kept until ``new`` is in place."""
    if not path.exists():
        os.replace(new, path)
        return
    previous = path.with_name(f".{path.name}.previous-{os.getpid()}")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(path, previous)
    try:
        os.replace(new, path)
    except OSError:
        os.replace(previous, path)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def read_factorization(path: str | os.PathLike) -> dict:
    """The ``makd_factorization.json`` of a saved student folder."""
    path = Path(path)
    missing = [f for f in ("config.json", WEIGHTS, META) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a saved makd student (missing {', '.join(missing)}); "
                                "create one with makd.core.checkpoint.save_student or `python -m makd factorize --out DIR`")
    return json.loads((path / META).read_text())


def teacher_config(path: str | os.PathLike) -> transformers.PretrainedConfig:
    """The teacher's transformers config of a student folder: ``config.json`` as saved, without the entries that
    let transformers load the student itself (``makd_*``, ``auto_map``, the ``makd_<type>`` model type and
    architectures)."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    base = raw.get("makd_teacher_model_type")
    if base is None:                                     # a folder written before the loading code was added
        return transformers.AutoConfig.from_pretrained(path)
    if base not in transformers.CONFIG_MAPPING:
        raise ValueError(f"{path / 'config.json'} names model type {base!r}, which transformers "
                         f"{transformers.__version__} does not provide")
    kept = {k: v for k, v in raw.items() if not k.startswith("makd_") and k not in ("auto_map", "model_type")}
    if (path / META).is_file():
        kept["architectures"] = [json.loads((path / META).read_text())["architecture"]]
    return transformers.CONFIG_MAPPING[base].from_dict(kept)


def load_student(path: str | os.PathLike, *, attn_implementation: str | None = None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a student saved by :func:`save_student` (exact weights, same ranks)."""
    path = Path(path)
    meta = read_factorization(path)
    arch = meta.get("architecture")
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None or not hasattr(cls, "_from_config"):
        raise ValueError(f"{path / META} names architecture {arch!r}, which transformers "
                         f"{transformers.__version__} does not provide")
    config = teacher_config(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    dtype = getattr(torch, meta.get("dtype", "float32"))
    model = cls._from_config(config, dtype=dtype, **kwargs)  # what AutoModel*.from_config calls
    roles = meta.get("roles", {})
    for name, rank in meta["ranks"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"saved module {name!r} does not exist in a fresh {arch}") from err
        role = roles.get(name, [None, None])[1]
        new = (LowRankEmbedding.empty_like(old, rank) if role == EMBED or isinstance(old, nn.Embedding)
               else LowRankLinear.empty_like(old, rank))
        model.set_submodule(name, new, strict=True)
    missing, unexpected = safetensors.torch.load_model(model, str(path / WEIGHTS), strict=True)
    if missing or unexpected:  # pragma: no cover - strict=True raises first
        raise ValueError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    model.makd_factorization = {k: v for k, v in meta.items()
                                if k not in ("architecture", "dtype", "makd_version")}
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved next to a student (FileNotFoundError if none was saved)."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise FileNotFoundError(f"no tokenizer saved in {path}: pass tokenizer= to save_student")
    config = teacher_config(path) if (path / "config.json").is_file() else None   # no remote-code question
    return transformers.AutoTokenizer.from_pretrained(path, **({"config": config} if config is not None else {}))
