"""Real text for decoder distillation: the Wikipedia articles embedded in the gensim wheel (asset ``wiki``).

The asset is a MediaWiki XML export excerpt (wiki markup, bz2). It is read with the standard library only
(``bz2`` + ``xml.etree.ElementTree.iterparse``; gensim is never imported), main-namespace articles are kept
(``<ns>0</ns>``, no ``<redirect>``), their markup is turned into plain text by :func:`clean_wikitext`, and articles
with fewer than :data:`MIN_CHARS` characters left are dropped. The split is by ARTICLE
(``sklearn.model_selection.GroupShuffleSplit``, one group per title, seed :data:`SPLIT_SEED`, :data:`HELD_OUT`
of the articles held out), so no article has text on both sides; the held-out titles are recorded.
:func:`lm_windows` cuts each article's tokens into fixed-length causal-LM windows (labels = input_ids, no window
spans two articles, the tail shorter than a window is dropped); ``makd.tasks.metrics.lm_perplexity`` scores them.

Measured on the pinned asset (sha256 ``a53f4648…``, 206 pages): 99 redirects, 1 page outside the main namespace
and 2 articles under 500 characters skipped; **104 articles kept, 2,797,201 characters** of plain text (median
21,195 per article, 862 to 91,562). Split (seed 0, 10 % held out): **93 train / 11 held-out articles**
(2,532,574 / 264,627 characters; SmolLM2's tokenizer: 558,797 / 59,125 tokens, 457 held-out windows of 128).
Reading and cleaning the file takes ~2 s (cached per process).
"""
from __future__ import annotations

import bz2
import functools
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from makd.assets.files import sha256_file
from makd.core.errors import DataError
from makd.tasks.data import fetch_asset

MIN_CHARS = 500        # an article with fewer plain-text characters than this is dropped (a stub, a list)
HELD_OUT = 0.1         # fraction of the ARTICLES held out
SPLIT_SEED = 0
# trailing sections of lists and citations, not prose: the text is cut at the first of these level-2 headings
END_SECTIONS = ("see also", "references", "notes", "footnotes", "further reading", "external links",
                "bibliography", "sources", "citations")
_DROP_NAMESPACES = ("file", "image", "media", "category")

_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_REF_SELF = re.compile(r"<ref\b[^>]*/>", re.I)
_REF = re.compile(r"<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|imagemap|score|syntaxhighlight|source)\b[^>]*>.*?</\1\s*>",
                         re.I | re.S)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_END = re.compile(r"^==\s*(?:" + "|".join(END_SECTIONS) + r")\s*==\s*$", re.I | re.M)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_LINK = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*)\]\]")   # innermost: no [[ or ]] inside
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_INTERWIKI = re.compile(r"^:?[a-z]{2,3}(?:-[a-z]+)*$")
_QUOTES = re.compile(r"'{2,5}")
_MAGIC = re.compile(r"__[A-Z]+__")


def _drop_nested(text: str, open_: str, close: str) -> str:
    """``text`` without every ``open_ … close`` span, nested ones included; an unmatched closer is dropped, an
    unclosed opener alone is dropped (what follows it is kept, and cleaned the same way)."""
    out, depth, start, first = [], 0, 0, 0
    for m in re.finditer(re.escape(open_) + "|" + re.escape(close), text):
        if m.group() == open_:
            if depth == 0:
                out.append(text[start:m.start()])
                first = m.end()
            depth += 1
        elif depth == 0:                                # a closer with no opener
            out.append(text[start:m.start()])
            start = m.end()
        else:
            depth -= 1
            start = m.end() if depth == 0 else start
    if depth:
        return "".join(out) + _drop_nested(text[first:], open_, close)
    return "".join(out) + text[start:]


def _drop_tables(text: str) -> str:
    """Without every ``{| … |}`` table (a line starting ``{|`` opens one, a line starting ``|}`` closes it)."""
    kept, depth = [], 0
    for line in text.split("\n"):
        s = line.lstrip()
        if s.startswith("{|"):
            depth += 1
        elif depth and s.startswith("|}"):
            depth -= 1
        elif not depth:
            kept.append(line)
    return "\n".join(kept)


def _link(m: re.Match) -> str:
    """``[[a|b]]`` -> b, ``[[a]]`` -> a; files, images, categories and interlanguage links -> ''."""
    target, _, label = m.group(1).partition("|")
    prefix = target.split(":", 1)[0].strip() if ":" in target else ""
    if prefix.lower().lstrip(":") in _DROP_NAMESPACES or (prefix and _INTERWIKI.match(prefix)):
        return ""
    if "|" in label:                                  # [[a|b|c]]: the last part is the label
        label = label.rsplit("|", 1)[1]
    return (label or target).strip()


