"""The multi-aspect distillation objective: a weighted sum of named terms over a layer × aspect table.

L = Σ_a w_a Σ_{l ∈ assign(a)} L_a(l) + w_pred · L_pred, with aspects (MaKD, arXiv 2604.03110):

* matrix level — ``mha`` (MSE of each Q, K, V, O output), ``ffn`` (MSE of each FFN matrix output);
* layer level  — ``attn`` (KL(teacher ‖ student) of attention probabilities), ``hidn`` (hidden-state MSE);
* model level  — ``pred`` (α · t²·KL + (1 − α) · CE; token-level KD + LM loss for causal LMs).

Two plain tables: :data:`LOSSES` (:mod:`makd.core.aspects`), the registry loss name -> :class:`AspectLoss`, and
:data:`PRESET_TABLE`, each
preset's aspects, layer groups, weights and, where an aspect uses another registered loss than its own, that
loss (the TinyBERT baseline's ``attn`` is the MSE on pre-softmax scores). The objective resolves its preset
through the registry once, then only iterates it. The paper's exact assignment and weights are NOT public:
every preset, the default ``hierarchical`` included, is a RECONSTRUCTED choice (see docs/METHOD.md).
Losses: :mod:`makd.core.losses`; walk-through: notebook ``06_hierarchical_training``. One training batch:
:meth:`MaKDObjective.compute` (the teacher once, in inference mode, its tensors freed as the terms use them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from makd.core import losses
from makd.core.aspects import FFN, LOSSES, MHA, AspectLoss  # noqa: F401  (re-exported)
from makd.core.capture import Captured, CaptureSpec, capture
from makd.core.compat import check_compatible  # noqa: F401  (re-exported: makd.core.objective.check_compatible)

ASPECTS = ("mha", "ffn", "attn", "hidn", "pred")   # matrix: mha, ffn; layer: attn, hidn; model: pred
EXTRA_ASPECTS = ("vr",)                            # MiniLM value relation (baseline)
EMB = -1   # layer index of the embedding output in the "hidn" assignment (hidden_states[0])


# ------------------------------------------------------------------------------------ presets as data
@dataclass(frozen=True)
class Preset:
    """A preset: aspect -> layer group (:data:`LAYER_GROUPS`), weights (default 1.0 each), aspect -> registered
    loss where it is not the aspect's own, and whether a teacher takes part."""
    about: str
    layers: dict[str, str]
    weights: dict[str, float] = field(default_factory=dict)
    losses: dict[str, str] = field(default_factory=dict)
    teacher: bool = True


LAYER_GROUPS: dict[str, Callable[[int, int], list[int]]] = {     # (n_layers, split) -> layer indices
    "shallow": lambda n, split: list(range(split)),
    "deep": lambda n, split: list(range(split, n)),
    "every": lambda n, split: list(range(n)),
    "emb+every": lambda n, split: [EMB] + list(range(n)),
    "top": lambda n, split: [n - 1],
    "model": lambda n, split: [],                                 # the model-level term has no layers
}
PRESET_TABLE: dict[str, Preset] = {
    "hierarchical": Preset("RECONSTRUCTED default: matrix aspects (mha, ffn) on the shallow half, layer aspects "
                           "(attn, hidn) on the deep half, pred at the top",
                           {"mha": "shallow", "ffn": "shallow", "attn": "deep", "hidn": "deep", "pred": "model"}),
    "hierarchical-inverted": Preset("layer aspects on the shallow half, matrix aspects on the deep half, pred",
                                    {"mha": "deep", "ffn": "deep", "attn": "shallow", "hidn": "shallow",
                                     "pred": "model"}),
    "all": Preset("every aspect on every layer (hidn also on the embedding output), pred",
                  {"mha": "every", "ffn": "every", "attn": "every", "hidn": "emb+every", "pred": "model"}),
    "layer-only": Preset("attn + hidn on all layers (+ embedding output), pred",
                         {"attn": "every", "hidn": "emb+every", "pred": "model"}),
    "model-only": Preset("plain logit KD + gold CE (pred only)", {"pred": "model"}),
    "tinybert": Preset("TinyBERT baseline: MSE on pre-softmax attention scores + hidn on all layers incl. "
                       "embeddings, pred", {"attn": "every", "hidn": "emb+every", "pred": "model"},
                       losses={"attn": "attn_scores"}),
    "minilm": Preset("MiniLM baseline: last-layer attention KL + last-layer value-relation KL, pred",
                     {"attn": "top", "vr": "top", "pred": "model"}),
    "finetune": Preset("gold cross-entropy only, no teacher", {"pred": "model"}, teacher=False),
}
PRESETS = {name: preset.about for name, preset in PRESET_TABLE.items()}   # name -> one-line description


