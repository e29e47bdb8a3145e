"""Offline task metrics: GLUE, SQuAD v1.1/v2.0 EM/F1 and Rouge-L (never ``evaluate.load``, whose
scripts live on the hub).

- GLUE: scikit-learn / scipy, values as fractions in [0, 1] (or [-1, 1]) like HF ``evaluate``'s glue
  metric; each dict names its main key in ``"main"`` (BERT paper convention: F1 for MRPC/QQP, Spearman
  for STS-B, Matthews for CoLA, accuracy elsewhere).
- SQuAD: the official evaluation scripts' normalisation and EM/F1 (× 100), v2 no-answer handling and
  best-threshold search.
- Rouge-L: ``rouge_score`` with the Porter stemmer, F-measure × 100, mean over examples (MiniLLM protocol).
- Language-model cross-entropy and perplexity on held-out windows (``lm_perplexity``: pure torch, no_grad), the
  model's own shifted loss weighted by tokens across windows.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Mapping, Sequence

import numpy as np

GLUE_MAIN = {"cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1",
             "stsb": "spearmanr", "mnli": "accuracy", "mnli-mm": "accuracy", "qnli": "accuracy",
             "rte": "accuracy", "rt-polarity": "accuracy"}


def _as_predictions(predictions, regression: bool) -> np.ndarray:
    """Class ids (N,) or logits (N, C) -> class ids; regression (N,) or (N, 1) -> floats."""
    p = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
    if regression:
        return p.reshape(len(p), -1)[:, 0].astype(np.float64) if p.ndim == 2 else p.astype(np.float64)
    return p.argmax(-1) if p.ndim == 2 else p.astype(np.int64)


def glue_metrics(task: str, predictions, labels) -> dict:
    """Dev metrics of a GLUE task (or the ``rt-polarity`` proxy), as fractions.

    accuracy = mean(ŷ = y); F1 of the positive class 1 (MRPC/QQP); MCC = (TP·TN − FP·FN) /
    sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) (CoLA); Pearson r and Spearman ρ (STS-B).
    ``combined`` is the mean of the task's metrics where it has two (MRPC/QQP/STS-B), as in HF run_glue.
    ``predictions``: class ids (N,), logits (N, C), or scores (N,)/(N, 1) for STS-B.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task not in GLUE_MAIN:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_MAIN)}")
    y = np.asarray(labels)
    p = _as_predictions(predictions, regression=task == "stsb")
    if len(p) != len(y) or len(y) == 0:
        raise ValueError(f"{task}: got {len(p)} predictions for {len(y)} labels (need the same, non-zero number)")
    if task == "stsb":
        out = {"pearson": float(pearsonr(p, y.astype(np.float64))[0]),
               "spearmanr": float(spearmanr(p, y.astype(np.float64))[0])}
        out["combined"] = (out["pearson"] + out["spearmanr"]) / 2
    else:
        y = y.astype(np.int64)
        out = {"accuracy": float(accuracy_score(y, p))}
        if task == "cola":
            out["matthews_correlation"] = float(matthews_corrcoef(y, p))
        if task in ("mrpc", "qqp"):
            out["f1"] = float(f1_score(y, p, zero_division=0.0))
            out["combined"] = (out["accuracy"] + out["f1"]) / 2
    out["main"] = GLUE_MAIN[task]
    return out


