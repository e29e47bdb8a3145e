"""SQuAD v1.1 / v2.0: the official JSON or the hub, one row per question, and the split of the dev set by article.

Offline there is no SQuAD train set, so :func:`load_squad` can split the official dev set BY ARTICLE into
train and held-out questions (no paragraph, no article in both). The split is
:class:`sklearn.model_selection.GroupShuffleSplit` over the article titles (groups) with ``random_state=seed``,
one draw; its name, :data:`SQUAD_SPLIT`, its seed and the held-out titles go into the data's first note (which
the teacher cache key and every run record carry) and into :attr:`SquadData.split`.

Split versions: ``article-gss-v1`` (this one, since the layout refactor) replaced ``article-perm-v0`` (sorted
titles permuted by ``numpy.random.default_rng(seed)``, the first ``n_train`` to train, the next ``n_dev`` held
out). GroupShuffleSplit cannot reproduce that draw (it permutes with the legacy ``RandomState`` and takes the
held-out articles first): seed 0 of v1.1 holds out 10 other articles, sharing 2. The SQuAD rows committed under
``results/squad-v1.1/`` used ``article-perm-v0``; a new run's split, teacher and numbers differ from them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from makd.assets.files import sha256_file
from makd.assets.paths import hub_reachable
from makd.tasks.data import TaskDataUnavailableError, _where, bad_file, data_root, require
from makd.tasks.metrics import squad_metrics

SQUAD_SPLIT = "article-gss-v1"  # the name of the by-article split below; bump when its draw changes
SQUAD_HUB = {"1.1": "rajpurkar/squad", "2.0": "rajpurkar/squad_v2"}
SQUAD_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answers": {"text": datasets.List(datasets.Value("string")),
                "answer_start": datasets.List(datasets.Value("int32"))}})


@dataclass
class SquadData:
    version: str
    train: datasets.Dataset | None
    dev: datasets.Dataset
    source: str
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split: dict[str, Any] | None = None  # the by-article split: name, seed, counts, held-out titles (None: none)

    @property
    def version_2(self) -> bool:
        return self.version == "2.0"

    def compute_metrics(self, predictions: dict[str, str], no_answer_probs=None) -> dict:
        """EM/F1 (× 100) of ``predictions`` (id -> text) against ``dev``."""
        refs = {q: a["text"] for q, a in zip(self.dev["id"], self.dev["answers"])}
        return squad_metrics(predictions, refs, version_2=self.version_2, no_answer_probs=no_answer_probs)


def read_squad_json(path: str | os.PathLike) -> datasets.Dataset:
    """Official SQuAD JSON -> one row per question: id, title, context, question, answers{text, answer_start}
    (v2.0 unanswerable questions have empty answer lists; ``plausible_answers`` are ignored). A file that is not
    JSON, not SQuAD's layout, or has a question without ``answers`` is a DataError naming the file and where."""
    fix = "give the official SQuAD file (rajpurkar.github.io/SQuAD-explorer) or download it again"
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as err:
            raise bad_file(path, f"{err.lineno}", f"not valid JSON ({err.msg}, column {err.colno})", fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise bad_file(path, "", "not an official SQuAD JSON file (no top-level 'data' list)", fix)
    rows = {k: [] for k in SQUAD_FEATURES}
    for i, article in enumerate(data["data"]):
        require(article, ("paragraphs",), path, f"data[{i}]", fix)
        for j, para in enumerate(article["paragraphs"]):
            require(para, ("context", "qas"), path, f"data[{i}].paragraphs[{j}]", fix)
            for qa in para["qas"]:
                where = f"data[{i}].paragraphs[{j}], question {qa.get('id', '?') if isinstance(qa, dict) else '?'}"
                require(qa, ("id", "question", "answers"), path, where, fix + " (a v2.0 unanswerable question "
                        "has \"answers\": [])")
                for a in qa["answers"]:
                    require(a, ("text", "answer_start"), path, where, fix)
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(para["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
    if not rows["id"]:
        raise bad_file(path, "", "no questions (every article's paragraphs hold no 'qas')", fix)
    return datasets.Dataset.from_dict(rows, features=SQUAD_FEATURES)


def split_by_article(ds: datasets.Dataset, n_train: int, n_dev: int, seed: int = 0
                     ) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """Split a SQuAD set by article (split :data:`SQUAD_SPLIT`): (train, held-out, split record).

    One draw of ``GroupShuffleSplit(train_size=n_train, test_size=n_dev, random_state=seed)`` over the article
    titles: no article (so no paragraph) is in both, rows keep their file order, and the result depends only on
    the set of titles, not on the row order. The record holds the split's name, seed, counts, the held-out
    titles and the note that every result carries."""
    from sklearn.model_selection import GroupShuffleSplit   # heavy: only when a split is drawn

    titles = ds["title"]
    n_articles = len(set(titles))
    if n_train <= 0 or n_dev <= 0 or n_train + n_dev > n_articles:
        k = round(n_articles * 0.8)
        raise ValueError(f"split_dev_by_article={(n_train, n_dev)}: need two positive counts summing to at most "
                         f"the {n_articles} articles of this set (e.g. {(k, n_articles - k)})")
    splitter = GroupShuffleSplit(n_splits=1, train_size=n_train, test_size=n_dev, random_state=seed)
    train_idx, dev_idx = next(splitter.split(np.zeros(len(titles)), groups=titles))
    train, dev = ds.select(sorted(train_idx.tolist())), ds.select(sorted(dev_idx.tolist()))
    held_out = sorted(set(dev["title"]))
    note = (f"NO official train set: the official dev set was split by article (split {SQUAD_SPLIT}, seed {seed}): "
            f"{n_train} articles ({len(train)} questions) for training, {n_dev} held out ({len(dev)} questions) "
            f"for evaluation: {', '.join(held_out)}; scores are NOT comparable to official SQuAD dev numbers")
    record = {"name": SQUAD_SPLIT, "seed": seed, "train_articles": n_train, "held_out_articles": n_dev,
              "train_questions": len(train), "held_out_questions": len(dev), "held_out_titles": held_out,
              "note": note}
    return train, dev, record


def load_squad(version: str = "1.1", source: str = "auto", data_dir=None, split_dev_by_article=None, *,
               seed: int = 0, dev_only: bool = False) -> SquadData:
    """SQuAD v1.1 / v2.0 from the hub (``rajpurkar/squad[_v2]``) or the official local JSON
    (``<data_dir>/squad/dev-v1.1.json``; ``train-v1.1.json`` used when present).

    Offline there is no train set: pass ``split_dev_by_article=(38, 10)`` (v1.1, 48 articles) or ``(28, 7)``
    (v2.0, 35 articles) to split the dev set by article into train and held-out dev (see
    :func:`split_by_article`), or ``dev_only=True`` to evaluate only.
    """
    if version not in SQUAD_HUB:
        raise ValueError(f"SQuAD version must be '1.1' or '2.0', got {version!r}")
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    split = split_dev_by_article
    if split is not None and (len(split) != 2 or not all(isinstance(n, int) for n in split)):
        raise ValueError(f"split_dev_by_article must be (n_train_articles, n_dev_articles), got {split!r}")
    root = data_root(data_dir)
    looked = [] if root is None else [root / "squad" / f"dev-v{version}.json", root / f"dev-v{version}.json"]
    where, fix = _where(looked, f"squad/dev-v{version}.json"), (
        f"put the official dev-v{version}.json in <data_dir>/squad/ and pass --data-dir (or set MAKD_DATA_DIR)")
    dev_path = next((p for p in looked if p.is_file()), None)
    train, files, notes, split_record = None, {}, [], None
    if dev_path is not None and source in ("auto", "local"):
        dev, src = read_squad_json(dev_path), f"local:{dev_path.parent}"
        files[str(dev_path)] = sha256_file(dev_path)
        train_path = dev_path.with_name(f"train-v{version}.json")
        if split is None and train_path.is_file():
            train = read_squad_json(train_path)
            files[str(train_path)] = sha256_file(train_path)
    elif source == "local":
        raise TaskDataUnavailableError(f"SQuAD v{version}: no local file ({where}). Fix: {fix}")
    else:
        hub = SQUAD_HUB[version]
        try:
            hub_reachable()
            ds = datasets.load_dataset(hub)
        except Exception as e:
            raise TaskDataUnavailableError(f"SQuAD v{version}: no local copy ({where}) and hub dataset {hub!r} "
                                           f"unavailable ({type(e).__name__}: {e}). Fix: {fix}, or go online") from e
        dev, train, src = ds["validation"], ds["train"], f"hub:{hub}"
        files = {f"hub:{hub}:{s}": ds[s]._fingerprint for s in ("train", "validation")}
    if split is not None:
        train, dev, split_record = split_by_article(dev, *split, seed=seed)
        notes.append(split_record["note"])
    elif train is None and not dev_only:
        raise TaskDataUnavailableError(
            f"SQuAD v{version}: only the dev set is available from {src} (no train-v{version}.json beside it; "
            f"source='hub' when online). Pass split_dev_by_article={(38, 10) if version == '1.1' else (28, 7)} "
            "to train on some dev articles and evaluate on the held-out ones (stated in the results), or "
            "dev_only=True to evaluate only")
    return SquadData(version, train, dev, src, files, notes, split_record)

