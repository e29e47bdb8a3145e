"""makd.core.fused: fused students compute what unfused ones do — outputs and every gradient (float64, rtol 1e-10,
atol 1e-12), one shared GEMM per shared input (counted), dense fallback, unchanged names / state dict / saved
folders, capture hooks, and caches that follow optimizer steps and in-place edits (a frozen cache key is caught)."""
from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import transformers as tf
from torch.utils._python_dispatch import TorchDispatchMode

from makd.assets.models import load_model
from makd.core import checkpoint
from makd.core import factorize as fz
from makd.core import fused
from makd.core.capture import CaptureSpec, capture
from makd.core.lowrank import LowRankLinear

TOL = {"rtol": 1e-10, "atol": 1e-12}          # float64: fused and unfused differ by rounding only
PRESETS = {"tiny-bert": "cls", "tiny-gpt2": "lm", "tiny-llama": "lm"}
# tiny-llama (hidden 32, k/v 16, FFN 48), ranks at or above break-even r(d_in + d_out) >= d_in d_out run dense:
# q 16 (exactly at it), v 12, o 20 (alone), up_proj 30; k 4, gate 8, down 5 stay low rank
MIXED = {"q": 16, "k": 4, "v": 12, "o": 20, "ffn_gate": 8, "ffn_in": 30, "ffn_out": 5}


def teacher(name: str, dtype=torch.float64):
    model, _ = load_model(name, head=PRESETS[name], dtype=dtype, attn_implementation="eager")
    return model.eval()


def pair(name: str, dtype=torch.float64, **size):
    """(fused, unfused) students with identical weights, perturbed off the SVD as after training."""
    student = fz.factorize(teacher(name, dtype), fused=False, **(size or {"layer_ratio": 0.5}))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return fused.fuse(copy.deepcopy(student)).eval(), student.eval()


def batch(vocab: int = 200, b: int = 3, t: int = 12):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 3:] = 0
    return {"input_ids": torch.randint(1, vocab, (b, t), generator=g), "attention_mask": mask}


def loss_and_grads(model, data):
    model.zero_grad(set_to_none=True)
    logits = model(**data).logits
    (logits.double() ** 2).mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


class CountGemms(TorchDispatchMode):
    def __enter__(self):
        self.calls = Counter()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def gemms(self) -> int:
        return self.calls["mm"] + self.calls["addmm"]


def gemms(model, data) -> int:
    """GEMMs of one evaluation forward, after a first one has built the weight caches (A·B of dense matrices)."""
    with torch.no_grad():
        model(**data)
        with CountGemms() as count:
            model(**data)
    return count.gemms()


@pytest.mark.parametrize("name", list(PRESETS))
def test_outputs_and_every_gradient_match_unfused(tiny_cache, name):
    fast, plain = pair(name)
    data = batch()
    got, got_grads = loss_and_grads(fast, data)
    want, want_grads = loss_and_grads(plain, data)
    torch.testing.assert_close(got, want, **TOL)
    assert got_grads.keys() == want_grads.keys()
    for n, g in want_grads.items():
        assert g is not None and got_grads[n] is not None, n
        torch.testing.assert_close(got_grads[n], g, **TOL, msg=n)


@pytest.mark.parametrize("name, groups", [("tiny-bert", [3, 3]), ("tiny-gpt2", []), ("tiny-llama", [3, 2, 3, 2])])
def test_one_gemm_per_shared_input(tiny_cache, name, groups):
    fast, plain = pair(name)
    assert [len(g) for g in fused.sibling_groups(fast)] == groups     # GPT-2's c_attn is already one matrix
    data = batch()
    assert gemms(fast, data) == gemms(plain, data) - sum(n - 1 for n in groups)
    assert fused.is_fused(fast) == bool(groups) and not fused.is_fused(plain)


