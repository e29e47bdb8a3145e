"""The kernel shared by kernel linear attention, RetNet and GLA: (gated) linear attention in three forms.

One head, key features q_t, k_t (d_k), value v_t (d_v), a log-decay g_t ≤ 0 (one per key channel, GLA, or one
per head broadcast over the channels, RetNet; zero for plain linear attention). The recurrence
(Katharopoulos et al. 2020; Sun et al. 2023; Yang et al. 2024, "Gated Linear Attention Transformers")::

    S_t = diag(exp g_t) S_{t-1} + k_t v_tᵀ        (d_k, d_v)        o_t = q_tᵀ S_t
    z_t = diag(exp g_t) z_{t-1} + k_t              (d_k)  only when normalised: o_t ← o_t / max(q_t·z_t, eps)

With G_t = Σ_{s≤t} g_s and the state S_0 (z_0) before the first token, the parallel (closed) form is::

    A_ij = Σ_c q_ic k_jc exp(G_ic − G_jc)   for j ≤ i, 0 above the diagonal        (T, T)
    o_i  = (q_i ⊙ exp G_i)ᵀ S_0 + Σ_j A_ij v_j      (divided by max((q_i ⊙ exp G_i)·z_0 + Σ_j A_ij, eps))

so from the zero state M = A (or the row-normalised A / max(Σ_j A_ij, eps)) and o = M·V exactly. The chunkwise
form applies the closed form to chunks of L tokens, carrying S (z) from chunk to chunk: it builds (L, L) blocks,
never a (T, T) matrix. Every exponent is ≤ 0 (G_i − G_j for j ≤ i, G_i, G_L − G_j), so nothing overflows; per-channel
decays use one matmul when a block decays by less than √(largest float) (exp(G_i − G_0)·exp(G_0 − G_j)), else an
exact (L, L, 16-channel) sum.
Padding: the mixer zeroes k_t and g_t at padded positions, so they write nothing and decay nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from makd.students.mixers.base import Mixer, State, valid_mask

CHANNEL_BLOCK = 16   # key channels per block when materialising per-channel decays: (B, H, L, L, 16) at a time
NORM_EPS = 1e-6      # the normaliser's floor (reached only at positions that have seen no token, i.e. padding)


def causal_scores(q: torch.Tensor, k: torch.Tensor, g_cum: torch.Tensor) -> torch.Tensor:
    """A_ij = Σ_c q_ic k_jc exp(G_ic − G_jc) for j ≤ i, else 0: (…, L, d_k) ×2, G (…, L, d_k | 1) -> (…, L, L)."""
    n = q.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()          # (L, L)
    if g_cum.shape[-1] == 1:   # one decay per head: (q kᵀ) ⊙ exp(G_i − G_j)
        diff = g_cum - g_cum.transpose(-1, -2)                                      # (…, L, L)
        return (q @ k.transpose(-1, -2)) * diff.masked_fill(~causal, float("-inf")).exp()
    rel = g_cum - g_cum[..., :1, :]                                                 # (…, L, d_k) ≤ 0
    if -rel[..., -1, :].min() <= math.log(torch.finfo(q.dtype).max) / 2:
        # every block decays by less than √(largest float): exp(G_i − G_j) = exp(G_i − G_0) · exp(G_0 − G_j), two
        # factors that cannot overflow, so A is one matmul (entries above the diagonal are finite, then zeroed)
        return ((q * rel.exp()) @ (k * (-rel).exp()).transpose(-1, -2)).masked_fill(~causal, 0.0)
    scores = q.new_zeros(*q.shape[:-1], n)                                          # (…, L, L)
    for c in range(0, q.shape[-1], CHANNEL_BLOCK):   # exact and overflow-free: a block of channels at a time
        s = slice(c, c + CHANNEL_BLOCK)
        diff = g_cum[..., :, None, s] - g_cum[..., None, :, s]                     # (…, L, L, c)
        decay = diff.masked_fill(~causal[..., None], float("-inf")).exp()
        scores = scores + torch.einsum("...ic,...jc,...ijc->...ij", q[..., s], k[..., s], decay)
    return scores


def chunked_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: State,
                    normalize: bool, chunk_size: int) -> tuple[torch.Tensor, State]:
    """The chunkwise form from ``state``: the closed form inside all chunks of L tokens at once, the state carried
    across chunks by one multiply-add per chunk (one chunk, the quadratic form, when T ≤ L).
    q, k (B, H, T, d_k), v (B, H, T, d_v), g (B, H, T, d_k | 1) -> (o (B, H, T, d_v), state after the last token)."""
    n = q.shape[2]
    size = min(chunk_size, n)
    s = state["S"]                                                         # (B, H, d_k, d_v)
    if normalize:   # z rides along as one more value column: v <- [v, 1], S <- [S, z]
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        s = torch.cat([s, state["z"][..., None]], dim=-1)
    if n % size:    # a padded tail (k = 0, g = 0) writes nothing and decays nothing; its outputs are dropped
        q, k, v, g = (F.pad(t, (0, 0, 0, size - n % size)) for t in (q, k, v, g))
    q, k, v, g = (t.unflatten(2, (-1, size)) for t in (q, k, v, g))     # (B, H, N, L, ·)
    g_cum = g.cumsum(-2)                                                   # (B, H, N, L, d_k | 1)
    scores = causal_scores(q, k, g_cum)                                    # (B, H, N, L, L)
    g_end = g_cum[..., -1:, :]                                             # (B, H, N, 1, d_k | 1)
    writes = (k * (g_end - g_cum).exp()).transpose(-1, -2) @ v             # (B, H, N, d_k, d_v): keys to chunk end
    decay = g_end.transpose(-1, -2).exp()                                  # (B, H, N, d_k | 1, 1)
    starts = []
    for c in range(q.shape[2]):
        starts.append(s)
        s = torch.addcmul(writes[:, :, c], decay[:, :, c], s)
    out = (q * g_cum.exp()) @ torch.stack(starts, dim=2) + scores @ v      # (B, H, N, L, d_v)
    out = out.flatten(2, 3)[:, :, :n]                                      # (B, H, T, d_v)
    if normalize:
        return out[..., :-1] / out[..., -1:].clamp_min(NORM_EPS), {"S": s[..., :-1].contiguous(),
                                                                  "z": s[..., -1].contiguous()}
    return out, {"S": s}


def recurrent_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: State,
                   normalize: bool) -> tuple[torch.Tensor, State]:
    """One token of the recurrence: q, k (B, H, d_k), v (B, H, d_v), g (B, H, d_k | 1) -> (o (B, H, d_v), state)."""
    decay = g.exp()                                                            # (B, H, d_k | 1)
    new = {"S": decay[..., None] * state["S"] + k[..., :, None] * v[..., None, :]}   # (B, H, d_k, d_v)
    out = (q[..., None, :] @ new["S"])[..., 0, :]                              # (B, H, d_v)
    if normalize:
        new["z"] = decay * state["z"] + k                                      # (B, H, d_k)
        out = out / (q * new["z"]).sum(-1, keepdim=True).clamp_min(NORM_EPS)
    return out, new


def head_rms_norm(o: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMS norm over each head's channels ("group norm" of RetNet / GLA / xLSTM), optional per-channel weight:
    (B, H, T, d) -> (B, H, T, d)."""
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return o if weight is None else o * weight


