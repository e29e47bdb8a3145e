"""Softmax attention as a "mixer" (``softmax``): the teacher's own attention behind the mixer contract.

Not subquadratic: the identity check of the distillation stages (:mod:`makd.students.stages`). A student built
with it from a Llama teacher (:func:`makd.students.stages.identity_student`: QKV copy, the teacher's RoPE) is the
teacher, so the matrix-mixing and hidden-alignment losses are exactly zero; and it is the quadratic upper bound
a table of mixers can be read against. It reproduces ``LlamaAttention`` with eager attention, operation for
operation, per head h (``num_kv_heads``: the teacher's GQA K/V heads, repeated to the query heads in the product,
the same numbers as transformers' ``repeat_kv``)::

    q, k = RoPE(W_q x), RoPE(W_k x)          (transformers' rotary embedding of the teacher's ``rope_parameters``)
    A = softmax(q kᵀ · d^-½ + mask)          mask: 0 where key j ≤ query i and j is a token, dtype-min elsewhere
    y = W_o (A · W_v x)                      mixing_matrix = A: the softmax attention probabilities

Positions are 0, 1, … over the call's columns, padding included, as the teacher's forward without
``position_ids`` (RoPE scores depend on position differences only, so a left-padded row matches itself alone up
to rounding). The recurrent "state" is a KV cache that GROWS with the context — rotated keys, values (per KV head) and the
token mask of every position seen — so ``step`` costs O(t) per token, not O(1): stated, it is the baseline.
Mixer keyword arguments: ``rope_parameters`` (the teacher config's dict; default RoPE, θ = 10000; the static
types of transformers' ``ROPE_INIT_FUNCTIONS``, not the dynamic ones) and ``max_position_embeddings`` (the
teacher's; used by the RoPE types that scale with it).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from makd.students.mixers.base import Mixer, State, valid_mask

DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
DYNAMIC_ROPE = ("dynamic", "longrope")          # frequencies recomputed per sequence length: not reproduced here


class SoftmaxAttention(Mixer):
    """Multi-head causal softmax attention with RoPE, projections named as the teacher's (no bias)."""
    name = "softmax"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *,
                 rope_parameters: dict | None = None, max_position_embeddings: int = 2048,
                 num_kv_heads: int | None = None) -> None:
        super().__init__(hidden_size, num_heads, head_dim, num_kv_heads)
        width, kv_width = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, width, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(width, hidden_size, bias=False)
        self.scaling = self.head_dim ** -0.5
        rope = dict(rope_parameters or DEFAULT_ROPE)
        if rope.get("rope_type", "default") in DYNAMIC_ROPE:
            raise ValueError(f"the softmax mixer takes static RoPE types only, not {rope['rope_type']!r} (its "
                             "frequencies change with the sequence length)")
        self.rope_config = LlamaConfig(hidden_size=hidden_size, num_attention_heads=num_heads,
                                       num_key_value_heads=num_heads, head_dim=self.head_dim,
                                       max_position_embeddings=max_position_embeddings, rope_parameters=rope)
        inv_freq, self.attention_scaling = self._rope()
        self.register_buffer("inv_freq", inv_freq, persistent=False)                           # (d / 2,)

    def _rope(self) -> tuple[torch.Tensor, float]:
        """transformers' RoPE initialisation for the configured type: (inverse frequencies, cos/sin scaling)."""
        kind = self.rope_config.rope_parameters["rope_type"]
        init = LlamaRotaryEmbedding.compute_default_rope_parameters if kind == "default" else ROPE_INIT_FUNCTIONS[kind]
        return init(self.rope_config)

    def reset_buffers(self) -> None:
        """RoPE's inverse frequencies again (``from_pretrained`` leaves non-persistent buffers empty)."""
        inv_freq, self.attention_scaling = self._rope()
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq)

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        """An empty KV cache: keys / values (B, H_kv, 0, d), token mask (B, 0)."""
        dtype = dtype or self.q_proj.weight.dtype
        device = device or self.q_proj.weight.device
        empty = torch.zeros(batch, self.num_kv_heads, 0, self.head_dim, dtype=dtype, device=device)
        return {"key": empty, "value": empty.clone(), "valid": torch.zeros(batch, 0, dtype=dtype, device=device)}

    def _qkv(self, x: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> rotated q (B, H, T, d), k and v (B, H_kv, T, d) at positions past … past + T − 1."""
        q = self.split_heads(self.q_proj(x))                                                   # (B, H, T, d)
        k, v = (self.split_heads(p(x), self.num_kv_heads) for p in (self.k_proj, self.v_proj))  # (B, H_kv, T, d)
        positions = torch.arange(past, past + x.shape[1], device=x.device)[None]              # (1, T)
        freqs = positions[..., None].float() * self.inv_freq.float()                           # (1, T, d / 2)
        emb = torch.cat((freqs, freqs), dim=-1)                                                # as LlamaRotaryEmbedding
        cos = (emb.cos() * self.attention_scaling).to(v.dtype)                                 # (1, T, d)
        sin = (emb.sin() * self.attention_scaling).to(v.dtype)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def _probs(self, q: torch.Tensor, k: torch.Tensor, keys_valid: torch.Tensor, past: int) -> torch.Tensor:
        """softmax(q kᵀ / √d + mask) in float32, cast back as eager attention does: (B, H, T, S)."""
        n, s = q.shape[2], k.shape[2]
        causal = torch.arange(s, device=q.device)[None] <= torch.arange(past, past + n, device=q.device)[:, None]
        allowed = causal[None] & (keys_valid[:, None, :] > 0)                                  # (B, T, S)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)[:, None]                   # (B, 1, T, S)
        scores = torch.matmul(q, self.expand_kv(k).transpose(2, 3)) * self.scaling + mask      # (B, H, T, S)
        return nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        b, n, _ = x.shape
        valid = valid_mask(x, attention_mask)                                                  # (B, T)
        past = 0 if state is None else state["key"].shape[2]
        q, k, v = self._qkv(x, past)
        if state is not None:
            k = torch.cat([state["key"], k], dim=2)                                            # (B, H_kv, S, d)
            v = torch.cat([state["value"], v], dim=2)
            valid = torch.cat([state["valid"], valid], dim=1)                                  # (B, S)
        o = torch.matmul(self._probs(q, k, valid, past), self.expand_kv(v))                    # (B, H, T, d)
        y = self.o_proj(o.transpose(1, 2).contiguous().reshape(b, n, -1).contiguous())        # (B, T, D)
        return y, {"key": k, "value": v, "valid": valid}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.forward(x, None, state)

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, _ = self._qkv(x, 0)
        return self._probs(q, k, valid_mask(x, attention_mask), 0)                             # (B, H, T, T)
