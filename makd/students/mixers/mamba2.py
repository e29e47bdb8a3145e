"""Mamba2 (Dao & Gu 2024, arXiv 2405.21060): the SSD layer, a selective state space with one scalar decay per head.

Per head, with x_t = the value (P = head_dim channels), B_t = the key and C_t = the query (N = head_dim state size),
Δ_t = softplus(dt_proj(u_t) + dt_bias) > 0 (u_t the mixer's input), A = −exp(A_log) < 0 and a_t = exp(Δ_t A) ∈ (0, 1):

    S_t = a_t S_{t-1} + B_t (Δ_t x_t)ᵀ      (N, P),        y_t = S_tᵀ C_t + D x_t

Materialised, with L_ij = a_{j+1}⋯a_i for i ≥ j (the segment-sum decay) and y = M x per head:

    M = (C Bᵀ ⊙ L) · diag(Δ) + D I        (SSD's 1-semiseparable matrix plus the skip on the diagonal)

Chunked form (SSD, §6): inside a chunk of C tokens the quadratic form above; across chunks the state, carried by a
loop over T/C chunks: O(T·C·d + T·d²) work, never a (T, T) matrix.

Around the core, as in the reference Mamba2 block (``mamba_ssm``) with one B/C group per head, so that a teacher's
heads map one to one (QKV copy: Q → C = ``q_proj``, K → B = ``k_proj``, V → x = ``v_proj``): x, B and C pass a short
causal depthwise convolution (kernel ``conv_size`` = 4, with bias, PyTorch's default init) and SiLU; its last
``conv_size − 1`` inputs are part of the recurrent state (``conv_size=0`` drops convolution and SiLU). The output is
gated and normalised, RMSNorm(y ⊙ SiLU(z)) per head (``norm_before_gate=False``; weight ones, eps 1e-5;
z = ``g_proj``(x); ``gate=False`` / ``output_norm=False`` drop either), then ``o_proj``.
Initialisation as in ``mamba_ssm``: A ~ U(1, 16), A_log = log A; dt_bias = softplus⁻¹(Δ0), Δ0 log-uniform in
[1e-3, 1e-1] floored at 1e-4; D = 1; ``dt_proj`` (hidden → heads, no bias) and ``g_proj`` PyTorch's default Linear init.
**M excludes** the convolution/SiLU (it acts on x after them), the gate, the norm and ``o_proj``; it includes Δ and D.

The SSD core is our own, checked in the tests against transformers' ``mamba2_chunk_scan`` (same A, Δ, B, C, x,
initial state): that function always computes in float32 and has no padding rule, so it is a reference, not reused.
Padding: Δ = 0 at a padded token (a = 1, nothing written); the convolution runs over each row's real tokens only.
Grouped heads (``num_kv_heads``, the teacher's GQA, K → B and V → x): B, x, Δ and A (``k_proj``, ``v_proj``,
``dt_proj``, ``dt_bias``, ``A_log``) per key/value head, so the state is per KV head, read by the G = H / H_kv C
heads of its group; D per C head (its skip adds the group's x).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from makd.students.mixers.base import Mixer, State, valid_mask
from makd.students.mixers.deltanet import (MatrixStateWithConv, ShortConv, check_sizes, decay_matrix,
                                          dt_bias_init)
from makd.students.mixers.gated_linear import chunked_forward, fused_linear, gate, head_rms_norm, project_out


def ssd_chunked(c_: torch.Tensor, b_: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, log_a: torch.Tensor,
                state: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """C (B, H, T, N), B (B, H_s, T, N), x (B, H_s, T, P), Δ and log a (B, H_s, T), state (B, H_s, N, P)
    -> (y without the D skip (B, H, T, P), state after the last token). SSD is gated linear attention with one
    decay per head (q = C, k = B, v = Δ·x, g = log a): the chunked kernel of :mod:`.gated_linear`, whose G = H / H_s
    C heads of a group read their state head."""
    y, new = chunked_forward(c_, b_, x * dt[..., None], log_a[..., None], {"S": state}, False, chunk_size)
    return y, new["S"]


class Mamba2(MatrixStateWithConv, Mixer):
    """Mamba2 (SSD) mixer. State: ``S`` (B, H_kv, N, P) and, with a convolution, ``conv``
    (B, conv_size − 1, (H + 2·H_kv)·d), the last inputs of the x|B|C convolution."""
    name = "mamba2"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, conv_size: int = 4,
                 gate: bool = True, output_norm: bool = True, chunk_size: int = 64, norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        check_sizes(hidden_size, num_heads, head_dim, chunk_size, conv_size)
        super().__init__(hidden_size, num_heads, head_dim, num_kv_heads)
        h, hs, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.chunk_size, self.conv_size, self.norm_eps = chunk_size, conv_size, norm_eps
        self.q_proj = nn.Linear(hidden_size, h * d, bias=False)  # C
        self.k_proj = nn.Linear(hidden_size, hs * d, bias=False)  # B
        self.v_proj = nn.Linear(hidden_size, hs * d, bias=False)  # x
        self.o_proj = nn.Linear(h * d, hidden_size, bias=False)
        self.dt_proj = nn.Linear(hidden_size, hs, bias=False)  # Δ's data-dependent part
        self.dt_bias = nn.Parameter(dt_bias_init(hs))  # (H_kv,)
        self.A_log = nn.Parameter(torch.empty(hs).uniform_(1, 16).log())  # (H_kv,)
        self.D = nn.Parameter(torch.ones(h))  # (H,)
        self.conv1d = ShortConv(self.conv_channels, conv_size, bias=True) if conv_size else None
        self.g_proj = nn.Linear(hidden_size, h * d, bias=False) if gate else None  # z
        self.norm_weight = nn.Parameter(torch.ones(h * d)) if output_norm else None

    def _features(self, x: torch.Tensor, mask: torch.Tensor, state: State):
        """x (B, T, D), mask (B, T), state -> C (B, H, T, d), B, x (B, H_kv, T, d), Δ, log a (B, H_kv, T), next
        convolution state."""
        xbc = fused_linear(x, self.v_proj, self.k_proj, self.q_proj)  # (B, T, (2·H_kv + H)·d)
        conv = None
        if self.conv1d is not None:
            xbc, conv = self.conv1d(xbc, state["conv"], mask)
            xbc = F.silu(xbc, inplace=not torch.is_grad_enabled())  # the convolution's fresh output
        kv_inner = self.num_kv_heads * self.head_dim
        v, b_, c_ = xbc.split([kv_inner, kv_inner, self.num_heads * self.head_dim], -1)
        c_, b_, v = self.split_heads(c_), self.split_heads(b_, self.num_kv_heads), self.split_heads(v, self.num_kv_heads)
        dt = F.softplus(self.dt_proj(x) + self.dt_bias).transpose(1, 2) * mask[:, None]  # (B, H_kv, T), 0 at padding
        return c_, b_, v, dt, -self.A_log.exp()[:, None] * dt, conv

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """SSD outputs (B, H, T, d) and the input (B, T, D) -> (B, T, D): gate, norm, o_proj (token-major)."""
        y = self.merge_heads(y).unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, d)
        if self.g_proj is not None:
            y = gate(self.g_proj(x).unflatten(-1, (self.num_heads, self.head_dim)), y)
        if self.norm_weight is not None:
            y = head_rms_norm(y, eps=self.norm_eps, owned=True)
        return project_out(y.flatten(2), self.o_proj, self.norm_weight)  # the norm's weight folded into o_proj

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        mask = valid_mask(x, attention_mask)  # (B, T)
        state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device) if state is None else state
        c_, b_, v, dt, log_a, conv = self._features(x, mask, state)
        y, s = ssd_chunked(c_, b_, v, dt, log_a, state["S"].to(x.dtype), self.chunk_size)  # (B, H, T, d)
        return self._output(self._skip(y, v), x), self._state(s, conv)

    def _skip(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """y (B, H, T, d) + D x, x (B, H_kv, T, d) read by the H / H_kv heads of its group: (B, H, T, d)."""
        d_skip = self.D.view(self.num_kv_heads, self.groups, 1, 1)  # (H_kv, G, 1, 1)
        return (y.unflatten(1, (self.num_kv_heads, self.groups)) + d_skip * v[:, :, None]).flatten(1, 2)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._one_token(x)
        c_, b_, v, dt, log_a, conv = self._features(x, x.new_ones(x.shape[:2]), state)
        c_, b_, v, dt, log_a = c_[:, :, 0], b_[:, :, 0], v[:, :, 0], dt[..., 0], log_a[..., 0]  # (B, H, d), (B, H)
        s = state["S"].to(x.dtype) * log_a.exp()[..., None, None] \
            + b_[..., :, None] * (dt[..., None] * v)[..., None, :]  # (B, H_kv, N, P)
        y = (c_.unflatten(1, (self.num_kv_heads, -1)) @ s).flatten(1, 2)  # (B, H, P): each C head reads its state
        return self._output(self._skip(y[:, :, None], v[:, :, None]), x), self._state(s, conv)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = valid_mask(x, attention_mask)
        c_, b_, _, dt, log_a, _ = self._features(x, mask, self.init_state(x.shape[0], dtype=x.dtype, device=x.device))
        m = c_.unflatten(1, (self.num_kv_heads, -1)) @ b_[:, :, None].transpose(-1, -2)  # (B, H_kv, G, T, T)
        m = (m * (decay_matrix(log_a) * dt[..., None, :])[:, :, None]).flatten(1, 2)  # (B, H, T, T)
        return m + torch.diag_embed(self.D[:, None].expand(-1, x.shape[1]).to(m))

