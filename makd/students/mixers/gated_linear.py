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
Grouped heads (GQA): when k, v and g are per key/value head, the G query heads of a group read one state, and
their G·L query rows of a chunk go through one matmul with the group's keys. Without decay (linear attention) the
states at the chunk starts are a prefix sum of the chunks' writes, with no loop.
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


def causal_scores(q: torch.Tensor, k: torch.Tensor, g_cum: torch.Tensor | None) -> torch.Tensor:
    """A_ij = Σ_c q_ic k_jc exp(G_ic − G_jc) for j ≤ i, else 0, for the G query heads that share a key head:
    q (…, G, L, d_k), k (…, L, d_k), G (…, L, d_k | 1) or None (no decay) -> (…, G, L, L)."""
    grp, n = q.shape[-3], k.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()          # (L, L)

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:   # one matmul over the group's G·L query rows
        return (a.flatten(-3, -2) @ b.transpose(-1, -2)).unflatten(-2, (grp, n))  # (…, G, L, L)
    if g_cum is None:          # no decay: (q kᵀ) masked
        return dot(q, k).masked_fill_(~causal, 0.0)
    if g_cum.shape[-1] == 1:   # one decay per head: (q kᵀ) ⊙ exp(G_i − G_j)
        diff = (g_cum - g_cum.transpose(-1, -2)).masked_fill_(~causal, float("-inf")).exp_()   # (…, L, L)
        return dot(q, k).mul_(diff[..., None, :, :])
    rel = g_cum - g_cum[..., :1, :]                                                 # (…, L, d_k) ≤ 0
    if -rel[..., -1, :].min() <= math.log(torch.finfo(q.dtype).max) / 2:
        # every block decays by less than √(largest float): exp(G_i − G_j) = exp(G_i − G_0) · exp(G_0 − G_j), two
        # factors that cannot overflow, so A is one matmul (entries above the diagonal are finite, then zeroed)
        return dot(q * rel.exp()[..., None, :, :], k * (-rel).exp()).masked_fill_(~causal, 0.0)
    scores = q.new_zeros(*q.shape[:-1], n)                                          # (…, G, L, L)
    for c in range(0, q.shape[-1], CHANNEL_BLOCK):   # exact and overflow-free: a block of channels at a time
        s = slice(c, c + CHANNEL_BLOCK)
        diff = g_cum[..., :, None, s] - g_cum[..., None, :, s]                     # (…, L, L, c)
        decay = diff.masked_fill(~causal[..., None], float("-inf")).exp()
        scores = scores + torch.einsum("...gic,...jc,...ijc->...gij", q[..., s], k[..., s], decay)
    return scores


def chunked_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, state: State,
                    normalize: bool, chunk_size: int) -> tuple[torch.Tensor, State]:
    """The chunkwise form from ``state``: the closed form inside all chunks of L tokens at once, the state carried
    across chunks by one multiply-add per chunk (a prefix sum when there is no decay; one chunk, the quadratic form,
    when T ≤ L). Grouped heads: the H = G·H_s query heads read the state of their key head, G consecutive ones each.
    q (B, H, T, d_k), k (B, H_s, T, d_k), v (B, H_s, T, d_v), g (B, H_s, T, d_k | 1) or None (no decay), state
    S (B, H_s, d_k, d_v) (and z (B, H_s, d_k)) -> (o (B, H, T, d_v), a view of a token-major tensor, state)."""
    b, h, n, _ = q.shape
    hs = k.shape[1]
    grp, size = h // hs, min(chunk_size, n)
    s = state["S"]                                                         # (B, H_s, d_k, d_v)
    if normalize:   # z rides along as one more value column: v <- [v, 1], S <- [S, z]
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        s = torch.cat([s, state["z"][..., None]], dim=-1)
    pad = (-n) % size
    # the same decays at every position (RetNet without padding: g broadcast over T): one chunk's cumulated decays
    uniform = g is not None and g.stride(2) == 0 and not pad
    if pad:         # a padded tail (k = 0, g = 0) writes nothing and decays nothing; its outputs are dropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g = None if g is None else F.pad(g, (0, 0, 0, pad))
    nc = (n + pad) // size
    q = q.unflatten(1, (hs, grp)).unflatten(3, (nc, size)).transpose(2, 3).reshape(b, hs, nc, grp * size, -1)
    q = q.unflatten(3, (grp, size))                                        # (B, H_s, N, G, L, d_k)
    k, v = (t.unflatten(2, (nc, size)) for t in (k, v))                   # (B, H_s, N, L, ·)
    if uniform:
        g_cum = g[:, :, None, :size].cumsum(-2)                            # (B, H_s, 1, L, d_k | 1), as every chunk's
    else:
        g_cum = None if g is None else g.unflatten(2, (nc, size)).cumsum(-2)   # (B, H_s, N, L, d_k | 1)
    scores = causal_scores(q, k, g_cum)                                    # (B, H_s, N, G, L, L)
    if g_cum is None:
        writes = k.transpose(-1, -2) @ v                                   # (B, H_s, N, d_k, d_v)
        earlier = F.pad(writes[:, :, :-1], (0, 0, 0, 0, 1, 0))             # chunk c: the writes of chunks < c
        starts = earlier.cumsum(2).add_(s[:, :, None])                     # the state before each chunk
        s = starts[:, :, -1] + writes[:, :, -1]
    else:
        g_end = g_cum[..., -1:, :]                                         # (B, H_s, N, 1, d_k | 1)
        writes = (k * (g_end - g_cum).exp()).transpose(-1, -2) @ v         # (B, H_s, N, d_k, d_v): keys to chunk end
        decay = g_end.transpose(-1, -2).exp().expand(-1, -1, nc, -1, -1)   # (B, H_s, N, d_k | 1, 1)
        starts = torch.empty_like(writes)
        for c in range(nc):
            starts[:, :, c] = s
            s = torch.addcmul(writes[:, :, c], decay[:, :, c], s)
        q = q * g_cum.exp()[:, :, :, None]                                 # reads the chunk's start state
    out = two_products(q.flatten(3, 4), starts, scores.flatten(3, 4), v)   # (B, H_s, N, G·L, d_v)
    out = out.unflatten(3, (grp, size)).permute(0, 2, 4, 1, 3, 5).reshape(b, nc * size, h, -1)[:, :n]
    out = out.transpose(1, 2)                                              # (B, H, T, d_v), token-major underneath
    if normalize:
        return out[..., :-1] / out[..., -1:].clamp_min(NORM_EPS), {"S": s[..., :-1].contiguous(),
                                                                  "z": s[..., -1].contiguous()}
    return out, {"S": s}


