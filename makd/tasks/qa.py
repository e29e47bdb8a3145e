"""SQuAD features and answer post-processing, following the HF ``run_qa`` example recipe.

A long context is cut into overlapping windows of ``max_length`` tokens (question + context slice,
``stride`` tokens of overlap). Training windows carry the gold answer's start/end token (or the CLS
index when the answer is absent or not fully inside the window); evaluation windows keep the example id
and character offsets of the context tokens only. Post-processing scores every (start, end) pair among
the ``n_best`` starts and ends of every window, ``score = start_logit[s] + end_logit[e]``, keeps spans
with s <= e < s + max_answer_length inside the context, and maps the best back to the context text.
SQuAD v2: the null score is ``start_logit[0] + end_logit[0]`` (minimum over windows, HF convention);
the answer is "" when ``null_score − best_span_score > null_threshold``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import datasets
import numpy as np


def _check(tokenizer, max_length: int, stride: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (offset mappings): load it with "
                         "AutoTokenizer.from_pretrained(..., use_fast=True)")
    if not 0 <= stride < max_length:
        raise ValueError(f"stride ({stride}) must be >= 0 and smaller than max_length ({max_length})")


def _encode(examples: dict[str, list], tokenizer, max_length: int, stride: int, padding: str | bool):
    """Tokenise (question, context) pairs into overflowing windows; returns (encoding, context seq id)."""
    pad_right = tokenizer.padding_side == "right"  # question first unless the tokenizer pads on the left
    questions = [q.lstrip() for q in examples["question"]]  # some v2 questions start with long whitespace
    contexts = examples["context"]
    q_lens = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    for j, n in enumerate(q_lens):  # the tokenizers library panics (uncatchable by `except Exception`) here
        if budget - n <= stride:
            raise ValueError(f"question {examples['id'][j] if 'id' in examples else j!r} has {n} tokens: with "
                             f"max_length={max_length} only {budget - n} context tokens fit per window, not more than "
                             f"stride={stride}; raise max_length or lower stride")
    enc = tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                    truncation="only_second" if pad_right else "only_first", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=padding)
    return enc, 1 if pad_right else 0


def _map(examples, fn, tokenizer, **kw):
    """Apply a batch function to a Dataset (batched map, original columns removed) or to a batch dict."""
    if isinstance(examples, datasets.Dataset):
        return examples.map(lambda b: fn(b, tokenizer, **kw), batched=True, remove_columns=examples.column_names,
                            desc=fn.__name__)
    return fn(examples, tokenizer, **kw)


def prepare_train_features(examples, tokenizer, max_length: int = 384, stride: int = 128,
                           padding: str | bool = "max_length"):
    """Training windows with ``start_positions`` / ``end_positions`` (token indices of the first answer;
    the CLS index when there is no answer or it is cut by the window). ``examples``: a Dataset or a batch
    dict with question, context, answers{text, answer_start}."""
    _check(tokenizer, max_length, stride)
    return _map(examples, _train_batch, tokenizer, max_length=max_length, stride=stride, padding=padding)


def _train_batch(examples, tokenizer, max_length, stride, padding):
    enc, ctx = _encode(examples, tokenizer, max_length, stride, padding)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    enc["start_positions"], enc["end_positions"] = [], []
    for i, offs in enumerate(offsets):
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        seq = enc.sequence_ids(i)
        answers = examples["answers"][sample_map[i]]
        start = end = cls
        if len(answers["answer_start"]) > 0:
            s_char = answers["answer_start"][0]
            e_char = s_char + len(answers["text"][0])
            ts = seq.index(ctx)  # first context token
            te = len(seq) - 1 - seq[::-1].index(ctx)  # last context token
            if offs[ts][0] <= s_char and offs[te][1] >= e_char:  # answer fully inside this window
                while ts < len(offs) and offs[ts][0] <= s_char:
                    ts += 1
                while offs[te][1] >= e_char:
                    te -= 1
                start, end = ts - 1, te + 1
        enc["start_positions"].append(start)
        enc["end_positions"].append(end)
    return enc


def prepare_eval_features(examples, tokenizer, max_length: int = 384, stride: int = 128,
                          padding: str | bool = "max_length"):
    """Evaluation windows with ``example_id`` and ``offset_mapping`` (character spans of context tokens,
    None elsewhere). Drop those two columns before the forward pass."""
    _check(tokenizer, max_length, stride)
    return _map(examples, _eval_batch, tokenizer, max_length=max_length, stride=stride, padding=padding)


def _eval_batch(examples, tokenizer, max_length, stride, padding):
    enc, ctx = _encode(examples, tokenizer, max_length, stride, padding)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [examples["id"][j] for j in sample_map]
    enc["offset_mapping"] = [[o if s == ctx else None for o, s in zip(offs, enc.sequence_ids(i))]
                             for i, offs in enumerate(enc["offset_mapping"])]
    return enc


def postprocess_predictions(examples, features, start_logits, end_logits, n_best: int = 20,
                            max_answer_length: int = 30, version_2: bool = False, null_threshold: float = 0.0,
                            return_null_diffs: bool = False):
    """Best answer text per example id from window logits (F features × T tokens, rows aligned with
    ``features``). v2: "" when ``null_score − best_span_score > null_threshold``; with
    ``return_null_diffs`` also returns that difference per id (thresholds, no-answer scores)."""
    n_feat = len(features["example_id"])
    if len(start_logits) != n_feat or len(end_logits) != n_feat:
        raise ValueError(f"got {len(start_logits)}/{len(end_logits)} logit rows for {n_feat} features "
                         "(one row per feature, in the same order)")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError("n_best and max_answer_length must be >= 1")
    by_example: dict[Any, list[int]] = defaultdict(list)
    for f, ex_id in enumerate(features["example_id"]):
        by_example[ex_id].append(f)
    all_offsets = features["offset_mapping"]
    ids, contexts = examples["id"], examples["context"]
    answers, diffs = {}, {}
    for ex_id, context in zip(ids, contexts):
        min_null, spans = None, []
        for f in by_example.get(ex_id, []):
            s_log, e_log = np.asarray(start_logits[f]), np.asarray(end_logits[f])  # (T,), (T,)
            offs = all_offsets[f]
            null = float(s_log[0] + e_log[0])
            min_null = null if min_null is None or null < min_null else min_null
            for s in np.argsort(s_log)[::-1][:n_best]:
                for e in np.argsort(e_log)[::-1][:n_best]:
                    if s >= len(offs) or e >= len(offs) or offs[s] is None or offs[e] is None:
                        continue  # outside the context (question, special tokens, padding)
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    spans.append((float(s_log[s] + e_log[e]), context[offs[s][0]:offs[e][1]]))
        if min_null is None:
            raise ValueError(f"example {ex_id!r} has no feature: build features with prepare_eval_features")
        best_score, best_text = max(spans) if spans else (-np.inf, "")
        diffs[ex_id] = min_null - best_score
        answers[ex_id] = "" if version_2 and diffs[ex_id] > null_threshold else best_text
    return (answers, diffs) if return_null_diffs else answers
