"""Task data: GLUE TSV parsing and label order (fixtures in each task's real format), real benchmark files
when present, the Rotten Tomatoes proxy, SQuAD, instruction sets and offline errors."""
from __future__ import annotations

import bz2
import collections
import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import pytest

from makd.core.errors import DataError, MakdError, MissingInputError
from makd.tasks import glue, instructions, squad_data
from makd.tasks.data import TaskDataUnavailableError, read_jsonl
from makd.tasks.glue import load_task, tokenize_task
from makd.tasks.instructions import load_instructions
from makd.tasks.squad_data import load_squad
from makd.assets.paths import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures"
REAL = next((Path(p) for p in (os.environ.get("MAKD_DATA_DIR"), REPO_ROOT.parent / "shared" / "data")
             if p and (Path(p) / "glue" / "SST-2" / "dev.tsv").is_file()), None)
needs_real = pytest.mark.skipif(REAL is None, reason="real benchmark files not found (set MAKD_DATA_DIR)")


@pytest.fixture
def offline(monkeypatch):
    """No data folder from the environment, hub calls refused without touching the network."""
    import datasets
    import huggingface_hub.constants as hc
    monkeypatch.delenv("MAKD_DATA_DIR", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


# task: (dev labels in hub order, train labels or None, first dev text field value prefix)
EXPECTED = {
    "sst2": ([1, 0, 1, 1], [0, 0, 1], "a warm and often funny"),
    "cola": ([1, 1, 0, 0], [0, 1, 1], "The children ran"),
    "mrpc": ([1, 0, 0, 1], [1, 0, 1], "She said the frozen soup"),
    "stsb": ([5.0, 4.75, 5.0, 2.4], [5.0, 3.8, 3.8], "A boy with a red cap"),
    "qqp": ([0, 0, 1], [0, 1], "Why are mountain lakes"),
    "mnli": ([1, 2, 0], [1, 0, 2], "The new parking rules are fair enough"),  # neutral, contradiction, entailment
    "mnli-mm": ([2, 2, 1, 0], [1, 0, 2], "Your gift helped"),
    "qnli": ([0, 1, 1, 0, 1], None, "What took effect"),
    "rte": ([1, 0, 1, 1], [1, 0, 0], "Maria Lopez"),
}


@pytest.mark.parametrize("task", glue.GLUE_TASKS)
def test_glue_fixture_parsing_and_label_order(task, offline):
    t = load_task(task, data_dir=FIXTURES)
    dev_labels, train_labels, first = EXPECTED[task]
    assert t.dev["label"] == pytest.approx(dev_labels)
    assert t.dev[t.text_fields[0]][0].startswith(first)
    assert t.dev["idx"] == list(range(len(dev_labels)))
    assert (t.train["label"] if t.train is not None else None) == (None if train_labels is None else pytest.approx(train_labels))
    assert t.is_regression == (task == "stsb") and t.num_labels == (1 if task == "stsb" else 3 if "mnli" in task else 2)
    assert t.source == f"local:{FIXTURES / 'glue' / glue.GLUE_SPECS[task][0]}" and not t.is_proxy
    for path, digest in t.files.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    assert t.metric in t.compute_metrics(dev_labels, dev_labels)
    if not t.is_regression:  # the hub's ClassLabel names, in the hub's order
        assert t.dev.features["label"].names == t.label_names


def test_glue_layouts_quotes_and_bom(offline):
    flat = load_task("mrpc", data_dir=FIXTURES / "glue")  # <data_dir>/MRPC as well as <data_dir>/glue/MRPC
    assert flat.text_fields == ("sentence1", "sentence2")
    assert flat.dev["sentence2"][0].startswith('"The frozen soup')  # QUOTE_NONE keeps unbalanced quotes
    qnli = load_task("qnli", data_dir=FIXTURES)
    assert qnli.dev["sentence"][4].startswith('" Ana Petrova')
    assert qnli.train is None and any("no train file" in n for n in qnli.notes)
    with pytest.raises(TaskDataUnavailableError, match="qnli has no train split"):
        qnli.require_train()
    mnli = load_task("mnli", data_dir=FIXTURES)
    assert mnli.label_names == ["entailment", "neutral", "contradiction"] and mnli.text_fields == ("premise", "hypothesis")


def test_subsampling_is_seeded_and_noted(offline):
    a = load_task("mnli-mm", data_dir=FIXTURES, max_dev=2, seed=3)
    b = load_task("mnli-mm", data_dir=FIXTURES, max_dev=2, seed=3)
    assert len(a.dev) == 2 and a.dev["idx"] == b.dev["idx"] == sorted(a.dev["idx"])
    assert any("seed 3" in n for n in a.notes)
    assert len(load_task("mnli-mm", data_dir=FIXTURES, max_dev=100).dev) == 4


def test_malformed_files_fail_clearly(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: label 'maybe' is not valid for rte"):
        load_task("rte", data_dir=tmp_path, source="local")
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tentailment\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: 3 columns, expected 4"):
        load_task("rte", data_dir=tmp_path, source="local")


def test_broken_files_are_data_errors_naming_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    for text, message in (("", "dev.tsv: the file is empty"), ("index\tsentence1\tsentence2\tlabel\n",
                                                                "dev.tsv: only a header line"),
                          ("index\tsentence1\tsentence2\n0\ta\tb\n", "dev.tsv:1: missing column(s) ['label']")):
        (tmp_path / "RTE" / "dev.tsv").write_text(text)
        with pytest.raises(DataError, match=re.escape(message)):
            load_task("rte", data_dir=tmp_path, source="local")
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n{"x": \n')
    with pytest.raises(DataError, match=r"a.jsonl:3: not valid JSON"):
        read_jsonl(tmp_path / "a.jsonl")
    with pytest.raises(DataError, match=r"a.jsonl:1: missing field\(s\) \['y'\]"):
        read_jsonl(tmp_path / "a.jsonl", ("y",))
    (tmp_path / "s.json").write_text('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q", '
                                     '"question": "?"}]}]}]}')
    with pytest.raises(DataError, match=r"s.json:data\[0\].paragraphs\[0\], question q: missing field"):
        squad_data.read_squad_json(tmp_path / "s.json")
    with pytest.raises(MissingInputError, match="does not exist"):
        load_task("rte", data_dir=tmp_path / "none")
    assert issubclass(DataError, ValueError) and issubclass(TaskDataUnavailableError, MissingInputError)
    assert issubclass(TaskDataUnavailableError, FileNotFoundError) and issubclass(DataError, MakdError)


def test_offline_errors(offline, tmp_path):
    with pytest.raises(TaskDataUnavailableError, match=r"nyu-mll/glue.*--data-dir.*MAKD_DATA_DIR"):
        load_task("rte")
    with pytest.raises(TaskDataUnavailableError) as e:
        load_task("mnli", data_dir=tmp_path)
    assert str(tmp_path / "glue" / "MNLI" / "dev_matched.tsv") in str(e.value) and "nyu-mll/glue" in str(e.value)
    with pytest.raises(TaskDataUnavailableError, match="no local copy"):
        load_task("rte", data_dir=tmp_path, source="local")
    with pytest.raises(ValueError, match="unknown task 'wnli'.*'cola'"):
        load_task("wnli")
    with pytest.raises(ValueError, match="source must be"):
        load_task("rte", source="disk")
    with pytest.raises(TaskDataUnavailableError, match=r"rajpurkar/squad_v2"):
        load_squad("2.0")
    with pytest.raises(TaskDataUnavailableError, match=r"databricks/databricks-dolly-15k"):
        load_instructions("dolly")
    with pytest.raises(TaskDataUnavailableError, match="selfinst-252.jsonl"):
        load_instructions("selfinst", data_dir=tmp_path)


def test_tokenize_task(offline):
    from test_qa import word_tokenizer
    task = load_task("rte", data_dir=FIXTURES)
    tok = word_tokenizer([t for ds in (task.train, task.dev) for f in task.text_fields for t in ds[f]])
    train, dev = tokenize_task(task, tok, max_length=16)
    assert set(dev.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert dev["labels"] == EXPECTED["rte"][0] and max(map(len, dev["input_ids"])) == 16 and len(train) == 3
    assert 1 in dev["token_type_ids"][0]  # the pair is encoded as two segments
    stsb = load_task("stsb", data_dir=FIXTURES)
    _, dev = tokenize_task(stsb, tok, max_length=16)
    assert dev["labels"] == pytest.approx(EXPECTED["stsb"][0]) and isinstance(dev["labels"][0], float)
    qnli = load_task("qnli", data_dir=FIXTURES)
    assert tokenize_task(qnli, tok)[0] is None


# ---------------------------------------------------------------- real files (SOURCES.md)
COUNTS = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3668, 408), "stsb": (5749, 1500),
          "rte": (2490, 277), "qnli": (None, 5463)}
DEV_LABELS = {"sst2": {1: 444, 0: 428}, "cola": {1: 721, 0: 322}, "mrpc": {1: 279, 0: 129},
              "rte": {0: 146, 1: 131}, "qnli": {0: 2702, 1: 2761}}
SHA = {"SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
       "RTE/dev.tsv": "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb"}


@needs_real
@pytest.mark.parametrize("task", sorted(COUNTS))
def test_real_glue_counts(task, offline):
    t = load_task(task, data_dir=REAL)
    n_train, n_dev = COUNTS[task]
    assert (None if t.train is None else len(t.train), len(t.dev)) == (n_train, n_dev)
    if task in DEV_LABELS:
        assert dict(collections.Counter(t.dev["label"])) == DEV_LABELS[task]
    for name, digest in SHA.items():
        if name.split("/")[0] == glue.GLUE_SPECS[task][0]:
            assert t.files[str(REAL / "glue" / name)] == digest


@needs_real
def test_real_squad_split_by_article(offline):
    v1 = load_squad("1.1", data_dir=REAL, split_dev_by_article=(38, 10))
    assert len(v1.train) + len(v1.dev) == 10570 and len(set(v1.train["title"])) == 38
    assert not set(v1.train["title"]) & set(v1.dev["title"]) and "NOT comparable" in v1.notes[0]
    _, again, _ = squad_data.split_by_article(datasets.concatenate_datasets([v1.dev, v1.train]), 38, 10)
    assert sorted(again["id"]) == sorted(v1.dev["id"])  # the same articles whatever the row order
    # split article-gss-v1, seed 0 (the committed results/squad-v1.1 rows used article-perm-v0: other articles)
    assert v1.split["name"] == "article-gss-v1" and v1.split["held_out_titles"] == [
        "Black_Death", "Computational_complexity_theory", "Doctor_Who", "Martin_Luther", "Normans", "Oxygen",
        "Pharmacy", "Private_school", "Sky_(United_Kingdom)", "Super_Bowl_50"]
    assert (v1.split["train_questions"], v1.split["held_out_questions"]) == (7948, 2622)
    v2 = load_squad("2.0", data_dir=REAL, dev_only=True)
    assert len(v2.dev) == 11873 and sum(not a["text"] for a in v2.dev["answers"]) == 5945
    assert len(set(v2.dev["title"])) == 35 and v2.train is None
    with pytest.raises(ValueError, match="35 articles"):
        squad_data.split_by_article(v2.dev, 30, 10)


@needs_real
def test_real_instruction_sets(offline):
    si = load_instructions("selfinst", data_dir=REAL)
    assert len(si.test) == 252 and si.train is None and si.reference_kind == "human"
    assert all(si.test["instruction"]) and all(si.test["output"]) and si.test["id"][0] == "user_oriented_task_0"
    vi = load_instructions("vicuna", data_dir=REAL, limit=5)
    assert len(vi.test) == 5 and vi.test["output"] == [""] * 5 and set(vi.test["reference_kind"]) == {"none"}
    assert set(si.test.column_names) == set(instructions.INSTRUCTION_FIELDS)


# ---------------------------------------------------------------- SQuAD and instruction fixtures
def test_squad_fixture_flattening(offline):
    with pytest.raises(TaskDataUnavailableError, match=r"split_dev_by_article=\(28, 7\)"):
        load_squad("2.0", data_dir=FIXTURES)  # a dev file only: no train set without the option
    with pytest.raises(ValueError, match=r"\(n_train_articles, n_dev_articles\)"):
        load_squad("1.1", data_dir=FIXTURES, split_dev_by_article=(38,))
    s = load_squad("1.1", data_dir=FIXTURES, split_dev_by_article=(1, 1))
    raw = json.loads((FIXTURES / "squad" / "dev-v1.1.json").read_text())
    n = sum(len(p["qas"]) for a in raw["data"] for p in a["paragraphs"])
    assert len(s.train) + len(s.dev) == n and set(s.train["title"]) != set(s.dev["title"])
    assert s.split["name"] == squad_data.SQUAD_SPLIT and s.split["held_out_titles"] == sorted(set(s.dev["title"]))
    assert s.notes[0] == s.split["note"]
    row = s.train[0]
    for start, text in zip(row["answers"]["answer_start"], row["answers"]["text"]):
        assert row["context"][start:start + len(text)] == text
    golds = {q: a["text"][0] for q, a in zip(s.dev["id"], s.dev["answers"])}
    assert s.compute_metrics(golds)["exact_match"] == pytest.approx(100.0)
    v2 = load_squad("2.0", data_dir=FIXTURES, dev_only=True)
    assert v2.version_2 and [len(a["text"]) == 0 for a in v2.dev["answers"]] == [False, False, True, True]


def test_split_by_article_is_one_group_shuffle_split_draw():
    from sklearn.model_selection import GroupShuffleSplit
    titles = [f"article-{i % 9}" for i in range(40)]                     # 9 articles, interleaved rows
    ds = datasets.Dataset.from_dict({"id": [str(i) for i in range(40)], "title": titles})
    train, dev, record = squad_data.split_by_article(ds, 6, 2, seed=3)
    tr, te = next(GroupShuffleSplit(n_splits=1, train_size=6, test_size=2, random_state=3).split(titles, groups=titles))
    assert train["id"] == [str(i) for i in sorted(tr)] and dev["id"] == [str(i) for i in sorted(te)]  # file order
    assert record["name"] == squad_data.SQUAD_SPLIT and record["held_out_titles"] == sorted(set(dev["title"]))
    assert len(record["held_out_titles"]) == 2 and not set(train["title"]) & set(dev["title"])
    assert squad_data.SQUAD_SPLIT in record["note"] and all(t in record["note"] for t in record["held_out_titles"])
    shuffled = ds.select(list(range(39, -1, -1)))                         # row order does not matter
    assert sorted(squad_data.split_by_article(shuffled, 6, 2, seed=3)[1]["id"]) == sorted(dev["id"])
    assert squad_data.split_by_article(ds, 6, 2, seed=4)[2]["held_out_titles"] != record["held_out_titles"] or \
        squad_data.split_by_article(ds, 6, 2, seed=5)[2]["held_out_titles"] != record["held_out_titles"]
    with pytest.raises(ValueError, match="9 articles"):
        squad_data.split_by_article(ds, 8, 2)


def test_dolly_local_filter_and_split(tmp_path, monkeypatch, offline):
    rows = [{"instruction": f"Q{i}", "context": "", "response": f"answer {i}", "category": "open_qa"} for i in range(20)]
    rows += [{"instruction": "empty", "context": "", "response": "  ", "category": "x"},
             {"instruction": "long", "context": "w " * 300, "response": "r", "category": "x"}]
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "databricks-dolly-15k.jsonl").write_text("\n".join(map(json.dumps, rows)))
    monkeypatch.setattr(instructions, "DOLLY_DEV", 3)
    monkeypatch.setattr(instructions, "DOLLY_TEST", 2)
    d = load_instructions("dolly", data_dir=tmp_path)
    assert (len(d.train), len(d.dev), len(d.test)) == (15, 3, 2) and "2 dropped" in d.notes[0]
    assert not set(d.train["id"]) & set(d.test["id"]) and d.test["id"] == load_instructions("dolly", data_dir=tmp_path).test["id"]
    assert d.test["input"][0] == "" and d.test["output"][0].startswith("answer")


CHATTER = """categories:
- AI
conversations:
- - What is AI?
  - Artificial Intelligence is the branch of engineering and science devoted to constructing machines that think.
- - What is AI?
  - AI is the field of science which concerns itself with building hardware and software.
- - Hello
  - Hi
  - How are you doing?
  - I am doing well.
- a malformed string entry
"""


def test_chatterbot_proxy(tmp_path, monkeypatch):
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / "ai.yml").write_text(CHATTER)
    for i in range(6):
        (tmp_path / "english" / f"t{i}.yml").write_text(f"conversations:\n- - q{i}\n  - a{i}\n- - q{i}\n  - b{i}\n")
    monkeypatch.setattr(instructions, "fetch_asset", lambda name: tmp_path)
    rows = instructions.read_chatterbot(tmp_path)
    assert len(rows) == 2 + 3 + 12 and rows[2]["instruction"] == "Hello" and rows[3]["instruction"] == "Hi"
    d = load_instructions("chatterbot")
    assert d.is_proxy and "proxy for Dolly" in d.notes[0] and "embedded:" in d.source
    splits = [set(s["instruction"]) for s in (d.train, d.dev, d.test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])  # split by prompt
    assert sum(map(len, (d.train, d.dev, d.test))) == len(rows)


