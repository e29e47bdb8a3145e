"""Language-model blocks for distilling a causal LM on plain text: packed, fixed length, split by document.

Text sources (``source``):

- ``"wiki"`` (default, offline): the Wikipedia articles embedded in the gensim wheel, with the article split of
  :mod:`makd.tasks.wiki` (93 train / 11 held-out articles, seed 0);
- ``"data"``: every ``*.txt`` file under ``<data_dir>/text/`` (``data_dir`` or ``$MAKD_DATA_DIR``);
- any other value: a folder, every ``*.txt`` file under it (subfolders included, sorted by path).

In a folder, one file is one document; the documents are split into train / held-out by :func:`makd.tasks.wiki.
split_articles` (one group per file, 10 % held out, seed 0), so no document has text on both sides. Packing
(:func:`pack_blocks`): each side's documents, in order, are tokenised (no special tokens) and concatenated with
the tokenizer's EOS token after each one, then cut into blocks of ``block_length`` tokens; the tail shorter than a
block is dropped. Blocks may thus span two documents (the EOS marks the border), as in LM pre-training; no block is
padded. A folder without text and a block length above the teacher's positions are one clear error each.
"""
from __future__ import annotations

from pathlib import Path

import torch

from makd.assets.files import sha256_file
from makd.assets.paths import data_dir as find_data_dir
from makd.core.errors import DataError, MissingInputError, UsageError
from makd.tasks.wiki import HELD_OUT, SPLIT_SEED, Article, load_wiki, split_articles, take_windows

__all__ = ["text_folder", "read_text_folder", "load_documents", "pack_blocks", "check_block_length", "lm_blocks"]


def text_folder(source: str, data_dir: str | None = None) -> Path | None:
    """The folder of ``*.txt`` documents ``source`` names (None for the embedded ``wiki``)."""
    if source == "wiki":
        return None
    if source == "data":
        root = find_data_dir(data_dir)
        if root is None:
            raise MissingInputError("--text data reads <data_dir>/text/: give --data-dir or set MAKD_DATA_DIR")
        folder = root / "text"
    else:
        folder = Path(source).expanduser()
    if not folder.is_dir():
        raise MissingInputError(f"text folder {folder} does not exist: give a folder of .txt files (one document "
                                "per file), 'data' for <data_dir>/text/, or 'wiki' for the embedded articles")
    return folder


def read_text_folder(folder: str | Path) -> list[Article]:
    """Every non-empty ``*.txt`` file under ``folder`` as one document (title = path relative to the folder)."""
    folder = Path(folder)
    docs = []
    for path in sorted(folder.rglob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            docs.append(Article(str(path.relative_to(folder)), text))
    if len(docs) < 2:
        raise DataError(f"{folder} holds {len(docs)} non-empty .txt file(s): give a folder with at least two "
                        "UTF-8 .txt documents (one per file; split into train / held-out by file), or use "
                        "--text wiki")
    return docs


def load_documents(source: str = "wiki", data_dir: str | None = None) -> tuple[list[str], list[str], dict]:
    """(train texts, held-out texts, description) of ``source``, split by document; the description's
    ``files`` maps every file read to its sha256 (for the run record)."""
    folder = text_folder(source, data_dir)
    if folder is None:
        split = load_wiki()
        return [a.text for a in split.train], [a.text for a in split.held_out], {
            **split.describe(), "files": dict(split.files)}
    docs = read_text_folder(folder)
    train, held = split_articles(docs, HELD_OUT, SPLIT_SEED)
    return [a.text for a in train], [a.text for a in held], {
        "source": str(folder), "train_documents": len(train), "held_out_documents": len(held),
        "train_chars": sum(len(a.text) for a in train), "held_out_chars": sum(len(a.text) for a in held),
        "held_out_titles": [a.title for a in held],
        "files": {str(folder / a.title): sha256_file(folder / a.title) for a in docs}}


def pack_blocks(texts: list[str], tokenizer, block_length: int) -> dict[str, torch.Tensor]:
    """``texts`` tokenised, joined with EOS after each, cut into (N, block_length) blocks: input_ids,
    attention_mask (ones), labels (= input_ids; the model shifts them). A DataError when no block fits."""
    if block_length < 2:
        raise ValueError(f"block_length must be at least 2 (one token predicts the next), got {block_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate the documents: set tokenizer.eos_token")
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []:
        stream += ids + [eos]
    n = len(stream) // block_length
    if n == 0:
        raise DataError(f"{len(stream)} tokens of text make no block of {block_length}: give more text or a "
                        "shorter block length")
    ids = torch.tensor(stream[:n * block_length], dtype=torch.long).view(n, block_length)    # (N, L)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def check_block_length(block_length: int, config) -> None:
    """A UsageError when ``block_length`` exceeds the model's ``max_position_embeddings``."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and block_length > limit:
        raise UsageError(f"block length {block_length} is above the teacher's {limit} positions "
                         f"(max_position_embeddings): give --block-length {limit} or less")


def lm_blocks(tokenizer, block_length: int, source: str = "wiki", data_dir: str | None = None, *,
              max_positions_config=None, held_out_blocks: int | None = None) -> tuple[dict, dict, dict]:
    """(train blocks, held-out blocks, description) of ``source`` (see the module doc). ``max_positions_config``:
    the teacher's config, whose ``max_position_embeddings`` bounds the block length; ``held_out_blocks``: keep
    that many held-out blocks, evenly spaced (all when None)."""
    if max_positions_config is not None:
        check_block_length(block_length, max_positions_config)
    train_texts, held_texts, info = load_documents(source, data_dir)
    train = pack_blocks(train_texts, tokenizer, block_length)
    held = pack_blocks(held_texts, tokenizer, block_length)
    available = len(held["input_ids"])
    if held_out_blocks is not None:
        held = take_windows(held, held_out_blocks)
    info = {**info, "block_length": block_length, "train_blocks": len(train["input_ids"]),
            "train_tokens": train["input_ids"].numel(), "held_out_blocks": len(held["input_ids"]),
            "held_out_blocks_available": available, "packing": "documents joined with EOS, cut, tail dropped"}
    return train, held, info
