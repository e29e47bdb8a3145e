"""ExportConfig: ``python -m makd export FOLDER (--merge --out DIR | --onnx --out DIR | --hub-id NAME)``.

Light (standard library only): :func:`precheck` refuses what the command line alone shows — a wrong option, a
missing folder, a folder that is not a saved student, an output folder that cannot be written — before torch or
transformers are imported (:mod:`makd.cli` calls it first), with the package's one-line errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from makd.assets.runfolder import check_writable
from makd.core.errors import MissingInputError, UsageError
from makd.experiments.options import Config, build_parser as options_parser, option

STUDENT_FILES = ("config.json", "model.safetensors", "makd_factorization.json")   # makd.core.checkpoint's
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ExportConfig(Config):
    """Use a saved student outside makd: a merged dense checkpoint, an ONNX encoder, or the folder for the Hub."""
    GROUP = "export (exactly one of --merge, --onnx, --hub-id)"
    PROG = "python -m makd export FOLDER"
    EPILOG = ("FOLDER is a student folder saved by makd (distill/squad OUT/student, factorize --out). --merge: a "
              "standard checkpoint of the teacher's architecture (factors multiplied out; NOT smaller), loadable "
              "without trust_remote_code. --onnx: model.onnx of an encoder student, checked against PyTorch. "
              "--hub-id: the folder push_to_hub would upload (code, config, weights, tokenizer, card), then the "
              "upload (needs the network and `hf auth login`).")
    folder: str | None = option(None, "the saved student folder (or give it as the first argument)", path=True)
    merge: bool = option(False, "save a dense checkpoint of the teacher's architecture with every factor product "
                         "multiplied out (into --out)")
    onnx: bool = option(False, "export an encoder student to ONNX (into --out) and check it against PyTorch")
    hub_id: str | None = option(None, "prepare the folder for this Hub repository (NAME or ORG/NAME; into --out, "
                                "default FOLDER-hub) and upload it")
    out: str | None = option(None, "output folder (replaced as a whole)", path=True)
    private: bool = option(False, "with --hub-id: create the repository private")
    opset: int = option(17, "ONNX opset", low=14, high=21)
    tolerance: float = option(1e-3, "largest max abs difference to the student that the check accepts", low=0.0,
                              low_open=True)

    def check(self) -> None:
        super().check()
        if not self.folder:
            raise ValueError("give the student folder: python -m makd export FOLDER --merge --out DIR")
        chosen = [name for name, on in (("--merge", self.merge), ("--onnx", self.onnx),
                                        ("--hub-id", self.hub_id is not None)) if on]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of --merge, --onnx, --hub-id NAME (got {', '.join(chosen) or 'none'})")
        if self.hub_id is not None and not HUB_ID.fullmatch(self.hub_id):
            raise ValueError(f"--hub-id {self.hub_id!r} is not a repository id: give NAME or ORG/NAME")
        if self.out is None and self.hub_id is None:
            raise ValueError(f"{chosen[0]} needs --out DIR (the folder to write)")

    def out_dir(self) -> Path:
        """The output folder (with --hub-id, ``FOLDER-hub`` next to the student by default)."""
        if self.out is not None:
            return Path(self.out).expanduser()
        folder = Path(self.folder).expanduser()
        return folder.with_name(folder.resolve().name + "-hub")


def build_parser():
    """The command line: ExportConfig's options plus FOLDER as an optional first argument."""
    parser = options_parser(ExportConfig)
    parser.add_argument("folder_arg", nargs="?", metavar="FOLDER", help="the saved student folder")
    return parser


def parse(argv: list[str] | None = None) -> ExportConfig:
    """``argv`` -> :class:`ExportConfig`; a wrong value is one argparse ``error:`` line (exit 2)."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    positional = given.pop("folder_arg", None)
    if positional is not None:
        if "folder" in given:
            parser.error("give the student folder once (FOLDER or --folder)")
        given["folder"] = positional
    try:
        return ExportConfig(**given)
    except ValueError as err:
        parser.error(str(err))


def check_inputs(cfg: ExportConfig) -> Path:
    """The folder is a saved student and the output folder can be written (MissingInputError, UsageError,
    RunFolderError), before any model is loaded; the output folder."""
    folder = Path(cfg.folder).expanduser()
    if not folder.is_dir():
        raise MissingInputError(f"student folder {folder} does not exist: give the folder a makd command saved "
                                "(distill/squad OUT/student, factorize --out DIR)")
    missing = [f for f in STUDENT_FILES if not (folder / f).is_file()]
    if missing:
        raise MissingInputError(f"{folder} is not a saved makd student (missing {', '.join(missing)}): give the "
                                "folder a makd command saved (distill/squad OUT/student, factorize --out DIR)")
    out = cfg.out_dir()
    if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
        raise UsageError(f"--out {out} would overwrite the student folder {folder}: give another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder")
    check_writable(out.parent)                       # replaced atomically through a sibling temporary folder
    return out


def precheck(argv: list[str]) -> None:
    """What :mod:`makd.cli` runs before importing the command: the options, the folder, the output folder."""
    check_inputs(parse(argv))
