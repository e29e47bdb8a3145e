"""The losses of the subquadratic study (arXiv 2504.14366, MOHAWK-style stages): pure functions, student first.

* stage 1, matrix mixing — :func:`matrix_mixing_loss`: the student mixer's materialised token-mixing matrix M vs
  the teacher's softmax attention probabilities A of the same layer (squared Frobenius error per query row,
  averaged over heads and valid query rows);
* stage 2, hidden-state alignment — :func:`hidden_alignment_loss`: a student block's output vs the teacher
  block's output on the same (teacher) input, the study's per-token L2 norm of the difference, or the MSE;
* stage 3, end-to-end KD — :func:`token_kl`: KL(teacher ‖ student) of the next-token distributions per token.

Every function takes the STUDENT's tensor first and the teacher's second, and a padding mask ``mask`` (B, T)
(1/True = valid token, bool/int/float, None = all valid); padded positions never change a loss. Half precision
is upcast to float32. Used by :mod:`makd.students.stages`; walk-through: notebook ``11_subquadratic``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from makd.core.masking import kl_rows, same_shape, upcast, valid_mask

__all__ = ["matrix_mixing_loss", "hidden_alignment_loss", "token_kl", "HIDDEN_KINDS", "KL_REDUCTIONS"]

HIDDEN_KINDS = ("l2", "mse")
KL_REDUCTIONS = ("mean", "sum")


def matrix_mixing_loss(student_m: Tensor, teacher_a: Tensor, mask=None) -> Tensor:
    """Matrix mixing (stage 1): squared Frobenius error of the mixing matrices, per head and valid query row::

        L = 1 / (H · N) · Σ_b Σ_h Σ_{i valid} Σ_{j valid} (M_bhij − A_bhij)²,   N = Σ_b #valid query rows of b

    i.e. the mean over heads and valid query rows of ‖M_i − A_i‖² (a row's squared L2 error over its valid key
    positions); padded query rows and padded key columns are left out. student_m, teacher_a: (B, H, T, T), M
    with output = M · V per head (:meth:`makd.students.mixers.base.Mixer.mixing_matrix`), A the teacher's
    attention PROBABILITIES (post-softmax: ``output_attentions=True``); mask: (B, T). MOHAWK's stage 1 uses the
    Frobenius norm of M − A; the study reports an MSE: this is the squared form, scaled per row, so that it
    does not grow with T² (a row holds at most T terms, each (M_ij − A_ij)² with |A_ij| ≤ 1).
    """
    same_shape(student_m, teacher_a, "matrix_mixing_loss")
    if student_m.dim() != 4 or student_m.shape[-1] != student_m.shape[-2]:
        raise ValueError(f"matrix_mixing_loss needs (B, H, T, T) matrices, got {tuple(student_m.shape)}")
    b, h, t, _ = student_m.shape
    m, a = upcast(student_m), upcast(teacher_a)
    valid = valid_mask(mask, (b, t), m.device)                                # (B, T)
    pair = (valid[:, :, None] & valid[:, None, :])[:, None]                  # (B, 1, T, T): query i, key j valid
    sq = torch.where(pair, (m - a) ** 2, torch.zeros_like(m))               # (B, H, T, T)
    return sq.sum() / (h * valid.sum().clamp_min(1))


def hidden_alignment_loss(student_h: Tensor, teacher_h: Tensor, mask=None, kind: str = "l2") -> Tensor:
    """Hidden-state alignment (stage 2), over the N valid tokens (b, t) of student_h, teacher_h (B, T, D)::

        kind="l2":  L = 1/N · Σ_{b,t valid} ‖s_bt − h_bt‖₂        (the study's per-token L2 norm, not squared)
        kind="mse": L = 1/(N·D) · Σ_{b,t valid} Σ_d (s_btd − h_btd)²

    The L2 form weighs every token alike whatever its error's size (a norm, not its square), as MOHAWK's stage 2;
    the MSE is the squared form used by the MaKD hidden aspect (:func:`makd.core.losses.hidden_mse`).
    """
    same_shape(student_h, teacher_h, "hidden_alignment_loss")
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HIDDEN_KINDS)}, got {kind!r}")
    if student_h.dim() != 3:
        raise ValueError(f"hidden_alignment_loss needs (B, T, D) hidden states, got {tuple(student_h.shape)}")
    s, t = upcast(student_h), upcast(teacher_h)
    valid = valid_mask(mask, s.shape[:2], s.device)                          # (B, T)
    diff = torch.where(valid[..., None], s - t, torch.zeros_like(s))         # (B, T, D)
    n = valid.sum().clamp_min(1)
    if kind == "mse":
        return (diff ** 2).sum() / (n * s.shape[-1])
    sq = (diff ** 2).sum(-1)                                                 # (B, T)
    # ‖x‖'s gradient at x = 0 is NaN (x / ‖x‖): an exactly matched token gives 0 with a 0 gradient
    norm = torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))   # (B, T)
    return norm.sum() / n


def token_kl(student_logits: Tensor, teacher_logits: Tensor, mask=None, temperature: float = 1.0,
             reduction: str = "mean") -> Tensor:
    """End-to-end KD (stage 3): KL(p_t ‖ p_s) of the next-token distributions at every valid position, τ²-scaled::

        KL_bt = Σ_v p_t(v) (log p_t(v) − log p_s(v)),  p = softmax(logits_bt / τ)        logits: (B, T, V)
        reduction="mean": L = τ² / N · Σ_{b,t valid} KL_bt        (N valid tokens: our default)
        reduction="sum":  L = τ² / B · Σ_{b,t valid} KL_bt        (summed over positions, averaged over sequences:
                                                                   the study's code)

    Why the mean by default: it is on the scale of the cross-entropy it is added to (a per-token mean too), so the
    balance of CE and KL and the learning rate do not change with the block length; the sum is the mean times N / B,
    the valid tokens per sequence (T without padding). Logits of every position are compared (position
    t predicts token t+1 in both models; no shift is needed between them).
    """
    same_shape(student_logits, teacher_logits, "token_kl")
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() != 3:
        raise ValueError(f"token_kl needs (B, T, V) logits, got {tuple(student_logits.shape)}")
    log_ps = F.log_softmax(upcast(student_logits) / temperature, dim=-1)     # (B, T, V)
    log_pt = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)     # (B, T, V)
    valid = valid_mask(mask, log_ps.shape[:2], log_ps.device)                # (B, T)
    kl = torch.where(valid, kl_rows(log_pt, log_ps), torch.zeros_like(log_ps[..., 0]))   # (B, T)
    denom = valid.sum().clamp_min(1) if reduction == "mean" else log_ps.shape[0]
    return temperature ** 2 * kl.sum() / denom
