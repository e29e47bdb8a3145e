"""Zero-shot classification of a causal LM by label-word likelihood (no training, no demonstrations).

For each example and each label c, the score is the SUM of the log-probabilities of the label word's tokens after
the prompt, log p(w_c | prompt) = Σ_j log p(w_c,j | prompt, w_c,<j); the prediction is the argmax over labels
(lm-evaluation-harness's ``acc``; a multi-token word is not length-normalised). Prompt ids: the prompt tokenised with
the tokenizer's default special tokens (its BOS where it adds one); label-word ids: the word tokenised alone
(``add_special_tokens=False``); the two concatenated. A prompt that would not fit the model's positions is cut
from the LEFT (the question at its end is kept) and counted in ``"truncated"``.

The prompts and label words are lm-evaluation-harness's GLUE templates (one each, stated in every result):

==============  ===========================================================================  ====================
task            prompt                                                                        label words (label order)
==============  ===========================================================================  ====================
rt-polarity     ``{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:``     " negative", " positive"
sst2            the same                                                                      the same
rte             ``{sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer:``                " True", " False"
mrpc            ``Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nQuestion: Do both           " no", " yes"
                sentences mean the same thing?\\nAnswer:``
qnli            ``{question}\\n{sentence}\\nQuestion: Does this response answer the               " yes", " no"
                question?\\nAnswer:``
==============  ===========================================================================  ====================

Data: :func:`makd.tasks.glue.load_task` — rt-polarity from the embedded Rotten Tomatoes snippets (the package's
SST-2 PROXY, not SST-2), the GLUE tasks from the dev TSVs of a data folder (``data_dir`` / ``$MAKD_DATA_DIR``,
else the hub); at most ``max_examples`` dev rows, drawn with seed 0 (file order kept).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from makd.tasks.glue import load_task

_SENTIMENT = ("{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
              {"negative": " negative", "positive": " positive"})
# task: (prompt template over the hub's fields, {label name in the hub's label order: label word})
TEMPLATES = {
    "rt-polarity": _SENTIMENT,
    "sst2": _SENTIMENT,
    "rte": ("{sentence1}\nQuestion: {sentence2} True or False?\nAnswer:",
            {"entailment": " True", "not_entailment": " False"}),
    "mrpc": ("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both sentences mean the same thing?"
             "\nAnswer:", {"not_equivalent": " no", "equivalent": " yes"}),
    "qnli": ("{question}\n{sentence}\nQuestion: Does this response answer the question?\nAnswer:",
             {"entailment": " yes", "not_entailment": " no"}),
}
TASKS = tuple(TEMPLATES)


def _limit(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "mixer", None) is not None:      # subquadratic students: no position table
        return None
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return value if isinstance(value, int) else None


def encode_choices(tokenizer, prompt: str, words, limit: int | None = None) -> tuple[list[int], list[list[int]], bool]:
    """(prompt ids, label-word ids per label, truncated?) — the prompt cut from the left to fit ``limit``."""
    context = list(tokenizer(prompt, verbose=False)["input_ids"])
    targets = [list(tokenizer(w, add_special_tokens=False, verbose=False)["input_ids"]) for w in words]
    if any(not t for t in targets):
        raise ValueError(f"zero_shot: a label word of {list(words)} gives no token with this tokenizer")
    room = None if limit is None else limit - max(map(len, targets))
    if room is not None and room < 1:
        raise ValueError(f"zero_shot: the label words take {max(map(len, targets))} of the model's {limit} positions")
    cut = room is not None and len(context) > room
    return (context[len(context) - room:] if cut else context), targets, cut


def choice_logprobs(model, rows: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Σ_j log p(target_j | context, target_<j) for each (context ids, target ids) row, in one right-padded batch
    (right padding leaves a causal model's real positions unchanged). Returns (len(rows),) float64."""
    seqs = [c + t for c, t in rows]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)                       # (R, L)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # (R, L, V)
    out = torch.empty(len(rows), dtype=torch.float64)
    for i, (c, t) in enumerate(rows):
        logp = F.log_softmax(logits[i, len(c) - 1:len(c) + len(t) - 1].float(), -1)       # (len(t), V)
        out[i] = logp.gather(1, torch.tensor(t, device=logp.device)[:, None]).double().sum().cpu()
    return out


def zero_shot(model, tokenizer, task: str, *, data_dir=None, max_examples: int | None = 200,
              batch_size: int = 8) -> dict:
    """Zero-shot accuracy of a causal LM on ``task`` (one of :data:`TASKS`) by label-word likelihood.

    Returns ``{"task", "accuracy", "n", "prompt", "label_words", "zero_shot": True, "source", "truncated"}``
    (``label_words``: label name -> word, in label order; ``source``: where the dev rows came from). The model runs
    in eval mode (restored after) without gradients, ``batch_size`` examples (× labels sequences) per forward.
    """
    if task not in TEMPLATES:
        raise ValueError(f"zero_shot: unknown task {task!r}; expected one of {TASKS}")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"zero_shot: max_examples must be a positive int or None, got {max_examples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"zero_shot: batch_size must be a positive int, got {batch_size!r}")
    template, label_words = TEMPLATES[task]
    data = load_task(task, "embedded" if task == "rt-polarity" else "auto", data_dir, max_dev=max_examples, seed=0)
    if list(label_words) != list(data.label_names):          # the label-order trap: fail, never mis-score
        raise ValueError(f"zero_shot: {task} labels are {data.label_names}, the template expects {list(label_words)}")
    words, limit = list(label_words.values()), _limit(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    examples = [(template.format(**{f: row[f] for f in data.text_fields}), int(row["label"])) for row in data.dev]
    correct = truncated = 0
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(examples), batch_size):
            rows, chunk = [], examples[s:s + batch_size]
            for prompt, _ in chunk:
                context, targets, cut = encode_choices(tokenizer, prompt, words, limit)
                truncated += cut
                rows += [(context, t) for t in targets]
            with torch.no_grad():
                scores = choice_logprobs(model, rows, pad).view(len(chunk), len(words))     # (B, C)
            correct += sum(int(p) == y for p, (_, y) in zip(scores.argmax(-1).tolist(), chunk))
    finally:
        model.train(was_training)
    return {"task": task, "accuracy": correct / len(examples), "n": len(examples), "prompt": template,
            "label_words": dict(label_words), "zero_shot": True, "source": data.source, "truncated": truncated}