def test_dense_fallback(tiny_cache):
    assert fused.runs_dense(LowRankLinear(32, 32, 16)) and not fused.runs_dense(LowRankLinear(32, 32, 15))
    fast, plain = pair("tiny-llama", rank=MIXED)
    layer = "model.layers.0."
    dense = {n.removeprefix(layer) for n, m in fast.named_modules() if isinstance(m, LowRankLinear)
             and n.startswith(layer) and fused.runs_dense(m)}
    assert dense == {"self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj"}
    data = batch()
    # per layer: one GEMM for q|k|v (k's up after it), o dense, one for gate|up (gate's up after it), down 2
    assert gemms(plain, data) == 2 * 14 + 1 and gemms(fast, data) == 2 * 7 + 1
    got, got_grads = loss_and_grads(fast, data)
    want, want_grads = loss_and_grads(plain, data)
    torch.testing.assert_close(got, want, **TOL)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, **TOL, msg=n)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(tiny_cache, reentrant):
    """Checkpointed layers run their forward again in backward: the recomputation must see no stale product."""
    fast, plain = pair("tiny-llama")
    for model in (fast, plain):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()                                           # tiny-llama has no dropout
    data = {**batch(), "use_cache": False}
    got, got_grads = loss_and_grads(fast, data)
    want, want_grads = loss_and_grads(plain, data)
    torch.testing.assert_close(got, want, **TOL)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, **TOL, msg=n)


def test_float32_and_default_factorize(tiny_cache):
    model = teacher("tiny-llama", torch.float32)
    fast = fz.factorize(model, layer_ratio=0.5)                    # the default: fused
    plain = fz.factorize(model, layer_ratio=0.5, fused=False)
    assert fused.is_fused(fast) and not fused.is_fused(plain)
    with torch.no_grad():
        torch.testing.assert_close(fast(**batch()).logits, plain(**batch()).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_names_and_state_dict_keys_are_unchanged(tiny_cache, name):
    fast, plain = pair(name, rank=MIXED) if name == "tiny-llama" else pair(name)
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in plain.named_modules()]
    fast.load_state_dict(plain.state_dict(), strict=True)      # an unfused checkpoint resumes into a fused student
    fused.fuse(fast)
    assert list(fast.state_dict()) == list(plain.state_dict())   # fuse is idempotent
    fused.unfuse(fast)
    assert not fused.is_fused(fast)


