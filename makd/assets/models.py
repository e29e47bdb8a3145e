"""Load teachers and students by name: embedded real models, tiny random presets, local folders or hub ids.

================================  ==================================================================
name                              what
================================  ==================================================================
``minilm-l6``                     all-MiniLM-L6-v2 (BERT 6x384, 22.7M), the encoder teacher
``minilm-l3``                     paraphrase-MiniLM-L3-v2 (BERT 3x384, 17.2M), converted from ONNX: the
                                  dense layer-reduced baseline student (same vocabulary as the teacher)
``smollm2-135m-instruct``         SmolLM2-135M-Instruct (Llama 30x576, GQA 9/3), dequantised from GGUF
``tiny-bert|gpt2|llama``          RANDOM tiny models (hidden 32, 2 layers, 4 heads; llama 2 KV heads)
                                  with a real tokenizer trained on a built-in text: smoke tests only,
                                  never results
local folder                      any ``save_pretrained`` folder
hub id (``bert-base-uncased``)    loaded with ``from_pretrained`` (needs the Hugging Face hub)
================================  ==================================================================

Embedded models are built once into ``cache_dir()/models/<name>/`` from the assets of
:mod:`makd.assets.fetch` by :mod:`makd.assets.builders` (see ``data/README.md``); later loads read that
folder. Every :func:`resolve` of an embedded or tiny name checks the cached files first (their size/mtime
stamps, a full sha256 when one moved) and restores a broken copy, re-extracted or rebuilt, with one warning.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from makd.assets import fetch as assets
from makd.assets.builders import BUILDERS, EMBEDDED, TINY, materialise, quiet
from makd.assets.paths import hub_reachable
from makd.core.errors import MakdError

log = logging.getLogger(__name__)

HEADS = ("base", "cls", "qa", "lm")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")


class ModelUnavailableError(MakdError, OSError):
    """A hub id could not be loaded (hub unreachable, offline mode, or unknown id)."""


def _offline_names() -> str:
    return ", ".join(EMBEDDED) + " (real); " + ", ".join(TINY) + " (random, smoke tests)"


# ------------------------------------------------------------------------------------------- resolving
def resolve(name_or_path: str) -> str:
    """Embedded or tiny name -> its local folder (built once); existing folder -> itself; else a hub id."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"expected a model name, folder or hub id, got {name_or_path!r}")
    name = str(name_or_path)
    if name == "minilm-l6":
        return str(assets.fetch("minilm-l6"))
    if name in BUILDERS:
        return str(materialise(name))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or "\\" in name or path.exists():
        raise FileNotFoundError(f"{name} is not a model folder: pass an existing save_pretrained folder, "
                                f"an embedded name ({_offline_names()}) or a hub id")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise ValueError(f"{name!r} is neither an embedded name ({_offline_names()}), "
                         "an existing folder, nor a valid hub id like 'bert-base-uncased' or 'org/name'")
    return name


