"""Kernel linear attention (``linear``): softmax(q·k) replaced by a feature-map kernel φ(q)·φ(k), normalised.

Follows Katharopoulos et al. 2020, "Transformers are RNNs" (φ(x) = elu(x) + 1), and Zhang et al. 2024, "The Hedgehog
& the Porcupine" (a learnable feature map trained to mimic softmax attention). Per head, no decay::

    S_t = S_{t-1} + φ(k_t) v_tᵀ,   z_t = z_{t-1} + φ(k_t),   o_t = φ(q_t)ᵀ S_t / max(φ(q_t)·z_t, eps)

Closed form (the materialised matrix; eps = 1e-6 is reached only at positions that have seen no token)::

    M_ij = φ(q_i)·φ(k_j) / max(Σ_{l≤i} φ(q_i)·φ(k_l), eps)   for j ≤ i, else 0        output = M·V

The normaliser is *inside* M: its rows are the normalised weights (each sums to 1). M excludes only ``o_proj``
(this mixer has no output gate and no output norm). Queries and keys are not scaled by 1/√d.

Feature maps (``feature_map``):
- ``"elu"`` (default): φ(x) = elu(x) + 1 per channel, d_k = head_dim, no parameters;
- ``"hedgehog"``: φ(x) = [softmax(x W_h), softmax(−x W_h)] (softmax over the feature dim, as in Hedgehog / LoLCATs),
  d_k = 2·head_dim, with separate per-head maps W_q (H, d, d) and W_k (H_kv, d, d) initialised to the identity
  (``fq_weight``, ``fk_weight``), so that a later QKV copy starts from softmax features of the copied q and k.

Grouped heads (``num_kv_heads``, the teacher's GQA): k, v (and φ(k)) per key/value head, so S and z are per KV head
and each is read by the query heads of its group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makd.students.mixers.gated_linear import GatedLinearMixer

FEATURE_MAPS = ("elu", "hedgehog")


class LinearAttention(GatedLinearMixer):
    """Normalised kernel linear attention with an elu+1 or a learnable Hedgehog feature map."""
    name = "linear"
    normalize = True

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *,
                 feature_map: str = "elu", chunk_size: int = 64, num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, chunk_size, num_kv_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {feature_map!r}: choose one of {list(FEATURE_MAPS)}")
        self.feature_map = feature_map
        if feature_map == "hedgehog":
            eye = torch.eye(self.head_dim)                                        # (d, d)
            self.fq_weight = nn.Parameter(eye.repeat(num_heads, 1, 1))            # (H, d, d)
            self.fk_weight = nn.Parameter(eye.repeat(self.num_kv_heads, 1, 1))    # (H_kv, d, d)

    @property
    def key_dim(self) -> int:
        return 2 * self.head_dim if self.feature_map == "hedgehog" else self.head_dim

    def phi(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The feature map: (B, H, T, d) -> (B, H, T, d_k), positive entries."""
        if self.feature_map == "elu":
            return F.elu(x) + 1
        proj = torch.einsum("bhtd,hde->bhte", x, weight)                         # (B, H, T, d)
        return torch.cat([proj.softmax(-1), (-proj).softmax(-1)], dim=-1)       # (B, H, T, 2d)

    def features(self, x: torch.Tensor):
        q = self.split_heads(self.q_proj(x))                                     # (B, H, T, d)
        k = self.split_heads(self.k_proj(x), self.num_kv_heads)                  # (B, H_kv, T, d)
        v = self.split_heads(self.v_proj(x), self.num_kv_heads)                  # (B, H_kv, T, d)
        fq = getattr(self, "fq_weight", None)
        fk = getattr(self, "fk_weight", None)
        return self.phi(q, fq), self.phi(k, fk), v, None                         # no decay

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.merge_heads(o))                                  # (B, T, D)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_map={self.feature_map}"