def two_products(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """a @ b + c @ d, (…, M, K) @ (…, K, N) + (…, M, K') @ (…, K', N) with the same batch dims: the second product
    accumulated into the first (one baddbmm, no separate add pass)."""
    out = a @ b                                                                # (…, M, N)
    flat = out.view(-1, *out.shape[-2:])
    flat.baddbmm_(c.reshape(-1, *c.shape[-2:]), d.reshape(-1, *d.shape[-2:]))
    return out


def recurrent_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, state: State,
                   normalize: bool) -> tuple[torch.Tensor, State]:
    """One token of the recurrence: q (B, H, d_k), k (B, H_s, d_k), v (B, H_s, d_v), g (B, H_s, d_k | 1) or None
    -> (o (B, H, d_v), state); the G = H / H_s query heads of a group read their key head's state."""
    decay = None if g is None else g.exp()                                     # (B, H_s, d_k | 1)
    s = state["S"] if decay is None else decay[..., None] * state["S"]
    new = {"S": s + k[..., :, None] * v[..., None, :]}                         # (B, H_s, d_k, d_v)
    qg = q.unflatten(1, (k.shape[1], -1))                                      # (B, H_s, G, d_k)
    out = (qg @ new["S"]).flatten(1, 2)                                        # (B, H, d_v)
    if normalize:
        new["z"] = (state["z"] if decay is None else decay * state["z"]) + k  # (B, H_s, d_k)
        out = out / (qg * new["z"][:, :, None]).sum(-1).flatten(1, 2)[..., None].clamp_min(NORM_EPS)
    return out, new


def head_rms_norm(o: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
                  owned: bool = False) -> torch.Tensor:
    """RMS norm over each head's channels ("group norm" of RetNet / GLA / xLSTM), optional per-channel weight:
    (…, d) -> (…, d). ``owned``: o is a temporary of the caller's, which the norm may overwrite when no gradient is
    recorded (prefill and generation: fewer fresh buffers)."""
    inv = (torch.linalg.vector_norm(o, dim=-1, keepdim=True).square() / o.shape[-1] + eps).rsqrt()   # (…, 1)
    in_place = owned and not torch.is_grad_enabled()
    o = o.mul_(inv) if in_place else o * inv          # o · rsqrt(mean(o²) + eps): two passes over o, not five
    if weight is None:
        return o
    return o.mul_(weight) if not torch.is_grad_enabled() else o * weight


def folds(x: torch.Tensor, in_features: int) -> bool:
    """Whether a per-channel scale (or a concatenation) is cheaper on the weight than on the activations: folding
    costs one pass over the (out, in) weight, scaling the activations one pass over (tokens, out), so fold when the
    input holds more tokens than the weight has input features (prefill, training) and not otherwise (a decoding
    step: one token, where folding would copy every weight of the mixer once more per token)."""
    return x.numel() // x.shape[-1] > in_features


