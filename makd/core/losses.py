"""The MaKD aspect losses: pure functions on tensors, student first, ``loss(student, teacher, ...)``.

Granularities of MaKD (arXiv 2604.03110) — the paper's exact formulas are not public, see
``docs/METHOD.md``; every choice below marked *reconstructed default* is ours. Walk-throughs, one notebook
per level:

* matrix  — :func:`matrix_mha_loss`, :func:`matrix_ffn_loss` (MSE of each factorised matrix output;
  notebook ``04_matrix_distillation``)
* layer   — :func:`attention_kl` (KL on attention probabilities; ``02_attention_distillation``),
  :func:`hidden_mse` (``03_hidden_state_distillation``)
* model   — :func:`logit_kd`, :func:`prediction_loss`, :func:`causal_lm_kd` (``05_model_distillation``)
* baselines — :func:`minilm_attention_kl` (= attention_kl); TinyBERT's attention MSE and MiniLM's value
  relation live in :mod:`makd.core.baseline_losses` (re-exported here)
* the attention KL on pre-softmax scores, as the objective computes it (log-softmax, one layer at a time):
  :func:`attention_kl_scores` in :mod:`makd.core.score_losses` (re-exported here)

Every loss takes the STUDENT's tensor first and the teacher's second (KL is asymmetric: the order is the
same in every function, whichever direction the KL runs), and a padding mask ``mask`` (B, T) (1/True =
valid token; bool, int or float); padded positions never change a loss and averages run over valid
positions only. For causal LMs pass the product of the padding and response masks. Half-precision inputs
are upcast to float32 inside the losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from makd.core.baseline_losses import minilm_value_relation_kl, tinybert_attention_mse
from makd.core.score_losses import attention_kl_scores  # noqa: F401  (re-exported)
from makd.core.errors import MakdError
from makd.core.masking import key_rows, kl_rows, masked_mean, same_shape, upcast, valid_mask, with_grad

__all__ = [
    "NonFiniteLossError", "check_finite", "masked_mse", "matrix_mha_loss", "matrix_ffn_loss", "attention_kl",
    "hidden_mse", "logit_kd", "prediction_loss", "causal_lm_kd", "tinybert_attention_mse",
    "minilm_value_relation_kl", "minilm_attention_kl",
]


class NonFiniteLossError(MakdError, FloatingPointError):
    """A loss term became NaN or infinite."""


def check_finite(name: str, value: Tensor, step: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the term and the step if ``value`` has a NaN/inf."""
    if not bool(torch.isfinite(value.detach()).all()):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(
            f"loss term {name!r} is not finite ({value.detach().flatten()[:4].tolist()}){where}. "
            "Lower the learning rate (or add warm-up / gradient clipping), check the inputs for NaN/inf "
            "(padded positions, empty masks), and train in float32 instead of float16/bfloat16.")


# ------------------------------------------------------------------------------------------ matrix level
def masked_mse(student: Tensor, teacher: Tensor, mask=None, relative: bool = False) -> Tensor:
    """Mean squared error over valid tokens: Σ_{b,t valid} Σ_d (s − t)² / (N_valid · D).

    relative=True: the normalised error Σ_{b,t valid} Σ_d (s − t)² / Σ_{b,t valid} Σ_d t² (teacher energy
    detached), scale-free — for models with massive activations (LLM hidden states reach |h| ~ 10³, so the
    plain MSE swamps every other term; our choice, not the paper's). student, teacher: (B, T, D) (any
    trailing dims are flattened into D); mask: (B, T). ``mask=None`` (nothing padded) is the fast path.
    When only the student needs a gradient (the teacher is frozen, possibly an inference tensor), the value and
    its gradient 2 (s − t) / N are computed in one pass and only that gradient is kept for backward.
    """
    same_shape(student, teacher, "masked_mse")
    if student.dim() < 2:
        raise ValueError(f"masked_mse needs (B, T, D) or (B, T) inputs, got shape {tuple(student.shape)}")
    if teacher.requires_grad:                                                # both sides learn: plain autograd
        return _masked_mse_autograd(student, teacher, mask, relative)
    with torch.no_grad():
        s, t = upcast(student.detach()), upcast(teacher)
        s = s.reshape(*s.shape[:2], -1)                                      # (B, T, D)
        t = t.reshape(*t.shape[:2], -1)                                      # (B, T, D)
        diff = s - t                                                         # (B, T, D)
        if mask is not None:
            valid = valid_mask(mask, s.shape[:2], s.device)[..., None]       # (B, T, 1)
            diff = torch.where(valid, diff, 0.0)                             # (B, T, D) padding ignored
        if relative:
            energy = (t * t if mask is None else torch.where(valid, t * t, 0.0)).sum()
            denom = energy.clamp_min(torch.finfo(diff.dtype).tiny)           # ()
        else:
            n = diff.shape[0] * diff.shape[1] if mask is None else valid.sum().clamp_min(1)
            denom = n * diff.shape[-1]                                       # () number of valid entries
        flat = diff.reshape(-1)
        value = torch.dot(flat, flat) / denom                                # ()
        grad = diff.mul_(2 / denom).view(student.shape) if student.requires_grad else None
    return with_grad(student, value, grad)


