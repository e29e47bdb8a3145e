"""Pass-key retrieval: a long-context probe generated procedurally (Mohtashami & Jaggi, Landmark Attention, 2023;
the probe on which v3 of arXiv 2504.14366 separates the subquadratic mixers).

A prompt is, token for token (each piece tokenised alone with ``add_special_tokens=False``, the pieces' ids
concatenated; the tokenizer's BOS first if it adds one by default):

    INTRO  + FILLER[:k]  + " The pass key is 12345. Remember it. 12345 is the pass key."  + FILLER[k:k+m]  + QUESTION

FILLER is the token stream of " The grass is green. The sky is blue. The sun is yellow. Here we go. There and
back again." repeated (each of its 5 sentences tokenised alone, so every sentence starts on a known token);
QUESTION is " What is the pass key? The pass key is". The filler budget F = context − (every other piece) makes
the prompt EXACTLY ``context`` tokens (the filler before the question may end mid-sentence); the key sentence
goes after k filler tokens, k = the sentence start (or F) nearest to depth · F (ties: the earlier), so it sits
between whole sentences, at most half a filler sentence (≤ 3 tokens with SmolLM2's tokenizer) from the exact
depth — depth 0: right after the intro, depth 1: right before the question — and m = F − k. The keys of a cell are
``n`` random 5-digit numbers drawn from ``numpy.random.default_rng((seed, context, round(depth·10⁶)))``: a cell
gives the same keys whatever the other cells are. The raw prompt is used (no chat template), as for the base
models of the study.

Scoring: greedy decoding (``model.generate``, ``do_sample=False``) of :data:`MAX_NEW_TOKENS` tokens; a sample is
right when the first run of digits in the decoded answer equals the key exactly. Measured (SmolLM2-135M-Instruct,
seed 0, 4 keys per cell): depths 0 and 0.5 all right at 256 and 1,024 tokens; depth 1 none — with the key sentence
right before the question it answers " the pass key. The pass key is …" (it continues the pattern, no digits).

Context limit: a model with position embeddings (a Llama teacher's ``config.max_position_embeddings``, GPT-2's
``n_positions``) must fit ``context + MAX_NEW_TOKENS`` positions or :func:`passkey_accuracy` raises before any
generation. The subquadratic students (a config with a ``mixer``) carry position through their recurrence and
have no hard limit: any context is allowed (how well they extrapolate is what the probe measures).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
MAX_NEW_TOKENS = 10
_DIGITS = re.compile(r"\d+")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer puts it first by default (Llama 2), else [] (SmolLM2, GPT-2)."""
    bos = tokenizer.bos_token_id
    first = tokenizer("x")["input_ids"][:1]
    return [bos] if bos is not None and first == [bos] else []


def filler_tokens(tokenizer, n: int) -> tuple[list[int], list[int]]:
    """At least ``n`` filler tokens and the index of every sentence start in them (0 included)."""
    sentences = [_encode(tokenizer, " " + x.strip() + ".") for x in FILLER.split(".") if x.strip()]
    ids, starts = [], []
    while len(ids) < n or not starts:
        for sentence in sentences:
            starts.append(len(ids))
            ids += sentence
    return ids, starts


