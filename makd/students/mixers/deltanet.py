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
Grouped heads (``num_kv_heads``, the teacher's GQA): k, v and β per key/value head, so the state is per KV head and
its G = H / H_kv query heads read it; M is per query head, V its KV head's values (repeated to the group).
This module also holds the parts the Gated DeltaNet and Mamba2 mixers share (short convolution, Δ init, checks).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from makd.students.mixers.base import Mixer, State, valid_mask
from makd.students.mixers.gated_linear import fused_linear, head_rms_norm, project_out, two_products


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


def l2norm(x: torch.Tensor, eps: float = 1e-6, scale: float = 1.0) -> torch.Tensor:
    """scale · x / sqrt(|x|² + eps) over the last dimension (the reference kernels' form), two passes over x."""
    inv = (torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() + eps).rsqrt()  # (…, 1)
    return x * (inv if scale == 1.0 else inv * scale)


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
        unmasked = mask is None or bool((mask > 0).all())
        if t == 1 and unmasked:  # one decoding step: the window [state, x] times the taps, no convolution call
            window = torch.cat([state.to(x), x], 1)  # (B, K, C)
            y = (window * self.weight.squeeze(1).t()).sum(1, keepdim=True)  # (B, 1, C)
            return (y if self.bias is None else y + self.bias), window[:, 1:]
        count = torch.full((b,), t, dtype=torch.long, device=x.device)
        order = None
        if not unmasked:  # real tokens first, order kept; padding last
            order = torch.argsort((mask <= 0).to(torch.int8), dim=1, stable=True)  # (B, T)
            x = x.gather(1, order[..., None].expand(b, t, c))
            count = (mask > 0).sum(1)
        k, state = self.kernel_size[0], state.to(x)
        # y_t = Σ_j w_j · [state, x]_{t+j} (+ bias): a depthwise conv2d over (B, C, 1, T) in the channels-last layout
        # that (B, T, C) already is (no transposed copies; the fast depthwise kernel), zero-padded on the left; the
        # first K − 1 outputs, which read the state, again from [state, x_{<K−1}]
        y = self._conv(x, padding=k - 1)[:, :t]  # (B, T, C)
        head = torch.cat([state, x[:, :k - 1]], 1)  # (B, K−1 + min(T, K−1), C)
        y[:, :k - 1] = self._conv(head)[:, :t]
        if order is None:  # the last K − 1 inputs (a copy: a view would keep the whole input alive)
            nxt = x[:, t - k + 1:].clone() if t >= k - 1 else head[:, t:].clone()
        else:
            keep = count[:, None] + torch.arange(k - 1, device=x.device)  # (B, K−1)
            nxt = torch.cat([state, x], 1).gather(1, keep[..., None].expand(-1, -1, c))  # (B, K−1, C)
        if order is not None:  # back to the input positions
            y = y.gather(1, order.argsort(1)[..., None].expand(b, t, c))
        return y, nxt

    def _conv(self, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
        """(B, L, C) -> (B, L + 2·padding − K + 1, C): the depthwise convolution over x zero-padded by ``padding``
        on both sides (only the outputs that see no right padding are used)."""
        w = self.weight.unsqueeze(2)  # (C, 1, 1, K)
        y = F.conv2d(x.transpose(1, 2).unsqueeze(2), w, self.bias, groups=x.shape[-1], padding=(0, padding))
        return y.squeeze(2).transpose(1, 2)  # (B, ·, C), contiguous (channels last)


# -- the (gated) delta rule: chunked, recurrent, materialised ----------------------------------------------------------
def delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
                       state: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, T, dk), k (B, H_s, T, dk), v (B, H_s, T, dv), β and log-decay g (B, H_s, T) (g None: no decay),
    state (B, H_s, dk, dv) -> (outputs (B, H, T, dv), state after the last token): the UT-transform chunked form.
    The G = H / H_s query heads of a group read their key head's state (G consecutive heads each). Only the two
    small products that carry the state run in the loop over chunks; the outputs are one batched product after it."""
    bsz, h, t, _ = q.shape
    hs = k.shape[1]
    grp, c = h // hs, max(1, min(chunk_size, t))
    pad = (-t) % c
    if pad:  # identity steps at the end: β = 0 writes nothing, g = 0 decays nothing
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        beta, g = F.pad(beta, (0, pad)), None if g is None else F.pad(g, (0, pad))
    n = (t + pad) // c
    q = q.unflatten(1, (hs, grp)).unflatten(3, (n, c)).transpose(2, 3).reshape(bsz, hs, n, grp * c, -1)  # (…, G·C, dk)
    k, v = (z.reshape(bsz, hs, n, c, -1) for z in (k, v))  # (B, H_s, N, C, d)
    beta = beta.reshape(bsz, hs, n, c)  # (B, H_s, N, C)
    kb = k * beta[..., None]  # (B, H_s, N, C, dk)
    system = kb @ k.transpose(-1, -2)  # (B, H_s, N, C, C)
    attn = (q @ k.transpose(-1, -2)).unflatten(-2, (grp, c))  # (B, H_s, N, G, C, C)
    if g is None:
        rhs = torch.cat([v * beta[..., None], kb], -1)
        attn = attn.tril_()
    else:
        cum = g.reshape(bsz, hs, n, c).cumsum(-1)  # (B, H_s, N, C): log γ, the decay since the chunk's start
        gamma = decay_matrix(g.reshape(bsz, hs, n, c))  # (B, H_s, N, C, C)
        system, attn = system * gamma, attn * gamma[..., None, :, :]
        rhs = torch.cat([v * beta[..., None], kb * cum.exp()[..., None]], -1)
        q = (q.unflatten(-2, (grp, c)) * cum.exp()[..., None, :, None]).flatten(3, 4)  # reads the chunk's start state
        k = k * (cum[..., -1:] - cum).exp()[..., None]  # writes into the chunk's end state
        carry = cum[..., -1].exp()[..., None, None]  # (B, H_s, N, 1, 1)
    system = system.tril_(-1)
    system.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I + strict_tril(diag(β)(K Kᵀ ⊙ Γ))
    uw = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)  # (…, C, dv + dk)
    dv = v.shape[-1]
    u, w = uw[..., :dv], uw[..., dv:]
    starts, news = state.new_empty(bsz, hs, n, *state.shape[2:]), torch.empty_like(u)
    kt = k.transpose(-1, -2)  # (B, H_s, N, dk, C)
    for i in range(n):
        starts[:, :, i] = state
        new = u[:, :, i] - w[:, :, i] @ state  # (B, H_s, C, dv): the values written
        news[:, :, i] = new
        state = (state if g is None else state * carry[:, :, i]) + kt[:, :, i] @ new
    out = two_products(q, starts, attn.flatten(3, 4), news)  # (B, H_s, N, G·C, dv)
    out = out.unflatten(3, (grp, c)).permute(0, 2, 4, 1, 3, 5).reshape(bsz, n * c, h, -1)[:, :t]  # (B, T, H, dv)
    return out.transpose(1, 2), state  # (B, H, T, dv), a view of a token-major tensor


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None,
                    state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q (B, H, dk), k (B, H_s, dk), v (B, H_s, dv), β, g (B, H_s) or None, state (B, H_s, dk, dv)
    -> (output (B, H, dv), state)."""
    if g is not None:
        state = state * g.exp()[..., None, None]  # α_t S_{t-1}
    new = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", state, k))  # (B, H_s, dv)
    state = state + k[..., :, None] * new[..., None, :]  # (B, H_s, dk, dv)
    return (q.unflatten(1, (k.shape[1], -1)) @ state).flatten(1, 2), state  # (B, H_s, G, dv) -> (B, H, dv)


def delta_rule_matrix(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """q (B, H, T, dk), k (B, H_s, T, dk), β, g (B, H_s, T) or None -> M (B, H, T, T) with outputs = M V (V per
    query head: its key head's) from a zero state."""
    t, hs = k.shape[2], k.shape[1]
    gamma = decay_matrix(g if g is not None else beta.new_zeros(beta.shape))  # (B, H_s, T, T)
    system = torch.eye(t, dtype=k.dtype, device=k.device) + (beta[..., None] * (k @ k.transpose(-1, -2))
                                                            * gamma).tril(-1)  # (B, H_s, T, T)
    scores = q.unflatten(1, (hs, -1)) @ k[:, :, None].transpose(-1, -2) * gamma[:, :, None]  # (B, H_s, G, T, T)
    # M = scores · system⁻¹ · diag(β): solve X · system = scores from the right
    return (torch.linalg.solve_triangular(system[:, :, None], scores, upper=False, left=False, unitriangular=True)
            * beta[:, :, None, None, :]).flatten(1, 2)


# -- the mixer ---------------------------------------------------------------------------------------------------------
class MatrixStateWithConv:
    """The state of the delta-rule mixers and Mamba2: S (B, H_kv, d, d), one per key/value head, and, with a short
    convolution, its last K − 1 inputs (B, K − 1, (H + 2·H_kv)·d) (:meth:`Mixer._state` assembles it)."""

    @property
    def conv_channels(self) -> int:
        """Channels of the short convolution: q (or C) at the query heads, k and v (B and x) at the KV heads."""
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        dtype, device = dtype or self.q_proj.weight.dtype, device or self.q_proj.weight.device
        d = self.head_dim
        state = {"S": torch.zeros(batch, self.num_kv_heads, d, d, dtype=dtype, device=device)}
        if self.conv1d is not None:
            state["conv"] = torch.zeros(batch, self.conv_size - 1, self.conv_channels, dtype=dtype, device=device)
        return state


class DeltaNet(MatrixStateWithConv, Mixer):
    """DeltaNet mixer (see the module docstring). State: ``S`` (B, H_kv, d, d) and, with a convolution, ``conv``
    (B, conv_size − 1, (H + 2·H_kv)·d), the last inputs of the q|k|v convolution."""
    name = "deltanet"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, conv_size: int = 4,
                 output_norm: bool = True, chunk_size: int = 64, norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        check_sizes(hidden_size, num_heads, head_dim, chunk_size, conv_size)
        super().__init__(hidden_size, num_heads, head_dim, num_kv_heads)
        inner, kv_inner = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.chunk_size, self.conv_size, self.scale = chunk_size, conv_size, self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.b_proj = nn.Linear(hidden_size, self.num_kv_heads, bias=False)  # β, per KV head
        self.conv1d = ShortConv(self.conv_channels, conv_size) if conv_size else None
        self.o_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if output_norm else None

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T, D) -> log α (B, H_kv, T), or None: no decay (DeltaNet)."""
        return None

    def _features(self, x: torch.Tensor, mask: torch.Tensor, state: State):
        """x (B, T, D), mask (B, T), state -> q (B, H, T, d), k, v (B, H_kv, T, d), β, g (B, H_kv, T) (g None: no
        decay), next convolution state or None."""
        qkv = fused_linear(x, self.q_proj, self.k_proj, self.v_proj)  # (B, T, (H + 2·H_kv)·d)
        conv = None
        if self.conv1d is not None:
            qkv, conv = self.conv1d(qkv, state["conv"], mask)
            qkv = F.silu(qkv, inplace=not torch.is_grad_enabled())  # the convolution's fresh output
        kv_inner = self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([self.num_heads * self.head_dim, kv_inner, kv_inner], -1)
        q, (k, v) = self.split_heads(q), (self.split_heads(z, self.num_kv_heads) for z in (k, v))  # (B, H | H_kv, T, d)
        q, k = l2norm(q, scale=self.scale), l2norm(k)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2) * mask[:, None]  # (B, H_kv, T), 0 at padding
        g = self._log_decay(x)
        return q, k, v, beta, None if g is None else g * mask[:, None], conv  # g: 0 at padding

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Core outputs (B, H, T, d) and the input (B, T, D) -> (B, T, D)."""
        return self._project_out(self._normed(o))

    def _normed(self, o: torch.Tensor) -> torch.Tensor:
        """Core outputs (B, H, T, d) -> (B, T, H, d), each head RMS-normalised by ``o_norm`` (its eps; its weight is
        folded into ``o_proj`` by :meth:`_project_out`), in the token-major layout the core writes (no copy)."""
        o = self.merge_heads(o).unflatten(-1, (self.num_heads, self.head_dim))  # (B, T, H, d)
        return o if self.o_norm is None else head_rms_norm(o, eps=self.o_norm.eps, owned=True)

    def _project_out(self, o: torch.Tensor) -> torch.Tensor:
        """(B, T, H, d) -> (B, T, D): ``o_proj`` with ``o_norm``'s weight folded into its columns."""
        return project_out(o.flatten(2), self.o_proj, None if self.o_norm is None else self.o_norm.weight)


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
        g = None if g is None else g[..., 0]
        o, s = delta_rule_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[..., 0], g, state["S"].to(x.dtype))
        return self._output(o[:, :, None], x), self._state(s, conv)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = valid_mask(x, attention_mask)
        q, k, _, beta, g, _ = self._features(x, mask, self.init_state(x.shape[0], dtype=x.dtype, device=x.device))
        return delta_rule_matrix(q, k, beta, g)  # (B, H, T, T)

