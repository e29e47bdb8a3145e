"""Prompts and training features of instruction following for causal LMs: one template per run, loss on the
response only.

The prompt is the tokenizer's chat template when it has one (``auto``; SmolLM2-Instruct has one), else
MiniLLM's Alpaca-style template. :func:`sft_features` tokenises (prompt + response + eos) with labels −100
on the prompt; :class:`CausalCollator` right-pads a batch. Used by :mod:`makd.experiments.decoder_methods`.
"""
from __future__ import annotations

import datasets
import torch

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")


def prompt_text(tokenizer, instruction: str, inp: str = "", template: str = "auto") -> str:
    """The prompt string for one example: the chat template (``auto`` when the tokenizer has one) or ``alpaca``."""
    if template not in ("auto", "chat", "alpaca"):
        raise ValueError(f"template must be 'auto', 'chat' or 'alpaca', got {template!r}")
    use_chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' but the tokenizer has no chat template; use 'alpaca'")
        content = instruction if not inp else f"{instruction}\n\n{inp}"
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    block = f"### Input:\n{inp}\n\n" if inp else ""
    return ALPACA.format(instruction=instruction, input_block=block)


def template_name(tokenizer, template: str) -> str:
    return "chat" if template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None)) \
        else "alpaca"


def sft_features(rows, tokenizer, *, max_length: int = 512, max_prompt_tokens: int = 256,
                 template: str = "auto") -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenised (prompt + response + eos) with labels −100 on the prompt; (dataset, counts of cuts).

    Prompts over ``max_prompt_tokens`` keep their last tokens, sequences over ``max_length`` lose the end of
    the response; both are counted, never silent. Examples with an empty response are dropped (counted)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: a response must end with one")
    feats, counts = [], {"prompt_truncated": 0, "response_truncated": 0, "empty_response_dropped": 0}
    for r in rows:
        if not (r["output"] or "").strip():
            counts["empty_response_dropped"] += 1
            continue
        p = tokenizer(prompt_text(tokenizer, r["instruction"], r.get("input", ""), template),
                      add_special_tokens=False)["input_ids"]
        if len(p) > max_prompt_tokens:
            p, counts["prompt_truncated"] = p[-max_prompt_tokens:], counts["prompt_truncated"] + 1
        a = tokenizer(r["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(p) + len(a) > max_length:
            a, counts["response_truncated"] = a[:max_length - len(p)], counts["response_truncated"] + 1
        feats.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    if not feats:
        raise ValueError("no training example left (all responses empty?)")
    return datasets.Dataset.from_list(feats), counts


class CausalCollator:
    """Right-pad input_ids (pad id), labels (−100) and build the attention mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)       # (B, T)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)          # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)                 # (B, T)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