def passkey_prompt(tokenizer, context: int, depth: float, key: str) -> tuple[list[int], int]:
    """The token ids of one prompt of exactly ``context`` tokens with ``key`` at ``depth`` (module docstring), and
    the index of the first token of the key sentence."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey: depth must be a fraction in [0, 1], got {depth}")
    head = _bos(tokenizer) + _encode(tokenizer, INTRO)
    needle, tail = _encode(tokenizer, KEY_SENTENCE.format(key=key)), _encode(tokenizer, QUESTION)
    budget = context - len(head) - len(needle) - len(tail)
    if budget < 0:
        raise ValueError(f"passkey: a context of {context} tokens is too short for this tokenizer: the intro, key "
                         f"sentence and question alone take {context - budget}; use a longer context")
    filler, starts = filler_tokens(tokenizer, budget)
    k = min([b for b in starts if b <= budget] + [budget], key=lambda b: (abs(b - depth * budget), b))
    ids = head + filler[:k] + needle + filler[k:budget] + tail
    assert len(ids) == context
    return ids, len(head) + k


def passkey_prompts(tokenizer, context: int, depth: float, n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` prompts of one cell: input ids (n, context) and their 5-digit keys (seeded, module docstring)."""
    rng = np.random.default_rng((seed, context, int(round(depth * 1e6))))
    keys = [str(k) for k in rng.integers(10_000, 100_000, size=n)]
    rows = [passkey_prompt(tokenizer, context, depth, key)[0] for key in keys]
    return torch.tensor(rows, dtype=torch.long).reshape(n, context), keys


def max_positions(model) -> int | None:
    """The most positions ``model`` can take, or None: no hard limit (a subquadratic student, or a config
    without position table)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "mixer", None) is not None:
        return None
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def answer_matches(text: str, key: str) -> bool:
    """True when the first run of digits in the decoded answer is exactly the key."""
    found = _DIGITS.search(text)
    return found is not None and found.group() == key


def _check(model, contexts: Sequence[int], depths: Sequence[float], n_per_cell: int, batch_size: int) -> None:
    if not contexts or not depths:
        raise ValueError("passkey: give at least one context length and one depth")
    if any(not isinstance(c, int) or c < 1 for c in contexts):
        raise ValueError(f"passkey: contexts must be positive token counts, got {list(contexts)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"passkey: depths must be fractions in [0, 1], got {list(depths)}")
    if not isinstance(n_per_cell, int) or n_per_cell < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"passkey: n_per_cell and batch_size must be positive ints, got {n_per_cell!r}, "
                         f"{batch_size!r}")
    limit = max_positions(model)
    if limit is not None and max(contexts) + MAX_NEW_TOKENS > limit:
        raise ValueError(f"passkey: a context of {max(contexts)} tokens plus {MAX_NEW_TOKENS} generated exceeds "
                         f"this model's {limit} positions (config.max_position_embeddings); use contexts up to "
                         f"{limit - MAX_NEW_TOKENS} (subquadratic students have no such limit)")


def passkey_accuracy(model, tokenizer, *, contexts: Sequence[int], depths: Sequence[float], n_per_cell: int,
                     seed: int = 0, batch_size: int = 1) -> dict:
    """Pass-key retrieval accuracy per (context, depth) cell and overall (the mean over all samples).

    Every prompt of a cell has exactly ``context`` tokens, so a batch needs no padding. Returns
    ``{"cells": [{"context", "depth", "accuracy", "n"}], "accuracy": float}``; the model is put in eval mode
    (restored after). Raises ValueError (before any generation) for a context beyond the model's positions.
    """
    _check(model, contexts, depths, n_per_cell, batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training, cells, right = model.training, [], 0
    model.eval()
    try:
        for context in contexts:
            for depth in depths:
                ids, keys = passkey_prompts(tokenizer, context, depth, n_per_cell, seed)
                hits = 0
                for s in range(0, n_per_cell, batch_size):
                    batch = ids[s:s + batch_size].to(device)                              # (B, context)
                    with torch.no_grad():
                        out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False,
                                             max_new_tokens=MAX_NEW_TOKENS, pad_token_id=pad)
                    answers = tokenizer.batch_decode(out[:, context:], skip_special_tokens=True)
                    hits += sum(answer_matches(a, k) for a, k in zip(answers, keys[s:s + batch_size]))
                cells.append({"context": context, "depth": float(depth), "accuracy": hits / n_per_cell,
                              "n": n_per_cell})
                right += hits
    finally:
        model.train(was_training)
    return {"cells": cells, "accuracy": right / (n_per_cell * len(cells))}
