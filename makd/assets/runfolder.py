"""Run folders that cannot be trampled: one lock per folder, an output check before any long work, resumable
checkpoints only.

- :class:`FolderLock`: ``<folder>/.makd.lock``, created atomically (``O_CREAT | O_EXCL``), holds the holder's pid,
  host, start time and command. A second run on the same folder is refused with a
  :class:`~makd.core.errors.RunFolderError` naming the holder; a lock left by a process that is gone (its pid is
  dead on this host, or the host rebooted) is taken over with a log message, so ``--resume`` after ``kill -9``
  just works. Only rank 0 of a multi-process run (``RANK``) takes it: the other ranks are the same run.
- :func:`check_output_folder`: the folder is writable (a probe file is created and removed) and its file system
  has the free space :func:`estimate_run_bytes` asks for.
- :func:`run_folder`: both, as the one context manager every command that writes a run folder enters first.
- :func:`last_checkpoint`: the newest COMPLETE Trainer checkpoint (a full disk or a kill can leave a half-written
  ``checkpoint-N/``), the half-written ones removed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from makd.core.errors import RunFolderError

log = logging.getLogger("makd.runfolder")

LOCK_NAME = ".makd.lock"
MARGIN_BYTES = 64 << 20          # metrics.json, cell.json, logs, TensorBoard events, the tokenizer files
DEFAULT_PARAMS = 110_000_000     # a hub teacher of unknown size: BERT-base
KNOWN_PARAMS = {"minilm-l6": 22_800_000, "minilm-l3": 17_400_000, "smollm2-135m-instruct": 135_000_000,
                "tiny-bert": 50_000, "tiny-gpt2": 50_000, "tiny-llama": 50_000}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.onnx", "*.gguf", "*.pt")


# ------------------------------------------------------------------------------------------ free space
def estimate_run_bytes(params: int, *, save_total_limit: int = 2, trainings: int = 1, save_student: bool = True,
                       bytes_per_param: int = 4, margin: int = MARGIN_BYTES) -> int:
    """Bytes a run writes into its folder, at its peak::

        needed = trainings · (save_total_limit + 1) · 3 · b · P  +  save_student · 2 · b · P  +  margin

    ``P`` student parameters of ``b`` bytes (float32: 4). A Trainer checkpoint holds the weights and AdamW's two
    moments (3 · b · P); with ``save_total_limit`` L the Trainer writes checkpoint L + 1 before it deletes the
    oldest. A saved student (b · P) is written beside the previous one before it replaces it (atomic save: 2 ·
    b · P). ``trainings``: students trained into the folder (the decoder command trains one per method; 0: no
    training). ``margin``: metrics, logs, TensorBoard events and tokenizer files.
    """
    per_checkpoint = 3 * bytes_per_param * params
    return (trainings * (save_total_limit + 1) * per_checkpoint + (2 * bytes_per_param * params if save_student
                                                                   else 0) + margin)


def params_hint(teacher: str) -> int:
    """The teacher's parameter count as known BEFORE any model is loaded: an upper bound of the student's.

    An embedded or tiny name: its known size; a local folder: its weight files' bytes / 4 (float32); anything
    else (a hub id): :data:`DEFAULT_PARAMS`. Commands check again with the student's exact count once it is built.
    """
    if teacher in KNOWN_PARAMS:
        return KNOWN_PARAMS[teacher]
    folder = Path(str(teacher)).expanduser()
    if folder.is_dir():
        size = sum(f.stat().st_size for pattern in WEIGHT_FILES for f in folder.glob(pattern))
        if size:
            return size // 4
    return DEFAULT_PARAMS


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _write_probe(folder: Path) -> None:
    probe = folder / f".makd-write-probe-{os.getpid()}"
    with open(probe, "xb") as fh:
        fh.write(b"probe")
    probe.unlink()


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and write then remove a probe file in it; RunFolderError if it cannot."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RunFolderError(f"cannot write to the output folder {folder} ({reason}): pass a writable --out "
                             "(or fix the folder's permissions)") from err
    return folder


def check_free_space(folder: str | os.PathLike, needed: int, what: str = "this run") -> int:
    """RunFolderError unless the file system of ``folder`` has ``needed`` bytes free; the free bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFolderError(f"{folder} has {human_bytes(free)} free but {what} needs about {human_bytes(needed)} "
                             "(checkpoints with optimizer state, the student, logs): free some space or pass "
                             "another --out")
    return free