def _masked_mse_autograd(student: Tensor, teacher: Tensor, mask, relative: bool) -> Tensor:
    """:func:`masked_mse` through autograd (gradients reach the teacher's tensor too)."""
    s, t = upcast(student), upcast(teacher)
    s = s.reshape(*s.shape[:2], -1)                                          # (B, T, D)
    t = t.reshape(*t.shape[:2], -1)                                          # (B, T, D)
    valid = valid_mask(mask, s.shape[:2], s.device)                          # (B, T)
    sq = torch.where(valid[..., None], (s - t) ** 2, torch.zeros_like(s))   # (B, T, D)
    if relative:
        energy = torch.where(valid[..., None], t.detach() ** 2, torch.zeros_like(t)).sum()  # ()
        return sq.sum() / energy.clamp_min(torch.finfo(sq.dtype).tiny)
    return sq.sum() / (valid.sum().clamp_min(1) * s.shape[-1])


def _role_sum(student: dict, teacher: dict, mask, roles, what: str, relative: bool = False) -> Tensor:
    present = [r for r in roles if r in student and r in teacher]
    if not present:
        raise ValueError(f"{what}: no role of {tuple(roles)} is in both dicts (student has {sorted(student)}, "
                         f"teacher has {sorted(teacher)}); pass roles=... matching the captured outputs")
    return sum(masked_mse(student[r], teacher[r], mask, relative) for r in present)


def matrix_mha_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], mask=None,
                    roles=("q", "k", "v", "qkv", "o"), relative: bool = False) -> Tensor:
    """L_MHA = Σ_roles masked_mse(s[role], t[role]) over the attention matrices' outputs.

    Matrix distillation (MaKD §matrix distillation; reconstructed default: MSE of each factorised
    matrix's output against the teacher's dense output). Each value (B, T, D_role); only roles present
    in both dicts count (GPT-2's fused ``qkv`` is included by default); ``relative``: see :func:`masked_mse`.
    """
    return _role_sum(student, teacher, mask, roles, "matrix_mha_loss", relative)


def matrix_ffn_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], mask=None,
                    roles=("ffn_gate", "ffn_in", "ffn_out"), relative: bool = False) -> Tensor:
    """L_FFN = Σ_roles masked_mse(s[role], t[role]) over the FFN matrices' outputs (intermediate + output).

    Matrix distillation (MaKD; reconstructed default as :func:`matrix_mha_loss`). Each value (B, T, D_role).
    """
    return _role_sum(student, teacher, mask, roles, "matrix_ffn_loss", relative)


