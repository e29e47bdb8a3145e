"""Capture what distillation compares, from ONE forward pass of a teacher or a student.

Forward hooks sit on the weight matrices named by :func:`makd.core.families.matrix_modules` (by module *name*,
so a dense teacher and its ``LowRankLinear`` student line up 1:1), and only on the layers/roles a
:class:`CaptureSpec` asks for. What comes back (:class:`Captured`):

* module outputs per layer and role (q, k, v, o, ffn_gate, ffn_in, ffn_out; GPT-2's fused ``c_attn``
  output is split into q, k, v), optionally each module's *input* (for teacher forcing);
* attention probabilities P = softmax(q kᵀ · s + M) recomputed FROM THE CAPTURED q AND k, so the model
  itself keeps its fast attention kernel (SDPA): s is the model's own scaling (1/sqrt(d_h); GPT-2's
  ``scale_attn_weights`` / ``scale_attn_by_inverse_layer_idx`` are already in ``attn.scaling``), M the
  additive mask (0 allowed, dtype-min for padded keys and, in decoders, future keys), Llama-family: RoPE
  applied with the cos/sin the model passes to its attention and grouped K heads repeated;
* hidden states (``output_hidden_states=True``, only requested indices kept; 0 = embedding output,
  i + 1 = output of layer i), value vectors (MiniLM), the logits and the raw model output.

Attention probabilities are pre-dropout (what the model would use in eval mode).
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from makd.core import families

LABEL_KEYS = ("labels", "label", "start_positions", "end_positions")
ROLES = families.MHA_ROLES + families.FFN_ROLES


@dataclass
class CaptureSpec:
    """What :func:`capture` collects (the objective derives it from its layer × aspect assignment)."""
    matrix_layers: set[int] = field(default_factory=set)
    roles: tuple[str, ...] = ROLES             # module outputs for these layers/roles
    attention_layers: set[int] = field(default_factory=set)
    scores: bool = False                       # also the pre-softmax scores (TinyBERT)
    probs: bool = True                         # the probabilities (off when only scores are compared)
    hidden_layers: set[int] = field(default_factory=set)  # indices into hidden_states (0 = embeddings)
    value_layers: set[int] = field(default_factory=set)   # value vectors (MiniLM value relation)
    inputs: bool = False                       # also each captured module's INPUT (teacher forcing)


@dataclass
class Captured:
    logits: Tensor | None
    hidden: dict[int, Tensor]
    modules: dict[int, dict[str, Tensor]]
    inputs: dict[int, dict[str, Tensor]]
    attentions: dict[int, Tensor]
    scores: dict[int, Tensor]
    outputs: Any
    values: dict[int, Tensor] = field(default_factory=dict)
    apply: dict[int, dict[str, Callable[[Tensor], Tensor]]] = field(default_factory=dict)  # role -> module fn
    geometry: tuple[int, int, int] = (0, 0, 0)  # (n_heads, n_kv_heads, head_dim)


def _check_spec(spec: CaptureSpec, n_layers: int) -> None:
    bad_roles = sorted(set(spec.roles) - set(ROLES))
    if bad_roles:
        raise ValueError(f"unknown role(s) {bad_roles} in CaptureSpec.roles; valid roles are {list(ROLES)}")
    for what, layers, hi in (("matrix_layers", spec.matrix_layers, n_layers),
                             ("attention_layers", spec.attention_layers, n_layers),
                             ("value_layers", spec.value_layers, n_layers),
                             ("hidden_layers", spec.hidden_layers, n_layers + 1)):
        bad = sorted(i for i in layers if not (isinstance(i, int) and 0 <= i < hi))
        if bad:
            raise ValueError(f"CaptureSpec.{what} has out-of-range index(es) {bad}: the model has {n_layers} layers, "
                             f"valid indices are 0..{hi - 1}")


def hook_plan(model: nn.Module, spec: CaptureSpec) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Module name -> (layer, roles to keep) for exactly the modules :func:`capture` hooks."""
    fam = families.detect_family(model)
    _check_spec(spec, families.num_layers(model.config))
    want: dict[int, set[str]] = {}
    for layer in spec.matrix_layers:
        want.setdefault(layer, set()).update(spec.roles)
    for layer in spec.attention_layers:
        want.setdefault(layer, set()).update(("q", "k"))
    for layer in spec.value_layers:
        want.setdefault(layer, set()).add("v")
    plan = {}
    for name, (layer, role) in families.matrix_modules(model, fam).items():
        roles = ("q", "k", "v") if role == "qkv" else (role,)
        keep = tuple(r for r in roles if r in want.get(layer, ()))
        if keep:
            plan[name] = (layer, roles if role == "qkv" else keep)
    return plan


