"""One figure style and one `savefig` for every notebook.

Figures go to ``run_dir/figures/<name>.{png,pdf}`` with deterministic bytes (no creation date, no
software stamp, fixed dpi), so re-running a notebook with the same numbers gives identical files. The
runner's ``--publish-figures`` copies them into the repository's ``figures/`` (committed reproduction
only; refused for the smoke profile); ``figures/README.md`` maps each figure to notebook and profile.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from makd.assets.paths import resolve_path

DPI = 150
STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    "svg.hashsalt": "makd",
}
PALETTE = "colorblind"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def use_style() -> None:
    """Apply the package style (seaborn ``whitegrid`` + colour-blind palette + `STYLE`)."""
    import matplotlib  # lazily: the runner imports this module and must not pay for matplotlib
    try:
        import seaborn as sns
        sns.set_theme(style="whitegrid", palette=PALETTE)
    except ImportError:
        pass
    matplotlib.rcParams.update(STYLE)


def savefig(fig, name: str, run_dir: str | os.PathLike, *, formats: tuple[str, ...] = ("png", "pdf"),
            dpi: int = DPI) -> list[Path]:
    """Save ``fig`` as ``run_dir/figures/<name>.<fmt>`` for each format; return the paths.

    ``name`` says what the figure shows (lower case, digits, ``_`` or ``-``: e.g.
    ``svd_relative_error_vs_rank``). Metadata that changes between runs is removed.
    """
    if not _NAME.match(name):
        raise ValueError(f"figure name {name!r}: use lower-case letters, digits, '_' or '-' (no extension)")
    unknown = set(formats) - {"png", "pdf", "svg"}
    if unknown or not formats:
        raise ValueError(f"formats {formats!r}: choose from 'png', 'pdf', 'svg'")
    folder = resolve_path(run_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
                "svg": {"Date": None, "Creator": None}}
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata[fmt])
        paths.append(path)
    return paths


def publish(run_dir: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Copy every file of ``run_dir/figures`` into ``target`` (the repository's ``figures/``)."""
    source = Path(run_dir) / "figures"
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.glob("*")):
        if path.is_file():
            shutil.copy2(path, target / path.name)
            copied.append(target / path.name)
    return copied
