"""RetNet retention (``retnet``): linear attention with a fixed, data-independent decay per head.

Follows Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models" (multi-scale
retention, torchscale's decay schedule). Per head h, with the fixed decay::

    γ_h = 1 − 2^(−5 − h),   h = 0 … H−1          (log γ_h is a buffer, not a parameter)

the recurrence and the closed form (q scaled by 1/√d, as the teacher's attention scores)::

    S_t = γ_h S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t / √d
    M_ij = γ_h^(n_i − n_j) q_i·k_j / √d   for j ≤ i, else 0        (n_t = number of real tokens up to t)

so o = M·V. The output then goes through a per-head RMS "group norm" without affine weights, a swish output
gate and ``o_proj``: y = o_proj(silu(g_proj x) ⊙ GroupNorm(o)); M excludes the group norm, the gate and
``o_proj``. Without padding n_i − n_j = i − j; a padded position does not decay. Not implemented: xPos (no
relative position rotation; the teacher's RoPE is not applied either) and the paper's value width 2d (v stays at
the teacher's head_dim). New parameters: ``g_proj`` (D → H·d, no bias, PyTorch's default Linear initialisation).
Grouped heads (``num_kv_heads``): ``k_proj`` / ``v_proj`` have the teacher's KV widths; the decay is per query
head, so K and V are repeated to the query heads and the state stays per query head.
torchscale's extra normalisations of the parallel form (decay rows and |q·k| sums) are omitted: the group norm
is invariant to a per-token rescale of o, so they change nothing but the eps.
"""
from __future__ import annotations

import torch
from torch import nn

from makd.students.mixers.gated_linear import GatedLinearMixer, gate, head_rms_norm, scaled_linear


def retention_decays(num_heads: int) -> torch.Tensor:
    """log γ_h = log(1 − 2^(−5 − h)) for h = 0 … H−1, in float64: (H,)."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(num_heads, dtype=torch.float64)))


class RetNet(GatedLinearMixer):
    """Multi-scale retention with a fixed per-head decay, a group norm and a swish output gate."""
    name = "retnet"
    shared_state = False   # the decay is per query head

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *,
                 chunk_size: int = 64, norm_eps: float = 1e-6, num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, chunk_size, num_kv_heads)
        self.norm_eps = norm_eps
        self.g_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.register_buffer("log_decay", retention_decays(num_heads), persistent=False)   # (H,)

    def reset_buffers(self) -> None:
        """The fixed decays again (``from_pretrained`` leaves non-persistent buffers empty)."""
        with torch.no_grad():
            self.log_decay.copy_(retention_decays(self.num_heads))

    def features(self, x: torch.Tensor):
        q = self.split_heads(scaled_linear(x, self.q_proj, self.head_dim ** -0.5))   # (B, H, T, d), q / √d
        k = self.expand_kv(self.split_heads(self.k_proj(x), self.num_kv_heads))   # (B, H, T, d)
        v = self.expand_kv(self.split_heads(self.v_proj(x), self.num_kv_heads))
        g = self.log_decay.to(q.dtype)[:, None, None].expand(q.shape[0], -1, q.shape[2], 1)   # (B, H, T, 1)
        return q, k, v, g

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o = self.merge_heads(head_rms_norm(o, eps=self.norm_eps, owned=True))   # (B, T, H·d)
        return self.o_proj(gate(self.g_proj(x), o))                              # (B, T, D)
