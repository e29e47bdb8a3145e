"""Instruction-following sets in one schema {id, instruction, input, output, reference_kind, category}.

Self-Instruct 252 and Vicuna 80 (evaluation only, local JSONL), databricks-dolly-15k (local or hub), the
embedded ChatterBot proxy for Dolly and, for training only, ``wikiprompts`` (instruction templates over the embedded
Wikipedia train articles, no answers: :mod:`makd.tasks.wiki_prompts`). Dolly and ChatterBot are split by a seeded permutation of their
distinct groups (a row id, a prompt) so that no group is in two splits; this three-way split is unchanged
since the committed decoder results (:func:`_seeded_split`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import yaml

from makd.assets.files import sha256_file
from makd.assets.paths import hub_reachable
from makd.tasks.data import TaskDataUnavailableError, _where, bad_file, data_root, fetch_asset, read_jsonl
from makd.tasks.wiki import load_wiki
from makd.tasks.wiki_prompts import wiki_prompt_rows

INSTRUCTION_SETS = ("selfinst", "vicuna", "dolly", "chatterbot")
TRAIN_ONLY_SETS = ("wikiprompts",)   # train split only, no answers (reference_kind "none")
PROXY_SETS = ("chatterbot", "wikiprompts")   # embedded stand-ins for the paper's training data (is_proxy)
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
    rows = []
    for f in _chatterbot_files(Path(folder)):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise bad_file(f, "", f"not valid YAML ({' '.join(str(err).split())})", "delete the cached asset and "
                           "run `python -m makd fetch-assets chatterbot` to fetch it again") from None
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
    fix = f"give the {fname} of the data README (one JSON object per line) or download it again"
    raw = read_jsonl(path, ("id", "instruction", "instances") if name == "selfinst" else ("question_id", "text"), fix)
    if name == "selfinst":
        for n, t in enumerate(raw, 1):
            if not isinstance(t["instances"], list) or not t["instances"] or not all(
                    isinstance(i, dict) for i in t["instances"]):
                raise bad_file(path, f"task {n} ({t['id']})", "'instances' must be a non-empty list of "
                               "{input, output} objects", fix)
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
        fix = "give databricks-dolly-15k.jsonl (instruction, context, response, category per line) or download it again"
        raw, src = [r for p in local for r in read_jsonl(p, ("instruction",), fix)], f"local:{local[0].parent}"
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
    path = fetch_asset("chatterbot")
    rows = read_chatterbot(path)
    n_q = len({r["instruction"] for r in rows})
    part = _seeded_split([r["instruction"] for r in rows], n_q // 10, n_q // 10, seed)
    notes = [f"proxy for Dolly, not Dolly: {len(rows)} ChatterBot statement pairs, {n_q} distinct prompts "
             f"split 80/10/10 by prompt (seed {seed})"]
    return ({s: [r for r in rows if r["instruction"] in part[s]] for s in part},
            "embedded:chatterbot-corpus==1.3.3 (proxy for Dolly)",
            {str(f): sha256_file(f) for f in _chatterbot_files(path)}, notes)


def _wikiprompts(seed: int):
    """Instruction templates over the Wikipedia train articles, all in train: ({split: rows}, source, files, notes)."""
    rows, wiki = wiki_prompt_rows(seed), load_wiki()
    notes = [f"proxy, not the paper's data: {len(rows)} instruction prompts templated from the "
             f"{len(wiki.train)} Wikipedia train articles (seed {seed}); no answers: train on the teacher's"]
    return {"train": rows, "dev": [], "test": []}, "embedded:gensim wiki asset, train articles (templated proxy)", \
        dict(wiki.files), notes


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
    - ``wikiprompts``: embedded proxy for training only (:mod:`makd.tasks.wiki_prompts`): instruction templates over
      the Wikipedia train articles, every row in train (``seed`` orders them), NO answers (output "",
      reference_kind "none": train on the teacher's answers); dev and test empty.
    ``limit`` keeps the first ``limit`` rows of each split.
    """
    if name not in INSTRUCTION_SETS + TRAIN_ONLY_SETS:
        raise ValueError(f"unknown instruction set {name!r}; expected one of {INSTRUCTION_SETS + TRAIN_ONLY_SETS}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub' (the hub: dolly only), got {source!r}")
    root = data_root(data_dir)
    if name in ("selfinst", "vicuna"):
        test, src, files, notes = _eval_set(name, root)
        splits = {"train": None, "dev": None, "test": test}
    elif name == "dolly":
        splits, src, files, notes = _dolly(root, source, seed)
    elif name == "wikiprompts":
        splits, src, files, notes = _wikiprompts(seed)
    else:
        splits, src, files, notes = _chatterbot(seed)
    if limit is not None:
        notes.append(f"limit: first {limit} rows of each split")
    out = {s: None if r is None else _records(r[:limit] if limit else r) for s, r in splits.items()}
    kind = "none" if name in ("vicuna", "wikiprompts") else "human"
    return InstructionData(name, out["train"], out["dev"], out["test"], src, kind, files,
                           name in PROXY_SETS, notes)
