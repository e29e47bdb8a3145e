"""A student outside makd's own format: merged back to a dense checkpoint, or exported to ONNX.

:func:`merge_dense` multiplies every factor pair out (``W = A B`` in float64, cast back; a GPT-2 ``Conv1D`` gets
``Wᵀ``; an embedding table ``E P``) into a fresh model of the teacher's architecture and saves it with
``save_pretrained``: a standard checkpoint that ``AutoModelFor<Head>.from_pretrained(dir)`` loads without
``trust_remote_code`` — as large as the teacher (the point of the factors is lost; use it where custom code is not
allowed). :func:`export_onnx` traces an encoder student (BERT family) with the TorchScript exporter (no onnxscript
needed) and checks the graph with ``onnx.reference`` (pure numpy, no onnxruntime) against PyTorch on inputs of
another shape than the traced ones (the axes are dynamic). Both report the max abs difference to the student.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from makd.core.checkpoint import load_student, load_tokenizer, read_factorization, replacing_folder, teacher_config
from makd.core.errors import UsageError
from makd.core.factorize import count_parameters
from makd.core.families import FAMILIES
from makd.core.lowrank import LowRankEmbedding, LowRankLinear

SAMPLE_TEXT = ["The film is a charming, funny and thoughtful look at family life.",
               "A tedious drama.",
               "Photosynthesis converts light energy into chemical energy stored in glucose molecules."]
OUTPUTS = ("logits", "start_logits", "end_logits", "last_hidden_state")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FACTOR_KEYS = ("down.weight", "up.weight", "up.bias", "embed.weight", "proj.weight")


def sample_inputs(folder: str | os.PathLike, texts: list[str] = SAMPLE_TEXT) -> dict[str, torch.Tensor]:
    """The saved tokenizer's encoding of ``texts`` (padded), or seeded random ids when no tokenizer was saved."""
    folder = Path(folder)
    try:
        tok = load_tokenizer(folder)
    except (OSError, ValueError):                              # FileNotFoundError when none was saved
        tok = None
    if tok is None:
        config = teacher_config(folder)
        ids = torch.randint(1, config.vocab_size, (len(texts), 12), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return {k: batch[k] for k in INPUTS if k in batch}


def main_outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's output tensors that a user reads: logits, QA start/end logits or the last hidden state."""
    with torch.no_grad():
        out = model(**batch)
    return {k: out[k] for k in OUTPUTS if k in out and out[k] is not None}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float(np.abs(np.asarray(a[k], dtype=np.float64) - np.asarray(b[k], dtype=np.float64)).max())
               for k in a)


def merged_model(folder: str | os.PathLike) -> tuple[nn.Module, nn.Module]:
    """(dense model of the teacher's architecture with every factor product multiplied out, the student)."""
    folder = Path(folder)
    meta = read_factorization(folder)
    student = load_student(folder)
    dtype = next(student.parameters()).dtype
    dense = getattr(transformers, meta["architecture"])._from_config(teacher_config(folder), dtype=dtype)
    state = dict(student.state_dict())
    for name in meta["ranks"]:
        low, target = student.get_submodule(name), dense.get_submodule(name)
        for key in FACTOR_KEYS:
            state.pop(f"{name}.{key}", None)
        if isinstance(low, LowRankEmbedding):
            w = low.embed.weight.double() @ low.proj.weight.double().t()          # (V, d)
        elif isinstance(low, LowRankLinear):
            w = low.up.weight.double() @ low.down.weight.double()                 # (d_out, d_in)
            if low.up.bias is not None:
                state[f"{name}.bias"] = low.up.bias
        else:
            raise ValueError(f"{name} of the saved student is a {type(low).__name__}, not a factor pair")
        state[f"{name}.weight"] = (w.t() if isinstance(target, Conv1D) else w).to(dtype)   # Conv1D: (d_in, d_out)
    dense.load_state_dict(state, strict=True)
    return dense.eval(), student


def merge_dense(folder: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Save the merged dense checkpoint of student ``folder`` into ``out`` (with its tokenizer), atomically; checks
    it against the student on the tokenizer's encoding of :data:`SAMPLE_TEXT`. Warns that it is not smaller."""
    dense, student = merged_model(folder)
    batch = sample_inputs(folder)
    diff = max_abs_diff({k: v.numpy() for k, v in main_outputs(dense, batch).items()},
                        {k: v.numpy() for k, v in main_outputs(student, batch).items()})
    report = {"params_merged": count_parameters(dense), "params_student": count_parameters(student),
              "max_abs_diff": diff, "out": str(out)}
    with replacing_folder(out) as tmp:
        dense.save_pretrained(tmp)
        for f in Path(folder).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "chat_template")):
                shutil.copy2(f, tmp / f.name)
    report["warning"] = (f"the merged checkpoint is NOT smaller: {report['params_merged']:,} parameters (the "
                         f"teacher's architecture) against {report['params_student']:,} in the low-rank student; "
                         "use it only where trust_remote_code is not allowed")
    warnings.warn(report["warning"], stacklevel=2)
    return report


class _Outputs(nn.Module):
    """A student as a function of positional input tensors returning a tuple of output tensors (for tracing)."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, tensors)))
        return tuple(out[k] for k in self.outputs)


def export_onnx(folder: str | os.PathLike, out: str | os.PathLike, opset: int = 17) -> dict[str, Any]:
    """``out/model.onnx`` (+ config and tokenizer) of an encoder student, checked with ``onnx.reference`` against
    PyTorch on a batch of another shape than the traced one; returns the max abs difference and the names."""
    import onnx                                               # ~1.5 s to import: only when exporting
    from onnx.reference import ReferenceEvaluator
    folder = Path(folder)
    config = teacher_config(folder)
    if config.model_type not in FAMILIES["bert"].model_types:
        raise UsageError(f"ONNX export is for encoder students (model types {', '.join(FAMILIES['bert'].model_types)});"
                         f" {folder} is a {config.model_type} student: use --merge, or load it with "
                         "trust_remote_code=True")
    student = load_student(folder, attn_implementation="eager")
    traced, checked = sample_inputs(folder, SAMPLE_TEXT[:2]), sample_inputs(folder, SAMPLE_TEXT)
    if "token_type_ids" not in traced and getattr(config, "type_vocab_size", 0):
        for batch in (traced, checked):                      # BERT reads a default buffer otherwise
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    inputs, outputs = tuple(traced), tuple(main_outputs(student, traced))
    wrapper = _Outputs(student, inputs, outputs).eval()
    with replacing_folder(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                   # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(wrapper, tuple(traced.values()), str(tmp / "model.onnx"), input_names=list(inputs),
                              output_names=list(outputs), opset_version=opset, dynamo=False,
                              dynamic_axes={k: {0: "batch"} if k == "logits" else {0: "batch", 1: "sequence"}
                                            for k in inputs + outputs})   # logits (B, labels): no sequence axis
        onnx.checker.check_model(str(tmp / "model.onnx"))
        wrapper.eval()                                        # export restores the wrapper's mode
        config.save_pretrained(tmp)
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
                shutil.copy2(f, tmp / f.name)
        got = ReferenceEvaluator(str(tmp / "model.onnx")).run(None, {k: v.numpy() for k, v in checked.items()})
    want = main_outputs(student.eval(), checked)
    diff = max_abs_diff(dict(zip(outputs, got)), {k: v.numpy() for k, v in want.items()})
    return {"onnx": str(Path(out) / "model.onnx"), "inputs": list(inputs), "outputs": list(outputs),
            "checked_shape": list(checked["input_ids"].shape), "max_abs_diff": diff, "opset": opset}
