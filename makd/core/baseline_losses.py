"""The baselines' losses (TinyBERT, MiniLM): pure functions on tensors, student first like :mod:`makd.core.losses`.

Used by the ``tinybert`` and ``minilm`` presets of :mod:`makd.core.objective` (MiniLM's attention loss is
:func:`makd.core.losses.minilm_attention_kl`, the same as ``attention_kl``); shapes and masks as in
:mod:`makd.core.losses` (``mask`` (B, T), 1 = valid token; half precision upcast to float32).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from makd.core.masking import key_rows, kl_rows, masked_mean, same_shape, upcast, valid_mask, with_grad

__all__ = ["tinybert_attention_mse", "minilm_value_relation_kl"]


def tinybert_attention_mse(scores_student: Tensor, scores_teacher: Tensor, mask=None, key_mask=None) -> Tensor:
    """TinyBERT attention loss: MSE on pre-softmax scores, s ← 0 where s ≤ −1e2 or the key is padding.

    L = 1/(H·N_q) Σ_{h, q valid} mean_{k valid} (s_s − s_t)²  (TinyBERT, Jiao et al. 2020; its code
    averages over all T×T entries, we average per valid row so the padding length does not rescale it).
    scores_*: (B, H, T, T); mask: (B, T) the queries, key_mask: (B, T) the keys (default ``mask``). When only the
    student learns, the gradient is computed with the value
    and is the one (B, H, T, T) tensor kept for backward (:func:`makd.core.masking.with_grad`).
    """
    same_shape(scores_student, scores_teacher, "tinybert_attention_mse")
    if scores_student.dim() != 4:
        raise ValueError(f"tinybert_attention_mse needs (B, H, T, T) scores, got {tuple(scores_student.shape)}")
    B, H, T, _ = scores_student.shape
    valid = valid_mask(mask, (B, T), scores_student.device)                  # (B, T) queries
    key_valid = key_rows(mask, key_mask, (B, T), scores_student.device)       # (B, T) keys
    keys = key_valid[:, None, None, :]                                       # (B, 1, 1, T)
    n_keys = key_valid.sum(-1).clamp_min(1)[:, None, None]                   # (B, 1, 1)
    rows = valid[:, None, :].expand(B, H, T)                                 # (B, H, T) queries in the mean
    if scores_teacher.requires_grad:                                         # both sides learn: plain autograd
        ss, st = upcast(scores_student), upcast(scores_teacher)
        ss = torch.where((ss <= -1e2) | ~keys, torch.zeros_like(ss), ss)      # (B, H, T, T)
        st = torch.where((st <= -1e2) | ~keys, torch.zeros_like(st), st)      # (B, H, T, T)
        return masked_mean(((ss - st) ** 2).sum(-1) / n_keys, rows)
    with torch.no_grad():
        ss, st = upcast(scores_student.detach()), upcast(scores_teacher)
        kept = ~(ss <= -1e2) & keys                                         # (B, H, T, T) where s_s counts
        diff = torch.where(kept, ss, 0.0).sub_(torch.where((st <= -1e2) | ~keys, 0.0, st))   # (B, H, T, T)
        weight = rows / (rows.sum().clamp_min(1) * n_keys)                   # (B, H, T) 1/(H N_q n_k), 0 if padded
        value = (diff.square().sum(-1) * weight).sum()                       # ()
        grad = diff.mul_(kept).mul_(2 * weight[..., None]) if scores_student.requires_grad else None
    return with_grad(scores_student, value, grad)


def _relation_log_probs(v: Tensor, n_heads: int, valid: Tensor) -> Tensor:
    """log softmax(V_h V_hᵀ / sqrt(d_h)) over valid keys: (B, T, D) -> (B, H, T, T)."""
    B, T, D = v.shape
    if n_heads <= 0 or D % n_heads:
        raise ValueError(f"value width {D} is not divisible into {n_heads} relation heads")
    vh = upcast(v).reshape(B, T, n_heads, D // n_heads).transpose(1, 2)      # (B, H, T, d_h)
    rel = vh @ vh.transpose(-1, -2) / math.sqrt(D // n_heads)                # (B, H, T, T)
    rel = rel.masked_fill(~valid[:, None, None, :], torch.finfo(rel.dtype).min)
    return F.log_softmax(rel, dim=-1)                                        # (B, H, T, T)


def minilm_value_relation_kl(v_student: Tensor, v_teacher: Tensor, n_heads_student: int,
                             n_heads_teacher: int | None = None, mask=None, key_mask=None) -> Tensor:
    """MiniLM value-relation loss: KL(VR_t ‖ VR_s), VR = softmax(V_h V_hᵀ / sqrt(d_h)) per relation head.

    Mean over heads and valid queries; padded keys masked before the softmax (Wang et al. 2020/2021).
    v_*: (B, T, D_s) / (B, T, D_t); both use ``n_heads_student`` relation heads unless told otherwise
    (the KL needs the same head count on both sides). mask: (B, T) the queries, key_mask: (B, T) the keys
    (default ``mask``).
    """
    n_t = n_heads_student if n_heads_teacher is None else n_heads_teacher
    if n_t != n_heads_student:
        raise ValueError(f"relation heads differ (student {n_heads_student}, teacher {n_t}); MiniLM uses the "
                         "same number of relation heads on both sides")
    if v_student.shape[:2] != v_teacher.shape[:2] or v_student.dim() != 3:
        raise ValueError(f"values must be (B, T, D) with equal B, T: {tuple(v_student.shape)} vs {tuple(v_teacher.shape)}")
    B, T, _ = v_student.shape
    valid = valid_mask(mask, (B, T), v_student.device)                       # (B, T) queries
    keys = key_rows(mask, key_mask, (B, T), v_student.device)                # (B, T)
    log_ps = _relation_log_probs(v_student, n_heads_student, keys)           # (B, H, T, T)
    log_pt = _relation_log_probs(v_teacher, n_t, keys)                       # (B, H, T, T)
    kl = kl_rows(log_pt, log_ps)                                             # (B, H, T)
    return masked_mean(kl, valid[:, None, :].expand_as(kl))
