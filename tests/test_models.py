"""makd.assets.models, .builders and .onnx_bert: name resolution, hub errors, tiny presets, vocab checks, real assets."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch
import transformers as tf

from makd.assets import builders
from makd.assets import fetch as assets
from makd.assets import models
from makd.assets import onnx_bert


def test_resolve_rules(tiny_cache, tmp_path):
    folder = models.resolve("tiny-bert")
    assert folder.startswith(tiny_cache) and os.path.isfile(os.path.join(folder, "config.json"))
    assert models.resolve(str(tmp_path)) == str(tmp_path)                    # existing folder -> itself
    assert models.resolve("bert-base-uncased") == "bert-base-uncased"        # hub ids untouched
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        models.resolve("./no/such/folder")
    with pytest.raises(ValueError, match="neither an embedded name"):
        models.resolve("not a valid id!")


def test_hub_offline_raises_one_clear_error(monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelUnavailableError) as info:
        models.load_model("bert-base-uncased", head="cls")
    msg = str(info.value)
    for part in ("'bert-base-uncased'", "HF_HUB_OFFLINE is set", "minilm-l6", "minilm-l3",
                 "smollm2-135m-instruct", "tiny-bert", "local folder"):
        assert part in msg, part
    assert isinstance(info.value, OSError)


def test_bad_arguments_fail_before_loading(tiny_cache):
    with pytest.raises(ValueError, match="head must be one of"):
        models.load_model("tiny-bert", head="mlm")
    with pytest.raises(ValueError, match="num_labels"):
        models.load_model("tiny-bert", head="cls", num_labels=0)
    with pytest.raises(ValueError, match="dtype"):
        models.load_model("tiny-bert", dtype="float32")
    with pytest.raises(ValueError, match="needs a decoder"):
        models.load_model("tiny-bert", head="lm")


@pytest.mark.parametrize("name,head,cls", [
    ("tiny-bert", "base", "BertModel"), ("tiny-bert", "cls", "BertForSequenceClassification"),
    ("tiny-bert", "qa", "BertForQuestionAnswering"), ("tiny-gpt2", "lm", "GPT2LMHeadModel"),
    ("tiny-gpt2", "cls", "GPT2ForSequenceClassification"), ("tiny-llama", "lm", "LlamaForCausalLM"),
])
def test_tiny_presets_are_small_random_and_consistent(tiny_cache, name, head, cls):
    model, tok = models.load_model(name, head=head, num_labels=3)
    cfg = model.config
    assert type(model).__name__ == cls and not model.training
    assert cfg.vocab_size == len(tok) and 250 <= len(tok) <= 500
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 2 and cfg.num_attention_heads == 4
    if name == "tiny-llama":
        assert cfg.num_key_value_heads == 2
    batch = tok(["The teacher explains the answer.", "A short film review"], padding=True, return_tensors="pt")
    assert (batch["input_ids"] != tok.unk_token_id).all() if tok.unk_token_id is not None else True
    with torch.no_grad():
        out = model(**batch)
    if head == "cls":
        assert out.logits.shape == (2, 3)
    text = "the teacher is a large language model"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]).strip() == text


def test_tiny_presets_are_deterministic_and_leave_the_global_rng_alone(tiny_cache):
    state = torch.get_rng_state()
    a, _ = models.load_model("tiny-gpt2", head="cls", num_labels=2)
    b, _ = models.load_model("tiny-gpt2", head="cls", num_labels=2)
    assert torch.equal(torch.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    t1, t2 = builders.tiny_tokenizer("decoder"), builders.tiny_tokenizer("decoder")
    assert t1.get_vocab() == t2.get_vocab()


def test_tiny_tokenizers_are_the_same_in_every_process():
    """The tiny tokenizers (hence the tiny models' vocabulary size and weights, hence every smoke number) must not
    change from one process to the next: the `tokenizers` WordPiece trainer's vocabulary did (435-438 tokens)."""
    code = ("import hashlib, json; from makd.assets.builders import tiny_tokenizer; "
            "print(*(hashlib.sha256(json.dumps(sorted(tiny_tokenizer(k).get_vocab().items())).encode()).hexdigest()"
            " for k in ('bert', 'decoder')))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)}
    assert len(runs) == 1, runs
    vocab = builders.tiny_tokenizer("bert").get_vocab()
    assert len(vocab) == 261 and vocab["[PAD]"] == 0 and vocab["the"] < vocab["teacher"]


def test_tiny_tokenizers_have_special_tokens_and_chat_template(tiny_cache):
    _, bert_tok = models.load_model("tiny-bert")
    enc = bert_tok("hello there", "general kenobi")
    toks = bert_tok.convert_ids_to_tokens(enc["input_ids"])
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and toks.count("[SEP]") == 2
    assert set(enc["token_type_ids"]) == {0, 1} and bert_tok.mask_token == "[MASK]"
    _, dec_tok = models.load_model("tiny-llama", head="lm")
    assert dec_tok.bos_token and dec_tok.eos_token and dec_tok.pad_token and dec_tok.pad_token != dec_tok.eos_token
    chat = dec_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "token_type_ids" not in dec_tok("hi")


def test_new_heads_log_one_info_line_and_no_warnings(tiny_cache, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="makd.assets.models"), warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = models.load_model("tiny-bert", head="cls", num_labels=1)
    lines = [r for r in caplog.records if r.name == "makd.assets.models"]
    assert len(lines) == 1 and "newly initialised" in lines[0].getMessage()
    assert "classifier.weight" in lines[0].getMessage() and lines[0].levelno == logging.INFO
    captured = capsys.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err
    assert model.config.problem_type == "regression" and model.config.num_labels == 1


class _Tok:
    """A duck-typed tokenizer: just a vocabulary."""
    def __init__(self, vocab):
        self.vocab = vocab

    def __len__(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)


def test_vocab_check(tiny_cache):
    gpt2, gtok = models.load_model("tiny-gpt2", head="lm")
    llama, ltok = models.load_model("tiny-llama", head="lm")
    _, btok = models.load_model("tiny-bert")
    assert models.vocab_check(gtok, ltok, gpt2, llama) == len(gtok)        # same BPE training -> same vocab
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        models.vocab_check(btok, gtok)
    with pytest.raises(ValueError, match="token -> id maps differ.*'b'"):
        models.vocab_check(_Tok({"a": 0, "b": 1}), _Tok({"a": 0, "c": 1}))
    llama.resize_token_embeddings(len(ltok) + 12)                          # padded embedding rows
    with pytest.raises(ValueError, match="embedding rows differ"):
        models.vocab_check(gtok, ltok, gpt2, llama)


def _export_tiny_bert_onnx():
    """A tiny random BERT exported like sentence-transformers (prefix model.0.auto_model.)."""
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    cfg._attn_implementation = "eager"

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.ModuleList([torch.nn.Module()])
            self.model[0].auto_model = tf.BertModel(cfg, add_pooling_layer=False).eval()

        def forward(self, input_ids, attention_mask):
            return self.model[0].auto_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrap = Wrap().eval()
    with torch.no_grad():
        for p in wrap.parameters():       # distinct values: exporters deduplicate identical initialisers
            p.normal_(0, 0.2)
    ids = torch.randint(1, 99, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrap, (ids, mask), buf, input_names=["input_ids", "attention_mask"], dynamo=False,
                          opset_version=17, dynamic_axes={"input_ids": {0: "b", 1: "t"},
                                                          "attention_mask": {0: "b", 1: "t"}})
    import onnx
    return wrap, onnx.load_from_string(buf.getvalue()), ids, mask


def test_onnx_conversion_recovers_the_exported_weights():
    wrap, graph, ids, mask = _export_tiny_bert_onnx()
    assert any(t.name.startswith("onnx::MatMul") for t in graph.graph.initializer)   # anonymous weights exist
    bert = onnx_bert.to_bert_model(graph)
    cfg = bert.config
    assert (cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size) == (4, 2, 37, 99)
    original = wrap.model[0].auto_model.state_dict()
    for k, v in bert.state_dict().items():
        assert torch.equal(v, original[k]), k
    with torch.no_grad():
        # same weights, possibly another attention kernel: equal up to float32 rounding (1.2e-7 seen on AMD EPYC,
        # where allclose's atol=1e-8 failed on outputs near 0)
        torch.testing.assert_close(bert(input_ids=ids, attention_mask=mask).last_hidden_state, wrap(ids, mask),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="fetch-assets"):
        onnx_bert.load("/no/such/model.onnx")


# ------------------------------------------------------------------------------------ real assets
def _need(*names):
    missing = [n for n in names if not assets.is_cached(n)]
    if missing:
        pytest.skip(f"assets {missing} not cached: run `python -m makd fetch-assets {' '.join(missing)}`")


def _mean_pooled(name, sentences):
    model, tok = models.load_model(name)
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                      # (B, T, H)
    m = batch["attention_mask"].unsqueeze(-1).float()                   # (B, T, 1)
    emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)  # (B, H)
    return emb @ emb.T                                                  # (B, B) cosine


SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]


