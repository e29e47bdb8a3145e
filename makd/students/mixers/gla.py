"""Gated linear attention (``gla``): linear attention with data-dependent forget gates per key channel.

Follows Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training" (the gate of
their eq. 6: a low-rank projection, a log-sigmoid and a temperature τ = 16). Per head, with q scaled by 1/√d::

    g_t = logsigmoid(W_2 W_1 x_t + b) / τ            (d_k)  log forget gate, ≤ 0, α_t = exp g_t
    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t
    M_ij = Σ_c q_ic k_jc exp(G_ic − G_jc)   for j ≤ i, else 0,   G_t = Σ_{s≤t} g_s        (output = M·V)

M is a sum over the key channels: one matmul of q_i exp(G_i − G_1) and k_j exp(G_1 − G_j) when the block's total
decay keeps both factors finite (< √ of the largest float), else an exact sum a block of 16 channels at a time
(B, H, T, T, 16) with every exponent G_ic − G_jc (j ≤ i) ≤ 0. The output goes through a per-head RMS norm with a learnable weight
(``norm_weight``, ones), a swish output gate and ``o_proj``: y = o_proj(silu(g_proj x) ⊙ RMSNorm(o)); M excludes
the norm, the gate and ``o_proj``. A padded position has g = 0 and k = 0 (no decay, no write).
New parameters and their initialisation: ``gk_proj`` = Linear(D, rank 16, no bias) then Linear(16, H·d, bias),
``g_proj`` = Linear(D, H·d, no bias), all with PyTorch's default Linear initialisation (as flash-linear-attention's
GatedLinearAttention layer); ``norm_weight`` ones. Key and value widths stay at the teacher's head_dim.
Grouped heads (``num_kv_heads``, the teacher's GQA): k, v and the forget gate per key/value head (``gk_proj`` to
H_kv·d, as flash-linear-attention's GQA layout), so the state is per KV head, read by its group's query heads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makd.students.mixers.gated_linear import GatedLinearMixer, gate, head_rms_norm, project_out, scaled_linear


class GLA(GatedLinearMixer):
    """Gated linear attention with per-channel data-dependent forget gates, a group norm and a swish gate."""
    name = "gla"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 64,
                 gate_rank: int = 16, gate_temperature: float = 16.0, norm_eps: float = 1e-6,
                 num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, chunk_size, num_kv_heads)
        if gate_rank < 1 or gate_temperature <= 0:
            raise ValueError(f"gate_rank must be ≥ 1 and gate_temperature > 0, got {gate_rank}, {gate_temperature}")
        inner = num_heads * self.head_dim
        self.gate_temperature, self.norm_eps = gate_temperature, norm_eps
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_rank, bias=False), nn.Linear(gate_rank, self.num_kv_heads * self.head_dim))
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))

    def features(self, x: torch.Tensor):
        q = self.split_heads(scaled_linear(x, self.q_proj, self.head_dim ** -0.5))   # (B, H, T, d), q / √d
        k = self.split_heads(self.k_proj(x), self.num_kv_heads)                  # (B, H_kv, T, d)
        v = self.split_heads(self.v_proj(x), self.num_kv_heads)
        g = self.split_heads(F.logsigmoid(self.gk_proj(x)) / self.gate_temperature, self.num_kv_heads)   # ≤ 0
        return q, k, v, g

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.merge_heads(head_rms_norm(o, eps=self.norm_eps, owned=True))   # (B, T, H·d)
        return project_out(gate(self.g_proj(x), o), self.o_proj, self.norm_weight)   # the norm's weight folded in

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate_temperature={self.gate_temperature}"