# ------------------------------------------------------------------------------------------- layer level
def _check_prob_rows(p: Tensor, valid_q: Tensor, name: str) -> None:
    """Cheap check that the first valid query row sums to 1 over keys (catches scores/logits passed by mistake).

    One device sync. A NaN/inf row passes: that is the non-finite check's job (the objective names the term)."""
    T = valid_q.shape[1]
    first = valid_q.reshape(-1).int().argmax()                               # () first valid (b, q); 0 if none
    row = p[first // T, :, first % T, :].detach().float()                    # (H, T)
    sums = row.sum(-1)                                                       # (H,)
    tol = 1e-2 if p.dtype in (torch.float16, torch.bfloat16) else 1e-3
    if bool(((sums - 1).abs() > tol).logical_and(sums.isfinite()).any() | (row < 0).any()):
        b, q = divmod(int(first), T)
        raise ValueError(
            f"{name} rows must be attention probabilities summing to 1 over keys; row (batch {b}, query {q}) "
            f"sums to {sums.tolist()}. Pass softmax-ed attentions (HF output_attentions=True), not scores; "
            "for pre-softmax scores use tinybert_attention_mse")


def attention_kl(p_student: Tensor, p_teacher: Tensor, mask=None, eps: float = 1e-12, key_mask=None) -> Tensor:
    """KL(teacher ‖ student) of attention distributions, mean over heads and valid queries.

    L_attn = 1/(H·N_q) Σ_{h, q valid} Σ_{k valid} p_t log(p_t / p_s), with 0·log 0 = 0.
    Layer distillation (MaKD; reconstructed default: MiniLM's form on probabilities). Inputs are
    probabilities, no softmax is applied. Padded keys are excluded (a masked model gives them p = 0,
    so this only guards against garbage there). p_*: (B, H, T, T), the student's first; mask: (B, T) the queries
    in the mean; key_mask: (B, T) the keys (default: ``mask``). They differ when only some queries count (a
    decoder's response tokens): those queries attend to every real token, the prompt's too, and a sum over a subset
    of a distribution's keys is no divergence (it can be negative, and it rewards moving mass out of the subset).
    Walk-through: notebook ``02_attention_distillation``.
    """
    same_shape(p_student, p_teacher, "attention_kl")
    if p_teacher.dim() != 4 or p_teacher.shape[-1] != p_teacher.shape[-2]:
        raise ValueError(f"attention_kl needs (B, H, T, T) probabilities, got {tuple(p_teacher.shape)}")
    B, H, T, _ = p_teacher.shape
    valid = valid_mask(mask, (B, T), p_teacher.device)                       # (B, T) queries
    _check_prob_rows(p_student, valid, "p_student")
    _check_prob_rows(p_teacher, valid, "p_teacher")
    ps, pt = upcast(p_student), upcast(p_teacher)
    keys = key_rows(mask, key_mask, (B, T), p_teacher.device)[:, None, None, :]   # (B, 1, 1, T)
    log_ratio = pt.clamp_min(eps).log() - ps.clamp_min(eps).log()            # (B, H, T, T)
    term = torch.where((pt > 0) & keys, pt * log_ratio, torch.zeros_like(pt))
    kl = term.sum(-1)                                                        # (B, H, T)
    return masked_mean(kl, valid[:, None, :].expand_as(kl))


def minilm_attention_kl(p_student: Tensor, p_teacher: Tensor, mask=None) -> Tensor:
    """MiniLM's last-layer self-attention distribution loss: identical to :func:`attention_kl` (student first)."""
    return attention_kl(p_student, p_teacher, mask)


def hidden_mse(h_student: Tensor, h_teacher: Tensor, mask=None, proj: nn.Module | None = None,
               relative: bool = False) -> Tensor:
    """L_hidn = masked_mse(proj(h_s), h_t); h_*: (B, T, D_s) / (B, T, D_t); ``relative``: see :func:`masked_mse`.

    Layer distillation (MaKD hidden-state MSE; TinyBERT's learned projection W_h when widths differ,
    needed only by dense baselines — the SVD student keeps the teacher's width).
    """
    hs = proj(h_student) if proj is not None else h_student                 # (B, T, D_t)
    if hs.shape[-1] != h_teacher.shape[-1]:
        raise ValueError(f"hidden_mse: student width {hs.shape[-1]} != teacher width {h_teacher.shape[-1]}; "
                         f"pass proj=nn.Linear({hs.shape[-1]}, {h_teacher.shape[-1]})")
    return masked_mse(hs, h_teacher, mask, relative)


# ------------------------------------------------------------------------------------------- model level
def logit_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask=None,
             reverse: bool = False) -> Tensor:
    """t² · KL(softmax(z_t/t) ‖ softmax(z_s/t)), summed over classes, mean over examples / valid tokens.

    Model distillation (Hinton et al.; MaKD's output-distribution aspect). reverse=True gives
    t² · KL(student ‖ teacher). Logits (B, C) with mask (B,) or None, or (B, T, V) with mask (B, T).
    """
    same_shape(student_logits, teacher_logits, "logit_kd (check vocab sizes: slice padded vocabularies "
                                                "to the tokenizer's length)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logit_kd needs (B, C) or (B, T, V) logits, got {tuple(student_logits.shape)}")
    log_ps = F.log_softmax(upcast(student_logits) / temperature, dim=-1)     # (B, [T,] V)
    log_pt = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)     # (B, [T,] V)
    kl = kl_rows(log_ps, log_pt) if reverse else kl_rows(log_pt, log_ps)     # (B, [T])
    valid = valid_mask(mask, kl.shape, kl.device)
    return temperature ** 2 * masked_mean(kl, valid)


