"""Subquadratic students built from a Llama-family teacher (arXiv 2504.14366): every attention module replaced by a
token mixer, everything else copied; the mixer's projections initialised by QKV copy.

QKV copy, as in the study: the teacher's Q → ``q_proj``, K → ``k_proj``, V → ``v_proj``, O → ``o_proj`` (Mamba2:
K → B, Q → C, V → x, the mixer's own names for the same projections); the teacher's rotary embedding is dropped
(the mixers carry position through their recurrence). Grouped K/V heads (GQA) keep the teacher's layout: the
mixers take ``num_kv_heads`` = the teacher's K/V heads (config ``mixer_kv_heads``), so ``k_proj`` / ``v_proj`` are
the teacher's matrices copied as they are, and a student has no more Q/K/V/O parameters than its teacher.
``repeat_kv=True`` gives the earlier layout instead — each K/V head repeated to the query heads of its group, one
K/V per query head (more parameters, and the layout of students saved before ``mixer_kv_heads`` existed, which
still load: a config without it means this layout).
New parameters — gates, decays, convolutions, feature maps, output norms — keep the mixer's own initialisation
(stated in each mixer's docstring). ``init="random"`` keeps the mixer's initialisation for the projections too
(the control of the study's "QKV copy helps" finding). Embeddings, norms, MLPs and the LM head are the teacher's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from makd.core.families import attention_geometry, detect_family
from makd.students.mixers.registry import NAMES, mixer_class
from makd.students.subquadratic import MixerLlamaConfig, MixerLlamaForCausalLM

INITS = ("qkv", "random")
_DROP = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype")


def check_teacher(teacher: nn.Module, mixer: str, init: str = "qkv") -> None:
    """One clear error for a mixer name, an initialisation or a teacher this module cannot turn into a student."""
    mixer_class(mixer)                                                  # unknown name: lists the known ones
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    family = detect_family(teacher)
    if family.name != "llama":
        raise ValueError(f"subquadratic students replace a Llama-family teacher's attention; this teacher is "
                         f"{family.name} ({type(teacher).__name__}): use SmolLM2 / Llama / Mistral / Qwen2")
    heads, kv_heads, head_dim = attention_geometry(teacher.config)
    if heads % kv_heads:
        raise ValueError(f"the teacher's {heads} query heads are not a multiple of its {kv_heads} key/value heads")
    if getattr(teacher.config, "attention_bias", False) and init == "qkv":
        raise ValueError("the teacher's attention projections have biases; the mixers' projections have none: "
                         "use init='random' or a teacher without attention bias")


def student_config(teacher: nn.Module, mixer: str, repeat_kv: bool = False, **mixer_kwargs: Any) -> MixerLlamaConfig:
    """The teacher's config (sizes, norms, vocabulary, tied embeddings) with the mixer in place of attention; the
    mixer's K/V heads are the teacher's (``repeat_kv``: one per query head)."""
    d = {k: v for k, v in teacher.config.to_dict().items() if k not in _DROP}
    heads, kv_heads, _ = attention_geometry(teacher.config)
    return MixerLlamaConfig(**d, mixer=mixer, mixer_kwargs=dict(mixer_kwargs) or None,
                            mixer_kv_heads=heads if repeat_kv else kv_heads, architectures=["MixerLlamaForCausalLM"])


def repeat_heads(weight: torch.Tensor, kv_heads: int, heads: int) -> torch.Tensor:
    """(kv_heads·d, D) K or V projection -> (heads·d, D), each key/value head repeated for its query group
    (the identity when heads == kv_heads)."""
    d = weight.shape[0] // kv_heads
    return weight.view(kv_heads, d, -1).repeat_interleave(heads // kv_heads, dim=0).reshape(heads * d, -1)


def copy_qkv(attention: nn.Module, mixer: nn.Module, kv_heads: int, heads: int) -> None:
    """The teacher attention's Q/K/V/O weights into the mixer's projections: K/V as they are when the mixer has
    the teacher's ``kv_heads``, repeated to its ``num_kv_heads`` otherwise (``heads`` is the teacher's query heads)."""
    mixer_kv = getattr(mixer, "num_kv_heads", heads)
    if mixer_kv % kv_heads:
        raise ValueError(f"QKV copy: the mixer's {mixer_kv} K/V heads are not a multiple of the teacher's {kv_heads}")
    new = {"q_proj": attention.q_proj.weight, "o_proj": attention.o_proj.weight,
           "k_proj": repeat_heads(attention.k_proj.weight, kv_heads, mixer_kv),
           "v_proj": repeat_heads(attention.v_proj.weight, kv_heads, mixer_kv)}
    for name, w in new.items():
        target = getattr(mixer, name).weight
        if target.shape != w.shape:
            raise ValueError(f"QKV copy: the {type(mixer).__name__} mixer's {name} is {tuple(target.shape)}, the "
                             f"teacher's projection {tuple(w.shape)}: the head dimensions do not match")
        with torch.no_grad():
            target.copy_(w)


def make_student(teacher: nn.Module, mixer: str, *, init: str = "qkv", seed: int | None = 0, repeat_kv: bool = False,
                 **mixer_kwargs: Any) -> MixerLlamaForCausalLM:
    """The teacher with every attention module replaced by ``mixer`` (one of :data:`NAMES`), on the teacher's
    device and dtype; ``init``: "qkv" (copy) or "random"; ``seed`` seeds the mixers' new parameters;
    ``repeat_kv``: K/V repeated to one head per query head (the earlier layout) instead of the teacher's GQA heads."""
    check_teacher(teacher, mixer, init)
    if "num_kv_heads" in mixer_kwargs:
        raise ValueError("give repeat_kv=True for one K/V head per query head; num_kv_heads follows the teacher")
    if seed is not None:
        torch.manual_seed(seed)
    student = MixerLlamaForCausalLM(student_config(teacher, mixer, repeat_kv, **mixer_kwargs))
    source = teacher.model
    heads, kv_heads, _ = attention_geometry(teacher.config)
    student.model.embed_tokens.load_state_dict(source.embed_tokens.state_dict())
    student.model.norm.load_state_dict(source.norm.state_dict())
    student.lm_head.load_state_dict(teacher.lm_head.state_dict())
    for t_layer, s_layer in zip(source.layers, student.model.layers):
        for part in ("input_layernorm", "post_attention_layernorm", "mlp"):
            getattr(s_layer, part).load_state_dict(getattr(t_layer, part).state_dict())
        if init == "qkv":
            copy_qkv(t_layer.self_attn, s_layer.mixer, kv_heads, heads)
    if student.config.tie_word_embeddings:
        student.tie_weights()
    p = next(teacher.parameters())
    return student.to(device=p.device, dtype=p.dtype).eval()