def _split_qkv(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    d = y.shape[-1] // 3
    return y[..., :d], y[..., d:2 * d], y[..., 2 * d:]                      # 3 × (B, T, D)


def _role_fn(module: nn.Module, roles: tuple[str, ...], role: str) -> Callable[[Tensor], Tensor]:
    if len(roles) == 1:
        return module
    i = roles.index(role)
    return lambda x: _split_qkv(module(x))[i]


def _forward_kwargs(model: nn.Module, batch: dict) -> dict:
    """The batch minus labels (the objective computes every loss), keeping what ``forward`` accepts."""
    params = inspect.signature(model.forward).parameters
    kw = {k: v for k, v in batch.items() if k in params and k not in LABEL_KEYS}
    if "use_cache" in params:
        kw["use_cache"] = False
    return kw


def _causal(model: nn.Module, fam: families.Family) -> bool:
    return bool(fam.causal or getattr(model.config, "is_decoder", False))


def _check_attention_support(model: nn.Module, T: int) -> None:
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and T > window:
        raise ValueError(f"sequence length {T} exceeds the model's sliding window {window}; capture recomputes "
                         "full causal attention only: use sequences <= the window")
    for attr in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(cfg, attr, None):
            raise ValueError(f"config.{attr} is set: capture does not reproduce this attention variant; "
                             "distil without attention aspects (weights={'attn': 0})")


def additive_mask(attention_mask: Tensor | None, B: int, T: int, causal: bool, dtype, device) -> Tensor | None:
    """0 where query i may attend key j, dtype-min elsewhere: (B, 1, T, T), as HF's eager masks.

    None when nothing is masked (no padding, bidirectional).
    """
    if not causal and (attention_mask is None or bool((attention_mask != 0).all())):
        return None
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool, device=device)
    if attention_mask is not None:
        allowed = allowed & (attention_mask.to(device) != 0)[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)               # (B, 1, T, T)


def _heads(x: Tensor, head_dim: int) -> Tensor:
    B, T, _ = x.shape
    return x.reshape(B, T, -1, head_dim).transpose(1, 2)                   # (B, H, T, d_h)


