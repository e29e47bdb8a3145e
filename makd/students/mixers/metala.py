"""MetaLA (``metala``): gated linear attention whose key is the complement of its forget gate, with a short
convolution and self-augmentation.

Follows Chou et al. 2024, "MetaLA: Unified Optimal Linear Approximation to Softmax Attention Map" (NeurIPS 2024,
arXiv 2411.10741), as its authors' GPT-NeoX layer computes it. Per head, from the input after a short causal
depthwise convolution and SiLU, u_t = silu(conv(x)_t), with q scaled by 1/√d_k::

    g_t = logsigmoid(W_k u_t) / τ            (d_k)   log forget gate ≤ 0, α_t = exp g_t      (τ = 16)
    k_t = 1 − α_t                                     the key: what is forgotten is what is written (no key matrix)
    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = q_tᵀ S_t + σ(w_t v_t),   w_t = q_t · (a ⊙ k_t)   (self-augmentation)
    M_ij = Σ_c q_ic k_jc exp(G_ic − G_jc)   for j ≤ i, else 0,   G_t = Σ_{s≤t} g_s

so o = M·V + σ(w ⊙ V) per head: **M excludes the self-augmentation** (a per-token term, nonlinear in v), the
convolution/SiLU (V is the value after them), the norm, the gate and ``o_proj``. The chunked, recurrent and
materialised forms of M·V are the gated-linear kernel of :mod:`.gated_linear` (GLA's, with k = 1 − α). The output:
y = o_proj(silu(g_proj u + b) ⊙ LayerNorm(o)), the LayerNorm per head without affine weights (eps 1e-5), as the
reference (it also removes the constant 1/2 that σ adds while a = 0).

QKV copy (our reconstruction: MetaLA has no key projection): the teacher's K → ``k_proj``, the forget gate's
logits, so the copied key directions decide how much each position writes and forgets; Q → ``q_proj``,
V → ``v_proj``, O → ``o_proj``. Key and value widths stay at the teacher's head_dim (the reference halves the
query/key width; a copied Q/K keeps the teacher's). New parameters and their initialisation: ``conv1d``
(depthwise over the D input channels, kernel ``conv_size`` = 4, no bias, PyTorch's default init; ``conv_size=0``
drops convolution and SiLU, the setting in which the copied projections see the teacher's inputs), ``g_proj``
(D → H·d with bias, PyTorch's default Linear init), ``aug`` (a, H × d_k, zeros, as the reference).
Grouped heads (``num_kv_heads``, the teacher's GQA): the gate (hence k) and v per key/value head, so the state is
per KV head, read by its group's query heads. Padding: a padded position has g = 0, hence k = 0 (no decay, no
write); the convolution runs over each row's real tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makd.students.mixers.base import State, valid_mask
from makd.students.mixers.deltanet import ShortConv, check_sizes
from makd.students.mixers.gated_linear import (GatedLinearMixer, causal_scores, chunked_forward, gate,
                                               recurrent_step, scaled_linear)


class MetaLA(GatedLinearMixer):
    """MetaLA mixer (see the module docstring). State: ``S`` (B, H_kv, d, d) and, with a convolution, ``conv``
    (B, conv_size − 1, D), the last inputs of the convolution."""
    name = "metala"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 64,
                 conv_size: int = 4, gate_temperature: float = 16.0, norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        check_sizes(hidden_size, num_heads, head_dim, chunk_size, conv_size)
        if gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {gate_temperature}")
        super().__init__(hidden_size, num_heads, head_dim, chunk_size, num_kv_heads)
        self.conv_size, self.gate_temperature, self.norm_eps = conv_size, gate_temperature, norm_eps
        self.conv1d = ShortConv(hidden_size, conv_size) if conv_size else None
        self.g_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=True)
        self.aug = nn.Parameter(torch.zeros(num_heads, self.head_dim))              # (H, d_k)

    # -- the parts ------------------------------------------------------------------------------------------------
    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        state = super().init_state(batch, dtype=dtype, device=device)
        if self.conv1d is not None:
            state["conv"] = state["S"].new_zeros(batch, self.conv_size - 1, self.hidden_size)
        return state

    def _mixed_input(self, x: torch.Tensor, mask: torch.Tensor,
                     state: State) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> u = silu(conv(x)) (B, T, D) and the next convolution state (x itself without one)."""
        if self.conv1d is None:
            return x, None
        u, conv = self.conv1d(x, state["conv"], mask)
        return F.silu(u, inplace=not torch.is_grad_enabled()), conv               # the convolution's fresh output

    def _gated_features(self, u: torch.Tensor, mask: torch.Tensor):
        """u (B, T, D), mask (B, T) -> q (B, H, T, d), k = 1 − α, v (B, H_kv, T, d), log α (B, H_kv, T, d);
        g = 0 and so k = 0 at padded positions."""
        q = self.split_heads(scaled_linear(u, self.q_proj, self.head_dim ** -0.5))    # (B, H, T, d), q / √d
        g = F.logsigmoid(self.k_proj(u)) / self.gate_temperature                     # (B, T, H_kv·d) ≤ 0
        g = self.split_heads(g * mask[..., None], self.num_kv_heads)                 # (B, H_kv, T, d)
        v = self.split_heads(self.v_proj(u), self.num_kv_heads)
        return q, -torch.expm1(g), v, g                                              # k = 1 − exp(g) ∈ [0, 1)

    def augmentation(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """σ(w_t v_t) with w_t = q_t · (a ⊙ k_t) per query head: q (B, H, T, d), k, v (B, H_kv, T, d) ->
        (B, H, T, d) (each KV head's k and v read by its group's query heads)."""
        grouped = q.unflatten(1, (self.num_kv_heads, self.groups))                   # (B, H_kv, G, T, d)
        a = self.aug.view(self.num_kv_heads, self.groups, 1, -1).to(q.dtype)         # (H_kv, G, 1, d)
        w = (grouped * a * k[:, :, None]).sum(-1, keepdim=True)                      # (B, H_kv, G, T, 1)
        return torch.sigmoid(w * v[:, :, None]).flatten(1, 2)                        # (B, H, T, d)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mixed values o (B, H, T, d) (with the augmentation) and the convolved input u (B, T, D) -> (B, T, D)."""
        o = F.layer_norm(self.merge_heads(o).unflatten(-1, (self.num_heads, self.head_dim)), (self.head_dim,),
                         eps=self.norm_eps).flatten(2)                               # (B, T, H·d)
        return self.o_proj(gate(self.g_proj(x), o))

    # -- the three forms ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        mask = valid_mask(x, attention_mask)                                         # (B, T)
        state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device) if state is None else state
        u, conv = self._mixed_input(x, mask, state)
        q, k, v, g = self._gated_features(u, mask)
        o, s = chunked_forward(q, k, v, g, {"S": state["S"].to(x.dtype)}, False, self.chunk_size)
        return self.output(o + self.augmentation(q, k, v), u), self._state(s["S"], conv)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._one_token(x)
        real = x.new_ones(x.shape[:2])                                               # (B, 1): no padding
        u, conv = self._mixed_input(x, real, state)
        q, k, v, g = self._gated_features(u, real)
        o, s = recurrent_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], g[..., 0, :], {"S": state["S"].to(x.dtype)},
                              False)                                                 # (B, H, d)
        return self.output(o[..., None, :] + self.augmentation(q, k, v), u), self._state(s["S"], conv)

    def initial_features(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """q, k = 1 − α, v, log α of x (B, T, D) from the initial state (the convolution's inputs before x are
        zeros), as :meth:`forward` computes them: (B, H, T, d), then (B, H_kv, T, d) each."""
        mask = valid_mask(x, attention_mask)
        u, _ = self._mixed_input(x, mask, self.init_state(x.shape[0], dtype=x.dtype, device=x.device))
        return self._gated_features(u, mask)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, _, g = self.initial_features(x, attention_mask)
        q = q.unflatten(1, (self.num_kv_heads, -1))                                  # (B, H_kv, G, T, d)
        return causal_scores(q, k, g.cumsum(-2)).flatten(1, 2)                       # (B, H, T, T)

    def values(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """V per query head (after the convolution), (B, H, T, d): what M multiplies."""
        return self.expand_kv(self.initial_features(x, attention_mask)[2])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conv_size={self.conv_size}, gate_temperature={self.gate_temperature}"
