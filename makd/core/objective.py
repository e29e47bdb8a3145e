"""The multi-aspect distillation objective: a weighted sum of named terms over a layer × aspect table.

L = Σ_a w_a Σ_{l ∈ assign(a)} L_a(l) + w_pred · L_pred, with aspects (MaKD, arXiv 2604.03110):

* matrix level — ``mha`` (MSE of each Q, K, V, O output), ``ffn`` (MSE of each FFN matrix output);
* layer level  — ``attn`` (KL(teacher ‖ student) of attention probabilities), ``hidn`` (hidden-state MSE);
* model level  — ``pred`` (α · t²·KL + (1 − α) · CE; token-level KD + LM loss for causal LMs).

Baselines reuse the table: ``tinybert`` (MSE on pre-softmax scores + hidden states incl. embeddings),
``minilm`` (last-layer attention KL + value-relation KL, aspect ``vr``). The paper's exact assignment and
weights are NOT public: every preset below, including the default ``hierarchical``, is a RECONSTRUCTED
choice (see docs/METHOD.md). Losses: :mod:`makd.core.losses`; captures: :mod:`makd.core.capture`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from makd.core import families
from makd.core import losses
from makd.core.capture import Captured, CaptureSpec

ASPECTS = ("mha", "ffn", "attn", "hidn", "pred")   # matrix: mha, ffn; layer: attn, hidn; model: pred
EXTRA_ASPECTS = ("vr",)                            # MiniLM value relation (baseline)
PRESETS = {
    "hierarchical": "RECONSTRUCTED default: matrix aspects (mha, ffn) on the shallow half, layer aspects "
                    "(attn, hidn) on the deep half, pred at the top",
    "hierarchical-inverted": "layer aspects on the shallow half, matrix aspects on the deep half, pred",
    "all": "every aspect on every layer (hidn also on the embedding output), pred",
    "layer-only": "attn + hidn on all layers (+ embedding output), pred",
    "model-only": "plain logit KD + gold CE (pred only)",
    "tinybert": "TinyBERT baseline: MSE on pre-softmax attention scores + hidn on all layers incl. embeddings, pred",
    "minilm": "MiniLM baseline: last-layer attention KL + last-layer value-relation KL, pred",
    "finetune": "gold cross-entropy only, no teacher",
}
MHA = ("q", "k", "v", "o")
FFN = ("ffn_gate", "ffn_in", "ffn_out")
EMB = -1   # layer index of the embedding output in the "hidn" assignment (hidden_states[0])


def preset_assignment(preset: str, n_layers: int, split: int) -> dict[str, list[int]]:
    """aspect -> layer indices for a preset (``pred`` -> [] when active; -1 in hidn = embedding output)."""
    shallow, deep, every = list(range(split)), list(range(split, n_layers)), list(range(n_layers))
    top = [n_layers - 1]
    table = {
        "hierarchical": {"mha": shallow, "ffn": shallow, "attn": deep, "hidn": deep, "pred": []},
        "hierarchical-inverted": {"mha": deep, "ffn": deep, "attn": shallow, "hidn": shallow, "pred": []},
        "all": {"mha": every, "ffn": every, "attn": every, "hidn": [EMB] + every, "pred": []},
        "layer-only": {"attn": every, "hidn": [EMB] + every, "pred": []},
        "model-only": {"pred": []},
        "tinybert": {"attn": every, "hidn": [EMB] + every, "pred": []},
        "minilm": {"attn": top, "vr": top, "pred": []},
        "finetune": {"pred": []},
    }
    return table[preset]


class MaKDObjective(nn.Module):
    """Weighted multi-aspect distillation loss; ``forward(student, teacher, batch)`` -> (total, terms).

    Args: ``n_layers``; ``preset`` (one of :data:`PRESETS`; ``hierarchical`` is our RECONSTRUCTED default,
    not a documented choice of the paper); ``weights`` aspect -> float (default 1.0; 0 switches an aspect
    off); ``assignment`` aspect -> layer indices overriding the preset (hidn: -1 = embedding output);
    (an aspect outside the preset needs ``assignment``); ``split`` shallow/deep boundary (default
    n_layers // 2); ``temperature``, ``alpha`` of the model term;
    ``teacher_forcing`` (matrix terms run the student's matrix on the teacher's input); ``causal_lm``
    (token-level KD with the batch's labels, −100 = ignored), ``reverse_kl``, ``lm_weight`` for it;
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
        w = {a: 1.0 for a in assign}
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
        self.needs_teacher = preset != "finetune"

    # ------------------------------------------------------------------------------------------ spec
    def spec(self) -> CaptureSpec:
        """What both captures must collect for the active aspects."""
        a = self.assignment
        roles = (MHA if "mha" in a else ()) + (FFN if "ffn" in a else ())
        matrix = set(a.get("mha", [])) | set(a.get("ffn", []))
        return CaptureSpec(matrix_layers=matrix, roles=roles or MHA + FFN,
                           attention_layers=set(a.get("attn", [])), scores=self.preset == "tinybert",
                           probs=self.preset != "tinybert",
                           hidden_layers={i + 1 for i in a.get("hidn", [])}, value_layers=set(a.get("vr", [])),
                           inputs=self.teacher_forcing and bool(matrix))

    # ---------------------------------------------------------------------------------------- forward
    def _masks(self, batch: dict) -> Tensor | None:
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        if self.causal_lm and self.response_only_layers and labels is not None:
            resp = labels != -100                                                # (B, T)
            mask = resp if mask is None else (mask != 0) & resp
        return mask

    def _matrix(self, aspect: str, layer: int, s: Captured, t: Captured, mask) -> Tensor:
        roles = MHA if aspect == "mha" else FFN
        if self.teacher_forcing:
            t_in = t.inputs.get(layer, {})
            s_out = {r: s.apply[layer][r](t_in[r]) for r in roles if r in t_in and r in s.apply.get(layer, {})}
        else:
            s_out = s.modules[layer]
        fn = losses.matrix_mha_loss if aspect == "mha" else losses.matrix_ffn_loss
        return fn(s_out, t.modules[layer], mask, roles=roles, relative=self.mse == "relative")

    def _layer_term(self, aspect: str, layer: int, s: Captured, t: Captured, mask) -> Tensor:
        if aspect == "attn" and self.preset == "tinybert":
            return losses.tinybert_attention_mse(s.scores[layer], t.scores[layer], mask)
        if aspect == "attn":
            return losses.attention_kl(t.attentions[layer], s.attentions[layer], mask)
        if aspect == "hidn":
            return losses.hidden_mse(s.hidden[layer + 1], t.hidden[layer + 1], mask, self.hidden_proj,
                                     relative=self.mse == "relative")
        if aspect == "vr":
            return losses.minilm_value_relation_kl(s.values[layer], t.values[layer], s.geometry[1], t.geometry[1], mask)
        return self._matrix(aspect, layer, s, t, mask)

    def _pred(self, s: Captured, t: Captured | None, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch.get("labels")
        finetune = t is None
        if self.causal_lm:
            t_logits = s.logits.detach() if finetune else t.logits
            return losses.causal_lm_kd(s.logits, t_logits, labels, reverse=self.reverse_kl,
                                       lm_weight=1.0 if finetune else self.lm_weight)
        alpha = 0.0 if finetune else self.alpha
        if getattr(s.outputs, "start_logits", None) is not None:                # extractive QA: start and end
            parts = []
            for key, lab in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
                if lab not in batch:
                    raise ValueError(f"QA distillation needs batch[{lab!r}] (the gold answer token positions)")
                sl = getattr(s.outputs, key)
                tl = sl.detach() if finetune else getattr(t.outputs, key)
                parts.append(losses.prediction_loss(sl, tl, batch[lab], self.temperature, alpha))
            return (parts[0][0] + parts[1][0]) / 2, {k: (parts[0][1][k] + parts[1][1][k]) / 2 for k in ("kd", "ce")}
        if s.logits is None:
            raise ValueError("the model has no logits (a base model without a head): use a task head, or "
                             "switch the model aspect off with weights={'pred': 0}")
        if labels is None:
            if finetune:
                raise ValueError("the finetune preset needs gold labels in batch['labels']")
            kd = losses.logit_kd(s.logits, t.logits, self.temperature)
            return kd, {"kd": kd}
        return losses.prediction_loss(s.logits, s.logits.detach() if finetune else t.logits, labels,
                                      self.temperature, alpha)

    def forward(self, student: Captured, teacher: Captured | None, batch: dict, step: int | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, terms): total = Σ_a w_a · term_a; terms (detached) per aspect summed over layers, plus
        "kd"/"ce" of the model term and, with verbose_terms, per-layer entries like "attn/L3"."""
        if teacher is None and self.needs_teacher:
            raise ValueError(f"preset {self.preset!r} needs the teacher's capture; only 'finetune' runs without")
        mask = self._masks(batch)
        total = student.logits.new_zeros(()) if student.logits is not None else torch.zeros(())
        terms: dict[str, Tensor] = {}
        for aspect, w in self.weights.items():
            if aspect == "pred":
                value, parts = self._pred(student, teacher, batch)
                for name, part in parts.items():
                    if not (self.preset == "finetune" and name == "kd"):
                        losses.check_finite(name, part, step)
                        terms[name] = part.detach()
            else:
                value = 0
                for layer in self.assignment[aspect]:
                    v = self._layer_term(aspect, layer, student, teacher, mask)
                    losses.check_finite(f"{aspect}/L{layer}", v, step)
                    if self.verbose_terms:
                        terms[f"{aspect}/L{layer}"] = v.detach()
                    value = value + v
                if not torch.is_tensor(value):
                    continue
            losses.check_finite(aspect, value, step)
            terms[aspect] = value.detach()
            total = total + w * value
        losses.check_finite("total", total, step)
        return total, terms

    def describe(self):
        """layer × aspect table of weights (0 = not assigned); rows emb, L0.., model."""
        import pandas as pd
        rows = ["emb"] + [f"L{i}" for i in range(self.n_layers)] + ["model"]
        cols = [a for a in ASPECTS + EXTRA_ASPECTS if a in ASPECTS or a in self.weights]
        table = pd.DataFrame(0.0, index=rows, columns=cols)
        for aspect, w in self.weights.items():
            if aspect == "pred":
                table.loc["model", "pred"] = w
            for layer in self.assignment[aspect]:
                table.loc["emb" if layer == EMB else f"L{layer}", aspect] = w
        return table

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, weights={self.weights}, split={self.split}"


def _vocab(model: nn.Module) -> tuple[int | None, int | None]:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n_in = getattr(emb, "num_embeddings", None)
    n_out = getattr(out, "out_features", None) or (out.weight.shape[0] if getattr(out, "weight", None) is not None
                                                   else None)
    return n_in, n_out


def check_compatible(teacher: nn.Module, student: nn.Module, mapping: dict[int, int] | None = None
                     ) -> dict[int, int]:
    """Check vocabularies, layer counts, widths and heads; return the student -> teacher layer map.

    Raises one ValueError that says what to do. ``mapping``: {student layer: teacher layer} when the
    layer counts differ (the SVD student has the teacher's depth, so it normally needs none).
    """
    tc, sc = teacher.config, student.config
    t_vocab, s_vocab = _vocab(teacher), _vocab(student)
    cfg_t, cfg_s = getattr(tc, "vocab_size", None), getattr(sc, "vocab_size", None)
    if t_vocab != s_vocab or cfg_t != cfg_s:
        raise ValueError(
            f"vocabulary sizes differ: teacher embeddings/output {t_vocab} (config {cfg_t}), student {s_vocab} "
            f"(config {cfg_s}). Logit distillation needs one vocabulary: use the teacher's tokenizer for both, and "
            "resize the padded embeddings to the same length (model.resize_token_embeddings(len(tokenizer))) "
            "or slice the logits to the tokenizer's length")
    t_layers, s_layers = families.num_layers(tc), families.num_layers(sc)
    if mapping is None:
        if t_layers != s_layers:
            raise ValueError(f"layer counts differ (teacher {t_layers}, student {s_layers}): pass "
                             f"mapping={{student_layer: teacher_layer}} (e.g. uniform: {{i: {t_layers // s_layers}*i + "
                             f"{t_layers // s_layers - 1}}}), or factorise the teacher so the layers line up 1:1")
        mapping = {i: i for i in range(s_layers)}
    bad = {s: t for s, t in mapping.items() if not (0 <= s < s_layers and 0 <= t < t_layers)}
    if bad:
        raise ValueError(f"mapping has out-of-range layers {bad}: student layers 0..{s_layers - 1}, "
                         f"teacher layers 0..{t_layers - 1}")
    t_width = getattr(tc, "hidden_size", None) or getattr(tc, "n_embd", None)
    s_width = getattr(sc, "hidden_size", None) or getattr(sc, "n_embd", None)
    if t_width != s_width:
        raise ValueError(f"hidden widths differ (teacher {t_width}, student {s_width}): hidn needs "
                         f"hidden_proj=nn.Linear({s_width}, {t_width}) and matrix aspects need equal widths "
                         "(switch them off with weights={'mha': 0, 'ffn': 0})")
    t_geo, s_geo = families.attention_geometry(tc), families.attention_geometry(sc)
    if t_geo[0] != s_geo[0]:
        raise ValueError(f"attention heads differ (teacher {t_geo[0]}, student {s_geo[0]}): the attention KL "
                         "compares heads 1:1; switch it off with weights={'attn': 0}")
    t_labels, s_labels = getattr(tc, "num_labels", None), getattr(sc, "num_labels", None)
    if type(teacher).__name__ != type(student).__name__:
        raise ValueError(f"teacher ({type(teacher).__name__}) and student ({type(student).__name__}) have "
                         "different heads: load both with the same head (cls / qa / lm)")
    if "SequenceClassification" in type(teacher).__name__ and t_labels != s_labels:
        raise ValueError(f"label counts differ (teacher {t_labels}, student {s_labels}): use the same num_labels")
    return mapping
