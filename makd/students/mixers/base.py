"""The contract every subquadratic token mixer keeps (one module per mixer in :mod:`makd.students.mixers`).

A mixer replaces a Llama attention module: hidden states (B, T, D) in, (B, T, D) out, causal, multi-head.
Its projections keep the teacher's names (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) so that QKV copy is a
state-dict copy (Mamba2: ``q_proj`` = C, ``k_proj`` = B, ``v_proj`` = x). Three forms compute the same thing:

- ``forward(x, attention_mask, state)``: the parallel (quadratic or chunked) training form; ``state`` (from
  :meth:`Mixer.init_state` or a previous call) is the recurrent state before the first token, and the state after
  the last token is returned, so a prompt can be prefilled in parallel and continued step by step;
- ``step(x_t, state)``: one token (B, 1, D) of the recurrent form, O(1) work and memory in T;
- ``mixing_matrix(x, attention_mask)``: the materialised (B, H, T, T) matrix M with ``output = M · V`` per head
  (before the output projection and any output gate/normalisation the mixer applies per token), the object the
  matrix-mixing loss compares with the teacher's softmax attention.

Grouped key/value heads (GQA, as the teacher's): ``num_kv_heads`` (default ``num_heads``) key/value heads of
``head_dim`` channels, each shared by ``groups = num_heads // num_kv_heads`` consecutive query heads, so that
``k_proj`` / ``v_proj`` have the teacher's widths and the QKV copy is a plain copy. Where a mixer's state is
written by keys, values and per-KV-head gates only (linear, GLA, DeltaNet, Gated DeltaNet, Mamba2) the state is
kept per KV head and read by its group's queries; where a decay or gate is per query head (RetNet, mLSTM) K and V
are repeated to the query heads inside the mixer. V in ``output = M · V`` is always per query head
(:meth:`Mixer.expand_kv`: each KV head repeated for its group).

Padding (``attention_mask`` (B, T), 1 = token, 0 = padding, left or right): a padded position writes nothing and
decays nothing — the state after it equals the state before it — so a left-padded batch gives each row the
outputs of that row alone. Outputs at padded positions are unspecified (callers ignore them).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = dict[str, torch.Tensor]   # a mixer's recurrent state: named tensors, batch first


class Mixer(nn.Module):
    """Base class: head bookkeeping and the three forms' signatures. ``name`` is the registry name."""
    name = "mixer"

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        if head_dim is None and hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads: give head_dim")
        head_dim = head_dim or hidden_size // num_heads
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads are not a multiple of num_kv_heads = {num_kv_heads}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.num_kv_heads, self.groups = num_kv_heads, num_heads // num_kv_heads

    # -- the three forms ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """(B, T, D) -> ((B, T, D), state after the last token): the parallel form."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(B, 1, D), state -> ((B, 1, D), next state): one token of the recurrent form."""
        raise NotImplementedError

    def mixing_matrix(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, T), lower triangular: the token-mixing matrix M with output = M · V per head."""
        raise NotImplementedError

    def init_state(self, batch: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> State:
        """The state before the first token (zeros, or the mixer's stated initial values)."""
        raise NotImplementedError

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (fixed decays and the like): transformers' ``from_pretrained`` leaves
        them uninitialised, then calls the model's ``_init_weights``, which calls this. Default: none to compute."""

    # -- shared helpers -------------------------------------------------------------------------------------------
    def state_bytes(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the recurrent state for ``batch`` sequences: constant in the sequence length."""
        return sum(t.numel() * t.element_size() for t in self.init_state(batch, dtype=dtype).values())

    @staticmethod
    def _one_token(x: torch.Tensor) -> None:
        """The check at the top of every ``step``: one token (B, 1, D), else one clear error."""
        if x.shape[1] != 1:
            raise ValueError(f"step takes one token (B, 1, D), got {tuple(x.shape)}: use forward for a sequence")

    @staticmethod
    def _state(s: torch.Tensor, conv: torch.Tensor | None) -> State:
        """A matrix state S and, for a mixer with a short convolution, its last inputs (``conv``)."""
        return {"S": s} if conv is None else {"S": s, "conv": conv}

    def split_heads(self, t: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """(B, T, H·d) -> (B, H, T, d)."""
        b, n, _ = t.shape
        return t.view(b, n, heads or self.num_heads, -1).transpose(1, 2)

    def expand_kv(self, t: torch.Tensor) -> torch.Tensor:
        """(B, H_kv, …) -> (B, H, …): each key/value head repeated for the query heads of its group."""
        return t if self.groups == 1 else t.repeat_interleave(self.groups, dim=1)

    @staticmethod
    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d) -> (B, T, H·d)."""
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def extra_repr(self) -> str:
        kv = f", kv_heads={self.num_kv_heads}" if self.groups > 1 else ""
        return f"heads={self.num_heads}{kv}, head_dim={self.head_dim}"


def valid_mask(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) float mask of real tokens (all ones when ``attention_mask`` is None)."""
    if attention_mask is None:
        return x.new_ones(x.shape[:2])
    if attention_mask.shape != x.shape[:2]:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match the input's (batch, length) "
                         f"{tuple(x.shape[:2])}: give a (batch, length) mask of 1 (token) and 0 (padding)")
    return attention_mask.to(x.dtype)


def describe(mixer: Mixer) -> dict[str, Any]:
    """Name, heads, parameters and state size (batch 1, float32) of a mixer, for tables."""
    return {"mixer": mixer.name, "heads": mixer.num_heads, "kv_heads": mixer.num_kv_heads, "head_dim": mixer.head_dim,
            "params": sum(p.numel() for p in mixer.parameters()), "state_bytes": mixer.state_bytes()}
