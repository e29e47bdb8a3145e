"""A Llama-family causal LM whose attention is a subquadratic token mixer: the student of arXiv 2504.14366.

Every block is the teacher's block with ``self_attn`` replaced by a mixer (:mod:`makd.students.mixers`): RMSNorm →
mixer → residual → RMSNorm → MLP → residual; embeddings, final norm and LM head as in Llama. No rotary embedding:
the mixers carry position through their recurrence (decays, gates, convolutions), as in the study.

Generation goes through the recurrent form: the first call (the prompt) runs each mixer's parallel form and keeps
the state after the last token in a :class:`MixerCache`; every later call feeds one token to ``Mixer.step``, O(1)
in the context length. Without a cache (``use_cache=False``) every call recomputes the whole sequence in parallel —
the same tokens, which the tests check. Padding follows :mod:`makd.students.mixers.base`: a padded position writes
nothing and decays nothing, so left-padded batches generate like single prompts.

The classes are registered with transformers' Auto classes under ``model_type`` ``makd_mixer_llama``, so
``AutoModelForCausalLM.from_pretrained(folder)`` loads a saved student once :mod:`makd` is imported.
"""
from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from makd.students.mixers.base import Mixer
from makd.students.mixers.registry import mixer_class


@strict
class MixerLlamaConfig(LlamaConfig):
    """A Llama config plus the mixer's name and keyword arguments (``mixer_kwargs``) and its key/value heads
    (``mixer_kv_heads``: the teacher's ``num_key_value_heads`` for students built since K/V kept the teacher's GQA
    widths; None — configs saved before — means one K/V head per query head, the earlier repeated layout)."""
    model_type = "makd_mixer_llama"
    mixer: str = "linear"
    mixer_kwargs: dict | None = None
    mixer_kv_heads: int | None = None


class MixerCache:
    """The recurrent state of every layer during generation (constant in the context length) and the number of
    tokens seen. Duck-types the few members of transformers' ``Cache`` that ``generate`` uses."""
    is_compileable = False

    def __init__(self, num_layers: int) -> None:
        self.states: list[dict[str, torch.Tensor] | None] = [None] * num_layers
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Beam search: keep the states of the chosen beams."""
        self.states = [None if s is None else {k: v.index_select(0, beam_idx.to(v.device)) for k, v in s.items()}
                       for s in self.states]

    def state_bytes(self) -> int:
        """Bytes held by the states of all layers."""
        return sum(t.numel() * t.element_size() for s in self.states if s for t in s.values())


class MixerBlock(nn.Module):
    """A Llama decoder block with a token mixer in place of attention."""

    def __init__(self, config: MixerLlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
        kwargs = {"num_kv_heads": config.mixer_kv_heads or config.num_attention_heads, **(config.mixer_kwargs or {})}
        self.mixer = mixer_class(config.mixer)(config.hidden_size, config.num_attention_heads, head_dim, **kwargs)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, cache: MixerCache | None) -> torch.Tensor:
        x = self.input_layernorm(hidden)                                           # (B, T, D)
        state = cache.states[self.layer_idx] if cache is not None else None
        if state is not None and x.shape[1] == 1:
            y, state = self.mixer.step(x, state)                                   # one token, recurrent form
        else:
            y, state = self.mixer(x, attention_mask=mask, state=state)             # parallel form
        if cache is not None:
            cache.states[self.layer_idx] = state
        hidden = hidden + y
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class MixerLlamaModel(nn.Module):
    """Embeddings, the mixer blocks and the final norm (the names of ``LlamaModel``'s parts)."""

    def __init__(self, config: MixerLlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(MixerBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class MixerLlamaForCausalLM(PreTrainedModel, GenerationMixin):
    """The subquadratic student as a transformers causal LM: ``forward``, ``generate``, ``save_pretrained``."""
    config_class = MixerLlamaConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _no_split_modules = ["MixerBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    def __init__(self, config: MixerLlamaConfig) -> None:
        super().__init__(config)
        self.model = MixerLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:          # the model builds its own MixerCache
        return False

    def _init_weights(self, module: nn.Module) -> None:
        """Mixers initialise their own parameters (gates, decays: stated per mixer) and recompute their fixed
        buffers here (``from_pretrained`` leaves non-persistent buffers empty); the Llama parts are overwritten by
        the teacher's weights (:func:`makd.students.qkv.make_student`) or a checkpoint."""
        if isinstance(module, Mixer):
            module.reset_buffers()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: MixerCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, logits_to_keep: int = 0, **kwargs: Any
                ) -> CausalLMOutputWithPast:
        """Like ``LlamaForCausalLM.forward``; ``attention_mask`` is the 2-D (B, past + T) padding mask, of which
        the last T columns mark this call's tokens. ``past_key_values`` is a :class:`MixerCache`."""
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # (B, T, D)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("the mixer student takes a 2-D (batch, length) padding mask, got a "
                             f"{attention_mask.dim()}-D one")
        mask = attention_mask[:, -hidden.shape[1]:] if attention_mask is not None else None
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = MixerCache(len(self.model.layers))
        cache = past_key_values if use_cache else None
        states = [hidden] if output_hidden_states else None
        for block in self.model.layers:
            hidden = block(hidden, mask, cache)
            if states is not None:
                states.append(hidden)
        hidden = self.model.norm(hidden)
        if states is not None:
            states[-1] = hidden
        if cache is not None:
            cache.seen += hidden.shape[1]
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)       # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache,
                                      hidden_states=tuple(states) if states is not None else None)


AutoConfig.register(MixerLlamaConfig.model_type, MixerLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(MixerLlamaConfig, MixerLlamaForCausalLM, exist_ok=True)
