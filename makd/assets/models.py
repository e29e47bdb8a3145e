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
:mod:`makd.assets.fetch` (see ``data/README.md``); later loads read that folder.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from makd.assets import fetch as assets
from makd.assets.paths import cache_dir, hub_reachable

log = logging.getLogger(__name__)

EMBEDDED = {
    "minilm-l6": "all-MiniLM-L6-v2, BERT 6 layers x 384, 12 heads, 22.7M params (asset minilm-l6)",
    "minilm-l3": "paraphrase-MiniLM-L3-v2, BERT 3 layers x 384, 17.2M params, converted from ONNX "
                 "(asset minilm-l3-onnx), tokenizer of minilm-l6 (same vocabulary)",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct, Llama 30 layers x 576, 9/3 heads, dequantised from "
                             "GGUF Q4_1 to float32 (asset smollm2-135m-instruct-gguf)",
}
TINY = {
    "tiny-bert": "RANDOM BERT, hidden 32, 2 layers, 4 heads, WordPiece ~500 (smoke tests only)",
    "tiny-gpt2": "RANDOM GPT-2, hidden 32, 2 layers, 4 heads, byte-level BPE ~500 (smoke tests only)",
    "tiny-llama": ("RANDOM Llama, hidden 32, 2 layers, 4 heads / 2 KV heads, byte-level BPE ~500 "
                   "(smoke tests only)"),
}
HEADS = ("base", "cls", "qa", "lm")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
_RECIPE = 2   # bump when a builder changes: cached folders with another recipe are rebuilt


class ModelUnavailableError(OSError):
    """A hub id could not be loaded (hub unreachable, offline mode, or unknown id)."""


def _offline_names() -> str:
    return ", ".join(EMBEDDED) + " (real); " + ", ".join(TINY) + " (random, smoke tests)"


# ------------------------------------------------------------------------------------------- builders
def _build_minilm_l3(out: Path) -> dict:
    from transformers import AutoTokenizer
    from makd.assets import onnx_bert
    onnx_path = assets.fetch("minilm-l3-onnx")
    teacher = assets.fetch("minilm-l6")
    bert = onnx_bert.to_bert_model(onnx_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(teacher / f, out / f)
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["A man is playing a guitar on stage.", "Low-rank students imitate their teacher."],
                padding=True, return_tensors="pt")
    diff = onnx_bert.max_abs_diff(bert, onnx_path, batch["input_ids"], batch["attention_mask"])
    if diff > 1e-4:
        raise RuntimeError(f"minilm-l3 conversion differs from the ONNX reference by {diff:.2e} (> 1e-4)")
    bert.config.architectures = ["BertModel"]
    bert.save_pretrained(out)
    return {"source_sha256": assets.asset_sha256("minilm-l3-onnx"), "max_abs_diff_vs_onnx_reference": diff}


def _build_smollm2(out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = assets.fetch("smollm2-135m-instruct-gguf")
    log.info("dequantising %s to float32 (once, ~20 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tok.chat_template or "<|im_start|>" not in tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True):
        raise RuntimeError(f"the tokenizer read from {gguf.name} has no usable chat template")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    # the weights are dequantised: the GGUF quantization_config must not follow them (transformers would
    # treat the saved float32 model as quantised and refuse to train it)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # save_pretrained of the GGUF-loaded model fails: copy its weights into a plain model and save that
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source_sha256": assets.asset_sha256("smollm2-135m-instruct-gguf"), "dtype": "float32"}


_TINY_TEXT = """\
The teacher is a large language model and the student is a small one. Knowledge distillation trains the
student to imitate the teacher: its outputs, its attention maps and its hidden states. A weight matrix can
be written as the product of three matrices with the singular value decomposition; keeping the largest
singular values gives a low-rank approximation with fewer parameters. The film was a delight from start to
finish, with sharp dialogue and a moving score. The plot is thin and the jokes fall flat, but the actors do
their best. What is the capital of France? Paris is the capital and the largest city of France. How many
days are there in a week? There are seven days in a week. Please write a short poem about the sea. The
river flows to the sea, the wind moves over the hills, and the birds sing in the morning light. She opened
the window, looked at the garden and smiled. Numbers such as 1, 2, 3, 10, 42 and 2026 appear in text too.
Questions, answers, reviews, stories and instructions: each sentence helps the tokenizer learn common words.
"""


def tiny_tokenizer(kind: str):
    """A real, deterministic tokenizer trained on a built-in English text (vocabulary ~500).

    kind ``"bert"``: uncased WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK] and ``[CLS] A [SEP] B [SEP]``;
    kind ``"decoder"``: byte-level BPE with <|endoftext|> (bos) <|im_end|> (eos) <|pad|> <|im_start|> and a
    ChatML-style chat template (the format of SmolLM2-Instruct).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    lines = _TINY_TEXT.splitlines()
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        alphabet = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
        trainer = trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials, initial_alphabet=alphabet,
                                            show_progress=False)
        tk.train_from_iterator(lines, trainer)
        cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tk.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=128,
                                       model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    if kind != "decoder":
        raise ValueError(f"kind must be 'bert' or 'decoder', got {kind!r}")
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(lines, trainer)
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>"],
                                   model_max_length=128, chat_template=template,
                                   model_input_names=["input_ids", "attention_mask"])


def _build_tiny(name: str, out: Path) -> dict:
    import transformers as tf
    kind = name.split("-", 1)[1]
    tok = tiny_tokenizer("bert" if kind == "bert" else "decoder")
    ids = {k: tok.convert_tokens_to_ids(getattr(tok, f"{k}_token")) for k in ("bos", "eos", "pad")
           if getattr(tok, f"{k}_token", None)}
    n = len(tok)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=128, pad_token_id=ids["pad"])
        cls = tf.AutoModel
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
        cls = tf.AutoModelForCausalLM
    else:
        cfg = tf.LlamaConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                             bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                             tie_word_embeddings=True)
        cls = tf.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"random": True, "seed": 0}


_BUILDERS = {"minilm-l3": _build_minilm_l3, "smollm2-135m-instruct": _build_smollm2,
             **{k: (lambda out, k=k: _build_tiny(k, out)) for k in TINY}}


def _materialise(name: str) -> Path:
    """Build ``cache_dir()/models/<name>`` once (into a temporary folder, then renamed)."""
    folder = cache_dir() / "models" / name
    marker = folder / "makd_build.json"
    if marker.is_file() and json.loads(marker.read_text()).get("recipe") == _RECIPE:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        with _quiet():
            info = _BUILDERS[name](tmp)
        (tmp / "makd_build.json").write_text(json.dumps({"name": name, "recipe": _RECIPE, **info}, indent=1))
        tmp.chmod(0o755)                  # mkdtemp makes it private; the cache may be shared
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------------- resolving
def resolve(name_or_path: str) -> str:
    """Embedded or tiny name -> its local folder (built once); existing folder -> itself; else a hub id."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"expected a model name, folder or hub id, got {name_or_path!r}")
    name = str(name_or_path)
    if name == "minilm-l6":
        return str(assets.fetch("minilm-l6"))
    if name in _BUILDERS:
        return str(_materialise(name))
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


@contextmanager
def _quiet():
    """Silence transformers' warnings and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


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
        with _quiet():
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