def check_output_folder(folder: str | os.PathLike, needed: int = MARGIN_BYTES, what: str = "this run") -> Path:
    """Writable and ``needed`` bytes free (:func:`estimate_run_bytes`), before any long work."""
    folder = check_writable(folder)
    check_free_space(folder, needed, what)
    return folder


# ------------------------------------------------------------------------------------------ the lock
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) of a Linux process, None elsewhere or when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) ": state is field 3, starttime field 22
    return fields[0], fields[19]


def holder_alive(holder: dict) -> bool | None:
    """Whether the process that wrote a lock still runs: True, False, or None when it ran on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False                                   # this host rebooted since
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                                    # alive, another user's
    stat = _proc_stat(pid)
    if stat is not None and (stat[0] in ("Z", "X") or (holder.get("proc_start") not in (None, stat[1]))):
        return False                                   # a zombie, or the pid now belongs to another process
    return True


class FolderLock:
    """``<folder>/.makd.lock`` held by this process (a context manager; re-entering it is an error)."""

    def __init__(self, folder: str | os.PathLike, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command or " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
                                            *sys.argv[1:]])[:300]
        self.token: str | None = None

    def _content(self) -> dict:
        stat = _proc_stat(os.getpid())
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S%z"),
                "command": self.command, "boot_id": _boot_id(), "proc_start": stat[1] if stat else None,
                "token": self.token}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None                                # empty or torn: a writer killed mid-write, or one writing now

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(8)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            except OSError as err:
                raise RunFolderError(f"cannot create the lock {self.path} ({err.strerror}): pass a writable --out"
                                     ) from err
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._content(), indent=1) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            return self
        raise RunFolderError(f"could not take the lock {self.path}: other runs keep taking it; pass another --out")

    def _take_over_or_refuse(self) -> None:
        holder = self._read()
        if holder == {}:
            return                                     # released meanwhile: try again
        if holder is None:
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
            if age < 5.0:
                time.sleep(0.1)                        # being written by a run starting right now
                if self._read() is None and time.time() - self.path.stat().st_mtime < 5.0:
                    raise RunFolderError(f"{self.folder} is being taken by another run right now: wait for it, "
                                         "or pass another --out")
                return
            log.warning("taking over the unreadable lock %s (left by a run killed while writing it)", self.path)
            self.path.unlink(missing_ok=True)
            return
        alive = holder_alive(holder)
        since, pid, cmd = holder.get("started", "?"), holder.get("pid"), holder.get("command", "?")
        if alive is False:
            log.warning("taking over the lock of %s: pid %s (since %s, %s) is no longer running", self.folder, pid,
                        since, cmd)
            if self._read() == holder:                 # still the same stale lock, not a fresh one
                self.path.unlink(missing_ok=True)
            return
        where = "" if alive else f" on host {holder.get('host')}"
        hint = "" if alive else f", or delete {self.path} if that run is gone"
        raise RunFolderError(f"{self.folder} is in use by pid {pid}{where} since {since} ({cmd}): wait for it, or "
                             f"pass another --out{hint}")

    def release(self) -> None:
        if self.token is not None and (self._read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a plain single process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def run_folder(folder: str | os.PathLike, *, needed: int = MARGIN_BYTES, command: str | None = None,
               what: str = "this run") -> Iterator[Path]:
    """Lock ``folder`` and check it (writable, ``needed`` bytes free) before any long work; on exit release the
    lock and remove the folder again if this call created it and nothing was written into it."""
    folder = Path(folder)
    created = not folder.exists()
    lock = None
    try:
        check_writable(folder)
        if is_rank_zero():
            lock = FolderLock(folder, command).acquire()
        check_free_space(folder, needed, what)
        yield folder
    finally:
        if lock is not None:
            lock.release()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()                           # only when empty


# ------------------------------------------------------------------------------------------ checkpoints
def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (its ``trainer_state.json``, the Trainer's last file,
    is there), or None; newer half-written ones (a full disk, a kill while saving) are removed with a log line."""
    found = sorted((p for p in Path(folder).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for path in found:
        if (path / "trainer_state.json").is_file():
            return path
        log.warning("removing the half-written checkpoint %s (no trainer_state.json)", path)
        shutil.rmtree(path, ignore_errors=True)
    return None