# ---------------------------------------------------------------- rt-polarity (SST-2 proxy)
RT_CSV = [("category", "text", "movie_name", "has_plot_and_reviews"),
          ("plot", "A bank manager plans a robbery.", "aankhen", "False"),
          ("fresh", "An absorbing documentary.", "a", "False"), ("fresh", "An absorbing documentary.", "b", "False"),
          ("rotten", "Flat and dull.", "c", "True"), ("fresh", "Flat and dull.", "d", "True"),
          ("rotten", "", "e", "False")] + [("fresh" if i % 2 else "rotten", f"snippet {i}", "m", "False") for i in range(10)]


def test_rt_polarity_parsing(tmp_path):
    import csv
    path = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "wt", newline="") as fh:
        csv.writer(fh).writerows(RT_CSV)
    train, dev, notes = glue.read_rt_polarity(path)
    texts = list(train["sentence"]) + list(dev["sentence"])
    assert sorted(texts) == sorted(["An absorbing documentary."] + [f"snippet {i}" for i in range(10)])
    assert (len(train), len(dev)) == (9, 2)  # 80/20 of 11
    assert "proxy for SST-2, not SST-2" in notes[0] and "1 texts with conflicting labels" in notes[0]
    assert glue.read_rt_polarity(path)[1]["sentence"] == dev["sentence"]  # fixed split
    lab = dict(zip(texts, list(train["label"]) + list(dev["label"])))
    assert lab["An absorbing documentary."] == 1 and lab["snippet 0"] == 0


