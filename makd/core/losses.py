"""Multi-aspect distillation losses: pure functions on tensors (walk-through: notebook ``02_losses``).

Granularities of MaKD (arXiv 2604.03110) — the paper's exact formulas are not public, see
``docs/METHOD.md``; every choice below marked *reconstructed default* is ours:

* matrix  — :func:`matrix_mha_loss`, :func:`matrix_ffn_loss` (MSE of each factorised matrix output)
* layer   — :func:`attention_kl` (KL on attention probabilities), :func:`hidden_mse`
* model   — :func:`logit_kd`, :func:`prediction_loss`, :func:`causal_lm_kd`
* baselines — :func:`tinybert_attention_mse`, :func:`minilm_value_relation_kl`, :func:`minilm_attention_kl`

Every loss takes a padding mask ``mask`` (B, T) (1/True = valid token; bool, int or float); padded
positions never change a loss and averages run over valid positions only. For causal LMs pass the product
of the padding and response masks. Half-precision inputs are upcast to float32 inside the losses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NonFiniteLossError", "check_finite", "masked_mse", "matrix_mha_loss", "matrix_ffn_loss", "attention_kl",
    "hidden_mse", "logit_kd", "prediction_loss", "causal_lm_kd", "tinybert_attention_mse",
    "minilm_value_relation_kl", "minilm_attention_kl",
]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def check_finite(name: str, value: Tensor, step: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the term and the step if ``value`` has a NaN/inf."""
    if not bool(torch.isfinite(value.detach()).all()):
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(
            f"loss term {name!r} is not finite ({value.detach().flatten()[:4].tolist()}){where}. "
            "Lower the learning rate (or add warm-up / gradient clipping), check the inputs for NaN/inf "
            "(padded positions, empty masks), and train in float32 instead of float16/bfloat16.")


# ----------------------------------------------------------------------------------------------- helpers
def _f(x: Tensor) -> Tensor:
    """Upcast half precision to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _valid(mask, shape: tuple[int, ...], device) -> Tensor:
    """Boolean mask of ``shape`` (all True when ``mask`` is None), checked against the data's shape."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the loss needs {tuple(shape)} "
                         "(one entry per example/token, 1 = valid, 0 = padding)")
    return mask != 0


