"""The registry of aspect losses: each loss name -> how its term reads the two captures, and what it needs captured.

:data:`LOSSES` maps a registered loss to an :class:`AspectLoss`; :mod:`makd.core.objective` resolves its presets
through it. A term reads the student's and the teacher's :class:`makd.core.capture.Captured` of one layer and calls
the pure loss of :mod:`makd.core.losses`. When the teacher capture is ``transient`` (the objective's own teacher
pass, :meth:`makd.core.objective.MaKDObjective.compute`), a term drops each teacher tensor once it has used it,
so the teacher's captures do not pile up while the terms' backward tensors accumulate. The attention terms run
one layer at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from makd.core import losses
from makd.core.capture import Captured

MHA, FFN = ("q", "k", "v", "o"), ("ffn_gate", "ffn_in", "ffn_out")   # the matrix roles of each matrix aspect


@dataclass(frozen=True)
class AspectLoss:
    """One registered loss. Per layer: ``term(objective, layer, student, teacher, mask) -> ()``; model level
    (``model=True``): ``term(objective, student, teacher, batch) -> ((), {part: ()})``. ``needs(layers)``: the
    :class:`CaptureSpec` fields this loss reads on those layers. ``keys``: an attention-type loss, whose term also
    takes ``key_mask`` (B, T), the keys its distributions run over (the real tokens), while ``mask`` selects the
    queries (for a decoder, the response tokens only)."""
    term: Callable
    needs: Callable[[list[int]], dict]
    model: bool = False
    keys: bool = False


def _matrix_term(roles: tuple[str, ...], loss: str) -> Callable:
    """MSE of each factorised matrix's output (teacher forcing: the student's matrix on the teacher's input)."""
    def term(obj: Any, layer: int, s: Captured, t: Captured, mask) -> Tensor:
        if obj.teacher_forcing:
            t_in = {r: _take(t, t.inputs.get(layer, {}), r) for r in roles if r in t.inputs.get(layer, {})}
            s_out = {r: s.apply[layer][r](t_in[r]) for r in roles if r in t_in and r in s.apply.get(layer, {})}
        else:
            s_out = s.modules[layer]
        t_out = {r: _take(t, t.modules[layer], r) for r in roles if r in t.modules.get(layer, {})}
        return getattr(losses, loss)(s_out, t_out, mask, roles=roles, relative=obj.mse == "relative")
    return term


def _take(cap: Captured, store: dict, key):
    """``store[key]``, removed from a transient capture (freed once the term has used it)."""
    return store.pop(key) if cap.transient else store[key]


def _attention_term(loss: str) -> Callable:
    """An attention loss on one layer's scores, recomputed now from the captured q and k (one layer at a time)."""
    def term(obj: Any, layer: int, s: Captured, t: Captured, mask, key_mask=None) -> Tensor:
        value = getattr(losses, loss)(s.attention_scores(layer), t.attention_scores(layer), mask, key_mask=key_mask)
        if t.transient:
            t.qk.pop(layer, None)
            t.scores.pop(layer, None)
        return value
    return term


def _pred(obj: Any, s: Captured, t: Captured | None, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """The model term; without a teacher (``finetune``) the gold loss alone (the student is its own "teacher")."""
    labels = batch.get("labels")
    alone = t is None
    if obj.causal_lm:
        t_logits = s.logits.detach() if alone else t.logits
        return losses.causal_lm_kd(s.logits, t_logits, labels, reverse=obj.reverse_kl,
                                   lm_weight=1.0 if alone else obj.lm_weight)
    alpha = 0.0 if alone else obj.alpha
    if getattr(s.outputs, "start_logits", None) is not None:                # extractive QA: start and end
        parts = []
        for key, lab in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
            if lab not in batch:
                raise ValueError(f"QA distillation needs batch[{lab!r}] (the gold answer token positions)")
            sl = getattr(s.outputs, key)
            tl = sl.detach() if alone else getattr(t.outputs, key)
            parts.append(losses.prediction_loss(sl, tl, batch[lab], obj.temperature, alpha))
        return (parts[0][0] + parts[1][0]) / 2, {k: (parts[0][1][k] + parts[1][1][k]) / 2 for k in ("kd", "ce")}
    if s.logits is None:
        raise ValueError("the model has no logits (a base model without a head): use a task head, or "
                         "switch the model aspect off with weights={'pred': 0}")
    if labels is None:
        if alone:
            raise ValueError("the finetune preset needs gold labels in batch['labels']")
        kd = losses.logit_kd(s.logits, t.logits, obj.temperature)
        return kd, {"kd": kd}
    return losses.prediction_loss(s.logits, s.logits.detach() if alone else t.logits, labels, obj.temperature, alpha)


LOSSES: dict[str, AspectLoss] = {
    "mha": AspectLoss(_matrix_term(MHA, "matrix_mha_loss"), lambda ls: {"matrix_layers": ls, "roles": MHA}),
    "ffn": AspectLoss(_matrix_term(FFN, "matrix_ffn_loss"), lambda ls: {"matrix_layers": ls, "roles": FFN}),
    "attn": AspectLoss(_attention_term("attention_kl_scores"), lambda ls: {"attention_layers": ls, "probs": True},
                       keys=True),
    "attn_scores": AspectLoss(_attention_term("tinybert_attention_mse"),
                              lambda ls: {"attention_layers": ls, "scores": True}, keys=True),
    "hidn": AspectLoss(lambda o, i, s, t, m: losses.hidden_mse(s.hidden[i + 1], _take(t, t.hidden, i + 1), m,
                                                               o.hidden_proj, relative=o.mse == "relative"),
                       lambda ls: {"hidden_layers": [i + 1 for i in ls]}),
    "vr": AspectLoss(lambda o, i, s, t, m, key_mask=None: losses.minilm_value_relation_kl(
                         s.values[i], _take(t, t.values, i), s.geometry[1], t.geometry[1], m, key_mask=key_mask),
                     lambda ls: {"value_layers": ls}, keys=True),
    "pred": AspectLoss(_pred, lambda ls: {}, model=True),
}
