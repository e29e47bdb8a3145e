"""Attention scores and probabilities recomputed from a layer's captured q and k (used by :mod:`makd.core.capture`).

S = (q · s) kᵀ + M and P = softmax(S) over keys, (B, H, T, T): s the model's own scaling (1/sqrt(d_h); GPT-2's
``scale_attn_weights`` / ``scale_attn_by_inverse_layer_idx`` are already in ``attn.scaling``), M the additive mask
(0 allowed, dtype-min for padded keys and, in decoders, future keys); Llama family: optional q/k norms (Qwen3),
RoPE with the model's cos/sin and its modeling module's ``apply_rotary_pos_emb``, grouped K heads repeated.
"""
from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

__all__ = ["check_attention_support", "additive_mask", "attention_probs"]


def check_attention_support(model: nn.Module, T: int) -> None:
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and T > window:
        raise ValueError(f"sequence length {T} exceeds the model's sliding window {window}; capture recomputes "
                         "full causal attention only: use sequences <= the window")
    for attr in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(cfg, attr, None):
            raise ValueError(f"config.{attr} is set: capture does not reproduce this attention variant; "
                             "distil without attention aspects (weights={'attn': 0})")


def additive_mask(attention_mask: Tensor | None, B: int, T: int, causal: bool, dtype, device) -> Tensor | None:
    """0 where query i may attend key j, dtype-min elsewhere: (B, 1, T, T), as HF's eager masks.

    None when nothing is masked (no padding, bidirectional).
    """
    if not causal and (attention_mask is None or bool((attention_mask != 0).all())):
        return None
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool, device=device)
    if attention_mask is not None:
        allowed = allowed & (attention_mask.to(device) != 0)[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)               # (B, 1, T, T)


def _heads(x: Tensor, head_dim: int) -> Tensor:
    B, T, _ = x.shape
    return x.reshape(B, T, -1, head_dim).transpose(1, 2)                   # (B, H, T, d_h)


def attention_probs(attn: nn.Module, q: Tensor, k: Tensor, mask: Tensor | None, geometry: tuple[int, int, int],
                    rope: tuple[Tensor, Tensor] | None = None, want_probs: bool = True
                    ) -> tuple[Tensor | None, Tensor]:
    """(probabilities, scores): S = (q · attn.scaling) kᵀ + M, P = softmax(S) over keys; (B, H, T, T) each.

    q: (B, T, H·d_h), k: (B, T, H_kv·d_h), mask: (B, 1, T, T) additive or None (nothing masked).
    Llama family: optional q/k norms (Qwen3), RoPE with the model's cos/sin and its modeling module's
    ``apply_rotary_pos_emb``, grouped K heads repeated.
    """
    n_heads, n_kv, head_dim = geometry
    qh, kh = _heads(q, head_dim), _heads(k, head_dim)                      # (B, H, T, d), (B, H_kv, T, d)
    if rope is not None:
        if hasattr(attn, "q_norm"):
            qh = attn.q_norm(qh.transpose(1, 2)).transpose(1, 2)
            kh = attn.k_norm(kh.transpose(1, 2)).transpose(1, 2)
        modeling = sys.modules[type(attn).__module__]
        qh, kh = modeling.apply_rotary_pos_emb(qh, kh, *rope)
    if n_kv != n_heads:
        kh = kh.repeat_interleave(n_heads // n_kv, dim=1)                  # (B, H, T, d)
    scaling = getattr(attn, "scaling", head_dim ** -0.5)
    if getattr(attn, "reorder_and_upcast_attn", False):                   # GPT-2 option: float32 scores
        qh, kh = qh.float(), kh.float()
    scores = (qh * scaling) @ kh.transpose(-1, -2)                          # (B, H, T, T), scale on the small side
    if mask is not None:
        scores.add_(mask.to(scores.dtype))                                  # in place: one T×T buffer less
    probs = torch.softmax(scores, dim=-1).to(q.dtype) if want_probs else None  # (B, H, T, T)
    return probs, scores