def _same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student shape {tuple(a.shape)} != teacher shape {tuple(b.shape)}")


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_last p (log p − log q) with 0·log 0 = 0; inputs are log-probabilities."""
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(p))           # no 0·(−inf) NaN, even in grads
    return (p * diff).sum(-1)


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` over True entries of ``valid`` (same shape); 0 when nothing is valid."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return x.sum() / valid.sum().clamp_min(1)


# ------------------------------------------------------------------------------------------ matrix level
def masked_mse(student: Tensor, teacher: Tensor, mask=None, relative: bool = False) -> Tensor:
    """Mean squared error over valid tokens: Σ_{b,t valid} Σ_d (s − t)² / (N_valid · D).

    relative=True: the normalised error Σ_{b,t valid} Σ_d (s − t)² / Σ_{b,t valid} Σ_d t² (teacher energy
    detached), scale-free — for models with massive activations (LLM hidden states reach |h| ~ 10³, so the
    plain MSE swamps every other term; our choice, not the paper's). student, teacher: (B, T, D) (any
    trailing dims are flattened into D); mask: (B, T).
    """
    _same_shape(student, teacher, "masked_mse")
    if student.dim() < 2:
        raise ValueError(f"masked_mse needs (B, T, D) or (B, T) inputs, got shape {tuple(student.shape)}")
    s, t = _f(student), _f(teacher)
    s = s.reshape(*s.shape[:2], -1)                                          # (B, T, D)
    t = t.reshape(*t.shape[:2], -1)                                          # (B, T, D)
    valid = _valid(mask, s.shape[:2], s.device)                              # (B, T)
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
    """Cheap check that one valid query row sums to 1 over keys (catches scores/logits passed by mistake)."""
    idx = valid_q.nonzero()
    b, q = (int(idx[0, 0]), int(idx[0, 1])) if len(idx) else (0, 0)
    sums = p[b, :, q, :].detach().float().sum(-1)                            # (H,)
    tol = 1e-2 if p.dtype in (torch.float16, torch.bfloat16) else 1e-3
    if not bool(((sums - 1).abs() <= tol).all()) or bool((p[b, :, q, :] < 0).any()):
        raise ValueError(
            f"{name} rows must be attention probabilities summing to 1 over keys; row (batch {b}, query {q}) "
            f"sums to {sums.tolist()}. Pass softmax-ed attentions (HF output_attentions=True), not scores; "
            "for pre-softmax scores use tinybert_attention_mse")


def attention_kl(p_teacher: Tensor, p_student: Tensor, mask=None, eps: float = 1e-12) -> Tensor:
    """KL(teacher ‖ student) of attention distributions, mean over heads and valid queries.

    L_attn = 1/(H·N_q) Σ_{h, q valid} Σ_{k valid} p_t log(p_t / p_s), with 0·log 0 = 0.
    Layer distillation (MaKD; reconstructed default: MiniLM's form on probabilities). Inputs are
    probabilities, no softmax is applied. Padded keys are excluded (a masked model gives them p = 0,
    so this only guards against garbage there). p_*: (B, H, T, T); mask: (B, T).
    """
    _same_shape(p_student, p_teacher, "attention_kl")
    if p_teacher.dim() != 4 or p_teacher.shape[-1] != p_teacher.shape[-2]:
        raise ValueError(f"attention_kl needs (B, H, T, T) probabilities, got {tuple(p_teacher.shape)}")
    B, H, T, _ = p_teacher.shape
    valid = _valid(mask, (B, T), p_teacher.device)                           # (B, T)
    _check_prob_rows(p_teacher, valid, "p_teacher")
    _check_prob_rows(p_student, valid, "p_student")
    pt, ps = _f(p_teacher), _f(p_student)
    keys = valid[:, None, None, :]                                           # (B, 1, 1, T)
    log_ratio = pt.clamp_min(eps).log() - ps.clamp_min(eps).log()            # (B, H, T, T)
    term = torch.where((pt > 0) & keys, pt * log_ratio, torch.zeros_like(pt))
    kl = term.sum(-1)                                                        # (B, H, T)
    return _masked_mean(kl, valid[:, None, :].expand_as(kl))


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
    _same_shape(student_logits, teacher_logits, "logit_kd (check vocab sizes: slice padded vocabularies "
                                                "to the tokenizer's length)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logit_kd needs (B, C) or (B, T, V) logits, got {tuple(student_logits.shape)}")
    log_ps = F.log_softmax(_f(student_logits) / temperature, dim=-1)         # (B, [T,] V)
    log_pt = F.log_softmax(_f(teacher_logits) / temperature, dim=-1)         # (B, [T,] V)
    kl = _kl_rows(log_ps, log_pt) if reverse else _kl_rows(log_pt, log_ps)  # (B, [T])
    valid = _valid(mask, kl.shape, kl.device)
    return temperature ** 2 * _masked_mean(kl, valid)


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
    _same_shape(student_logits, teacher_logits, "prediction_loss")
    if labels.shape != student_logits.shape[:-1] and not (student_logits.shape[-1] == 1
                                                          and labels.shape == student_logits.shape):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(student_logits.shape)}")
    if student_logits.shape[-1] == 1 or labels.is_floating_point():
        if student_logits.shape[-1] != 1:
            raise ValueError(f"float labels mean regression, which needs 1 output, got C = {student_logits.shape[-1]}")
        s = _f(student_logits).reshape(labels.shape)                         # (B, [T])
        t = _f(teacher_logits).reshape(labels.shape)                         # (B, [T])
        valid = _valid(mask, labels.shape, s.device)
        kd = _masked_mean((s - t) ** 2, valid)
        ce = _masked_mean((s - _f(labels.to(s.dtype))) ** 2, valid)
    else:
        kd = logit_kd(student_logits, teacher_logits, temperature, mask)
        valid = _valid(mask, labels.shape, labels.device) & (labels != ignore_index)
        safe = torch.where(valid, labels, torch.zeros_like(labels))           # (B, [T])
        nll = F.cross_entropy(_f(student_logits).reshape(-1, student_logits.shape[-1]), safe.reshape(-1),
                              reduction="none").reshape(labels.shape)         # (B, [T])
        ce = _masked_mean(nll, valid)
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
    _same_shape(student_logits, teacher_logits, "causal_lm_kd (check vocab sizes)")
    if student_logits.dim() != 3:
        raise ValueError(f"causal_lm_kd needs (B, T, V) logits, got {tuple(student_logits.shape)}")
    if not 0.0 <= lm_weight <= 1.0:
        raise ValueError(f"lm_weight must be in [0, 1], got {lm_weight}")
    B, T, _ = student_logits.shape
    if labels is not None and tuple(labels.shape) != (B, T):
        raise ValueError(f"labels shape {tuple(labels.shape)} != {(B, T)} (labels are the input ids with -100)")
    if response_mask is None:
        response_mask = labels != -100 if labels is not None else None
    resp = _valid(response_mask, (B, T), student_logits.device)[:, 1:]       # (B, T-1) token t+1 is response
    s, t = student_logits[:, :-1], teacher_logits[:, :-1]                    # (B, T-1, V)
    kd = logit_kd(s, t, 1.0, resp, reverse=reverse)
    if labels is None:
        return kd, {"kd": kd}
    target = labels[:, 1:]                                                   # (B, T-1)
    valid = target != -100
    nll = F.cross_entropy(_f(s).reshape(-1, s.shape[-1]), torch.where(valid, target, 0).reshape(-1),
                          reduction="none").reshape(target.shape)             # (B, T-1)
    ce = _masked_mean(nll, valid)
    return (1 - lm_weight) * kd + lm_weight * ce, {"kd": kd, "ce": ce}


# ---------------------------------------------------------------------------------------------- baselines
def tinybert_attention_mse(scores_student: Tensor, scores_teacher: Tensor, mask=None) -> Tensor:
    """TinyBERT attention loss: MSE on pre-softmax scores, s ← 0 where s ≤ −1e2 or the key is padding.

    L = 1/(H·N_q) Σ_{h, q valid} mean_{k valid} (s_s − s_t)²  (TinyBERT, Jiao et al. 2020; its code
    averages over all T×T entries, we average per valid row so the padding length does not rescale it).
    scores_*: (B, H, T, T); mask: (B, T).
    """
    _same_shape(scores_student, scores_teacher, "tinybert_attention_mse")
    if scores_student.dim() != 4:
        raise ValueError(f"tinybert_attention_mse needs (B, H, T, T) scores, got {tuple(scores_student.shape)}")
    B, H, T, _ = scores_student.shape
    valid = _valid(mask, (B, T), scores_student.device)                      # (B, T)
    keys = valid[:, None, None, :]                                           # (B, 1, 1, T)
    ss, st = _f(scores_student), _f(scores_teacher)
    ss = torch.where((ss <= -1e2) | ~keys, torch.zeros_like(ss), ss)          # (B, H, T, T)
    st = torch.where((st <= -1e2) | ~keys, torch.zeros_like(st), st)          # (B, H, T, T)
    row = ((ss - st) ** 2).sum(-1) / valid.sum(-1).clamp_min(1)[:, None, None]  # (B, H, T)
    return _masked_mean(row, valid[:, None, :].expand_as(row))


def _relation_log_probs(v: Tensor, n_heads: int, valid: Tensor) -> Tensor:
    """log softmax(V_h V_hᵀ / sqrt(d_h)) over valid keys: (B, T, D) -> (B, H, T, T)."""
    B, T, D = v.shape
    if n_heads <= 0 or D % n_heads:
        raise ValueError(f"value width {D} is not divisible into {n_heads} relation heads")
    vh = _f(v).reshape(B, T, n_heads, D // n_heads).transpose(1, 2)          # (B, H, T, d_h)
    rel = vh @ vh.transpose(-1, -2) / math.sqrt(D // n_heads)                # (B, H, T, T)
    rel = rel.masked_fill(~valid[:, None, None, :], torch.finfo(rel.dtype).min)
    return F.log_softmax(rel, dim=-1)                                        # (B, H, T, T)


def minilm_value_relation_kl(v_student: Tensor, v_teacher: Tensor, n_heads_student: int,
                             n_heads_teacher: int | None = None, mask=None) -> Tensor:
    """MiniLM value-relation loss: KL(VR_t ‖ VR_s), VR = softmax(V_h V_hᵀ / sqrt(d_h)) per relation head.

    Mean over heads and valid queries; padded keys masked before the softmax (Wang et al. 2020/2021).
    v_*: (B, T, D_s) / (B, T, D_t); both use ``n_heads_student`` relation heads unless told otherwise
    (the KL needs the same head count on both sides).
    """
    n_t = n_heads_student if n_heads_teacher is None else n_heads_teacher
    if n_t != n_heads_student:
        raise ValueError(f"relation heads differ (student {n_heads_student}, teacher {n_t}); MiniLM uses the "
                         "same number of relation heads on both sides")
    if v_student.shape[:2] != v_teacher.shape[:2] or v_student.dim() != 3:
        raise ValueError(f"values must be (B, T, D) with equal B, T: {tuple(v_student.shape)} vs {tuple(v_teacher.shape)}")
    B, T, _ = v_student.shape
    valid = _valid(mask, (B, T), v_student.device)                           # (B, T)
    log_ps = _relation_log_probs(v_student, n_heads_student, valid)          # (B, H, T, T)
    log_pt = _relation_log_probs(v_teacher, n_t, valid)                      # (B, H, T, T)
    kl = _kl_rows(log_pt, log_ps)                                            # (B, H, T)
    return _masked_mean(kl, valid[:, None, :].expand_as(kl))


def minilm_attention_kl(p_teacher: Tensor, p_student: Tensor, mask=None) -> Tensor:
    """MiniLM's last-layer self-attention distribution loss: identical to :func:`attention_kl`."""
    return attention_kl(p_teacher, p_student, mask)