@pytest.mark.assets
@pytest.mark.slow
def test_minilm_l6_gives_sensible_embeddings():
    _need("minilm-l6")
    sim = _mean_pooled("minilm-l6", SENTENCES)
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4 and sim[1, 2] < 0.3


@pytest.mark.assets
@pytest.mark.slow
def test_minilm_l3_matches_the_onnx_reference_and_shares_the_teacher_vocab():
    _need("minilm-l6", "minilm-l3-onnx")
    model, tok = models.load_model("minilm-l3")
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 384
    batch = tok(["Distillation compresses a teacher.", "A short one."], padding=True, return_tensors="pt")
    diff = onnx_bert.max_abs_diff(model, assets.fetch("minilm-l3-onnx"), batch["input_ids"], batch["attention_mask"])
    assert diff < 1e-4
    sim = _mean_pooled("minilm-l3", SENTENCES)
    assert sim[0, 1] > sim[0, 2] + 0.3
    teacher, ttok = models.load_model("minilm-l6")
    assert models.vocab_check(ttok, tok, teacher, model) == 30522


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_loads_and_greedy_generates():
    _need("smollm2-135m-instruct-gguf")
    model, tok = models.load_model("smollm2-135m-instruct", head="lm")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.vocab_size == len(tok) == 49152 and tok.chat_template
    # dequantised: a plain float32 model that transformers' Trainer accepts for training
    assert not getattr(model, "is_quantized", False) and getattr(cfg, "quantization_config", None) is None
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
