"""The README blocks that commands rewrite: the text between two marker lines (``python -m makd stats --readme``,
``python -m makd reproduce --readme``). Plain strings, no pandas: the notebook runner imports it."""
from __future__ import annotations


def span(text: str, markers: tuple[str, str], missing: str) -> tuple[int, int]:
    """(start, end) of what lies between the two marker lines; ValueError(``missing``) when either is absent or
    they are out of order."""
    start, end = markers
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(missing)
    return i + len(start), j


def read_block(text: str, markers: tuple[str, str], missing: str) -> str:
    """The block between the marker lines, stripped."""
    i, j = span(text, markers, missing)
    return text[i:j].strip()


def write_block(text: str, block: str, markers: tuple[str, str], missing: str) -> str:
    """``text`` with the block between the marker lines replaced by ``block`` (a blank line on either side)."""
    i, j = span(text, markers, missing)
    return text[:i] + "\n\n" + block + "\n\n" + text[j:]