def attention_probs(attn: nn.Module, q: Tensor, k: Tensor, mask: Tensor | None, geometry: tuple[int, int, int],
                    rope: tuple[Tensor, Tensor] | None = None, want_probs: bool = True
                    ) -> tuple[Tensor | None, Tensor]:
    """(probabilities, scores): S = (q · attn.scaling) kᵀ + M, P = softmax(S) over keys; (B, H, T, T) each.

    q: (B, T, H·d_h), k: (B, T, H_kv·d_h), mask: (B, 1, T, T) additive or None (nothing masked).
    Llama family: optional q/k norms (Qwen3), RoPE with the model's cos/sin and its modeling module's
    ``apply_rotary_pos_emb``, grouped K heads repeated.
    """
    n_heads, n_kv, head_dim = geometry
    qh, kh = _heads(q, head_dim), _heads(k, head_dim)                      # (B, H, T, d), (B, H_kv, T, d)
    if rope is not None:
        if hasattr(attn, "q_norm"):
            qh = attn.q_norm(qh.transpose(1, 2)).transpose(1, 2)
            kh = attn.k_norm(kh.transpose(1, 2)).transpose(1, 2)
        modeling = sys.modules[type(attn).__module__]
        qh, kh = modeling.apply_rotary_pos_emb(qh, kh, *rope)
    if n_kv != n_heads:
        kh = kh.repeat_interleave(n_heads // n_kv, dim=1)                  # (B, H, T, d)
    scaling = getattr(attn, "scaling", head_dim ** -0.5)
    if getattr(attn, "reorder_and_upcast_attn", False):                   # GPT-2 option: float32 scores
        qh, kh = qh.float(), kh.float()
    scores = (qh * scaling) @ kh.transpose(-1, -2)                          # (B, H, T, T), scale on the small side
    if mask is not None:
        scores.add_(mask.to(scores.dtype))                                  # in place: one T×T buffer less
    probs = torch.softmax(scores, dim=-1).to(q.dtype) if want_probs else None  # (B, H, T, T)
    return probs, scores


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a DDP/FSDP-style wrapper (hooks go on it; the wrapper is still called)."""
    while not hasattr(model, "config") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _attention_maps(core, spec, outs, q_names, rope, batch, fam, geometry):
    """{layer: probabilities}, {layer: scores} from the captured q/k of every attention layer."""
    ref = batch.get("input_ids", batch.get("inputs_embeds"))
    B, T = ref.shape[:2]
    first = outs[min(spec.attention_layers)]["q"]
    mask = additive_mask(batch.get("attention_mask"), B, T, _causal(core, fam), first.dtype, first.device)
    if fam.rope and not rope:
        raise ValueError(f"could not capture the rotary position embeddings of {type(core).__name__}: "
                         "its attention was not called with position_embeddings=(cos, sin)")
    attentions, scores = {}, {}
    for layer in sorted(spec.attention_layers):
        attn = core.get_submodule(_parent(q_names[layer]))
        p, s = attention_probs(attn, outs[layer]["q"], outs[layer]["k"], mask, geometry,
                               rope[0] if fam.rope else None, want_probs=spec.probs)
        if spec.probs:
            attentions[layer] = p
        if spec.scores:
            scores[layer] = s
    return attentions, scores


def capture(model: nn.Module, batch: dict, spec: CaptureSpec, *, grad: bool) -> Captured:
    """Run ``model`` once on ``batch`` and collect what ``spec`` asks for.

    grad=False (teacher): torch.no_grad and eval mode (the previous mode is restored afterwards);
    grad=True (student): the graph is kept and the model's mode is left as it is.
    Label keys (labels, start/end_positions) are not passed to the model. A DDP-style wrapper is
    called as it is (gradient sync), its inner model is hooked.
    """
    if isinstance(batch, Mapping) and not isinstance(batch, dict):        # BatchEncoding from a collator
        batch = dict(batch)
    if not isinstance(batch, dict) or "input_ids" not in batch and "inputs_embeds" not in batch:
        raise ValueError("capture needs a batch dict with 'input_ids' (and usually 'attention_mask')")
    core = _unwrap(model)
    fam = families.detect_family(core)
    plan = hook_plan(core, spec)
    geometry = families.attention_geometry(core.config)
    if spec.attention_layers:
        _check_attention_support(core, batch.get("input_ids", batch.get("inputs_embeds")).shape[1])
    outs: dict[int, dict[str, Tensor]] = {}
    ins: dict[int, dict[str, Tensor]] = {}
    apply: dict[int, dict[str, Callable]] = {}
    rope: list = []

    def make_hook(layer: int, roles: tuple[str, ...]):
        def hook(module, args, kwargs, output):
            parts = _split_qkv(output) if len(roles) == 3 else (output,)       # GPT-2 fused c_attn
            for r, y in zip(roles, parts):
                outs.setdefault(layer, {})[r] = y
                if spec.inputs:
                    x = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
                    ins.setdefault(layer, {})[r] = x
        return hook

    def rope_hook(module, args, kwargs):
        if not rope and kwargs.get("position_embeddings") is not None:
            rope.append(tuple(kwargs["position_embeddings"]))               # (cos, sin) as the model uses them

    was_training = model.training
    if not grad:
        model.eval()
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
            for name, (layer, roles) in plan.items():
                mod = core.get_submodule(name)
                stack.callback(mod.register_forward_hook(make_hook(layer, roles), with_kwargs=True).remove)
                if spec.inputs:
                    for r in roles:
                        apply.setdefault(layer, {})[r] = _role_fn(mod, roles, r)
            q_names = {layer: n for n, (layer, roles) in plan.items() if "q" in roles}
            if fam.rope and spec.attention_layers:
                first = core.get_submodule(_parent(q_names[min(spec.attention_layers)]))
                stack.callback(first.register_forward_pre_hook(rope_hook, with_kwargs=True).remove)
            kw = _forward_kwargs(core, batch)
            if spec.hidden_layers:
                kw["output_hidden_states"] = True
            outputs = model(**kw)
            attentions, scores = (_attention_maps(core, spec, outs, q_names, rope, batch, fam, geometry)
                                  if spec.attention_layers else ({}, {}))
    finally:
        if not grad and was_training:
            model.train()
    hidden = {i: outputs.hidden_states[i] for i in sorted(spec.hidden_layers)}
    modules = {layer: {r: outs[layer][r] for r in spec.roles if r in outs.get(layer, {})}
               for layer in sorted(spec.matrix_layers)}
    inputs = {layer: {r: ins[layer][r] for r in spec.roles if r in ins.get(layer, {})}
              for layer in sorted(spec.matrix_layers)} if spec.inputs else {}
    values = {layer: outs[layer]["v"] for layer in sorted(spec.value_layers)}
    logits = getattr(outputs, "logits", None)
    if logits is None and getattr(outputs, "start_logits", None) is not None:
        logits = torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)  # (B, T, 2)
    return Captured(logits=logits, hidden=hidden, modules=modules, inputs=inputs, attentions=attentions,
                    scores=scores, outputs=outputs, values=values, apply=apply, geometry=geometry)
