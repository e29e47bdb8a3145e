"""DeltaNet (Yang et al. 2024, arXiv 2406.06484): linear attention whose matrix memory is written by the delta rule.

Per head, with L2-normalised keys k_t and queries q_t (queries then scaled by s = head_dim^-1/2, as the reference
kernels do), values v_t and a writing strength β_t = sigmoid(b_proj(x_t)) ∈ (0, 1), the state S_t (d_k, d_v) is

    S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,      o_t = S_tᵀ q_t

(the paper stores the transpose). The core below also carries Gated DeltaNet's scalar per-head decay α_t = exp(g_t):
S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ; here g ≡ 0.

Materialised, from S_0 = 0, with Γ_ij = α_{j+1}⋯α_i for i ≥ j (all ones here) and O = M V per head:

    M = (tril(Q Kᵀ) ⊙ Γ) · (I + strict_tril(diag(β) (K Kᵀ ⊙ Γ)))⁻¹ · diag(β)

since the values actually written, W = diag(β) V − diag(β) strict_tril(K Kᵀ ⊙ Γ) W, solve a unit lower-triangular
system (the UT transform) and O = (tril(Q Kᵀ) ⊙ Γ) W. Chunked form (the paper's WY/UT form): the same system per chunk
of C tokens with the chunk's start state S_0 entering as W = T⁻¹ (diag(β) V − diag(β γ) K S_0), γ_i = α_1⋯α_i inside
the chunk; one C×C triangular solve per chunk, O(T·C·d + T·d²) work, never a (T, T) matrix.

Around the core, as in flash-linear-attention's ``DeltaNet`` layer (its defaults): a short causal depthwise
convolution over q, k, v (kernel ``conv_size`` = 4, no bias, PyTorch's default init) followed by SiLU; its last
``conv_size − 1`` inputs are part of the recurrent state. ``conv_size=0`` drops convolution and SiLU (q, k, v are the
plain projections, the setting where a QKV copy from a teacher is exact). Then a per-head RMSNorm of the output
(weight ones, eps 1e-5; ``output_norm=False`` drops it) and ``o_proj``. ``b_proj`` (hidden → heads, no bias) has
PyTorch's default Linear init. **M excludes** the convolution/SiLU (V is the value after them) and the output RMSNorm
and ``o_proj``; it includes the scale s.

Padding: a padded token gets β = 0 and g = 0, so it writes and decays nothing; the convolution runs over each row's
real tokens only (moved to the front, order kept), so neither its windows nor its state see padding.
This module also holds the parts the Gated DeltaNet and Mamba2 mixers share (short convolution, Δ init, checks).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from makd.students.mixers.base import Mixer, State, valid_mask


# -- shared parts ----------------------------------------------------------------------------------------------------
def check_sizes(hidden_size: int, num_heads: int, head_dim: int | None, chunk_size: int, conv_size: int) -> None:
    """Raise a ValueError for sizes no mixer can use (before any parameter is built)."""
    if num_heads < 1 or (head_dim is not None and head_dim < 1) or hidden_size < 1:
        raise ValueError(f"hidden_size {hidden_size}, num_heads {num_heads}, head_dim {head_dim}: all must be >= 1")
    if chunk_size < 1 or conv_size < 0:
        raise ValueError(f"chunk_size {chunk_size} must be >= 1 and conv_size {conv_size} >= 0 (0 = no convolution)")


def dt_bias_init(heads: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> torch.Tensor:
    """Mamba's Δ bias: softplus⁻¹(Δ0) with Δ0 log-uniform in [dt_min, dt_max], floored (mamba_ssm, fla)."""
    dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # (H,)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|² + eps) over the last dimension (the reference kernels' form)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def decay_matrix(g: torch.Tensor) -> torch.Tensor:
    """Log-decays (…, T) -> Γ (…, T, T): Γ_ij = exp(g_{j+1} + … + g_i) for i >= j, 0 above the diagonal."""
    cum = g.cumsum(-1)  # (…, T)
    t = g.shape[-1]
    upper = torch.ones(t, t, dtype=torch.bool, device=g.device).triu(1)
    return (cum[..., :, None] - cum[..., None, :]).masked_fill(upper, float("-inf")).exp()


