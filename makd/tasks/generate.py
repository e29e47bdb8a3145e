"""Generation and Rouge-L evaluation for causal-LM students, with ONE frozen generation config.

MiniLLM's protocol (METHOD.md): sampling with top-p 1.0 and temperature 1.0, at most 512 tokens in total
with prompts of at most 256, Rouge-L (rouge-score, stemmer, F-measure × 100) averaged over 5 seeds. A known
reproduction trap is validation and test using different generation settings (a one-point Rouge-L swing):
here every evaluation takes a :class:`GenerationSettings`, and its ``as_dict()`` is written into every
result, so two numbers with different settings can never be confused. ``GenerationSettings.greedy()`` is
the cheaper deterministic option (one "seed").

Generation is batched with left padding and the KV cache (``model.generate``); prompts longer than
``max_prompt_tokens`` are truncated from the left and COUNTED (the count is part of every result).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from makd.tasks.metrics import rouge_l_scores


@dataclass(frozen=True)
class GenerationSettings:
    """Frozen decoding settings; ``as_dict()`` goes into every result."""
    do_sample: bool = True
    top_p: float = 1.0
    temperature: float = 1.0
    max_prompt_tokens: int = 256
    max_length: int = 512                 # prompt + new tokens (MiniLLM)
    max_new_tokens: int | None = None     # optional tighter cap on new tokens (CPU runs)
    min_new_tokens: int = 0               # suppress end-of-sequence before this many tokens
    seeds: tuple[int, ...] = (10, 20, 30, 40, 50)
    batch_size: int = 8

    def __post_init__(self):
        if self.max_prompt_tokens < 1 or self.max_length <= self.max_prompt_tokens:
            raise ValueError(f"need 1 <= max_prompt_tokens < max_length, got {self.max_prompt_tokens}, "
                             f"{self.max_length}")
        if self.do_sample and not (0 < self.top_p <= 1 and self.temperature > 0):
            raise ValueError(f"sampling needs 0 < top_p <= 1 and temperature > 0, got {self.top_p}, {self.temperature}")
        if not self.seeds:
            raise ValueError("give at least one seed")

    @classmethod
    def greedy(cls, **kw: Any) -> "GenerationSettings":
        return cls(do_sample=False, seeds=(0,), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationSettings":
        return cls(**{**d, "seeds": tuple(d.get("seeds", (0,)))})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}

    def new_tokens(self, prompt_len: int) -> int:
        budget = self.max_length - prompt_len
        return max(1, min(budget, self.max_new_tokens) if self.max_new_tokens else budget)


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids per prompt, each cut to its LAST ``max_prompt_tokens`` tokens; (ids, number truncated)."""
    ids, cut = [], 0
    for p in prompts:
        t = tokenizer(p, add_special_tokens=False)["input_ids"]
        if len(t) > max_prompt_tokens:
            t, cut = t[-max_prompt_tokens:], cut + 1
        ids.append(t)
    return ids, cut


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings, seed: int = 0
             ) -> dict[str, Any]:
    """Batched, left-padded generation with the KV cache: {texts, truncated, new_tokens, seconds, tokens_per_s}."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token")
    ids, truncated = encode_prompts(tokenizer, prompts, settings.max_prompt_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = [""] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))                 # similar lengths batch together
    n_new, started = 0, time.perf_counter()
    torch.manual_seed(seed)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        width = max(len(ids[i]) for i in idx)
        batch = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)   # (b, T) left-padded
        mask = torch.zeros_like(batch)
        for row, i in enumerate(idx):
            batch[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        kw = dict(do_sample=settings.do_sample, max_new_tokens=settings.new_tokens(width),
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                  min_new_tokens=settings.min_new_tokens)
        if settings.do_sample:
            kw.update(top_p=settings.top_p, temperature=settings.temperature, top_k=0)
        out = model.generate(input_ids=batch.to(device), attention_mask=mask.to(device), **kw)[:, width:]
        for row, i in enumerate(idx):
            seq = out[row].tolist()
            if tokenizer.eos_token_id in seq:
                seq = seq[:seq.index(tokenizer.eos_token_id)]
            seq = [t for t in seq if t != tokenizer.pad_token_id]
            n_new += len(seq)
            texts[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    seconds = time.perf_counter() - started
    model.train(was_training)
    return {"texts": texts, "truncated": truncated, "new_tokens": n_new, "seconds": round(seconds, 3),
            "tokens_per_s": n_new / seconds if seconds > 0 else math.nan}


def evaluate_rouge(model, tokenizer, prompts: Sequence[str], references: Sequence[str],
                   settings: GenerationSettings) -> dict[str, Any]:
    """Rouge-L (× 100) of the generations against ``references``, mean ± std over ``settings.seeds``; the first
    seed's per-prompt scores (``rougeL_per_prompt``, for paired tests over prompts) and texts (``outputs``)."""
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts for {len(references)} references")
    empty = [i for i, r in enumerate(references) if not r or not r.strip()]
    if empty:
        raise ValueError(f"references {empty[:5]} are empty: Rouge-L needs a reference for every prompt "
                         "(drop them, or use the teacher's answers as references and say so)")
    per_prompt, runs = [], []
    for seed in settings.seeds:
        g = generate(model, tokenizer, prompts, settings, seed=seed)
        per_prompt.append(rouge_l_scores(g["texts"], references))
        runs.append(g)
    scores = [float(np.mean(p)) for p in per_prompt]
    return {"rougeL": float(np.mean(scores)), "rougeL_std": float(np.std(scores)), "rougeL_per_seed": scores,
            "rougeL_per_prompt": [round(x, 4) for x in per_prompt[0]], "outputs": runs[0]["texts"],
            "n": len(prompts), "truncated_prompts": runs[0]["truncated"],
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs])),
            "examples": [{"prompt": p, "reference": r, "output": o}
                         for p, r, o in list(zip(prompts, references, runs[0]["texts"]))[:3]],
            "generation": settings.as_dict()}