def clean_wikitext(markup: str) -> str:
    """Wiki markup -> plain text, one paragraph (or heading, or list item) a line.

    Drops comments, ``<ref>…</ref>`` / ``<ref …/>``, templates ``{{…}}`` (nested too), tables ``{|…|}``,
    ``<math>``/``<gallery>``-like blocks, ``[[File:…]]`` / ``[[Image:…]]`` / ``[[Category:…]]`` and
    interlanguage links, and everything from the first trailing section (:data:`END_SECTIONS`) on; turns
    ``[[a|b]]`` into b, ``[[a]]`` into a, ``[http://x label]`` into label, ``== X ==`` into X, removes bold /
    italic quotes, other HTML tags (their text kept), list markers and magic words; unescapes HTML entities and
    collapses whitespace (empty lines dropped, no space before , . ; :)."""
    text = _COMMENT.sub("", markup)
    text = _BLOCK_TAGS.sub("", _REF.sub("", _REF_SELF.sub("", text)))      # <math> may hold {{ }}
    text = _drop_tables(_drop_nested(text, "{{", "}}"))
    end = _END.search(text)
    text = text[:end.start()] if end else text
    previous = None
    while previous != text:                           # innermost links first: a caption may hold links
        previous, text = text, _LINK.sub(_link, text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _HEADING.sub(r"\2", text)
    text = _TAG.sub("", _MAGIC.sub("", _QUOTES.sub("", text)))
    text = html.unescape(text)
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"^[*#:;]+\s*", "", " ".join(line.split()))
        line = re.sub(r"\(\s*[,;]?\s*\)", "", re.sub(r" +([,.;:])", r"\1", line)).strip()
        if line:
            lines.append(" ".join(line.split()))
    return "\n".join(lines)


@dataclass(frozen=True)
class Article:
    title: str
    text: str            # plain text (clean_wikitext)


@dataclass
class WikiSplit:
    """Articles split by title: no article on both sides."""
    train: list[Article]
    held_out: list[Article]
    held_out_titles: list[str]
    source: str                                             # the file read
    files: dict[str, str] = field(default_factory=dict)     # file -> sha256 (run records)
    skipped: dict[str, int] = field(default_factory=dict)   # redirect / other namespace / too short -> count

    def describe(self) -> dict:
        """Counts for a result file: articles and characters on each side, what was skipped and why."""
        return {"source": self.source, "min_chars": MIN_CHARS, "train_articles": len(self.train),
                "held_out_articles": len(self.held_out), "train_chars": sum(len(a.text) for a in self.train),
                "held_out_chars": sum(len(a.text) for a in self.held_out), "skipped": dict(self.skipped),
                "held_out_titles": list(self.held_out_titles)}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]                   # '{http://www.mediawiki.org/xml/export-0.10/}page' -> 'page'