class GatedLinearMixer(Mixer):
    """A mixer built on the kernel above. Subclasses give ``features`` (q, k, v, g before padding) and ``output``
    (the per-token normalisation, gate and ``o_proj``); this class holds the projections and the three forms."""
    normalize = False   # linear attention divides by q·z; RetNet and GLA do not (they normalise per head instead)

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, chunk_size: int = 64) -> None:
        super().__init__(hidden_size, num_heads, head_dim)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        inner = num_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    # -- what a subclass defines --------------------------------------------------------------------------------
    @property
    def key_dim(self) -> int:
        """Channels of the key features (the state is key_dim × head_dim per head)."""
        return self.head_dim

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k (B, H, T, d_k), v (B, H, T, d_v), log-decay g (B, H, T, d_k | 1), before padding."""
        raise NotImplementedError

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mixed values o (B, H, T, d_v) and the input x (B, T, D) -> (B, T, D)."""
        raise NotImplementedError

    # -- the three forms ----------------------------------------------------------------------------------------
    def _masked_features(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        q, k, v, g = self.features(x)
        keep = valid_mask(x, attention_mask)[:, None, :, None]                   # (B, 1, T, 1)
        return q, k * keep, v, g * keep          # a padded position writes nothing and decays nothing

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        dtype, device = dtype or self.q_proj.weight.dtype, device or self.q_proj.weight.device
        state = {"S": torch.zeros(batch, self.num_heads, self.key_dim, self.head_dim, dtype=dtype, device=device)}
        if self.normalize:
            state["z"] = torch.zeros(batch, self.num_heads, self.key_dim, dtype=dtype, device=device)
        return state

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        q, k, v, g = self._masked_features(x, attention_mask)
        if state is None:
            state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device)
        o, state = chunked_forward(q, k, v, g, state, self.normalize, self.chunk_size)   # (B, H, T, d)
        return self.output(o, x), state                                          # (B, T, D)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g = self.features(x)                                            # (B, H, 1, ·)
        o, state = recurrent_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], g[..., 0, :], state, self.normalize)
        return self.output(o[..., None, :], x), state                            # (B, 1, D)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, _, g = self._masked_features(x, attention_mask)
        scores = causal_scores(q, k, g.cumsum(-2))                               # (B, H, T, T)
        if self.normalize:
            scores = scores / scores.sum(-1, keepdim=True).clamp_min(NORM_EPS)
        return scores

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"