def scaled_linear(x: torch.Tensor, proj: nn.Linear, scale: torch.Tensor | float) -> torch.Tensor:
    """proj(x) ⊙ scale with the scale (a number, or per output channel: (d,) repeated over the heads, or (out,));
    on many tokens folded into the bias-free weight's rows (one small product instead of a pass over the
    (B, T, out) output), on few tokens applied to the output (:func:`folds`)."""
    fold = folds(x, proj.in_features)
    if not isinstance(scale, torch.Tensor):
        return F.linear(x, proj.weight * scale) if fold else F.linear(x, proj.weight).mul_(scale)
    if fold:
        return F.linear(x, proj.weight * scale.repeat(proj.out_features // scale.numel())[:, None])
    out = F.linear(x, proj.weight)                                                  # (…, out)
    out.unflatten(-1, (-1, scale.numel())).mul_(scale)                              # per head, broadcast, in place
    return out


def project_out(o: torch.Tensor, proj: nn.Linear, weight: torch.Tensor | None = None) -> torch.Tensor:
    """proj(o ⊙ weight), o (B, T, H·d), weight (d,) per head channel or (H·d,): on many tokens folded into the
    bias-free weight's columns (the output norm's weight, without a pass over o), on few tokens applied to o."""
    if weight is None:
        return proj(o)
    if folds(o, proj.in_features):
        return F.linear(o, proj.weight * weight.repeat(proj.in_features // weight.numel()))
    return F.linear((o.unflatten(-1, (-1, weight.numel())) * weight).flatten(-2), proj.weight)


def fused_linear(x: torch.Tensor, *projections: nn.Linear) -> torch.Tensor:
    """x (B, T, D) through bias-free projections, their outputs side by side (B, T, Σ widths): on many tokens one
    matmul with the weights concatenated, on few tokens one per projection (:func:`folds`: concatenating would copy
    the weights for one token's products)."""
    if folds(x, projections[0].in_features):
        return F.linear(x, torch.cat([p.weight for p in projections]))
    return torch.cat([F.linear(x, p.weight) for p in projections], dim=-1)


def gate(g: torch.Tensor, o: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """silu(g) ⊙ o (sigmoid(g) ⊙ o) for a fresh projection g (…, ·) and o broadcast to it; written into g when no
    gradient is recorded."""
    if torch.is_grad_enabled():
        return (torch.sigmoid(g) if sigmoid else F.silu(g)) * o
    return (g.sigmoid_() if sigmoid else F.silu(g, inplace=True)).mul_(o)


class GatedLinearMixer(Mixer):
    """A mixer built on the kernel above. Subclasses give ``features`` (q, k, v, g before padding) and ``output``
    (the per-token normalisation, gate and ``o_proj``); this class holds the projections and the three forms.
    ``k_proj`` / ``v_proj`` have ``num_kv_heads`` heads; the state is kept per KV head (``shared_state``) unless a
    subclass's decay is per query head (RetNet), which repeats K and V to the query heads in ``features``."""
    normalize = False      # linear attention divides by q·z; RetNet and GLA do not (they normalise per head instead)
    shared_state = True    # the state (and the decay g) per KV head, read by the group's query heads

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, chunk_size: int = 64,
                 num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, num_kv_heads)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        inner, kv_inner = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    # -- what a subclass defines --------------------------------------------------------------------------------
    @property
    def key_dim(self) -> int:
        """Channels of the key features (the state is key_dim × head_dim per head)."""
        return self.head_dim

    @property
    def state_heads(self) -> int:
        """Heads of the state: the KV heads (``shared_state``) or the query heads."""
        return self.num_kv_heads if self.shared_state else self.num_heads

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, T, D) -> q (B, H, T, d_k), k (B, H_s, T, d_k), v (B, H_s, T, d_v), log-decay g (B, H_s, T, d_k | 1)
        or None (no decay), before padding; H_s = ``state_heads``."""
        raise NotImplementedError

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mixed values o (B, H, T, d_v) and the input x (B, T, D) -> (B, T, D)."""
        raise NotImplementedError

    # -- the three forms ----------------------------------------------------------------------------------------
    def _masked_features(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        q, k, v, g = self.features(x)
        if attention_mask is None:
            return q, k, v, g
        keep = valid_mask(x, attention_mask)[:, None, :, None]                   # (B, 1, T, 1)
        return q, k * keep, v, None if g is None else g * keep   # a padded position writes and decays nothing

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        dtype, device = dtype or self.q_proj.weight.dtype, device or self.q_proj.weight.device
        heads = self.state_heads
        state = {"S": torch.zeros(batch, heads, self.key_dim, self.head_dim, dtype=dtype, device=device)}
        if self.normalize:
            state["z"] = torch.zeros(batch, heads, self.key_dim, dtype=dtype, device=device)
        return state

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        q, k, v, g = self._masked_features(x, attention_mask)
        if state is None:
            state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device)
        o, state = chunked_forward(q, k, v, g, state, self.normalize, self.chunk_size)   # (B, H, T, d)
        return self.output(o, x), state                                          # (B, T, D)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g = self.features(x)                                            # (B, H | H_s, 1, ·)
        g = None if g is None else g[..., 0, :]
        o, state = recurrent_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], g, state, self.normalize)
        return self.output(o[..., None, :], x), state                            # (B, 1, D)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, _, g = self._masked_features(x, attention_mask)
        q = q.unflatten(1, (k.shape[1], -1))                                    # (B, H_s, G, T, d_k)
        scores = causal_scores(q, k, None if g is None else g.cumsum(-2)).flatten(1, 2)   # (B, H, T, T)
        if self.normalize:
            scores = scores / scores.sum(-1, keepdim=True).clamp_min(NORM_EPS)
        return scores

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