# ---------------------------------------------------------------- SQuAD (official evaluation scripts)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Official SQuAD normalisation: lower-case, drop punctuation, drop articles a/an/the, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, version_2: bool = False) -> float:
    """Bag-of-tokens F1 = 2PR/(P+R) on normalised tokens. v2: an empty side scores 1 iff both are empty
    (v1.1's script scores 0 whenever nothing overlaps)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not p or not g):
        return float(p == g)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _best_threshold(preds, scores, na_probs, has_ans) -> tuple[float, float]:
    """Official v2 ``find_best_thresh``: the no-answer probability cut-off that maximises the score."""
    cur = best = sum(1 for q in has_ans if not has_ans[q])
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
        if cur > best:
            best, thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), float(thresh)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  version_2: bool = False, no_answer_probs: Mapping[str, float] | None = None,
                  no_answer_threshold: float = 1.0) -> dict:
    """SQuAD EM / F1 (× 100), max over the gold answers of each question.

    v2: a question whose gold answers are empty (or normalise to "") has gold ``[""]``, so only the
    empty prediction is correct; ``HasAns_*`` / ``NoAns_*`` break the scores down. With
    ``no_answer_probs`` (id -> P(no answer)), predictions with probability > ``no_answer_threshold`` count
    as "" (official default 1.0: no change) and ``best_exact``/``best_f1`` with their thresholds are added.
    Every reference id needs a prediction (ValueError otherwise; the official script scores it 0).
    """
    if not references:
        raise ValueError("squad_metrics: no references given")
    missing = [q for q in references if q not in predictions]
    if missing:
        raise ValueError(f"squad_metrics: {len(missing)} of {len(references)} questions have no prediction "
                         f"(e.g. {missing[:3]}); predict every id (use '' for no answer)")
    em, f1, has_ans = {}, {}, {}
    for qid, golds in references.items():
        golds = [golds] if isinstance(golds, str) else list(golds)
        if version_2:
            golds = [g for g in golds if normalize_answer(g)] or [""]
        elif not golds:
            raise ValueError(f"squad_metrics: question {qid!r} has no gold answer; use version_2=True for v2.0")
        has_ans[qid] = golds != [""]
        pred = predictions[qid]
        em[qid] = max(exact_match(pred, g) for g in golds)
        f1[qid] = max(token_f1(pred, g, version_2) for g in golds)
        if no_answer_probs is not None and no_answer_probs[qid] > no_answer_threshold:
            em[qid] = f1[qid] = float(not has_ans[qid])

    def summary(ids, prefix=""):
        n = len(ids)
        return {f"{prefix}exact_match": 100.0 * sum(em[q] for q in ids) / n if n else 0.0,
                f"{prefix}f1": 100.0 * sum(f1[q] for q in ids) / n if n else 0.0, f"{prefix}total": n}

    out = summary(list(references))
    if version_2:
        out.update(summary([q for q in references if has_ans[q]], "HasAns_"))
        out.update(summary([q for q in references if not has_ans[q]], "NoAns_"))
        if no_answer_probs is not None:
            for key, scores in (("exact_match", em), ("f1", f1)):
                out[f"best_{key}"], out[f"best_{key}_thresh"] = _best_threshold(predictions, scores,
                                                                              no_answer_probs, has_ans)
    out["main"] = "f1"
    return out


# ---------------------------------------------------------------- Rouge-L
def rouge_l_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> list[float]:
    """Rouge-L F-measure × 100 of each prediction (``RougeScorer(["rougeL"], use_stemmer=True)``; with several
    references per example, the best one). Raises ValueError on an empty reference, naming its index."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not references:
        raise ValueError(f"rouge_l: {len(predictions)} predictions for {len(references)} references "
                         "(need the same, non-zero number)")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or any(not r or not r.strip() for r in refs):
            raise ValueError(f"rouge_l: reference {i} is empty; Rouge-L needs a reference text "
                             "(drop the example or use the teacher's output as the reference)")
        scores.append(100.0 * max(scorer.score(r, pred or "")["rougeL"].fmeasure for r in refs))
    return scores


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean Rouge-L F-measure × 100 over the examples (:func:`rouge_l_scores`)."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- held-out language-model perplexity
def lm_perplexity(model, windows: Mapping, batch_size: int = 8) -> dict:
    """Held-out cross-entropy (nats per token) and perplexity of a causal LM, token-weighted across windows.

    CE = −(1/N) Σ_windows Σ_{t : y_{t+1} ≠ −100} log p_θ(y_{t+1} | y_{≤t}),  ppl = exp(CE),
    N = the number of scored (shifted) tokens: the model's own shifted LM loss (HF ``ForCausalLMLoss``), summed over
    all windows and divided once — not a mean of per-window means. ``windows``: ``{"input_ids": (W, L), "labels":
    (W, L), "attention_mask": (W, L)}`` (:func:`makd.tasks.wiki.lm_windows`; labels default to input_ids, the mask
    to all ones; other keys are ignored). Evaluated in eval mode (restored after) without gradients, on the
    model's device. Returns ``{"ce": float, "ppl": float, "tokens": int}``.
    """
    import torch
    import torch.nn.functional as F

    if batch_size < 1:
        raise ValueError(f"lm_perplexity: batch_size must be at least 1, got {batch_size}")
    ids = windows["input_ids"]
    labels, mask = windows.get("labels", ids), windows.get("attention_mask")
    if ids.ndim != 2 or len(ids) == 0 or ids.shape[1] < 2:
        raise ValueError(f"lm_perplexity: need windows of shape (W, L) with W >= 1 and L >= 2, got "
                         f"{tuple(ids.shape)}; build them with makd.tasks.wiki.lm_windows")
    device = next(model.parameters()).device
    was_training, total, count = model.training, torch.zeros((), dtype=torch.float64), 0
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                batch = {"input_ids": ids[s:s + batch_size].to(device)}                       # (B, L)
                if mask is not None:
                    batch["attention_mask"] = mask[s:s + batch_size].to(device)               # (B, L)
                logits = model(**batch, use_cache=False).logits[:, :-1].float()             # (B, L-1, V)
                target = labels[s:s + batch_size, 1:].to(device)                              # (B, L-1)
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         ignore_index=-100, reduction="sum").double().cpu()
                count += int((target != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("lm_perplexity: no token to score (every shifted label is -100)")
    ce = float(total) / count
    return {"ce": ce, "ppl": math.exp(ce), "tokens": count}
