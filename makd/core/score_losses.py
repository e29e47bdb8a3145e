"""The attention KL on pre-softmax scores: what the objective's ``attn`` aspect computes, one layer at a time.

:func:`attention_kl_scores` is :func:`makd.core.losses.attention_kl` (same value, same masking) taken from the
scores S = q kᵀ · s + M that :meth:`makd.core.capture.Captured.attention_scores` recomputes from the captured q and
k: log P = log_softmax(S) (no log of a clamped probability), and, when only the student learns, its gradient is
computed in the same pass (:func:`makd.core.masking.with_grad`), so the one (B, H, T, T) tensor a layer keeps for
backward is that gradient. Student first, ``mask`` (B, T) with 1 = valid token, half precision upcast to float32.
Walk-through: notebook ``02_attention_distillation``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from makd.core.masking import key_rows, masked_mean, same_shape, upcast, valid_mask, with_grad

__all__ = ["attention_kl_scores"]

BLOCK = 1 << 20   # scores (b·H·T·T) per block of examples: the temporaries of a block stay ~4 MiB each (float32)


def attention_kl_scores(scores_student: Tensor, scores_teacher: Tensor, mask=None, key_mask=None) -> Tensor:
    """:func:`attention_kl` from pre-softmax scores: the same loss, with log P = log_softmax(S) instead of log P.

    KL(teacher ‖ student) = 1/(H·N_q) Σ_{h, q valid} Σ_{k valid} p_t (log p_t − log p_s), p = softmax(S) (keys);
    with log p = S − LSE(S) a row is Σ_k p_t (S_t − S_s) − (LSE_t − LSE_s) Σ_k p_t: no log of a (clamped)
    probability, and the row constant LSE_t − LSE_s is formed in float64 from the row maxima and sums, as
    accurate as the probability form where p_t ≈ p_s (plain log-softmax differences lose ~log T ulps there).
    S: (B, H, T, T) FINITE scores with the additive mask in them (dtype-min, as
    :meth:`makd.core.capture.Captured.attention_scores` builds them), the student's first; mask: (B, T) the queries,
    key_mask: (B, T) the keys (default ``mask``; see :func:`makd.core.losses.attention_kl`). When
    only the student needs a gradient, it is computed in the same pass (w_q (p_s Σ_k p_t − p_t), w_q the query's
    weight in the mean) and is the only (B, H, T, T) tensor kept for backward.
    """
    same_shape(scores_student, scores_teacher, "attention_kl_scores")
    if scores_teacher.dim() != 4 or scores_teacher.shape[-1] != scores_teacher.shape[-2]:
        raise ValueError(f"attention_kl_scores needs (B, H, T, T) scores, got {tuple(scores_teacher.shape)}")
    B, H, T, _ = scores_teacher.shape
    valid = None if mask is None else valid_mask(mask, (B, T), scores_teacher.device)   # (B, T) queries
    keys = None if mask is None and key_mask is None else key_rows(mask, key_mask, (B, T), scores_teacher.device)
    if scores_teacher.requires_grad:                                         # both sides learn: plain autograd
        log_pt = F.log_softmax(upcast(scores_teacher), -1)
        log_ps = F.log_softmax(upcast(scores_student), -1)                   # (B, H, T, T)
        term = torch.where(log_pt.exp() > 0, log_pt.exp() * (log_pt - log_ps), 0.0)
        kl = (term if keys is None else torch.where(keys[:, None, None, :], term, 0.0)).sum(-1)   # (B, H, T)
        return kl.mean() if valid is None else masked_mean(kl, valid[:, None, :].expand_as(kl))
    with torch.no_grad():
        st, ss = upcast(scores_teacher), upcast(scores_student.detach())    # (B, H, T, T)
        if valid is None:
            weight = torch.full((B, H, T), 1.0 / (B * H * T), dtype=torch.float64, device=st.device)
        else:
            rows = valid[:, None, :].expand(B, H, T)                         # (B, H, T) queries in the mean
            weight = (rows / rows.sum().clamp_min(1)).double()              # (B, H, T) 0 for padded queries
        need_grad = scores_student.requires_grad
        grad = torch.empty_like(ss) if need_grad else None                  # (B, H, T, T)
        kl = torch.empty(B, H, T, dtype=torch.float64, device=st.device)    # (B, H, T) per query
        step = max(1, BLOCK // (H * T * T))
        for b in range(0, B, step):                                          # blocks of examples: small temporaries
            r = slice(b, b + step)
            kl[r] = _kl_block(st[r], ss[r], None if keys is None else keys[r],
                              grad[r] if need_grad else None, weight[r])
        value = (kl * weight).sum().to(st.dtype)                             # ()
    return with_grad(scores_student, value, grad)


def _kl_block(st: Tensor, ss: Tensor, keys: Tensor | None, grad: Tensor | None, weight: Tensor) -> Tensor:
    """KL rows (b, H, T), float64, of one block of examples (``keys`` (b, T): the keys summed over); fills ``grad``
    (b, H, T, T): w_q (p_s Σ p_t − p_t)."""
    m_t, m_s = st.amax(-1, keepdim=True), ss.amax(-1, keepdim=True)         # (b, H, T, 1) row maxima
    p_t = torch.sub(st, m_t).exp_()                                          # (b, H, T, T) exp(S_t − m_t)
    sum_t = p_t.sum(-1, keepdim=True)                                        # (b, H, T, 1)
    p_t.div_(sum_t)                                                          # (b, H, T, T) p_t
    e_s = torch.sub(ss, m_s, out=grad) if grad is not None else torch.sub(ss, m_s)
    sum_s = e_s.exp_().sum(-1, keepdim=True)                                 # (b, H, T, 1) Σ exp(S_s − m_s)
    if keys is not None:
        p_t.masked_fill_(~keys[:, None, None, :], 0.0)                      # padded keys leave the sum
    mass = p_t.sum(-1).double()                                              # (b, H, T) Σ_k p_t (1 unless padded)
    cross = torch.linalg.vecdot(p_t, torch.sub(st, ss)).double()            # (b, H, T) Σ_k p_t (S_t − S_s)
    lse = (m_t.double() - m_s.double() + (sum_t.double() / sum_s.double()).log()).squeeze(-1)  # LSE_t − LSE_s
    if grad is not None:                                                     # in place: grad holds exp(S_s − m_s)
        grad.div_(sum_s).mul_(mass[..., None].to(grad.dtype)).sub_(p_t).mul_(weight[..., None].to(grad.dtype))
    return cross - lse * mass                                                # (b, H, T)
