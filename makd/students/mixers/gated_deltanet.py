"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, arXiv 2412.06464): the delta rule with Mamba2's scalar decay.

Per head, with L2-normalised k_t, q_t (q then scaled by s = head_dim^-1/2), values v_t, writing strength
β_t = sigmoid(b_proj(x_t)) and a data-dependent decay α_t = exp(g_t), g_t = −exp(A_log)·softplus(a_proj(x_t) + dt_bias):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ      (d_k, d_v),        o_t = S_tᵀ q_t

Materialised, from S_0 = 0, with Γ_ij = α_{j+1}⋯α_i for i ≥ j and O = M V per head:

    M = (tril(Q Kᵀ) ⊙ Γ) · (I + strict_tril(diag(β) (K Kᵀ ⊙ Γ)))⁻¹ · diag(β)

The chunked (UT transform), recurrent and materialised forms are the gated delta rule of
:mod:`makd.students.mixers.deltanet` (one core for both mixers). transformers' ``torch_chunk_gated_delta_rule`` /
``torch_recurrent_gated_delta_rule`` (Qwen3-Next) compute the same rule but always in float32; the tests check our
core against both, and we keep our own so that float64 checks, dtypes and padding stay exact.

Around the core, as in flash-linear-attention's ``GatedDeltaNet`` layer (its defaults, except the value head
dimension, kept equal to the key head dimension so that a teacher's V heads copy in): short causal depthwise
convolution (kernel 4, no bias, PyTorch's default init) + SiLU on q, k, v (its last 3 inputs are state;
``conv_size=0`` drops both); the output gate RMSNorm(o) ⊙ SiLU(g_proj(x)) per head (RMSNorm weight ones, eps 1e-5;
``output_gate=False`` keeps the plain RMSNorm, ``output_norm=False`` drops the norm), then ``o_proj``.
Initialisation: A ~ U(0, 16), A_log = log A; dt_bias = softplus⁻¹(Δ0), Δ0 log-uniform in [1e-3, 1e-1] floored at
1e-4; a_proj, b_proj, g_proj PyTorch's default Linear init. **M excludes** the convolution/SiLU (V is the value after
them), the output norm and gate and ``o_proj``; it includes the scale s. Padding: β = 0 and g = 0 at padded tokens.
Grouped heads (``num_kv_heads``, the teacher's GQA): k, v, β and the decay (``b_proj``, ``a_proj``, ``A_log``,
``dt_bias``) per key/value head, so the state is per KV head and read by its group's queries; the output gate is
per query head.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from makd.students.mixers.deltanet import DeltaNet, dt_bias_init
from makd.students.mixers.gated_linear import gate


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet mixer. State: ``S`` (B, H_kv, d, d) and, with a convolution, ``conv``
    (B, conv_size − 1, (H + 2·H_kv)·d)."""
    name = "gated_deltanet"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, conv_size: int = 4,
                 output_gate: bool = True, output_norm: bool = True, chunk_size: int = 64,
                 norm_eps: float = 1e-5, num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, conv_size=conv_size, output_norm=output_norm,
                         chunk_size=chunk_size, norm_eps=norm_eps, num_kv_heads=num_kv_heads)
        h = self.num_kv_heads  # the decay is per key/value head, as β
        self.a_proj = nn.Linear(hidden_size, h, bias=False)  # the decay's data-dependent part
        self.A_log = nn.Parameter(torch.empty(h).uniform_(0, 16).log())  # (H,)
        self.dt_bias = nn.Parameter(dt_bias_init(h))  # (H,)
        self.g_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False) if output_gate else None

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> log α (B, H_kv, T) = −exp(A_log) · softplus(a_proj(x) + dt_bias) ≤ 0."""
        dt = F.softplus(self.a_proj(x) + self.dt_bias)  # (B, T, H_kv)
        return (-self.A_log.exp() * dt).transpose(1, 2)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Core outputs (B, H, T, d) and the input (B, T, D) -> (B, T, D): norm, gate, o_proj."""
        o = self._normed(o)  # (B, T, H, d)
        if self.g_proj is not None:
            o = gate(self.g_proj(x).unflatten(-1, (self.num_heads, self.head_dim)), o)
        return self._project_out(o)  # the norm's weight folded into o_proj (it commutes with the gate)