def count(model: nn.Module) -> int:
    """Distinct parameters (tied ones once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def describe(student: MixerLlamaForCausalLM, teacher: nn.Module | None = None) -> dict[str, Any]:
    """Mixer, parameters (beside the teacher's) and the generation state per sequence (float32 bytes)."""
    mixer = student.model.layers[0].mixer
    out = {"mixer": student.config.mixer, "params": count(student), "kv_heads": mixer.num_kv_heads,
           "mixer_params_per_layer": sum(p.numel() for p in mixer.parameters()),
           "state_bytes_per_sequence": mixer.state_bytes() * len(student.model.layers)}
    if teacher is not None:
        out["teacher_params"] = count(teacher)
    return out


def save_student(student: MixerLlamaForCausalLM, folder: str | Path, tokenizer=None) -> Path:
    """``save_pretrained`` (config with the mixer, safetensors weights) and the tokenizer when given."""
    folder = Path(folder)
    student.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_student(folder: str | Path) -> MixerLlamaForCausalLM:
    """A saved subquadratic student (``AutoModelForCausalLM.from_pretrained`` works too once makd is imported)."""
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: give a folder written by save_student")
    return MixerLlamaForCausalLM.from_pretrained(folder).eval()


__all__ = ["NAMES", "INITS", "make_student", "describe", "save_student", "load_student", "check_teacher"]
