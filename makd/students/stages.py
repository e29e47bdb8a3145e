"""The three distillation stages of a subquadratic student (arXiv 2504.14366, after MOHAWK, Bick et al. 2024).

Every stage runs through :func:`makd.students.stage_loop.train_stage` (its own token budget, learning rate,
schedule, history and checkpoints); each can be switched off (budget 0). Per optimiser step, on a batch of
packed blocks (B, T):

1. ``mixing`` — matrix mixing, layer-local: the teacher's hidden state before layer l, through the STUDENT
   block's ``input_layernorm`` (a copy of the teacher's), gives the student mixer's materialised matrix
   ``mixing_matrix(x)``, compared with the teacher's softmax attention probabilities of layer l
   (:func:`makd.core.mixing_losses.matrix_mixing_loss`). The MLP is not run; only the mixers' parameters train.
2. ``hidden`` — hidden-state alignment, layer-local: the student block l on the teacher's input to layer l vs
   the teacher block's output (:func:`makd.core.mixing_losses.hidden_alignment_loss`, per-token L2 or MSE).
   Trained: the mixers (default; the MLPs and norms stay the teacher's) or the whole blocks (``hidden_params``).
3. ``kd`` — end to end: ``ce_weight · CE(next token) + kl_weight · KL(teacher ‖ student)`` over tokens
   (:func:`makd.core.mixing_losses.token_kl`, per-token mean by default); every parameter trains.

Stages 1–2 are teacher-forced: the teacher's per-layer inputs, outputs and attention probabilities are computed
once per batch without gradient (:func:`teacher_activations`, eager attention), every layer's block is trained on
them, and each layer's loss is backpropagated on its own (no gradient crosses layers, one layer's graph alive at
a time). The logged ``loss`` is the mean over layers, ``L<l>`` each layer's. Stage 3 is a small loop rather
than :class:`makd.core.trainer.DistillTrainer`, so that the three stages share one budget rule, one batch order
and one checkpoint format (a Trainer resumes from its own checkpoints, not from a layer-local stage's).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from makd.core import families
from makd.core.local import block_io
from makd.core.mixing_losses import hidden_alignment_loss, matrix_mixing_loss, token_kl
from makd.students.qkv import make_student
from makd.students.stage_loop import StageSpec, StepFn, train_stage
from makd.students.subquadratic import MixerLlamaForCausalLM

STAGES = ("mixing", "hidden", "kd")
HIDDEN_PARAMS = ("mixer", "block")


def teacher_activations(teacher: nn.Module, batch: Mapping[str, Tensor], attentions: bool = False
                        ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(inputs, outputs, attention probabilities) of every teacher layer on ``batch``, no gradient: inputs and
    outputs (B, T, D), probabilities (B, H, T, T) per query head (GQA expanded by transformers), or [] when
    ``attentions`` is False. The teacher must run eager attention (the only kind that returns probabilities)."""
    layers = families.get_layers(teacher)
    probs: list[Tensor | None] = [None] * len(layers)
    hooks = []
    if attentions:
        if teacher.config._attn_implementation != "eager":
            raise ValueError("matrix mixing needs the teacher's attention probabilities: load it with "
                             "attn_implementation='eager' (or call teacher.set_attn_implementation('eager'))")
        for i, layer in enumerate(layers):
            hooks.append(layer.self_attn.register_forward_hook(
                lambda _m, _a, out, i=i: probs.__setitem__(i, out[1].detach())))
    try:
        ins, outs, _ = block_io(teacher, batch)
    finally:
        for h in hooks:
            h.remove()
    return ins, outs, probs if attentions else []


def student_for(teacher: nn.Module, mixer: str, init: str = "qkv", seed: int | None = 0) -> MixerLlamaForCausalLM:
    """:func:`makd.students.qkv.make_student`, with the teacher's RoPE settings for the ``softmax`` mixer."""
    kwargs: dict[str, Any] = {}
    if mixer == "softmax":
        kwargs = {"rope_parameters": dict(teacher.config.rope_parameters),
                  "max_position_embeddings": teacher.config.max_position_embeddings}
    return make_student(teacher, mixer, init=init, seed=seed, **kwargs)


def identity_student(teacher: nn.Module) -> MixerLlamaForCausalLM:
    """The teacher rebuilt as a mixer student: softmax attention, QKV copy, the teacher's RoPE. Its matrix
    mixing and hidden alignment losses are exactly zero (the identity check of the stages)."""
    return student_for(teacher, "softmax", "qkv")


def stage_params(student: MixerLlamaForCausalLM, stage: str, hidden_params: str = "mixer") -> dict[str, nn.Parameter]:
    """The named parameters ``stage`` trains: the mixers (mixing; hidden with "mixer"), the blocks (hidden with
    "block"), or all of them (kd; tied ones once)."""
    if stage not in STAGES or hidden_params not in HIDDEN_PARAMS:
        raise ValueError(f"stage must be one of {STAGES} and hidden_params one of {HIDDEN_PARAMS}, got "
                         f"{stage!r}, {hidden_params!r}")
    named = dict(student.named_parameters())                       # tied parameters appear once
    if stage == "kd":
        return named
    part = ".mixer." if stage == "mixing" or hidden_params == "mixer" else "model.layers."
    return {k: p for k, p in named.items() if part in k}