def prediction_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0,
                    alpha: float = 0.5, mask=None, ignore_index: int = -100) -> tuple[Tensor, dict[str, Tensor]]:
    """α · logit_kd + (1 − α) · CE(student, labels); returns (total, {"kd", "ce"}).

    Regression (C == 1 or float labels, e.g. STS-B): "kd" = MSE to the teacher's prediction and
    "ce" = MSE to the gold value. Logits (B, C) with labels (B,), or (B, T, V) with labels (B, T)
    (entries equal to ``ignore_index`` or masked out carry no loss). Model distillation (MaKD;
    reconstructed default α = 0.5).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    same_shape(student_logits, teacher_logits, "prediction_loss")
    if labels.shape != student_logits.shape[:-1] and not (student_logits.shape[-1] == 1
                                                          and labels.shape == student_logits.shape):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(student_logits.shape)}")
    if student_logits.shape[-1] == 1 or labels.is_floating_point():
        if student_logits.shape[-1] != 1:
            raise ValueError(f"float labels mean regression, which needs 1 output, got C = {student_logits.shape[-1]}")
        s = upcast(student_logits).reshape(labels.shape)                     # (B, [T])
        t = upcast(teacher_logits).reshape(labels.shape)                     # (B, [T])
        valid = valid_mask(mask, labels.shape, s.device)
        kd = masked_mean((s - t) ** 2, valid)
        ce = masked_mean((s - upcast(labels.to(s.dtype))) ** 2, valid)
    else:
        kd = logit_kd(student_logits, teacher_logits, temperature, mask)
        valid = valid_mask(mask, labels.shape, labels.device) & (labels != ignore_index)
        safe = torch.where(valid, labels, torch.zeros_like(labels))           # (B, [T])
        nll = F.cross_entropy(upcast(student_logits).reshape(-1, student_logits.shape[-1]), safe.reshape(-1),
                              reduction="none").reshape(labels.shape)         # (B, [T])
        ce = masked_mean(nll, valid)
    return alpha * kd + (1 - alpha) * ce, {"kd": kd, "ce": ce}


def causal_lm_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None,
                 response_mask=None, reverse: bool = False, lm_weight: float = 0.5) -> tuple[Tensor, dict]:
    """Token-level KD for causal LMs: (1 − w) · KL + w · CE over response tokens; returns (total, parts).

    Logits at position t predict token t+1 (shifted here). KL(teacher ‖ student) per token summed over
    the vocabulary (reverse=True: KL(student ‖ teacher)), averaged over response tokens; CE on the gold
    next tokens ``labels`` (−100 = prompt/padding). ``response_mask`` (B, T) is aligned with the input
    tokens (1 = the token is part of the response) and defaults to ``labels != -100``. Without labels
    there is no CE term and total = KL. MiniLLM's "KD" baseline with w = 0.5 (MaKD's
    auto-regressive model distillation; reconstructed default). Logits (B, T, V).
    """
    same_shape(student_logits, teacher_logits, "causal_lm_kd (check vocab sizes)")
    if student_logits.dim() != 3:
        raise ValueError(f"causal_lm_kd needs (B, T, V) logits, got {tuple(student_logits.shape)}")
    if not 0.0 <= lm_weight <= 1.0:
        raise ValueError(f"lm_weight must be in [0, 1], got {lm_weight}")
    B, T, _ = student_logits.shape
    if labels is not None and tuple(labels.shape) != (B, T):
        raise ValueError(f"labels shape {tuple(labels.shape)} != {(B, T)} (labels are the input ids with -100)")
    if response_mask is None:
        response_mask = labels != -100 if labels is not None else None
    resp = valid_mask(response_mask, (B, T), student_logits.device)[:, 1:]   # (B, T-1) token t+1 is response
    s, t = student_logits[:, :-1], teacher_logits[:, :-1]                    # (B, T-1, V)
    kd = logit_kd(s, t, 1.0, resp, reverse=reverse)
    if labels is None:
        return kd, {"kd": kd}
    target = labels[:, 1:]                                                   # (B, T-1)
    valid = target != -100
    nll = F.cross_entropy(upcast(s).reshape(-1, s.shape[-1]), torch.where(valid, target, 0).reshape(-1),
                          reduction="none").reshape(target.shape)             # (B, T-1)
    ce = masked_mean(nll, valid)
    return (1 - lm_weight) * kd + lm_weight * ce, {"kd": kd, "ce": ce}