class ShortConv(nn.Conv1d):
    """Causal depthwise convolution over time, (B, T, C) -> (B, T, C); its state is the last K − 1 inputs."""

    def __init__(self, channels: int, kernel: int, bias: bool = False) -> None:
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)  # PyTorch's default init

    def forward(self, x: torch.Tensor, state: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C), state (B, K−1, C), mask (B, T) -> (outputs (B, T, C), state after the last real token)."""
        b, t, c = x.shape
        count = torch.full((b,), t, dtype=torch.long, device=x.device)
        order = None
        if mask is not None and not bool((mask > 0).all()):  # real tokens first, order kept; padding last
            order = torch.argsort((mask <= 0).to(torch.int8), dim=1, stable=True)  # (B, T)
            x = x.gather(1, order[..., None].expand(b, t, c))
            count = (mask > 0).sum(1)
        full = torch.cat([state.to(x), x], 1)  # (B, K−1+T, C)
        y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=c).transpose(1, 2)  # (B, T, C)
        keep = count[:, None] + torch.arange(self.kernel_size[0] - 1, device=x.device)  # (B, K−1)
        nxt = full.gather(1, keep[..., None].expand(-1, -1, c))  # (B, K−1, C)
        if order is not None:  # back to the input positions
            y = y.gather(1, order.argsort(1)[..., None].expand(b, t, c))
        return y, nxt


# -- the (gated) delta rule: chunked, recurrent, materialised ----------------------------------------------------------
def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor,
                       state: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, H, T, dk), v (B, H, T, dv), β and log-decay g (B, H, T), state (B, H, dk, dv)
    -> (outputs (B, H, T, dv), state after the last token): the UT-transform chunked form."""
    bsz, h, t, _ = k.shape
    c = max(1, min(chunk_size, t))
    pad = (-t) % c
    if pad:  # identity steps at the end: β = 0 writes nothing, g = 0 decays nothing
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    n = (t + pad) // c
    q, k, v = (z.reshape(bsz, h, n, c, -1) for z in (q, k, v))  # (B, H, N, C, d)
    beta, g = beta.reshape(bsz, h, n, c), g.reshape(bsz, h, n, c)  # (B, H, N, C)
    cum = g.cumsum(-1)  # (B, H, N, C): log γ, the decay since the chunk's start
    gamma = decay_matrix(g)  # (B, H, N, C, C)
    kb = k * beta[..., None]  # (B, H, N, C, dk)
    system = torch.eye(c, dtype=k.dtype, device=k.device) + (kb @ k.transpose(-1, -2) * gamma).tril(-1)
    u = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)  # (…, C, dv)
    w = torch.linalg.solve_triangular(system, kb * cum.exp()[..., None], upper=False, unitriangular=True)  # (…, C, dk)
    attn = q @ k.transpose(-1, -2) * gamma  # (B, H, N, C, C), lower triangular
    q_in = q * cum.exp()[..., None]  # reads the chunk's start state
    k_out = k * (cum[..., -1:] - cum).exp()[..., None]  # writes into the chunk's end state
    out = []
    for i in range(n):
        new = u[:, :, i] - w[:, :, i] @ state  # (B, H, C, dv): the values written
        out.append(q_in[:, :, i] @ state + attn[:, :, i] @ new)  # (B, H, C, dv)
        state = state * cum[:, :, i, -1].exp()[..., None, None] + k_out[:, :, i].transpose(-1, -2) @ new
    return torch.stack(out, 2).reshape(bsz, h, n * c, -1)[:, :, :t], state


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k (B, H, dk), v (B, H, dv), β, g (B, H), state (B, H, dk, dv) -> (output (B, H, dv), state)."""
    state = state * g.exp()[..., None, None]  # α_t S_{t-1}
    new = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", state, k))  # (B, H, dv)
    state = state + k[..., :, None] * new[..., None, :]  # (B, H, dk, dv)
    return torch.einsum("bhkv,bhk->bhv", state, q), state


def delta_rule_matrix(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """q, k (B, H, T, dk), β, g (B, H, T) -> M (B, H, T, T) with outputs = M V from a zero state."""
    gamma = decay_matrix(g)  # (B, H, T, T)
    t = k.shape[2]
    system = torch.eye(t, dtype=k.dtype, device=k.device) + (beta[..., None] * (k @ k.transpose(-1, -2))
                                                            * gamma).tril(-1)  # (B, H, T, T)
    scores = q @ k.transpose(-1, -2) * gamma  # (B, H, T, T) lower triangular
    # M = scores · system⁻¹ · diag(β): solve X · system = scores from the right
    return torch.linalg.solve_triangular(system, scores, upper=False, left=False, unitriangular=True) \
        * beta[..., None, :]


# -- the mixer ---------------------------------------------------------------------------------------------------------
class MatrixStateWithConv:
    """The state of the delta-rule mixers and Mamba2: S (B, H, d, d) and, with a short convolution, its last
    K − 1 inputs (B, K − 1, 3·H·d); the one-token check of ``step``."""

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        dtype, device = dtype or self.q_proj.weight.dtype, device or self.q_proj.weight.device
        h, d = self.num_heads, self.head_dim
        state = {"S": torch.zeros(batch, h, d, d, dtype=dtype, device=device)}
        if self.conv1d is not None:
            state["conv"] = torch.zeros(batch, self.conv_size - 1, 3 * h * d, dtype=dtype, device=device)
        return state

    def _state(self, s: torch.Tensor, conv: torch.Tensor | None) -> State:
        return {"S": s} if conv is None else {"S": s, "conv": conv}

    @staticmethod
    def _one_token(x: torch.Tensor) -> None:
        if x.shape[1] != 1:
            raise ValueError(f"step takes one token (B, 1, D), got {tuple(x.shape)}: use forward for a sequence")


class DeltaNet(MatrixStateWithConv, Mixer):
    """DeltaNet mixer (see the module docstring). State: ``S`` (B, H, d, d) and, with a convolution, ``conv``
    (B, conv_size − 1, 3·H·d), the last inputs of the q|k|v convolution."""
    name = "deltanet"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, conv_size: int = 4,
                 output_norm: bool = True, chunk_size: int = 64, norm_eps: float = 1e-5) -> None:
        check_sizes(hidden_size, num_heads, head_dim, chunk_size, conv_size)
        super().__init__(hidden_size, num_heads, head_dim)
        inner = self.num_heads * self.head_dim
        self.chunk_size, self.conv_size, self.scale = chunk_size, conv_size, self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)  # β
        self.conv1d = ShortConv(3 * inner, conv_size) if conv_size else None
        self.o_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if output_norm else None

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> log α (B, H, T): none for DeltaNet."""
        return x.new_zeros(x.shape[0], self.num_heads, x.shape[1])

    def _features(self, x: torch.Tensor, mask: torch.Tensor, state: State):
        """x (B, T, D), mask (B, T), state -> q, k, v (B, H, T, d), β, g (B, H, T), next convolution state or None."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H·d) each
        conv = None
        if self.conv1d is not None:
            qkv, conv = self.conv1d(torch.cat([q, k, v], -1), state["conv"], mask)  # (B, T, 3·H·d)
            q, k, v = F.silu(qkv).chunk(3, -1)
        q, k, v = (self.split_heads(z) for z in (q, k, v))  # (B, H, T, d)
        q, k = l2norm(q) * self.scale, l2norm(k)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2) * mask[:, None]  # (B, H, T), 0 at padding
        g = self._log_decay(x) * mask[:, None]  # (B, H, T), 0 at padding
        return q, k, v, beta, g, conv

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Core outputs (B, H, T, d) and the input (B, T, D) -> (B, T, D)."""
        if self.o_norm is not None:
            o = self.o_norm(o)
        return self.o_proj(self.merge_heads(o))


    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        mask = valid_mask(x, attention_mask)  # (B, T)
        state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device) if state is None else state
        q, k, v, beta, g, conv = self._features(x, mask, state)
        o, s = delta_rule_chunked(q, k, v, beta, g, state["S"].to(x.dtype), self.chunk_size)  # (B, H, T, d)
        return self._output(o, x), self._state(s, conv)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._one_token(x)
        q, k, v, beta, g, conv = self._features(x, x.new_ones(x.shape[:2]), state)
        o, s = delta_rule_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[..., 0], g[..., 0], state["S"].to(x.dtype))
        return self._output(o[:, :, None], x), self._state(s, conv)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = valid_mask(x, attention_mask)
        q, k, _, beta, g, _ = self._features(x, mask, self.init_state(x.shape[0], dtype=x.dtype, device=x.device))
        return delta_rule_matrix(q, k, beta, g)  # (B, H, T, T)