def _mask(batch: Mapping[str, Tensor]) -> Tensor:
    return batch.get("attention_mask", torch.ones_like(batch["input_ids"]))


def _per_layer(losses: list[Tensor]) -> dict[str, Tensor]:
    terms = {f"L{i}": v for i, v in enumerate(losses)}
    return {"loss": torch.stack(losses).mean(), **terms}


def mixing_step(student: MixerLlamaForCausalLM, teacher: nn.Module) -> StepFn:
    """Stage 1's step: per layer, matrix_mixing_loss(mixing_matrix(norm(h_l)), A_l), backward per layer."""
    def step(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ins, _, probs = teacher_activations(teacher, batch, attentions=True)
        mask = _mask(batch)
        losses = []
        for block, h, a in zip(student.model.layers, ins, probs):
            with torch.no_grad():
                x = block.input_layernorm(h)                                    # (B, T, D), the teacher's norm
            loss = matrix_mixing_loss(block.mixer.mixing_matrix(x, mask), a, mask)
            (loss / len(ins)).backward()
            losses.append(loss.detach())
        return _per_layer(losses)
    return step


def hidden_step(student: MixerLlamaForCausalLM, teacher: nn.Module, kind: str = "l2") -> StepFn:
    """Stage 2's step: per layer, hidden_alignment_loss(block_l(h_l), h_{l+1}), backward per layer."""
    def step(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ins, outs, _ = teacher_activations(teacher, batch)
        mask = _mask(batch)
        losses = []
        for block, h, target in zip(student.model.layers, ins, outs):
            loss = hidden_alignment_loss(block(h, mask, None), target, mask, kind)   # (B, T, D) vs (B, T, D)
            (loss / len(ins)).backward()
            losses.append(loss.detach())
        return _per_layer(losses)
    return step


def kd_step(student: MixerLlamaForCausalLM, teacher: nn.Module, *, ce_weight: float = 1.0, kl_weight: float = 1.0,
            temperature: float = 1.0, reduction: str = "mean") -> StepFn:
    """Stage 3's step: ce_weight · CE + kl_weight · token_kl(student, teacher), one backward."""
    def step(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        ids, mask = batch["input_ids"], _mask(batch)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits               # (B, T, V)
        s_logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        labels = batch.get("labels", ids).masked_fill(mask == 0, -100)[:, 1:]           # (B, T-1)
        ce = F.cross_entropy(s_logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        kl = token_kl(s_logits, t_logits, mask, temperature, reduction)
        total = ce_weight * ce + kl_weight * kl
        total.backward()
        return {"loss": total.detach(), "ce": ce.detach(), "kl": kl.detach()}
    return step


def run_stages(student: MixerLlamaForCausalLM, teacher: nn.Module, blocks: Mapping[str, Tensor],
               specs: list[StageSpec], *, batch_size: int, seed: int = 0, checkpoints: str | Path | None = None,
               resume: bool = False, save_every: int = 50, max_grad_norm: float | None = 1.0,
               hidden_kind: str = "l2", hidden_params: str = "mixer", ce_weight: float = 1.0,
               kl_weight: float = 1.0, temperature: float = 1.0, kl_reduction: str = "mean", progress: bool = True,
               on_step: Callable[[str, dict[str, float]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Train ``student`` in place through ``specs`` (stage names from :data:`STAGES`, in the order given; a
    budget of 0 skips a stage) on ``blocks`` (input_ids / attention_mask / labels (N, T)); returns per stage
    {"history", "steps", "tokens", "cpu_s", "wall_s", "resumed"}. ``checkpoints``: the folder of the stages'
    checkpoint files (``checkpoint-<k>/stage.pt``, k = 1, 2, 3 for mixing, hidden, kd)."""
    unknown = [s.name for s in specs if s.name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}: the stages are {', '.join(STAGES)}")
    teacher.eval().requires_grad_(False)
    steps = {"mixing": lambda: mixing_step(student, teacher),
             "hidden": lambda: hidden_step(student, teacher, hidden_kind),
             "kd": lambda: kd_step(student, teacher, ce_weight=ce_weight, kl_weight=kl_weight,
                                   temperature=temperature, reduction=kl_reduction)}
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.tokens == 0:
            continue
        params = stage_params(student, spec.name, hidden_params)
        student.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        where = Path(checkpoints) / f"checkpoint-{STAGES.index(spec.name) + 1}" / "stage.pt" if checkpoints else None
        try:
            results[spec.name] = train_stage(student, spec, params, steps[spec.name](), blocks,
                                             batch_size=batch_size, seed=seed, checkpoint=where, resume=resume,
                                             save_every=save_every, max_grad_norm=max_grad_norm, progress=progress,
                                             on_step=on_step)
        finally:
            student.requires_grad_(True)
    return results