def test_save_load_round_trip(tiny_cache, tmp_path):
    fast, plain = pair("tiny-llama", rank=MIXED)
    data = batch()
    with torch.no_grad():
        want = fast(**data).logits
    checkpoint.save_student(fast, tmp_path / "new")
    checkpoint.save_student(plain, tmp_path / "old")             # a folder as an unfused student writes it
    for folder in ("new", "old"):
        loaded = checkpoint.load_student(tmp_path / folder, attn_implementation="eager")   # as the teacher
        assert list(loaded.state_dict()) == list(fast.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(loaded(**data).logits, want, **TOL)
            torch.testing.assert_close(fused.fuse(loaded)(**data).logits, want, **TOL)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_capture_hooks_see_each_module(tiny_cache, name):
    fast, plain = pair(name)
    spec = CaptureSpec(matrix_layers={0, 1}, attention_layers={0, 1}, value_layers={1}, hidden_layers={0, 2},
                       inputs=True)
    data = batch()
    got, want = capture(fast, data, spec, grad=True), capture(plain, data, spec, grad=True)
    for field in ("modules", "inputs"):
        a, b = getattr(got, field), getattr(want, field)
        assert {k: set(v) for k, v in a.items()} == {k: set(v) for k, v in b.items()}
        for layer in b:
            for role in b[layer]:
                torch.testing.assert_close(a[layer][role], b[layer][role], **TOL, msg=f"{field} {layer} {role}")
    for field in ("attentions", "values", "hidden"):
        for k, v in getattr(want, field).items():
            torch.testing.assert_close(getattr(got, field)[k], v, **TOL)
    with torch.no_grad():                                       # teacher forcing: each module on a given input
        for layer, fns in got.apply.items():
            for role, fn in fns.items():
                x = want.inputs[layer][role]
                torch.testing.assert_close(fn(x), want.apply[layer][role](x), **TOL)


def _groups(model):
    return {id(m._fused): m._fused for m in model.modules() if isinstance(m, LowRankLinear) and m._fused}.values()


def test_caches_follow_optimizer_steps_and_in_place_edits(tiny_cache):
    fast, plain = pair("tiny-llama", rank=MIXED)
    data = batch()
    with torch.no_grad():
        before = fast(**data).logits
    assert all(g._weight is not None for g in _groups(fast))       # eval: stacked weights cached...
    assert all(g._shared is None for g in _groups(fast))           # ...the shared product released after use
    for optim in (lambda ps: torch.optim.SGD(ps, lr=0.5), lambda ps: torch.optim.Adam(ps, lr=0.05, foreach=True)):
        opts = [optim(m.parameters()) for m in (fast, plain)]
        for model, opt in zip((fast, plain), opts):
            loss_and_grads(model, data)
            opt.step()
        with torch.no_grad():
            after, ref = fast(**data).logits, plain(**data).logits
        torch.testing.assert_close(after, ref, **TOL)
        assert not torch.allclose(after, before)
        before = after
    with torch.no_grad():                                        # an in-place edit outside any optimizer
        fast.model.layers[0].self_attn.v_proj.up.weight.mul_(0.5)     # v runs dense: its cached A·B must go
        plain.model.layers[0].self_attn.v_proj.up.weight.mul_(0.5)
        fast.model.layers[1].self_attn.k_proj.down.weight.add_(0.1)   # k is low rank: the stacked B must go
        plain.model.layers[1].self_attn.k_proj.down.weight.add_(0.1)
        torch.testing.assert_close(fast(**data).logits, plain(**data).logits, **TOL)


def test_a_frozen_cache_key_is_caught(tiny_cache, monkeypatch):
    """The invalidation test above can fail: with the parameter key frozen, the stale cache shows."""
    fast, plain = pair("tiny-llama", rank=MIXED)
    monkeypatch.setattr(fused, "_key", lambda params: ())
    data = batch()
    with torch.no_grad():
        fast(**data)
        for model in (fast, plain):
            model.model.layers[0].self_attn.v_proj.up.weight.mul_(0.5)
        assert not torch.allclose(fast(**data).logits, plain(**data).logits)


def test_shared_product_is_keyed_on_the_input_tensor(tiny_cache):
    fast, plain = pair("tiny-llama")
    q, k, v = (fast.model.layers[0].self_attn.get_submodule(n) for n in ("q_proj", "k_proj", "v_proj"))
    rq, rk, rv = (plain.model.layers[0].self_attn.get_submodule(n) for n in ("q_proj", "k_proj", "v_proj"))
    x, y = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(q(x), rq(x), **TOL)
        torch.testing.assert_close(k(y), rk(y), **TOL)          # another input: not served from x's product
        x.add_(1.0)                                              # the same tensor, edited in place
        torch.testing.assert_close(v(x), rv(x), **TOL)
        torch.testing.assert_close(q(x), rq(x), **TOL)
        torch.testing.assert_close(q(x), rq(x), **TOL)          # called twice: recomputed, still right
    torch.testing.assert_close(copy.copy(k)(x), rk(x), **TOL)     # a shallow copy (DataParallel replica) runs alone


def test_deep_copies_are_independent(tiny_cache):
    fast, _ = pair("tiny-llama")
    data = batch()
    with torch.no_grad():
        want = fast(**data).logits
        twin = copy.deepcopy(fast)
        assert fused.is_fused(twin)
        for g in _groups(twin):
            assert all(any(m is t for t in twin.modules()) for m in g.members)   # the copy's own modules
        for p in twin.parameters():
            p.mul_(1.5)
        torch.testing.assert_close(fast(**data).logits, want, **TOL)
        torch.testing.assert_close(twin(**data).logits, fused.unfuse(copy.deepcopy(twin))(**data).logits, **TOL)


def test_bad_dense_from():
    with pytest.raises(ValueError, match="dense_from"):
        fused.fuse(torch.nn.Linear(2, 2), dense_from=0)


def test_a_hand_written_module_map_is_fused_from_the_record():
    torch.manual_seed(0)
    opt = tf.OPTModel(tf.OPTConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, ffn_dim=24,
                                   num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32))
    modules = {"layers": "decoder.layers", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
               "v": "self_attn.v_proj", "o": "self_attn.out_proj", "ffn_in": "fc1", "ffn_out": "fc2"}
    plain = fz.factorize(opt.double().eval(), layer_ratio=0.5, modules=modules, fused=False)
    fast = fused.fuse(copy.deepcopy(plain))                       # the map comes from plain.makd_factorization
    assert [len(g) for g in fused.sibling_groups(fast)] == [3, 3] and fused.sibling_groups(opt) == []
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).last_hidden_state, plain(ids).last_hidden_state, **TOL)