def _from_pretrained(auto, path: str, kwargs: dict, seed: int | None):
    """``auto.from_pretrained``; with ``seed``, new weights come from a private seeded RNG."""
    if seed is None:                     # real models: new heads follow the caller's seed
        return auto.from_pretrained(path, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return auto.from_pretrained(path, **kwargs)


def _hub_error(name: str, err: Exception) -> ModelUnavailableError:
    from huggingface_hub import constants
    why = ("offline: HF_HUB_OFFLINE is set or huggingface.co is unreachable" if constants.is_offline_mode() else
           "the hub could not be reached or has no such model; set HF_HUB_OFFLINE=1 to fail fast offline")
    reason = str(err).splitlines()[0] if str(err) else ""
    return ModelUnavailableError(
        f"could not load {name!r} from the Hugging Face hub ({why}).\n  {type(err).__name__}: {reason}\n"
        f"Offline, use an embedded name: {_offline_names()}, or a local folder path holding a "
        "save_pretrained model and tokenizer.")


def load_model(name_or_path: str = "minilm-l6", head: str = "base", num_labels: int = 2,
               dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """(model, tokenizer) for an embedded name, a tiny preset, a local folder or a hub id.

    head: ``base`` (AutoModel), ``cls`` (sequence classification, ``num_labels``; 1 = regression),
    ``qa`` (extractive QA), ``lm`` (causal LM, decoders only). Newly initialised head weights are
    expected (the teacher is fine-tuned on the task first) and reported by one INFO log line.
    Tiny presets are random and seeded: two loads give identical weights, heads included.
    """
    import transformers as tf
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "cls" and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int (1 = regression), got {num_labels!r}")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    path = resolve(name_or_path)
    hub = not Path(path).is_dir()
    if hub:
        hub_reachable()  # offline: fail at once instead of retrying for ~25 s
    try:
        config = tf.AutoConfig.from_pretrained(path)
        tok = tf.AutoTokenizer.from_pretrained(path)
    except OSError as err:
        if hub:
            raise _hub_error(path, err) from err
        raise
    if head == "lm" and config.model_type in ENCODER_TYPES:
        raise ValueError(f"head 'lm' needs a decoder; {name_or_path} is a {config.model_type} encoder "
                         "(use head 'base', 'cls' or 'qa')")
    kwargs = {"dtype": dtype, "output_loading_info": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if head == "cls":
        trained = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("SequenceClassification")]
        if trained and config.num_labels != num_labels:
            raise ValueError(f"{name_or_path} already has a classification head with {config.num_labels} label(s) "
                             f"but the task needs {num_labels}: pass the pretrained model without that head "
                             "(or one fine-tuned on this task)")
        kwargs["num_labels"] = num_labels
        if num_labels == 1:
            kwargs["problem_type"] = "regression"
    if tok.pad_token is None and tok.eos_token is not None:   # GPT-2 style tokenizers
        tok.pad_token = tok.eos_token
    if tok.pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        kwargs["pad_token_id"] = tok.pad_token_id
    auto = {"base": tf.AutoModel, "cls": tf.AutoModelForSequenceClassification,
            "qa": tf.AutoModelForQuestionAnswering, "lm": tf.AutoModelForCausalLM}[head]
    try:
        with quiet():
            model, info = _from_pretrained(auto, path, kwargs, seed=0 if name_or_path in TINY else None)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ValueError(f"head {head!r} is not available for {config.model_type} models "
                             f"({name_or_path}); choose another of {HEADS}") from err
        raise
    except OSError as err:
        if hub:
            raise _hub_error(path, err) from err
        raise
    new = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if new:
        log.info("%s: newly initialised %s (expected: train this head on the task first)",
                 name_or_path, ", ".join(sorted(new)))
    return model.eval(), tok


def vocab_check(teacher_tok, student_tok, teacher_model=None, student_model=None) -> int:
    """Raise ValueError unless teacher and student share one vocabulary; the vocabulary size.

    Compares tokenizer sizes and token -> id maps, and (when models are given) the rows of their input
    embeddings, padded rows included: logits of different widths cannot be distilled into each other.
    """
    nt, ns = len(teacher_tok), len(student_tok)
    if nt != ns:
        raise ValueError(f"vocabulary sizes differ: teacher tokenizer {nt}, student tokenizer {ns}; "
                         "distil between models that share a tokenizer")
    vt, vs = teacher_tok.get_vocab(), student_tok.get_vocab()
    if vt != vs:
        diff = sorted(t for t in set(vt) | set(vs) if vt.get(t) != vs.get(t))[:5]
        shown = ", ".join(f"{t!r}: teacher {vt.get(t)} / student {vs.get(t)}" for t in diff)
        raise ValueError(f"token -> id maps differ (e.g. {shown}); the student must use the teacher's tokenizer")
    rows = {}
    for who, model in (("teacher", teacher_model), ("student", student_model)):
        if model is None:
            continue
        rows[who] = model.get_input_embeddings().weight.shape[0]
        if rows[who] < nt:
            raise ValueError(f"the {who} has {rows[who]} embedding rows but the tokenizer has {nt} tokens")
    if len(rows) == 2 and rows["teacher"] != rows["student"]:
        raise ValueError(f"embedding rows differ (padded vocabularies): teacher {rows['teacher']}, student "
                         f"{rows['student']}; resize one with model.resize_token_embeddings(n)")
    return nt
