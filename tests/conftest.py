"""Shared fixtures: tiny random models of each supported family (HF-style tiny configs)."""
from __future__ import annotations

import copy
import os

# before transformers / huggingface_hub read them at import (afterwards the hub retries ~23 s per call)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = 99


def tiny_config(family: str, **kw):
    """Tiny random configs: hidden 32, 2 layers (4 for `n_layers=4`), vocab 99."""
    n_layers = kw.pop("n_layers", 2)
    if family == "bert":
        cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64, num_labels=kw.pop("num_labels", 2))
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=n_layers, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=0, num_labels=kw.pop("num_labels", 2))
    elif family == "llama":
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
    else:
        raise ValueError(family)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(family: str, head: str = "auto", seed: int = 0, **kw):
    """A tiny random model in eval mode. head: 'base', 'cls', 'lm', 'qa' or 'auto'."""
    torch.manual_seed(seed)
    cfg = tiny_config(family, **kw)
    if head == "auto":
        head = "cls" if family == "bert" else "lm"
    cls = {"base": tf.AutoModel, "cls": tf.AutoModelForSequenceClassification, "lm": tf.AutoModelForCausalLM,
           "qa": tf.AutoModelForQuestionAnswering}[head]
    model = cls.from_config(cfg, attn_implementation="eager")
    return model.eval()


def unfused(model):
    """A copy of ``model`` with the plain two-GEMM low-rank forward — what a loaded student (load_student, the Hub
    loading code) runs. A factorised student runs fused (one GEMM for Q/K/V, gate/up), which agrees only to float
    rounding: bit for bit on the earlier machines, ~1e-8 apart on an AVX-512 AMD EPYC."""
    from makd.core.fused import unfuse
    return unfuse(copy.deepcopy(model))


def tiny_batch(batch: int = 3, seq: int = 10, seed: int = 1, pad: bool = True):
    """input_ids (B, T) and attention_mask (B, T) with right padding on the later rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad:
        for b in range(1, batch):
            mask[b, seq - 2 * b:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# -- token mixers (tests/test_mixers_*.py) ----------------------------------------------------------------------------
def run_steps(mixer, x, state=None):
    """A mixer's recurrent form over x (B, T, D) a token at a time from ``state`` (default: its initial state):
    (outputs (B, T, D), state after the last token)."""
    state = mixer.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    outs = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t:t + 1], state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


def mixed_values(mixer, x, mask=None):
    """What a gated-linear mixer's forward hands to its per-token ``output`` (norm, gate, o_proj): (B, H, T, d)."""
    seen = {}

    def capture(o, _x):
        seen["o"] = o
        return _x
    mixer.output = capture   # shadows the method on this instance only
    try:
        mixer(x, mask)
    finally:
        del mixer.output
    return seen["o"]


def assert_states_close(a, b, tol=1e-10):
    """Two mixer states hold the same tensors (names, shapes) within ``tol``."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).abs().max() < tol, f"state {key} differs by {(a[key] - b[key]).abs().max():.3g}"


@pytest.fixture(params=["bert", "gpt2", "llama"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def _tiny_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny_cache(_tiny_dir, monkeypatch):
    """A private cache for the tiny presets (built once per test module, ~1 s); the real cache elsewhere."""
    monkeypatch.setenv("MAKD_CACHE_DIR", _tiny_dir)
    return _tiny_dir