def read_articles(path, min_chars: int = MIN_CHARS) -> tuple[list[Article], dict[str, int]]:
    """The main-namespace, non-redirect articles of a (bz2 or plain) MediaWiki XML export, cleaned, in file
    order, with at least ``min_chars`` characters; and the counts of skipped pages by reason. A file that is not
    such an export is a DataError naming it."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    articles, skipped = [], {"redirect": 0, "other_namespace": 0, "too_short": 0}
    fix = "give a MediaWiki XML export (pages-articles dump), or run `python -m makd fetch-assets wiki` again"
    try:
        with opener(path, "rb") as fh:
            for _, elem in ET.iterparse(fh, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                fields = {_local(c.tag): c for c in elem.iter()}
                title, ns = (fields.get("title").text or "") if "title" in fields else "", fields.get("ns")
                text = fields["text"].text or "" if "text" in fields else ""
                elem.clear()
                if ns is not None and (ns.text or "").strip() != "0":
                    skipped["other_namespace"] += 1
                elif "redirect" in fields or text.lstrip().upper().startswith("#REDIRECT"):
                    skipped["redirect"] += 1
                elif len(plain := clean_wikitext(text)) < min_chars:
                    skipped["too_short"] += 1
                else:
                    articles.append(Article(title, plain))
    except (ET.ParseError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable MediaWiki XML export ({err}). {fix[:1].upper()}{fix[1:]}") from None
    if not articles:
        raise DataError(f"{path}: no main-namespace article with at least {min_chars} characters (skipped "
                        f"{skipped}). {fix[:1].upper()}{fix[1:]}")
    return articles, skipped


def split_articles(articles: list[Article], held_out: float = HELD_OUT,
                   seed: int = SPLIT_SEED) -> tuple[list[Article], list[Article]]:
    """(train, held-out) by ARTICLE: GroupShuffleSplit with one group per title, ``held_out`` of the groups held
    out (sklearn rounds up), seeded; both sides keep file order."""
    from sklearn.model_selection import GroupShuffleSplit

    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out}")
    if len({a.title for a in articles}) < 2:
        raise ValueError(f"splitting by article needs at least 2 distinct titles, got {len(articles)} article(s)")
    groups = [a.title for a in articles]
    train_idx, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=seed)
                               .split(np.zeros(len(articles)), groups=groups))
    return [articles[i] for i in sorted(train_idx)], [articles[i] for i in sorted(test_idx)]


@functools.lru_cache(maxsize=4)
def _load(path: str, min_chars: int, held_out: float, seed: int) -> WikiSplit:
    articles, skipped = read_articles(path, min_chars)
    train, test = split_articles(articles, held_out, seed)
    return WikiSplit(train, test, [a.title for a in test], path, {path: sha256_file(path)}, skipped)


def load_wiki(path=None, min_chars: int = MIN_CHARS, held_out: float = HELD_OUT, seed: int = SPLIT_SEED) -> WikiSplit:
    """The train / held-out articles of ``path`` (default: the embedded ``wiki`` asset, fetched once); cached per
    arguments for the process (the split is deterministic)."""
    path = Path(path) if path is not None else fetch_asset("wiki")
    return _load(str(path), min_chars, held_out, seed)


def lm_windows(texts, tokenizer, max_length: int = 128) -> dict:
    """Causal-LM windows of ``max_length`` tokens: each text tokenised alone (no special tokens) and cut with
    stride ``max_length``; the tail shorter than a window is dropped, so no window spans two texts and none is
    padded. Returns ``{"input_ids": (N, L), "attention_mask": (N, L), "labels": (N, L), "text": (N,)}`` (long
    tensors; labels = input_ids, the model shifts them; ``text``: the index of the text each window comes from)."""
    import torch

    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one token predicts the next), got {max_length}")
    rows, source = [], []
    for k, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for s in range(0, len(ids) - max_length + 1, max_length):
            rows.append(ids[s:s + max_length])
            source.append(k)
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_length)         # (N, L)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
            "text": torch.tensor(source, dtype=torch.long)}


def take_windows(windows: dict, n: int) -> dict:
    """``n`` windows evenly spaced over all of them (every article represented in proportion to its length);
    all of them when there are no more than ``n``."""
    total = len(windows["input_ids"])
    if n <= 0:
        raise ValueError(f"the number of windows must be positive, got {n}")
    if total == 0:
        raise ValueError("no window to take: every text is shorter than one window; use a shorter max_length")
    idx = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int)).tolist()
    return {k: v[idx] for k, v in windows.items()}


def heldout_windows(tokenizer, n: int, max_length: int, path=None) -> tuple[dict, dict]:
    """``n`` evenly spaced windows of the held-out articles (:func:`load_wiki`, :func:`lm_windows`,
    :func:`take_windows`) and the description of the set for a result file."""
    return split_windows("held_out", tokenizer, n, max_length, path)


def train_windows(tokenizer, n: int, max_length: int, path=None) -> tuple[dict, dict]:
    """``n`` evenly spaced windows of the TRAIN articles (disjoint from :func:`heldout_windows`' articles) and the
    description of the set: language-model distillation text."""
    return split_windows("train", tokenizer, n, max_length, path)


def split_windows(part: str, tokenizer, n: int, max_length: int, path=None) -> tuple[dict, dict]:
    """``n`` evenly spaced windows of one part of the split (``train`` or ``held_out``) and its description."""
    if part not in ("train", "held_out"):
        raise ValueError(f"part must be 'train' or 'held_out', got {part!r}")
    split = load_wiki(path)
    windows = lm_windows([a.text for a in getattr(split, part)], tokenizer, max_length)
    taken = take_windows(windows, n)
    info = {**split.describe(), "files": dict(split.files), "part": part, "window_tokens": max_length,
            "windows": len(taken["input_ids"]), "windows_available": len(windows["input_ids"]),
            "articles_scored": len(set(taken["text"].tolist()))}
    return taken, info
