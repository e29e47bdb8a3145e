"""SQuAD features and post-processing on real-format fixtures with a word-level fast tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from makd.tasks.squad_data import load_squad
from makd.tasks.metrics import squad_metrics
from makd.tasks.qa import postprocess_predictions, prepare_eval_features, prepare_train_features

FIXTURES = Path(__file__).parent / "fixtures"


def word_tokenizer(texts, padding_side="right"):
    """A BERT-style fast tokenizer ([CLS] q [SEP] c [SEP]) whose vocabulary is every word of ``texts``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    pre = pre_tokenizers.BertPreTokenizer()
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t.lower()):
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.Lowercase(), pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", padding_side=padding_side,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


@pytest.fixture(scope="module")
def squad():
    v1 = load_squad("1.1", data_dir=FIXTURES, dev_only=True).dev
    v2 = load_squad("2.0", data_dir=FIXTURES, dev_only=True).dev
    tok = word_tokenizer(list(v1["context"]) + list(v1["question"]) + list(v2["context"]) + list(v2["question"]))
    return v1, v2, tok


def gold_logits(train_feats, n_tokens):
    """(F, T) logits: 10 at each window's gold start/end token (the CLS index 0 when the answer is absent)."""
    start, end = np.zeros((len(train_feats), n_tokens)), np.zeros((len(train_feats), n_tokens))
    for f, (s, e) in enumerate(zip(train_feats["start_positions"], train_feats["end_positions"])):
        start[f, s], end[f, e] = 10.0, 10.0
    return start, end


def test_train_features_cover_long_context(squad):
    v1, _, tok = squad
    feats = prepare_train_features(v1, tok, max_length=64, stride=16)
    assert set(feats.column_names) >= {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert all(len(ids) == 64 for ids in feats["input_ids"])
    assert len(feats) > len(v1) + 10  # the 3,102-character context needs many windows
    firsts = [a["text"][0] for a in v1["answers"]]
    spans = [tok.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1]) for f in feats if f["start_positions"]]
    assert 0 < len(spans) < len(feats)  # windows without the answer point at CLS (index 0)
    # each gold span decodes to the first gold answer (lower-cased word tokens, spaces re-joined by decode)
    norm = lambda t: "".join(t.lower().split())  # noqa: E731
    assert {norm(s) for s in spans} == {norm(t) for t in firsts}


def test_gold_logits_recover_gold_spans_v1(squad):
    v1, _, tok = squad
    train = prepare_train_features(v1, tok, max_length=64, stride=16)
    ev = prepare_eval_features(v1, tok, max_length=64, stride=16)
    assert len(ev) == len(train) and ev["example_id"][:1] == [v1["id"][0]]
    # context-only offsets: the question and special tokens have None
    first = ev[0]["offset_mapping"]
    assert first[0] is None and first[1] is None and any(o is not None for o in first)
    windows = {i: ev["example_id"].count(i) for i in v1["id"]}
    long_ids = [i for i, t in zip(v1["id"], v1["title"]) if t == "Valley_Bakers_Guild"]
    assert len(long_ids) == 3 and all(windows[i] >= 4 for i in long_ids)  # a 3,102-character context
    start, end = gold_logits(train, 64)
    preds = postprocess_predictions(v1, ev, start, end)
    for qid, answers in zip(v1["id"], v1["answers"]):
        assert preds[qid] == answers["text"][0]
    refs = {q: a["text"] for q, a in zip(v1["id"], v1["answers"])}
    assert squad_metrics(preds, refs)["exact_match"] == pytest.approx(100.0)
    # an answer found only in a later window: its first window has no gold span
    late = [q for q in long_ids if train["start_positions"][ev["example_id"].index(q)] == 0]
    assert late, "expected at least one answer outside the first window"


def test_gold_logits_v2_no_answer(squad):
    _, v2, tok = squad
    train = prepare_train_features(v2, tok, max_length=48, stride=8)
    ev = prepare_eval_features(v2, tok, max_length=48, stride=8)
    start, end = gold_logits(train, 48)  # unanswerable: 10 at CLS in every window -> null score 20
    preds, diffs = postprocess_predictions(v2, ev, start, end, version_2=True, return_null_diffs=True)
    for qid, answers in zip(v2["id"], v2["answers"]):
        assert preds[qid] == (answers["text"][0] if answers["text"] else "")
    m = squad_metrics(preds, {q: a["text"] for q, a in zip(v2["id"], v2["answers"])}, version_2=True)
    assert m["exact_match"] == pytest.approx(100.0) and m["NoAns_total"] == 2
    unanswerable = [q for q, a in zip(v2["id"], v2["answers"]) if not a["text"]]
    assert all(diffs[q] > 0 for q in unanswerable)
    # v1 post-processing never predicts "": it falls back to the best span
    assert all(p != "" for p in postprocess_predictions(v2, ev, start, end).values())


def test_postprocess_hand_case():
    examples = {"id": ["x"], "context": ["alpha beta gamma delta"]}
    features = {"example_id": ["x"], "offset_mapping": [[None, None, [0, 5], [6, 10], [11, 16], [17, 22], None]]}
    start = np.array([[0, 0, 1, 5, 0, 0, 9]])  # the best start (6) is outside the context
    end = np.array([[0, 0, 0, 0, 4, 3, 9]])
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta gamma"}
    assert postprocess_predictions(examples, features, start, end, max_answer_length=1) == {"x": "beta"}
    # end before start is skipped: start only at 5 (delta), ends before it
    start2 = np.array([[0, 0, 0, 0, 0, 9, 0]])
    end2 = np.array([[0, 0, 0, 8, 0, 1, 0]])
    assert postprocess_predictions(examples, features, start2, end2) == {"x": "delta"}


def test_padding_free_and_left_padding(squad):
    v1, _, tok = squad
    ev = prepare_eval_features(v1, tok, max_length=64, stride=16, padding=False)
    assert min(len(i) for i in ev["input_ids"]) < 64
    left = word_tokenizer(list(v1["context"]) + list(v1["question"]), padding_side="left")
    train = prepare_train_features(v1, left, max_length=64, stride=16)
    ev = prepare_eval_features(v1, left, max_length=64, stride=16)
    start, end = gold_logits(train, 64)
    preds = postprocess_predictions(v1, ev, start, end)
    assert all(preds[q] == a["text"][0] for q, a in zip(v1["id"], v1["answers"]))


def test_bad_inputs(squad):
    v1, _, tok = squad
    with pytest.raises(ValueError, match="stride"):
        prepare_eval_features(v1, tok, max_length=64, stride=64)
    with pytest.raises(ValueError, match="raise max_length or lower stride"):
        prepare_train_features(v1, tok, max_length=24, stride=16)  # long questions leave < stride tokens
    ev = prepare_eval_features(v1, tok, max_length=64, stride=16)
    with pytest.raises(ValueError, match="one row per feature"):
        postprocess_predictions(v1, ev, np.zeros((2, 64)), np.zeros((2, 64)))
