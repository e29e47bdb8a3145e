"""Capture what distillation compares, from ONE forward pass of a teacher or a student.

Forward hooks sit on the weight matrices named by :func:`makd.core.families.matrix_modules` (by module *name*,
so a dense teacher and its ``LowRankLinear`` student line up 1:1), and only on the layers/roles a
:class:`CaptureSpec` asks for. What comes back (:class:`Captured`):

* module outputs per layer and role (q, k, v, o, ffn_gate, ffn_in, ffn_out; GPT-2's fused ``c_attn``
  output is split into q, k, v), optionally each module's *input* (for teacher forcing);
* attention probabilities P = softmax(q kᵀ · s + M) recomputed FROM THE CAPTURED q AND k, so the model
  itself keeps its fast attention kernel (SDPA) (:mod:`makd.core.attention_maps`: scaling, mask, RoPE, GQA):
  every attention layer's maps at once (``CaptureSpec.attention_maps``, the default), or only q and k with
  :meth:`Captured.attention_scores` computing one layer's scores when asked (what the objective does: one
  layer's (B, H, T, T) at a time);
* hidden states (``output_hidden_states=True``, only requested indices kept; 0 = embedding output,
  i + 1 = output of layer i), value vectors (MiniLM), the logits and the raw model output.

Attention probabilities are pre-dropout (what the model would use in eval mode). ``inference=True`` runs a
no-grad capture under ``torch.inference_mode`` (the objective's teacher pass): its tensors must not be saved by
autograd, so the losses compute the student's gradient themselves and module inputs come back as normal tensors.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from makd.core import families
from makd.core.attention_maps import additive_mask, attention_probs, check_attention_support  # noqa: F401

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
    attention_maps: bool = True                # all layers' maps now; False: q, k kept, maps one layer on demand


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
    qk: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)   # (q, k) of each attention layer
    score_fn: Callable[..., Tensor] | None = field(default=None, repr=False)
    transient: bool = False   # the objective's own teacher pass: each tensor is dropped once a term has used it

    def attention_scores(self, layer: int, rows: slice | None = None) -> Tensor:
        """(B, H, T, T) masked pre-softmax scores of one attention layer (``rows``: of those examples only): the
        captured ones, else computed now from the captured q and k (with the graph for a grad capture)."""
        if layer in self.scores:
            return self.scores[layer] if rows is None else self.scores[layer][rows]
        if self.score_fn is None or layer not in self.qk:
            raise ValueError(f"layer {layer} was not captured as an attention layer (CaptureSpec.attention_layers "
                             f"holds {sorted(self.qk)})")
        return self.score_fn(layer, *self.qk[layer], rows)


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


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a DDP/FSDP-style wrapper (hooks go on it; the wrapper is still called)."""
    while not hasattr(model, "config") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _score_fn(core, spec, outs, q_names, rope, batch, fam, geometry, grad: bool) -> Callable[..., Tensor]:
    """(layer, q, k, rows) -> masked scores (B, H, T, T) of that layer (of examples ``rows``; None = all)."""
    ref = batch.get("input_ids", batch.get("inputs_embeds"))
    B, T = ref.shape[:2]
    first = outs[min(spec.attention_layers)]["q"]
    mask = additive_mask(batch.get("attention_mask"), B, T, _causal(core, fam), first.dtype, first.device)
    if fam.rope and not rope:
        raise ValueError(f"could not capture the rotary position embeddings of {type(core).__name__}: "
                         "its attention was not called with position_embeddings=(cos, sin)")
    modules = {layer: core.get_submodule(_parent(q_names[layer])) for layer in spec.attention_layers}
    cos_sin = rope[0] if fam.rope else None

    def scores(layer: int, q: Tensor, k: Tensor, rows: slice | None = None) -> Tensor:
        m, r = mask, cos_sin
        if rows is not None:
            q, k = q[rows], k[rows]                                         # (b, T, D) views
            m = m if m is None or m.shape[0] == 1 else m[rows]              # (b, 1, T, T)
            r = r if r is None else tuple(x if x.shape[0] == 1 else x[rows] for x in r)
        with nullcontext() if grad else torch.no_grad():
            return attention_probs(modules[layer], q, k, m, geometry, r, want_probs=False)[1]
    return scores


def _attention_maps(spec: CaptureSpec, score_fn: Callable[..., Tensor], outs, dtype) -> tuple[dict, dict]:
    """{layer: probabilities}, {layer: scores} of every attention layer (``CaptureSpec.attention_maps``)."""
    attentions, scores = {}, {}
    for layer in sorted(spec.attention_layers):
        s = score_fn(layer, outs[layer]["q"], outs[layer]["k"])             # (B, H, T, T)
        if spec.probs:
            attentions[layer] = torch.softmax(s, dim=-1).to(dtype)          # (B, H, T, T)
        if spec.scores:
            scores[layer] = s
    return attentions, scores


def _plain(x: Tensor, seen: dict) -> Tensor:
    """A normal tensor for an inference tensor (cloned once per distinct tensor: q, k and v share an input)."""
    if not x.is_inference():
        return x
    if id(x) not in seen:
        seen[id(x)] = x.clone()
    return seen[id(x)]


def capture(model: nn.Module, batch: dict, spec: CaptureSpec, *, grad: bool, inference: bool = False) -> Captured:
    """Run ``model`` once on ``batch`` and collect what ``spec`` asks for.

    grad=False (teacher): torch.no_grad (``inference=True``: torch.inference_mode, and of the hidden states only
    the requested ones are kept) and eval mode (the previous mode is restored afterwards);
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
        check_attention_support(core, batch.get("input_ids", batch.get("inputs_embeds")).shape[1])
    inference = inference and not grad
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
            stack.enter_context(torch.enable_grad() if grad else
                                torch.inference_mode() if inference else torch.no_grad())
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
            score_fn = (_score_fn(core, spec, outs, q_names, rope, batch, fam, geometry, grad)
                        if spec.attention_layers else None)
            attentions, scores = ({}, {}) if score_fn is None or not spec.attention_maps else \
                _attention_maps(spec, score_fn, outs, outs[min(spec.attention_layers)]["q"].dtype)
    finally:
        if not grad and was_training:
            model.train()
    hidden = {i: outputs.hidden_states[i] for i in sorted(spec.hidden_layers)}
    if inference and spec.hidden_layers:
        outputs.hidden_states = None                                        # the requested ones are in `hidden`
    modules = {layer: {r: outs[layer][r] for r in spec.roles if r in outs.get(layer, {})}
               for layer in sorted(spec.matrix_layers)}
    seen: dict[int, Tensor] = {}                                            # inference inputs feed the student
    inputs = {layer: {r: _plain(ins[layer][r], seen) for r in spec.roles if r in ins.get(layer, {})}
              for layer in sorted(spec.matrix_layers)} if spec.inputs else {}
    qk = {layer: (outs[layer]["q"], outs[layer]["k"]) for layer in sorted(spec.attention_layers)}
    values = {layer: outs[layer]["v"] for layer in sorted(spec.value_layers)}
    logits = getattr(outputs, "logits", None)
    if logits is None and getattr(outputs, "start_logits", None) is not None:
        logits = torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)  # (B, T, 2)
    return Captured(logits=logits, hidden=hidden, modules=modules, inputs=inputs, attentions=attentions,
                    scores=scores, outputs=outputs, values=values, apply=apply, geometry=geometry, qk=qk,
                    score_fn=score_fn)
