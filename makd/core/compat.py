"""Can this student be distilled from this teacher? One check before any long work (vocabulary, depth,
width, heads, head type), raising one ValueError that says what to do; used by :mod:`makd.core.objective`'s
callers (``python -m makd distill`` / ``squad``)."""
from __future__ import annotations

from torch import nn

from makd.core import families


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
