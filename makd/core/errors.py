"""The errors a user can cause, and how the command line shows them.

Every problem the user can fix (a wrong option, a missing or malformed file, a broken cache, a busy run folder)
is a :class:`MakdError` whose message says what is wrong and what to do, in one sentence or two. The command line
(:mod:`makd.cli`) prints it as one line ``error: <message>`` with exit status :attr:`MakdError.exit_code`
(2 for usage errors, 1 for the rest) and no traceback, unless ``--debug`` or ``MAKD_DEBUG=1``. In a notebook
they are ordinary exceptions; the subclasses also derive from the standard exception a caller would catch
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses keep working.
:class:`ArgumentParser` gives argparse's own usage errors the same one-line form (still exit status 2).
"""
from __future__ import annotations

import argparse
from typing import NoReturn


class MakdError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""
    exit_code = 1


class UsageError(MakdError, ValueError):
    """A wrong option, value or combination of options (exit status 2, like argparse)."""
    exit_code = 2


class DataError(MakdError, ValueError):
    """A data file that is missing rows, columns, labels or fields, or cannot be parsed; names the file."""


class MissingInputError(MakdError, FileNotFoundError):
    """A file or folder the run needs does not exist (or is not what it should be)."""


class CacheError(MakdError, RuntimeError):
    """A cached artefact (teacher checkpoint, asset) failed its checksum or could not be read."""


class RunFolderError(MakdError, RuntimeError):
    """The output folder cannot take the run: not writable, too little free space, or held by another run."""


def one_line(message: str) -> str:
    """``message`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(message).split())


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors follow the package's error style: ONE line
    ``error: <what is wrong>. `PROG --help` lists the options.`` on stderr, exit status 2 (argparse's)."""

    def error(self, message: str) -> NoReturn:
        text = one_line(message).rstrip(".")
        self.exit(2, f"error: {text}. `{self.prog} --help` lists the options\n")
