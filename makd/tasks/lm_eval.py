"""A causal LM and its teacher on held-out text: cross-entropy, perplexity, KL to the teacher, top-1 agreement.

Model-agnostic: any transformers causal LM whose forward takes ``input_ids`` / ``attention_mask`` and returns
``.logits`` (B, T, V) — a Llama teacher, its SVD students, the subquadratic students of
:mod:`makd.students.subquadratic`. Blocks are ``{"input_ids": (N, T), "attention_mask": (N, T)}`` (e.g.
:func:`makd.tasks.wiki.heldout_windows`; an optional ``labels`` (N, T) marks tokens not to score with −100).

Scored positions: position t predicts token t+1 and counts when both t and t+1 are real tokens (mask 1) and
``labels[t+1] != -100``; the N below is the number of such (shifted) tokens over ALL blocks, and every metric is
a token-weighted mean (sums accumulated in float64, divided once), not a mean of per-block means:

    CE    = −(1/N) Σ log p_S(y_{t+1} | y_≤t)                         (nats per token; ppl = exp(CE))
    KL    =  (1/N) Σ Σ_v p_T(v | y_≤t) · (log p_T(v | y_≤t) − log p_S(v | y_≤t))   KL(teacher ‖ model) per token
    top1  =  (1/N) Σ [argmax_v p_S(v | y_≤t) = argmax_v p_T(v | y_≤t)]

Padding: a padded position is never scored; right padding leaves causal models' real positions unchanged, and a
batch with LEFT padding is given ``position_ids = cumsum(mask) − 1`` so a left-padded row sees the positions of its
unpadded copy (it matters for absolute positions, GPT-2; rotary attention is shift-invariant; the mixer students
take their position from the recurrence and ignore them).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _logits(model, ids: torch.Tensor, mask: torch.Tensor, left_padded: bool) -> torch.Tensor:
    """(B, T, V) float32 logits of ``model`` (run on its own device), moved to the device of ``ids``."""
    dev = _device(model)
    kwargs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "use_cache": False}
    if left_padded:
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0).to(dev)     # (B, T)
    return model(**kwargs).logits.float().to(ids.device)


def _check_blocks(blocks: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(blocks, Mapping) or "input_ids" not in blocks:
        raise ValueError("evaluate_lm: blocks must be a dict with 'input_ids' (N, T) and 'attention_mask' (N, T) "
                         "(e.g. makd.tasks.wiki.heldout_windows)")
    ids = torch.as_tensor(blocks["input_ids"])
    if ids.ndim != 2 or len(ids) == 0 or ids.shape[1] < 2:
        raise ValueError(f"evaluate_lm: need input_ids of shape (N, T) with N >= 1 and T >= 2, got {tuple(ids.shape)}")
    mask = blocks.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    labels = blocks.get("labels")
    labels = ids if labels is None else torch.as_tensor(labels)
    for name, t in (("attention_mask", mask), ("labels", labels)):
        if t.shape != ids.shape:
            raise ValueError(f"evaluate_lm: {name} has shape {tuple(t.shape)}, input_ids {tuple(ids.shape)}")
    return ids, mask, labels


def evaluate_lm(model, teacher, blocks: Mapping, batch_size: int = 8, per_block: bool = False) -> dict:
    """Held-out next-token CE and perplexity of ``model``; with a ``teacher``, also KL(teacher ‖ model) per token and
    top-1 next-token agreement (formulas in the module docstring). Both models run in eval mode (restored after),
    without gradients, each on its own device, ``batch_size`` blocks at a time.

    Returns ``{"ce", "ppl", "kl", "top1", "tokens"}``; with ``teacher=None``, ``{"ce", "ppl", "tokens"}``. With
    ``per_block``, also ``"blocks"``: per block the scored tokens and the sums behind the means (``tokens``,
    ``ce_sum``, and with a teacher ``kl_sum``, ``agree``: lists of length N), so an interval can resample blocks.
    Raises ValueError for malformed blocks, no token to score, or a teacher whose vocabulary (logit width) differs.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluate_lm: batch_size must be a positive int, got {batch_size!r}")
    ids, mask, labels = _check_blocks(blocks)
    models = [m for m in (model, teacher) if m is not None]
    modes = [m.training for m in models]
    ce_sum = kl_sum = agree = torch.zeros((), dtype=torch.float64)
    count = 0
    rows: dict[str, list] = {"tokens": [], "ce_sum": [], "kl_sum": [], "agree": []}
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                b_ids, b_mask, b_lab = ids[s:s + batch_size], mask[s:s + batch_size], labels[s:s + batch_size]
                left = bool((b_mask[:, 1:] > b_mask[:, :-1]).any())        # a 0 followed by a 1: left padding
                valid = (b_mask[:, :-1] > 0) & (b_mask[:, 1:] > 0) & (b_lab[:, 1:] != -100)   # (B, T-1)
                n = int(valid.sum())
                row = valid.nonzero()[:, 0]                                                    # (n,) block of each
                if per_block:
                    rows["tokens"] += valid.sum(1).tolist()
                    if n == 0:
                        for key in ("ce_sum", "kl_sum", "agree"):
                            rows[key] += [0.0] * len(b_ids)
                if n == 0:
                    continue
                logp = F.log_softmax(_logits(model, b_ids, b_mask, left)[:, :-1][valid], -1)   # (n, V)
                target = b_lab[:, 1:][valid]                                                   # (n,)
                tok_ce = -logp.gather(1, target[:, None])[:, 0].double()                        # (n,)
                ce_sum = ce_sum + tok_ce.sum()
                if per_block:
                    rows["ce_sum"] += _by_row(tok_ce, row, len(b_ids))
                if teacher is not None:
                    t_logp = F.log_softmax(_logits(teacher, b_ids, b_mask, left)[:, :-1][valid], -1)  # (n, V)
                    if t_logp.shape[-1] != logp.shape[-1]:
                        raise ValueError(f"evaluate_lm: the teacher predicts {t_logp.shape[-1]} tokens, the model "
                                         f"{logp.shape[-1]}: KL needs one vocabulary (check padded embeddings)")
                    tok_kl = (t_logp.exp() * (t_logp - logp)).sum(-1).double()                   # (n,)
                    tok_agree = (t_logp.argmax(-1) == logp.argmax(-1)).double()                  # (n,)
                    kl_sum, agree = kl_sum + tok_kl.sum(), agree + tok_agree.sum()
                    if per_block:
                        rows["kl_sum"] += _by_row(tok_kl, row, len(b_ids))
                        rows["agree"] += _by_row(tok_agree, row, len(b_ids))
                count += n
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if count == 0:
        raise ValueError("evaluate_lm: no token to score (every block is padding or labelled -100)")
    ce = float(ce_sum) / count
    out = {"ce": ce, "ppl": math.exp(ce), "tokens": count}
    if teacher is not None:
        out["kl"] = float(kl_sum) / count
        out["top1"] = float(agree) / count
    if per_block:
        out["blocks"] = {k: v for k, v in rows.items() if teacher is not None or k in ("tokens", "ce_sum")}
    return out


def _by_row(values: torch.Tensor, row: torch.Tensor, n_rows: int) -> list[float]:
    """Sums of per-token ``values`` (n,) by the block ``row`` (n,) each belongs to, as a list of ``n_rows``."""
    return torch.zeros(n_rows, dtype=torch.float64).index_add_(0, row, values).tolist()