def needs_asset(name: str) -> None:
    from makd.assets import fetch as assets
    if not assets.is_cached(name):
        pytest.skip(f"asset {name} not cached (run `python -m makd fetch-assets {name}`)")


@pytest.mark.assets
def test_rt_polarity_real_asset():
    needs_asset("rt-polarity")
    t = load_task("rt-polarity", max_dev=500)
    full = load_task("rt-polarity")
    texts = list(full.train["sentence"]) + list(full.dev["sentence"])
    assert len(texts) == len(set(texts)) > 12000 and set(full.dev["label"]) == {0, 1}
    assert t.is_proxy and "proxy for SST-2" in t.source and t.metric == "accuracy" and len(t.dev) == 500
    assert load_task("rt-polarity").dev["sentence"] == full.dev["sentence"]
    with pytest.raises(ValueError, match="embedded proxy"):
        load_task("rt-polarity", source="hub")


@pytest.mark.assets
def test_chatterbot_real_asset():
    needs_asset("chatterbot")
    d = load_instructions("chatterbot", limit=50)
    full = load_instructions("chatterbot")
    n = sum(map(len, (full.train, full.dev, full.test)))
    assert n == 2306 and len(full.files) == 21  # consecutive statement pairs of 2,025 list conversations, 21 files
    assert len(d.test) == 50 and d.test["id"] == full.test["id"][:50] and all(full.test["output"])