def preset_assignment(preset: str, n_layers: int, split: int) -> dict[str, list[int]]:
    """aspect -> layer indices for a preset (``pred`` -> [] when active; -1 in hidn = embedding output)."""
    return {aspect: LAYER_GROUPS[group](n_layers, split) for aspect, group in PRESET_TABLE[preset].layers.items()}


class MaKDObjective(nn.Module):
    """Weighted multi-aspect distillation loss; ``forward(student, teacher, batch)`` -> (total, terms).

    Args: ``n_layers``; ``preset`` (one of :data:`PRESETS`; ``hierarchical`` is our RECONSTRUCTED default,
    not a documented choice of the paper); ``weights`` aspect -> float (default 1.0; 0 switches an aspect
    off); ``assignment`` aspect -> layer indices overriding the preset (hidn: -1 = embedding output);
    (an aspect outside the preset needs ``assignment``); ``split`` shallow/deep boundary (default
    n_layers // 2); ``temperature``, ``alpha`` of the model term; ``teacher_forcing`` (matrix terms run the
    student's matrix on the teacher's input); ``causal_lm`` (token-level KD with the batch's labels, −100 =
    ignored), ``reverse_kl``, ``lm_weight`` for it;
    ``response_only_layers`` (decoders: matrix/layer terms only on response tokens); ``hidden_proj``
    (student -> teacher width, dense baselines); ``verbose_terms`` (also per-layer entries "attn/L3");
    ``mse`` ("plain": the MSE of METHOD.md; "relative" divides each matrix/hidden MSE by the teacher's energy — our
    choice for causal LMs, whose massive activations make the plain MSE swamp the other terms).
    """

    def __init__(self, n_layers: int, preset: str = "hierarchical", *, weights=None, assignment=None, split=None,
                 temperature: float = 2.0, alpha: float = 0.5, teacher_forcing: bool = False,
                 causal_lm: bool = False, reverse_kl: bool = False, lm_weight: float = 0.5,
                 hidden_proj: nn.Module | None = None, response_only_layers: bool = False,
                 verbose_terms: bool = False, mse: str = "plain"):
        super().__init__()
        if mse not in ("plain", "relative"):
            raise ValueError(f"mse must be 'plain' or 'relative' (normalised by the teacher's energy), got {mse!r}")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {sorted(PRESETS)}")
        split = n_layers // 2 if split is None else split
        if not isinstance(split, int) or not 0 <= split <= n_layers:
            raise ValueError(f"split must be an int in [0, {n_layers}] (shallow layers are 0..split-1), got {split!r}")
        if temperature <= 0 or not 0 <= alpha <= 1 or not 0 <= lm_weight <= 1:
            raise ValueError(f"need temperature > 0, alpha and lm_weight in [0, 1]; got {temperature}, {alpha}, "
                             f"{lm_weight}")
        if reverse_kl and not causal_lm:
            raise ValueError("reverse_kl applies to causal LMs only: pass causal_lm=True or drop reverse_kl")
        valid = ASPECTS + EXTRA_ASPECTS
        self.n_layers, self.preset, self.split = n_layers, preset, split
        assign = preset_assignment(preset, n_layers, split)
        for name, layers in (assignment or {}).items():
            if name not in valid:
                raise ValueError(f"unknown aspect {name!r} in assignment; valid aspects: {list(valid)}")
            if name == "pred":
                raise ValueError("pred is model-level (no layers): switch it with weights={'pred': 0}")
            lo = EMB if name == "hidn" else 0
            bad = [i for i in layers if not isinstance(i, int) or not lo <= i < n_layers]
            if bad:
                raise ValueError(f"assignment[{name!r}] has out-of-range layer(s) {bad}: valid are {lo}..{n_layers - 1}"
                                 + (" (-1 = embedding output)" if name == "hidn" else ""))
            assign[name] = sorted(set(layers))
        preset_data = PRESET_TABLE[preset]
        w = {a: float(preset_data.weights.get(a, 1.0)) for a in assign}
        for name, value in (weights or {}).items():
            if name not in valid:
                raise ValueError(f"unknown aspect {name!r} in weights; valid aspects: {list(valid)}")
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {value!r}")
            if name not in assign and value > 0:
                raise ValueError(f"aspect {name!r} is not part of preset {preset!r}: give its layers with "
                                 f"assignment={{{name!r}: [...]}} (or choose a preset that uses it)")
            w[name] = float(value)
        self.weights = {a: w[a] for a in valid if a in assign and w[a] > 0}
        self.assignment = {a: assign[a] for a in self.weights}
        self.temperature, self.alpha, self.teacher_forcing = temperature, alpha, teacher_forcing
        self.causal_lm, self.reverse_kl, self.lm_weight = causal_lm, reverse_kl, lm_weight
        self.response_only_layers, self.verbose_terms = response_only_layers, verbose_terms
        self.hidden_proj, self.mse = hidden_proj, mse
        self.needs_teacher = preset_data.teacher
        self.aspect_losses = {a: LOSSES[preset_data.losses.get(a, a)] for a in self.weights}   # aspect -> its loss

    # ------------------------------------------------------------------------------------------ spec
    def spec(self) -> CaptureSpec:
        """What both captures must collect for the active aspects (the union of their losses' needs)."""
        sets = {"matrix_layers": set(), "attention_layers": set(), "hidden_layers": set(), "value_layers": set()}
        roles: tuple[str, ...] = ()
        flags = {"scores": False, "probs": False}
        for aspect, loss in self.aspect_losses.items():
            for key, value in loss.needs(self.assignment[aspect]).items():
                if key == "roles":
                    roles += value
                elif key in flags:
                    flags[key] = flags[key] or value
                else:
                    sets[key] |= set(value)
        return CaptureSpec(**sets, roles=roles or MHA + FFN, scores=flags["scores"],
                           probs=flags["probs"] or not flags["scores"], attention_maps=False,   # one layer at a time
                           inputs=self.teacher_forcing and bool(sets["matrix_layers"]))

    def captures(self, student: nn.Module, teacher: nn.Module | None, batch: dict, grad: bool = True
                 ) -> tuple[Captured, Captured | None]:
        """(student, teacher) captures of one batch: the teacher once, under torch.inference_mode, collecting only
        what the active terms read (None when the preset needs no teacher); the student with its graph (``grad``)."""
        spec = self.spec()
        t = capture(teacher, batch, spec, grad=False, inference=True) if self.needs_teacher else None
        return capture(student, batch, spec, grad=grad), t

    def compute(self, student: nn.Module, teacher: nn.Module | None, batch: dict, *, grad: bool = True,
                step: int | None = None) -> tuple[Tensor, dict[str, Tensor], Captured]:
        """One batch, as the trainer takes it: :meth:`captures`, then ``forward`` -> (total, terms, student capture).

        The teacher capture never leaves this call and is ``transient``: each term drops the teacher tensors it
        has used, so they are freed while the terms' backward tensors accumulate (peak memory)."""
        s, t = self.captures(student, teacher, batch, grad=grad)
        if t is not None:
            t.transient = True
        total, terms = self(s, t, batch, step=step)
        return total, terms, s

    # ---------------------------------------------------------------------------------------- forward
    def _masks(self, batch: dict) -> tuple[Tensor | None, Tensor | None]:
        """(mask, key_mask), (B, T) or None when all True: the tokens the layer terms average over (with
        ``response_only_layers``, a decoder's response tokens) and the keys of the attention terms (every real
        token: a response token attends to the prompt as well, so its attention distribution runs over both)."""
        def unless_all(m):
            return None if m is None or bool((torch.as_tensor(m) != 0).all()) else m   # None: nothing masked
        keys, labels = batch.get("attention_mask"), batch.get("labels")
        mask = keys
        if self.causal_lm and self.response_only_layers and labels is not None:
            resp = labels != -100                                                # (B, T)
            mask = resp if keys is None else (keys != 0) & resp
        mask, keys = unless_all(mask), unless_all(keys)
        if mask is not None and keys is None:    # some queries left out, every key real: say so (None = "as mask")
            keys = torch.ones_like(torch.as_tensor(mask), dtype=torch.bool)
        return mask, keys

    def forward(self, student: Captured, teacher: Captured | None, batch: dict, step: int | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, terms): total = Σ_a w_a · term_a; terms (detached) per aspect summed over layers, plus
        "kd"/"ce" of the model term and, with verbose_terms, per-layer entries like "attn/L3".

        Only the total is checked for NaN/inf (one device sync per step); if it is not finite, the terms are
        checked in order and :class:`makd.core.losses.NonFiniteLossError` names the first bad one and ``step``."""
        if teacher is None and self.needs_teacher:
            raise ValueError(f"preset {self.preset!r} needs the teacher's capture; only 'finetune' runs without")
        teacher = teacher if self.needs_teacher else None
        mask, key_mask = self._masks(batch)
        total = student.logits.new_zeros(()) if student.logits is not None else torch.zeros(())
        terms: dict[str, Tensor] = {}
        checks: list[tuple[str, Tensor]] = []                                   # (name, value) in diagnosis order
        for aspect, loss in self.aspect_losses.items():
            if loss.model:
                value, parts = loss.term(self, student, teacher, batch)
                for name, part in parts.items():
                    if teacher is not None or name != "kd":                     # no teacher: no KD term to log
                        checks.append((name, part))
                        terms[name] = part.detach()
            else:
                value = 0
                for layer in self.assignment[aspect]:
                    v = (loss.term(self, layer, student, teacher, mask, key_mask=key_mask) if loss.keys
                         else loss.term(self, layer, student, teacher, mask))
                    checks.append((f"{aspect}/L{layer}", v))
                    if self.verbose_terms:
                        terms[f"{aspect}/L{layer}"] = v.detach()
                    value = value + v
                if not torch.is_tensor(value):
                    continue
            checks.append((aspect, value))
            terms[aspect] = value.detach()
            total = total + self.weights[aspect] * value
        if not bool(torch.isfinite(total.detach())):                            # the step's one sync
            for name, value in checks + [("total", total)]:
                losses.check_finite(name, value, step)
        return total, terms

    def describe(self):
        """layer × aspect table of weights (0 = not assigned); rows emb, L0.., model."""
        import pandas as pd
        rows = ["emb"] + [f"L{i}" for i in range(self.n_layers)] + ["model"]
        cols = [a for a in ASPECTS + EXTRA_ASPECTS if a in ASPECTS or a in self.weights]
        table = pd.DataFrame(0.0, index=rows, columns=cols)
        for aspect, w in self.weights.items():
            if self.aspect_losses[aspect].model:
                table.loc["model", aspect] = w
            for layer in self.assignment[aspect]:
                table.loc["emb" if layer == EMB else f"L{layer}", aspect] = w
        return table

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, weights={self.weights}, split={self.split}"
