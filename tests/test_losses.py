"""makd.core.losses: golden values (hand-computed by tests/fixtures/make_losses_golden.py), invariances, gradients."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from makd.core import losses as L

FIX = json.loads((Path(__file__).parent / "fixtures" / "losses_golden.json").read_text())
G, I = FIX["golden"], FIX["inputs"]


def x(name):
    return torch.tensor(I[name], dtype=torch.float64)


def xd(name):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in I[name].items()}


MASK = torch.tensor(I["mask"])


def close(value, expected):
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def probs(scores, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


# ---------------------------------------------------------------------------------------------- goldens
def test_golden_matrix_and_hidden():
    close(L.masked_mse(x("mse_s"), x("mse_t"), MASK), G["masked_mse"])
    close(L.matrix_mha_loss(xd("mha_s"), xd("mha_t"), MASK), G["matrix_mha_loss"])
    close(L.matrix_ffn_loss(xd("ffn_s"), xd("ffn_t"), MASK), G["matrix_ffn_loss"])
    proj = nn.Linear(3, 4).double()
    with torch.no_grad():
        proj.weight.copy_(x("proj_w"))
        proj.bias.copy_(x("proj_b"))
    close(L.hidden_mse(x("hid_s"), x("hid_t"), MASK, proj=proj), G["hidden_mse_proj"])


def test_every_loss_takes_the_student_first():
    """One argument order everywhere, (student, teacher, ...): KL is asymmetric, a swapped call is a silent bug."""
    import inspect
    funcs = [getattr(L, n) for n in L.__all__ if n not in ("NonFiniteLossError", "check_finite")]
    assert len(funcs) == 11
    for fn in funcs:
        first, second = list(inspect.signature(fn).parameters)[:2]
        assert "student" in first and "teacher" in second, (fn.__name__, first, second)


def test_golden_attention():
    close(L.attention_kl(x("p_s"), x("p_t"), MASK), G["attention_kl"])
    close(L.minilm_attention_kl(x("p_s"), x("p_t"), MASK), G["attention_kl"])
    close(L.tinybert_attention_mse(x("sc_s"), x("sc_t"), MASK), G["tinybert_attention_mse"])
    close(L.minilm_value_relation_kl(x("v_s"), x("v_t"), 2, mask=MASK), G["minilm_value_relation_kl"])


def test_golden_logit_kd():
    zs, zt = x("cls_s"), x("cls_t")
    close(L.logit_kd(zs, zt), G["logit_kd_t1"])
    close(L.logit_kd(zs, zt, temperature=2.0), G["logit_kd_t2"])
    close(L.logit_kd(zs, zt, reverse=True), G["logit_kd_t1_reverse"])
    close(L.logit_kd(x("tok_s"), x("tok_t"), 2.0, mask=MASK), G["logit_kd_tokens_t2"])


def test_golden_prediction_and_causal():
    total, parts = L.prediction_loss(x("cls_s"), x("cls_t"), torch.tensor(I["cls_labels"]), 2.0, alpha=0.3)
    for k in ("total", "kd", "ce"):
        close(total if k == "total" else parts[k], G["prediction_cls_t2_a0.3"][k])
    total, parts = L.prediction_loss(x("reg_s"), x("reg_t"), x("reg_y"), alpha=0.5)
    for k in ("total", "kd", "ce"):
        close(total if k == "total" else parts[k], G["prediction_reg_a0.5"][k])
    labels = torch.tensor(I["lm_labels"])
    total, parts = L.causal_lm_kd(x("tok_s"), x("tok_t"), labels)
    for k in ("total", "kd", "ce"):
        close(total if k == "total" else parts[k], G["causal_lm_kd"][k])
    total, parts = L.causal_lm_kd(x("tok_s"), x("tok_t"), labels, reverse=True, lm_weight=0.2)
    for k in ("total", "kd", "ce"):
        close(total if k == "total" else parts[k], G["causal_lm_kd_reverse_w0.2"][k])


# ------------------------------------------------------------------------------ zero / positive / padding
def all_losses(d):
    """name -> loss value for one set of (student, teacher) inputs in dict d."""
    m = d["mask"]
    return {
        "masked_mse": L.masked_mse(d["h_s"], d["h_t"], m),
        "mha": L.matrix_mha_loss({"q": d["h_s"], "o": d["h_s"]}, {"q": d["h_t"], "o": d["h_t"]}, m),
        "ffn": L.matrix_ffn_loss({"ffn_in": d["h_s"]}, {"ffn_in": d["h_t"]}, m),
        "hidden": L.hidden_mse(d["h_s"], d["h_t"], m),
        "attention_kl": L.attention_kl(probs(d["a_s"], m), probs(d["a_t"], m), m),
        "tinybert": L.tinybert_attention_mse(d["a_s"], d["a_t"], m),
        "minilm_vr": L.minilm_value_relation_kl(d["h_s"], d["h_t"], 2, mask=m),
        "logit_kd": L.logit_kd(d["z_s"], d["z_t"], 2.0, mask=m),
        "logit_kd_rev": L.logit_kd(d["z_s"], d["z_t"], 2.0, mask=m, reverse=True),
        "pred": L.prediction_loss(d["z_s"], d["z_t"], d["y"], 2.0, mask=m)[0],
        "causal": L.causal_lm_kd(d["z_s"], d["z_t"], torch.where(m.bool(), d["y"], -100))[0],
    }


def make_inputs(seed=0, same=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    d = {"h_s": r(2, 4, 4), "a_s": r(2, 2, 4, 4), "z_s": r(2, 4, 5),
         "mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "y": torch.randint(0, 5, (2, 4), generator=g)}
    for k in ("h", "a", "z"):
        d[f"{k}_t"] = d[f"{k}_s"].clone() if same else r(*d[f"{k}_s"].shape)
    return d


def test_zero_when_equal_positive_otherwise():
    same = all_losses(make_inputs(same=True))
    for name, v in same.items():
        if name in ("pred", "causal"):          # these include the gold CE/LM term
            continue
        assert abs(float(v)) < 1e-10, name
    for name, v in all_losses(make_inputs()).items():
        assert float(v) > 1e-3, name


def test_padded_positions_change_nothing():
    d = make_inputs()
    base = all_losses(d)
    e = {k: v.clone() for k, v in d.items()}
    for k in ("h_s", "h_t", "z_s", "z_t"):
        e[k][1, 3] = 1e3 * torch.randn_like(e[k][1, 3])            # padded token of example 1
    for k in ("a_s", "a_t"):
        e[k][1, :, 3, :] = 50.0                                       # padded query row
        e[k][1, :, :, 3] = -7.0                                       # padded key column
    e["y"][1, 3] = 0
    for name, v in all_losses(e).items():
        assert float(v) == pytest.approx(float(base[name]), rel=1e-10), name
    # int, bool and float masks agree
    for m in (d["mask"].bool(), d["mask"].float()):
        assert float(L.masked_mse(d["h_s"], d["h_t"], m)) == pytest.approx(float(base["masked_mse"]))


def test_garbage_attention_at_padded_keys_is_ignored():
    d = make_inputs()
    m = d["mask"]
    pt, ps = probs(d["a_t"], m), probs(d["a_s"], m)
    base = L.attention_kl(ps, pt, m)
    pt2, ps2 = pt.clone(), ps.clone()
    pt2[1, :, 3, :] = 0.25                                            # padded query row (still a distribution)
    ps2[1, :, :3, 3] = 0.0                                            # padded key column
    pt2[1, :, :3, 3] = 0.3
    assert float(L.attention_kl(ps2, pt2, m)) == pytest.approx(float(base), rel=1e-12)


# ------------------------------------------------------------------------------------------ KL identities
def test_kl_matches_torch_kl_div():
    d = make_inputs(3)
    zs, zt = d["z_s"].reshape(-1, 5), d["z_t"].reshape(-1, 5)
    log_ps, pt = F.log_softmax(zs, -1), F.softmax(zt, -1)
    ref = F.kl_div(log_ps, pt, reduction="batchmean")                  # input = student log-probs
    assert float(L.logit_kd(zs, zt)) == pytest.approx(float(ref), rel=1e-10)
    ref_rev = F.kl_div(F.log_softmax(zt, -1), F.softmax(zs, -1), reduction="batchmean")
    rev = L.logit_kd(zs, zt, reverse=True)
    assert float(rev) == pytest.approx(float(ref_rev), rel=1e-10)
    assert float(rev) > 0 and abs(float(rev) - float(L.logit_kd(zs, zt))) > 1e-4
    # attention KL: per (b, h, q) row sum of kl_div, mean over rows (no mask)
    pt, ps = probs(d["a_t"]), probs(d["a_s"])
    ref = F.kl_div(ps.log(), pt, reduction="sum") / (2 * 2 * 4)
    assert float(L.attention_kl(ps, pt)) == pytest.approx(float(ref), rel=1e-10)
    assert float(L.attention_kl(ps, pt)) >= 0
    swapped = F.kl_div(pt.log(), ps, reduction="sum") / (2 * 2 * 4)        # KL(student ‖ teacher): the other order
    assert abs(float(swapped) - float(ref)) > 1e-4 and float(L.attention_kl(pt, ps)) == pytest.approx(float(swapped))


def test_temperature_scaling():
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(64, 10, generator=g, dtype=torch.float64)
    zs = zt + 0.01 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    k1, k4 = float(L.logit_kd(zs, zt, 1.0)), float(L.logit_kd(zs, zt, 4.0))
    assert 0.1 < k4 / k1 < 2.0                 # t² keeps small-difference KD on the scale of t = 1
    raw4 = F.kl_div(F.log_softmax(zs / 4, -1), F.softmax(zt / 4, -1), reduction="batchmean")
    assert k4 == pytest.approx(16 * float(raw4), rel=1e-10)
    with pytest.raises(ValueError, match="temperature"):
        L.logit_kd(zs, zt, 0.0)


def test_attention_kl_rejects_scores():
    d = make_inputs()
    with pytest.raises(ValueError, match="probabilities"):
        L.attention_kl(d["a_s"], d["a_t"], d["mask"])
    with pytest.raises(ValueError, match="probabilities"):
        L.attention_kl(d["a_s"], probs(d["a_t"]))
    with pytest.raises(ValueError, match="probabilities"):            # positive but unnormalised
        L.attention_kl(probs(d["a_s"]), d["a_t"].exp())
    with pytest.raises(ValueError, match="probabilities"):            # logits of a wrong softmax axis
        L.attention_kl(probs(d["a_s"]), probs(d["a_t"]).transpose(-1, -2))


def test_gradients_flow_to_student_only():
    d = make_inputs(5)
    m = d["mask"]
    cases = {
        "masked_mse": lambda s, t: L.masked_mse(s, t, m),
        "attention_kl": lambda s, t: L.attention_kl(probs(s, m), probs(t, m), m),
        "tinybert": lambda s, t: L.tinybert_attention_mse(s, t, m),
        "logit_kd": lambda s, t: L.logit_kd(s, t, 2.0, m),
        "causal": lambda s, t: L.causal_lm_kd(s, t, torch.where(m.bool(), d["y"], -100))[0],
        "minilm_vr": lambda s, t: L.minilm_value_relation_kl(s, t, 2, mask=m),
    }
    keys = {"masked_mse": "h", "attention_kl": "a", "tinybert": "a", "logit_kd": "z", "causal": "z",
            "minilm_vr": "h"}
    for name, fn in cases.items():
        s = d[keys[name] + "_s"].clone().requires_grad_(True)
        t = d[keys[name] + "_t"].clone().requires_grad_(True)
        fn(s, t.detach()).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0, name
        assert torch.isfinite(s.grad).all(), name
        assert t.grad is None, name


def test_no_nan_with_minus_inf_logits():
    zs = torch.tensor([[0.0, 1.0, float("-inf")]], requires_grad=True)
    zt = torch.tensor([[0.5, 0.2, float("-inf")]])
    loss = L.logit_kd(zs, zt)                                          # 0·log 0 = 0 for the banned class
    ref = F.kl_div(F.log_softmax(zs.detach()[:, :2], -1), F.softmax(zt[:, :2], -1), reduction="batchmean")
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()
    assert torch.isfinite(zs.grad).all()


# ---------------------------------------------------------------------------------------- causal LM KD
def test_causal_shift_and_response_only():
    d = make_inputs(7)
    zs, zt = d["z_s"], d["z_t"]
    labels = torch.tensor([[-100, -100, 3, 1], [-100, -100, -100, 2]])   # prompt lengths 2 and 3
    total, parts = L.causal_lm_kd(zs, zt, labels)
    # logits at position i predict token i+1: only positions (0,1), (0,2), (1,2) count
    zt2 = zt.clone()
    zt2[0, 0], zt2[1, :2], zt2[:, 3] = 9.0, -5.0, 3.0                   # positions predicting prompt / nothing
    total2, _ = L.causal_lm_kd(zs, zt2, labels)
    assert float(total2) == pytest.approx(float(total), rel=1e-12)
    zt3 = zt.clone()
    zt3[1, 2] += torch.arange(5.0, dtype=torch.float64)                 # predicts the first response token
    assert float(L.causal_lm_kd(zs, zt3, labels)[0]) != pytest.approx(float(total))
    # explicit response mask == derived one; no labels → KL only
    resp = (labels != -100).long()
    kd_only, p = L.causal_lm_kd(zs, zt, response_mask=resp)
    assert set(p) == {"kd"} and float(kd_only) == pytest.approx(float(parts["kd"]), rel=1e-12)
    ref = F.kl_div(F.log_softmax(zs[[0, 0, 1], [1, 2, 2]], -1), F.softmax(zt[[0, 0, 1], [1, 2, 2]], -1),
                   reduction="batchmean")
    assert float(parts["kd"]) == pytest.approx(float(ref), rel=1e-10)
    ce = F.cross_entropy(zs[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert float(parts["ce"]) == pytest.approx(float(ce), rel=1e-10)
    assert float(total) == pytest.approx(0.5 * float(parts["kd"]) + 0.5 * float(ce), rel=1e-12)


def test_prediction_loss_regression_and_ce():
    zs = torch.tensor([[0.3], [1.0], [-2.0]])
    zt = torch.tensor([[0.5], [1.0], [-1.0]])
    y = torch.tensor([0.0, 2.0, -1.0])
    total, parts = L.prediction_loss(zs, zt, y, alpha=0.25)
    assert float(parts["kd"]) == pytest.approx((0.04 + 0 + 1) / 3)
    assert float(parts["ce"]) == pytest.approx((0.09 + 1 + 1) / 3)
    assert float(total) == pytest.approx(0.25 * float(parts["kd"]) + 0.75 * float(parts["ce"]))
    d = make_inputs(2)
    labels = d["y"].clone()
    labels[0, 1] = -100
    _, parts = L.prediction_loss(d["z_s"], d["z_t"], labels, mask=d["mask"])
    keep = (labels != -100) & d["mask"].bool()
    ref = F.cross_entropy(d["z_s"][keep], labels[keep])
    assert float(parts["ce"]) == pytest.approx(float(ref), rel=1e-10)


# ------------------------------------------------------------------------------------------------ errors
def test_clear_errors():
    d = make_inputs()
    with pytest.raises(ValueError, match="mask has shape"):
        L.masked_mse(d["h_s"], d["h_t"], torch.ones(2, 5))
    with pytest.raises(ValueError, match="no role"):
        L.matrix_mha_loss({"ffn_in": d["h_s"]}, {"ffn_in": d["h_t"]})
    with pytest.raises(ValueError, match="proj=nn.Linear"):
        L.hidden_mse(d["h_s"][..., :3], d["h_t"])
    with pytest.raises(ValueError, match="vocab"):
        L.logit_kd(d["z_s"], d["z_t"][..., :4])
    with pytest.raises(ValueError, match="relation heads"):
        L.minilm_value_relation_kl(d["h_s"], d["h_t"], 2, n_heads_teacher=4)
    with pytest.raises(ValueError, match="alpha"):
        L.prediction_loss(d["z_s"], d["z_t"], d["y"], alpha=1.5)


def test_check_finite():
    L.check_finite("kd", torch.tensor(1.0), step=3)
    with pytest.raises(L.NonFiniteLossError, match=r"'attn'.*step 17.*learning rate") as err:
        L.check_finite("attn", torch.tensor(float("nan")), step=17)
    assert isinstance(err.value, FloatingPointError) and "float32" in str(err.value)


def test_real_attentions_from_tiny_models(family):
    """HF output_attentions are probabilities with padded keys at ~0: the losses accept them as they are."""
    from conftest import tiny_batch, tiny_model
    batch = tiny_batch(batch=2, seq=6)
    with torch.no_grad():
        t_out = tiny_model(family, head="base", seed=0)(**batch, output_attentions=True, output_hidden_states=True)
        s_out = tiny_model(family, head="base", seed=1)(**batch, output_attentions=True, output_hidden_states=True)
    m = batch["attention_mask"]
    pt, ps = t_out.attentions[-1], s_out.attentions[-1]                  # (B, H, T, T)
    assert float(L.attention_kl(pt, pt, m)) == pytest.approx(0.0, abs=1e-6)
    kl = L.attention_kl(ps, pt, m)
    assert float(kl) > 0
    assert float(L.attention_kl(ps.bfloat16(), pt.bfloat16(), m)) == pytest.approx(float(kl), rel=0.1, abs=1e-3)
    assert float(L.hidden_mse(s_out.hidden_states[-1], t_out.hidden_states[-1], m)) > 0


def test_relative_mse_is_the_error_energy_over_the_teacher_energy_and_scale_free():
    s = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])            # (B=1, T=2, D=2); token 1 is padding
    t = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    # valid token only: Σ(s − t)² = 1, Σ t² = 4
    close(L.masked_mse(s, t, mask, relative=True), 0.25)
    close(L.masked_mse(s, t, mask), 0.5)
    # scaling both by 1000 (massive activations) leaves the relative error unchanged, the plain one ×10⁶
    close(L.masked_mse(1e3 * s, 1e3 * t, mask, relative=True), 0.25)
    close(L.masked_mse(1e3 * s, 1e3 * t, mask), 0.5e6)
    close(L.hidden_mse(s, t, mask, relative=True), 0.25)
    close(L.matrix_ffn_loss({"ffn_in": s, "ffn_out": s}, {"ffn_in": t, "ffn_out": t}, mask, relative=True),
          0.5)
    # the teacher's energy is a constant: gradients reach the student only
    s2 = s.clone().requires_grad_(True)
    t2 = t.clone().requires_grad_(True)
    L.masked_mse(s2, t2, mask, relative=True).backward()
    assert s2.grad.abs().sum() > 0


def test_attention_losses_take_the_keys_apart_from_the_queries():
    # queries = a decoder's response tokens, keys = every real token: the probability and the score forms agree,
    # each is the full-row KL averaged over the chosen queries, and key_mask=None keeps the old meaning (= mask)
    g = torch.Generator().manual_seed(0)
    B, H, T = 2, 3, 6
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    real = torch.ones(B, T, dtype=torch.bool)
    real[1, -1] = False                                                      # one padded token
    allowed = causal & real[:, None, None, :]                                # (B, 1, T, T)
    ss, st = (torch.randn(B, H, T, T, generator=g, dtype=torch.float64).masked_fill(~allowed, torch.finfo(
        torch.float64).min) for _ in range(2))
    ps, pt = ss.softmax(-1), st.softmax(-1)
    queries = real.clone()
    queries[:, :3] = False                                                   # the prompt's queries leave the mean
    full = (pt * (pt.clamp_min(1e-300).log() - ps.clamp_min(1e-300).log())).sum(-1)   # (B, H, T)
    want = full[queries[:, None, :].expand_as(full)].mean()
    torch.testing.assert_close(L.attention_kl(ps, pt, queries, key_mask=real), want)
    torch.testing.assert_close(L.attention_kl_scores(ss, st, queries, key_mask=real), want)
    torch.testing.assert_close(L.attention_kl_scores(ss, st, queries, key_mask=real),
                               L.attention_kl_scores(ss.requires_grad_(), st.requires_grad_(), queries,
                                                          key_mask=real))    # the autograd branch agrees
    assert L.attention_kl(ps, pt, queries) != want                      # keys = queries: another sum
    torch.testing.assert_close(L.attention_kl(ps, pt, real), L.attention_kl(ps, pt, real, key_mask=real))
    v_s, v_t = torch.randn(B, T, 6, generator=g), torch.randn(B, T, 6, generator=g)
    assert L.minilm_value_relation_kl(v_s, v_t, 3, mask=queries, key_mask=real) != \
        L.minilm_value_relation_kl(v_s, v_t, 3, mask=queries)
    assert L.tinybert_attention_mse(ss.detach(), st.detach(), queries, key_mask=real) != \
        L.tinybert_attention_mse(ss.detach(), st.detach(), queries)
