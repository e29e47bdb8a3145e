"""`python -m makd export FOLDER`: a saved student in the forms other tools take.

- ``--merge --out DIR``: a standard checkpoint of the teacher's architecture, every factor product multiplied out
  (:func:`makd.students.hf_export.merge_dense`): ``AutoModelFor<Head>.from_pretrained(DIR)`` without
  ``trust_remote_code``; NOT smaller than the teacher (a warning says so);
- ``--onnx --out DIR``: ``DIR/model.onnx`` of an encoder student, checked against PyTorch with ``onnx.reference``
  (:func:`makd.students.hf_export.export_onnx`);
- ``--hub-id NAME``: the folder ``push_to_hub`` would upload (:func:`makd.students.hf_folder.prepare_upload`: code,
  config, weights, tokenizer, card) written to ``--out`` (default ``FOLDER-hub``), then uploaded; offline it fails
  with one message after the folder is ready.

Each check prints the max abs difference to the student; one above ``--tolerance`` fails the command. The options
are :class:`makd.experiments.export_config.ExportConfig`, checked (with the folders) before any model is loaded.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

from makd.experiments.export_config import ExportConfig, check_inputs, parse
from makd.experiments.options import config_from_kwargs
from makd.students.hf_export import export_onnx, merge_dense
from makd.students.hf_folder import prepare_upload, upload


class ExportCheckError(ValueError):
    """The exported model does not reproduce the student within the tolerance."""


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Do what ``cfg`` asks; returns what was written and measured (the upload raises when it cannot be done)."""
    out = check_inputs(cfg)
    if cfg.hub_id is not None:
        files = prepare_upload(cfg.folder, out, cfg.hub_id)
        print(f"prepared {out} for {cfg.hub_id}: {', '.join(files)}", file=sys.stderr)
        return {"out": str(out), "files": files, "url": upload(out, cfg.hub_id, private=cfg.private)}
    report = merge_dense(cfg.folder, out) if cfg.merge else export_onnx(cfg.folder, out, opset=cfg.opset)
    if report["max_abs_diff"] > cfg.tolerance:
        raise ExportCheckError(f"the export in {out} differs from the student by {report['max_abs_diff']:.3g} (max "
                               f"abs), above --tolerance {cfg.tolerance:g}: do not use it; rerun with --debug and "
                               "report it")
    return report


def export(**options: Any) -> dict[str, Any]:
    """Python entry point: ``export(folder="runs/.../student", merge=True, out="dense")``; keyword names are the
    fields of :class:`ExportConfig` (an unknown name: TypeError, a wrong value: ValueError)."""
    return run(config_from_kwargs(ExportConfig, **options))


def main(argv: list[str] | None = None) -> int:
    """``python -m makd export FOLDER ...``."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # the not-smaller warning is printed below, once
        report = run(cfg)
    if cfg.merge:
        print(f"merged dense checkpoint in {report['out']} ({report['params_merged']:,} parameters); max abs diff "
              f"to the student: {report['max_abs_diff']:.3g}")
        print(f"warning: {report['warning']}", file=sys.stderr)
    elif cfg.onnx:
        print(f"ONNX model {report['onnx']} (opset {report['opset']}, inputs {', '.join(report['inputs'])}); max abs "
              f"diff to PyTorch (onnx.reference, batch {'x'.join(map(str, report['checked_shape']))}): "
              f"{report['max_abs_diff']:.3g}")
    else:
        print(f"uploaded {report['out']} to {cfg.hub_id}: {report['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
