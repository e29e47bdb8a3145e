"""xLSTM's mLSTM (``mlstm``): a matrix memory with an exponential input gate, a forget gate and a stabiliser.

Follows Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (the mLSTM cell, its stabilised parallel form)
and the native PyTorch kernels of xLSTM 7B as bundled in ``transformers.models.xlstm`` (same eps, same m_0 = 0).
Per head, pre-activations ĩ_t, f̃_t (one scalar each), log f_t = logsigmoid(f̃_t), q scaled by 1/√d::

    m_t = max(log f_t + m_{t-1}, ĩ_t)                                   the max-stabiliser
    C_t = exp(log f_t + m_{t-1} − m_t) C_{t-1} + exp(ĩ_t − m_t) k_t v_tᵀ      (d, d)
    n_t = exp(log f_t + m_{t-1} − m_t) n_{t-1} + exp(ĩ_t − m_t) k_t           (d)
    h_t = C_tᵀ q_t / (max(|n_t·q_t|, exp(−m_t)) + eps),   eps = 1e-6,   (C_0, n_0, m_0) = (0, 0, 0)

Parallel (stabilised) form, b_t = Σ_{s≤t} log f_s::

    D_ij = b_i − b_j + ĩ_j  (j ≤ i, else −inf),   m_i = max(b_i + m_0, max_j D_ij)
    W_ij = exp(D_ij − m_i) q_i·k_j,   h_i = Σ_j W_ij v_j / (max(|Σ_j W_ij|, exp(−m_i)) + eps)   (from the zero state)

so M_ij = W_ij / (max(|Σ_l W_il|, exp(−m_i)) + eps) — the stabilised, normalised, decay-weighted q·k matrix — and
h = M·V exactly. The chunkwise form carries (C, n, m) across chunks of L tokens (blocks (L, L), never (T, T)).
The output: y = o_proj(sigmoid(g_proj x) ⊙ RMSNorm(h)) with a per-head RMS norm with a learnable weight
(``norm_weight``, ones; xLSTM uses a per-head LayerNorm); M excludes the norm, the output gate and ``o_proj``.
A padded position has ĩ = −inf and log f = 0: it writes nothing and decays nothing (m unchanged).
New parameters and their initialisation (xLSTM 7B's): ``igate`` and ``fgate`` = Linear(D, H) with zero weights,
input-gate bias ``igate_bias`` (−10) and forget-gate biases linspace(3, 6) over the heads; ``g_proj`` =
Linear(D, H·d, no bias) with PyTorch's default initialisation. No soft-cap of the gate pre-activations.
Grouped heads (``num_kv_heads``): ``k_proj`` / ``v_proj`` have the teacher's KV widths; the gates are per query
head, so K and V are repeated to the query heads and the state stays per query head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makd.students.mixers.base import Mixer, State, valid_mask
from makd.students.mixers.gated_linear import gate, head_rms_norm, project_out, scaled_linear

EPS = 1e-6   # the denominator's eps, as xLSTM's native kernels


def mlstm_scores(q: torch.Tensor, k: torch.Tensor, igate: torch.Tensor, log_f: torch.Tensor, m0: torch.Tensor):
    """The stabilised weights inside a chunk from the stabiliser m0 (…, 1) before it: q (scaled), k (…, L, d),
    ĩ, log f (…, L) -> W (…, L, L), m (…, L), b (…, L)."""
    n = q.shape[-2]
    b = log_f.cumsum(-1)                                                        # (…, L)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    log_d = (b[..., :, None] - b[..., None, :]).add_(igate[..., None, :]).masked_fill_(~causal, float("-inf"))
    m = torch.maximum(b + m0, log_d.max(-1).values)                             # (…, L)
    if torch.is_grad_enabled():
        weights = (log_d - m[..., None]).exp() * (q @ k.transpose(-1, -2))      # (…, L, L)
    else:   # inference (prefill): the same numbers, in place
        weights = log_d.sub_(m[..., None]).exp_().mul_(q @ k.transpose(-1, -2))
    return weights, m, b


def mlstm_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, log_f: torch.Tensor,
                  state: State, chunk_size: int) -> tuple[torch.Tensor, State]:
    """The chunkwise form from ``state`` (C (B, H, d, d_v), n (B, H, d), m (B, H, 1)): the parallel form inside all
    chunks of L tokens at once, (C, n) carried across chunks by one multiply-add per chunk, m in closed form.
    q (scaled), k (B, H, T, d), v (B, H, T, d_v), ĩ, log f (B, H, T) -> (h (B, H, T, d_v), state after the last token)."""
    n = q.shape[2]
    size = min(chunk_size, n)
    v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)              # n rides along as one more value column
    s = torch.cat([state["C"], state["n"][..., None]], dim=-1)            # (B, H, d, d_v + 1)
    if n % size:   # a padded tail (ĩ = −inf, log f = 0) writes nothing and decays nothing; its outputs are dropped
        pad = size - n % size
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        igate, log_f = F.pad(igate, (0, pad), value=float("-inf")), F.pad(log_f, (0, pad))
    q, k, v = (t.unflatten(2, (-1, size)) for t in (q, k, v))            # (B, H, N, L, ·)
    igate, log_f = igate.unflatten(2, (-1, size)), log_f.unflatten(2, (-1, size))   # (B, H, N, L)
    b = log_f.cumsum(-1)                                                   # (B, H, N, L)
    # the stabiliser at every chunk end, in closed form over the chunks: m_c = max(G_c + m_0, max_c' G_c − G_c' + a_c')
    write_exp = b[..., -1:] - b + igate                                    # (B, H, N, L) log weight of a write at chunk end
    g_chunk = b[..., -1].cumsum(-1)                                        # (B, H, N)
    nc = g_chunk.shape[-1]
    later = torch.ones(nc, nc, dtype=torch.bool, device=q.device).tril()
    cand = (g_chunk[..., :, None] - g_chunk[..., None, :] + write_exp.max(-1).values[..., None, :])
    m_end = torch.maximum(g_chunk + state["m"], cand.masked_fill(~later, float("-inf")).max(-1).values)   # (B, H, N)
    m_start = torch.cat([state["m"], m_end[..., :-1]], dim=-1)             # (B, H, N)
    writes = (k * (write_exp - m_end[..., None]).exp()[..., None]).transpose(-1, -2) @ v   # (B, H, N, d, d_v + 1)
    carry = (b[..., -1] + m_start - m_end).exp()[..., None, None]          # (B, H, N, 1, 1) ≤ 1
    starts = []
    for c in range(nc):
        starts.append(s)
        s = torch.addcmul(writes[:, :, c], carry[:, :, c], s)
    weights, m, _ = mlstm_scores(q, k, igate, log_f, m_start[..., None])   # (B, H, N, L, L), (B, H, N, L)
    inter = (b + m_start[..., None] - m).exp()[..., None]                  # (B, H, N, L, 1) ≤ 1
    out = inter * (q @ torch.stack(starts, dim=2)) + weights @ v           # (B, H, N, L, d_v + 1)
    h = out[..., :-1] / (torch.maximum(out[..., -1:].abs(), (-m[..., None]).exp()) + EPS)
    new = {"C": s[..., :-1].contiguous(), "n": s[..., -1].contiguous(), "m": m_end[..., -1:]}
    return h.flatten(2, 3)[:, :, :n], new


def mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, log_f: torch.Tensor,
               state: State) -> tuple[torch.Tensor, State]:
    """One token of the recurrence: q (scaled), k (B, H, d), v (B, H, d_v), ĩ, log f (B, H, 1) -> (h, state)."""
    m = torch.maximum(log_f + state["m"], igate)                                # (B, H, 1)
    f_act, i_act = (log_f + state["m"] - m).exp(), (igate - m).exp()            # (B, H, 1)
    C = f_act[..., None] * state["C"] + i_act[..., None] * (k[..., :, None] * v[..., None, :])   # (B, H, d, d_v)
    n_new = f_act * state["n"] + i_act * k                                      # (B, H, d)
    num = (q[..., None, :] @ C)[..., 0, :]                                      # (B, H, d_v)
    qn = (q * n_new).sum(-1, keepdim=True)                                      # (B, H, 1)
    return num / (torch.maximum(qn.abs(), (-m).exp()) + EPS), {"C": C, "n": n_new, "m": m}


class MLSTM(Mixer):
    """The mLSTM cell as a token mixer: stabilised exponential gating, a per-head norm and a sigmoid output gate."""
    name = "mlstm"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 64,
                 igate_bias: float = -10.0, norm_eps: float = 1e-6, num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, num_kv_heads)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size, self.norm_eps = chunk_size, norm_eps
        inner, kv_inner = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.igate = nn.Linear(hidden_size, num_heads)
        self.fgate = nn.Linear(hidden_size, num_heads)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))
        with torch.no_grad():
            for gate in (self.igate, self.fgate):
                gate.weight.zero_()
            self.igate.bias.fill_(igate_bias)
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, num_heads))

    def features(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(B, T, D) -> q (scaled), k, v (B, H, T, d), ĩ, log f (B, H, T); padded: ĩ = −inf, log f = 0."""
        q = self.split_heads(scaled_linear(x, self.q_proj, self.head_dim ** -0.5))   # (B, H, T, d), q / √d
        k = self.expand_kv(self.split_heads(self.k_proj(x), self.num_kv_heads))   # (B, H, T, d)
        v = self.expand_kv(self.split_heads(self.v_proj(x), self.num_kv_heads))
        igate = self.igate(x).transpose(1, 2)                                   # (B, H, T)
        log_f = F.logsigmoid(self.fgate(x)).transpose(1, 2)                     # (B, H, T)
        if attention_mask is not None:
            pad = valid_mask(x, attention_mask)[:, None, :] == 0                # (B, 1, T)
            igate, log_f = igate.masked_fill(pad, float("-inf")), log_f.masked_fill(pad, 0.0)
        return q, k, v, igate, log_f

    def output(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h (B, H, T, d), x (B, T, D) -> (B, T, D)."""
        h = self.merge_heads(head_rms_norm(h, eps=self.norm_eps, owned=True))   # (B, T, H·d)
        return project_out(gate(self.g_proj(x), h, sigmoid=True), self.o_proj, self.norm_weight)

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        dtype, device = dtype or self.q_proj.weight.dtype, device or self.q_proj.weight.device
        h, d = self.num_heads, self.head_dim
        return {"C": torch.zeros(batch, h, d, d, dtype=dtype, device=device),
                "n": torch.zeros(batch, h, d, dtype=dtype, device=device),
                "m": torch.zeros(batch, h, 1, dtype=dtype, device=device)}

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        q, k, v, igate, log_f = self.features(x, attention_mask)
        if state is None:
            state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device)
        h, state = mlstm_chunked(q, k, v, igate, log_f, state, self.chunk_size)   # (B, H, T, d)
        return self.output(h, x), state                                         # (B, T, D)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, igate, log_f = self.features(x)                                # (B, H, 1, ·), (B, H, 1)
        h, state = mlstm_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], igate, log_f, state)
        return self.output(h[..., None, :], x), state                           # (B, 1, D)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, _, igate, log_f = self.features(x, attention_mask)
        weights, m, _ = mlstm_scores(q, k, igate, log_f, q.new_zeros(*q.shape[:2], 1))   # from m_0 = 0
        den = torch.maximum(weights.sum(-1, keepdim=True).abs(), (-m[..., None]).exp()) + EPS
        return weights / den                                                    # (B, H, T, T)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
