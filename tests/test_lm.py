"""Decoder distillation on tiny random GPT-2 / Llama models: each method trains, masks and errors."""
from __future__ import annotations

import json

import pytest

from makd.experiments import decoder as lm
from makd.tasks.generate import GenerationSettings, encode_prompts, evaluate_rouge, generate
from makd.assets.models import load_model

ROWS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"number {i} is here"} for i in range(12)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def teacher(request):
    model, tok = load_model(request.param, head="lm")
    return model, tok


def test_prompt_tokens_carry_no_loss(teacher):
    model, tok = teacher
    data, cuts = lm.sft_features(ROWS[:2], tok, max_length=64)
    for row, src in zip(data, ROWS[:2]):
        n_prompt = len(tok(lm.prompt_text(tok, src["instruction"]), add_special_tokens=False)["input_ids"])
        assert all(x == -100 for x in row["labels"][:n_prompt])
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] and row["labels"][-1] == tok.eos_token_id
    assert cuts == {"prompt_truncated": 0, "response_truncated": 0, "empty_response_dropped": 0}


def test_truncation_and_empty_responses_are_counted(teacher):
    _, tok = teacher
    rows = ROWS[:3] + [{"instruction": "x", "input": "", "output": "  "}]
    data, cuts = lm.sft_features(rows, tok, max_length=12, max_prompt_tokens=6)
    assert cuts["empty_response_dropped"] == 1 and cuts["prompt_truncated"] == 3 and len(data) == 3
    assert all(len(r["input_ids"]) <= 12 for r in data)
    ids, cut = encode_prompts(tok, ["a b c d e f g h i j k"], max_prompt_tokens=4)
    assert cut == 1 and len(ids[0]) == 4


@pytest.mark.parametrize("method", lm.METHODS)
def test_each_method_trains_and_its_loss_decreases(teacher, method, tmp_path):
    model, tok = teacher
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    info = lm.train_student(method, model, student, tok, ROWS[:4] * 4, out=tmp_path / method, max_steps=8, lr=3e-3,
                            batch_size=4, max_length=48, logging_steps=1, quiet=True, epochs=4,
                            seqkd_settings=GenerationSettings(max_new_tokens=6, min_new_tokens=4, seeds=(0,)))
    losses = [e["loss"] for e in info["history"]]
    assert info["steps"] == 8 and len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    if method == "makd":
        terms = set().union(*map(set, info["history"]))
        assert {"loss_mha", "loss_ffn", "loss_attn", "loss_hidn", "loss_kd", "loss_ce"} <= terms


def test_seqkd_reuses_cached_generations(teacher, monkeypatch):
    model, tok = teacher
    settings = GenerationSettings.greedy(max_new_tokens=4)
    first = lm.teacher_responses(model, tok, ROWS[:3], settings)
    calls = []
    monkeypatch.setattr(lm, "generate", lambda *a, **k: calls.append(1) or {"texts": ["x"] * 3})
    again = lm.teacher_responses(model, tok, ROWS[:3], settings)
    assert again == first and not calls


def test_generation_config_round_trips_into_results(teacher):
    model, tok = teacher
    settings = GenerationSettings(do_sample=True, seeds=(1, 2), max_new_tokens=4, max_prompt_tokens=32, max_length=64)
    res = evaluate_rouge(model, tok, ["Say hi.", "Say bye please now."], ["hi", "bye"], settings)
    assert GenerationSettings.from_dict(json.loads(json.dumps(res["generation"]))) == settings
    assert len(res["rougeL_per_seed"]) == 2 and res["rougeL_std"] >= 0


def test_greedy_generation_is_deterministic_and_batching_does_not_change_it(teacher):
    model, tok = teacher
    prompts = ["one", "a much longer prompt with more words", "two words"]
    a = generate(model, tok, prompts, GenerationSettings.greedy(max_new_tokens=5, batch_size=3))["texts"]
    b = generate(model, tok, prompts, GenerationSettings.greedy(max_new_tokens=5, batch_size=1))["texts"]
    assert a == b


def test_bad_input(teacher):
    model, tok = teacher
    with pytest.raises(ValueError, match="empty"):
        evaluate_rouge(model, tok, ["p"], [" "], GenerationSettings.greedy(max_new_tokens=2))
    other, other_tok = load_model("tiny-bert", head="base")
    with pytest.raises(ValueError, match="vocabular|token"):
        lm.check_pair(model, tok, other, other_tok)
    with pytest.raises(ValueError, match="unknown method"):
        lm.objective_for("distil", 2)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        GenerationSettings(max_prompt_tokens=600, max_length=512)


def test_padded_vocabulary_is_refused(teacher):
    model, tok = teacher
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    student.resize_token_embeddings(len(tok) + 8)
    with pytest.raises(ValueError, match="rows"):
        lm.check_pair(model, tok, student, tok)


def test_makd_uses_the_relative_mse_unless_told_otherwise():
    assert lm.objective_for("makd", 2).mse == "relative"
    assert lm.objective_for("makd", 2, mse="plain").mse == "plain"
    args = lm.build_parser().parse_args([])
    assert args.mse == "relative"
    with pytest.raises(SystemExit):
        lm.build_parser().parse_args(["--mse", "cosine"])
