"""The one Markdown table writer of the package: ``DataFrame.to_markdown`` (tabulate) in an unpadded GitHub format.

Every table the package writes — a grid's ``REPORT.md``, the README's GLUE block (:mod:`makd.experiments.report`),
the run tables of ``python -m makd results`` (:mod:`makd.experiments.results`) and the paper-vs-ours table
(:mod:`makd.experiments.published`) — goes through :func:`markdown_table`.

Why this format. tabulate's own Markdown formats ("pipe", "github") pad every cell to its column's width and
write the rule as dashes of that width (``|:-----|``). The committed reports and README tables are unpadded
(``| a | b |`` over ``|---|---|``), and regenerating them must not move a byte when no number moved; with
``stralign=None`` and ``numalign=None`` tabulate leaves each cell as it is, so all that differs from "pipe" is the
rule below the header, which :data:`UNPADDED_PIPE` writes as three dashes per column. Cells are text: number
parsing is off (``"+1.0"`` stays ``+1.0``), a missing value (None, NaN) is '–', and '|' inside a cell is escaped.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from tabulate import DataRow, TableFormat

UNPADDED_PIPE = TableFormat(lineabove=None, linebelowheader=lambda widths, aligns: "|" + "---|" * len(widths),
                            linebetweenrows=None, linebelow=None, headerrow=DataRow("|", "|", "|"),
                            datarow=DataRow("|", "|", "|"), padding=1, with_header_hide=None)
MISSING = "–"


def cell_text(value: Any) -> str:
    """One cell as Markdown text: '–' for None/NaN, ``str(value)`` otherwise, with '|' escaped as '\\|'."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return MISSING
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` (no index) as a GitHub-Markdown table: a header row, a ``|---|`` rule, one line per row, no
    padding (see the module docstring). A frame without rows gives the header and the rule only."""
    text = frame.map(cell_text).rename(columns=cell_text)
    return text.to_markdown(index=False, tablefmt=UNPADDED_PIPE, disable_numparse=True, stralign=None,
                            numalign=None)
