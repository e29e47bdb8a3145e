"""Decoder distillation on tiny random GPT-2 / Llama models: each method trains, masks and errors; the shared
comparison (command and notebook 10), its configuration and the SeqKD decoding rule."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from makd.assets.models import load_model
from makd.core.objective import PRESET_TABLE
from makd.core.trainer import StopAtStep
from makd.experiments import decoder
from makd.experiments import decoder_config, decoder_data, decoder_runs
from makd.experiments import decoder_methods as lm
from makd.experiments.decoder_config import DecoderConfig
from makd.tasks import instructions, wiki
from makd.tasks.generate import GenerationSettings, encode_prompts, evaluate_rouge, generate
from makd.tasks.prompts import prompt_text, sft_features

ROWS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"number {i} is here"} for i in range(12)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))


WIKI_PAGES = Path(__file__).resolve().parent / "fixtures" / "wiki" / "pages.xml"   # 6 articles: 5 train, 1 held out


@pytest.fixture(autouse=True)
def _tiny_wiki(monkeypatch):
    """The held-out Wikipedia windows come from the fixture export (the private cache holds no `wiki` asset)."""
    monkeypatch.setattr(decoder_data, "heldout_windows",
                        lambda tok, n, length: wiki.heldout_windows(tok, n, length, path=WIKI_PAGES))
    monkeypatch.setattr(decoder_data, "train_windows",
                        lambda tok, n, length: wiki.train_windows(tok, n, length, path=WIKI_PAGES))


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def teacher(request):
    model, tok = load_model(request.param, head="lm")
    return model, tok


def test_prompt_tokens_carry_no_loss(teacher):
    model, tok = teacher
    data, cuts = sft_features(ROWS[:2], tok, max_length=64)
    for row, src in zip(data, ROWS[:2]):
        n_prompt = len(tok(prompt_text(tok, src["instruction"]), add_special_tokens=False)["input_ids"])
        assert all(x == -100 for x in row["labels"][:n_prompt])
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] and row["labels"][-1] == tok.eos_token_id
    assert cuts == {"prompt_truncated": 0, "response_truncated": 0, "empty_response_dropped": 0}


def test_truncation_and_empty_responses_are_counted(teacher):
    _, tok = teacher
    rows = ROWS[:3] + [{"instruction": "x", "input": "", "output": "  "}]
    data, cuts = sft_features(rows, tok, max_length=12, max_prompt_tokens=6)
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
    assert info["lm_windows"] == 0 and not info["group_by_length"]             # pairs only: plain random batches
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    if method == "makd":
        terms = set().union(*map(set, info["history"]))
        assert {"loss_mha", "loss_ffn", "loss_attn", "loss_hidn", "loss_kd", "loss_ce"} <= terms


@pytest.mark.parametrize("method", ["kd", "makd"])
def test_an_interrupted_training_resumes_to_the_uninterrupted_weights(method, tmp_path):
    """The decoder study checkpoints every --save-steps: a training stopped after a checkpoint and resumed ends with
    the weights of one that ran through (data order, optimizer, schedule and RNG restored)."""
    model, tok = load_model("tiny-llama", head="lm")
    kw = dict(max_steps=4, save_steps=2, lr=3e-3, batch_size=4, max_length=48, quiet=True, epochs=2, seed=3)
    full = lm.make_student(model, "svd", layer_ratio=0.5)
    lm.train_student(method, model, full, tok, ROWS, out=tmp_path / "full", **kw)
    cut = lm.make_student(model, "svd", layer_ratio=0.5)
    first = lm.train_student(method, model, cut, tok, ROWS, out=tmp_path / "cut", callbacks=[StopAtStep(2)], **kw)
    assert first["steps"] == 2 and (tmp_path / "cut" / "checkpoints" / "checkpoint-2").is_dir()
    again = lm.make_student(model, "svd", layer_ratio=0.5)       # a fresh process: the prepared student again
    info = lm.train_student(method, model, again, tok, ROWS, out=tmp_path / "cut", resume=True, **kw)
    assert info["resumed"] and info["steps"] == 4
    a, b = full.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not all(torch.equal(a[k], cut.state_dict()[k]) for k in a)      # the cut run really stopped early


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_training_autocasts_teacher_and_student_and_keeps_float32_weights(bf16, tmp_path):
    model, tok = load_model("tiny-llama", head="lm")
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    seen = {"student": set(), "teacher": set()}
    hooks = [m.register_forward_hook(lambda mod, inp, out, who=who: seen[who].add(out.dtype))
             for who, m in (("student", student.model.layers[0].mlp.down_proj),
                            ("teacher", model.model.layers[0].mlp.down_proj))]
    info = lm.train_student("makd", model, student, tok, ROWS[:8], out=tmp_path / "run", max_steps=2, lr=1e-3,
                            batch_size=4, max_length=48, logging_steps=1, quiet=True, bf16=bf16)
    for h in hooks:
        h.remove()
    dtype = torch.bfloat16 if bf16 else torch.float32
    assert seen == {"student": {dtype}, "teacher": {dtype}}          # the matrix products of both models
    assert {p.dtype for p in student.parameters()} == {torch.float32}  # master weights stay float32
    assert info["steps"] == 2 and all(math.isfinite(v) for e in info["history"] for k, v in e.items()
                                      if k.startswith("loss"))


def test_resume_keeps_the_teacher_and_controls_when_only_training_options_differ(tmp_path):
    cfg = _tiny_config(tmp_path, methods=["untrained", "kd"], train_seeds=[1], resume=True)
    out = tmp_path / "run"
    recorded = {k: v for k, v in cfg.to_dict().items() if k != "bf16"}      # written before --bf16 existed
    for name in decoder.run_names(cfg):
        (out / name).mkdir(parents=True)
        (out / name / "metrics.json").write_text(json.dumps({"record": {"config": recorded}, "eval_set": "x"}))
    options = {**cfg.to_dict(), "command": "now"}
    assert set(decoder.earlier_results(cfg, out, options)) == {"teacher", "untrained", "kd/seed-1"}  # default
    faster = dataclasses.replace(cfg, bf16=True, lr=1e-3)
    with pytest.raises(ValueError, match=r"kd/seed-1/metrics.json was scored with other options \(bf16, lr differ"):
        decoder.earlier_results(faster, out, {**faster.to_dict(), "command": "now"})
    (out / "kd").rename(tmp_path / "moved")                                  # the trained model moved aside
    assert set(decoder.earlier_results(faster, out, {**faster.to_dict(), "command": "now"})) == {
        "teacher", "untrained"}
    for change in (dict(max_new_tokens=5), dict(batch_size=2)):      # scoring / calibration options: nothing kept
        other = dataclasses.replace(cfg, **change)
        with pytest.raises(ValueError, match=rf"teacher/metrics.json was scored with other options \({[*change][0]}"):
            decoder.earlier_results(other, out, {**other.to_dict(), "command": "now"})


def test_seqkd_reuses_cached_generations(teacher, monkeypatch):
    model, tok = teacher
    settings = GenerationSettings.greedy(max_new_tokens=4)
    first = lm.teacher_responses(model, tok, ROWS[:3], settings)
    calls = []
    monkeypatch.setattr(lm, "generate", lambda *a, **k: calls.append(1) or {"texts": ["x"] * 3})
    again = lm.teacher_responses(model, tok, ROWS[:3], settings)
    assert again == first and not calls


def test_seqkd_cache_is_blockwise_and_a_longer_set_reuses_the_shorter_ones_blocks(teacher, monkeypatch, tmp_path):
    """Blocks of SEQKD_BLOCK prompts in row order: 5 rows at block 2 -> 3 files; 7 rows generate only the block
    that is new (the third block changed from [4] to [4, 5], the fourth is new); the answers equal generating
    each block alone; a one-block set keeps the key it always had; an unreadable block file is regenerated."""
    model, tok = teacher
    settings = GenerationSettings.greedy(max_new_tokens=3)
    monkeypatch.setattr(lm, "SEQKD_BLOCK", 2)
    real, calls = lm.generate, []
    monkeypatch.setattr(lm, "generate", lambda m, t, prompts, *a, **k: calls.append(len(prompts)) or real(
        m, t, prompts, *a, **k))
    five = lm.teacher_responses(model, tok, ROWS[:5], settings, cache=tmp_path)
    assert calls == [2, 2, 1] and len(list(tmp_path.glob("*.json"))) == 3
    alone = [real(model, tok, [prompt_text(tok, r["instruction"], "", "auto") for r in ROWS[i:i + 2]],
                  dataclasses.replace(settings, min_new_tokens=1))["texts"] for i in (0, 2, 4)]
    assert [r["output"] for r in five] == alone[0] + alone[1] + alone[2][:1]
    calls.clear()
    seven = lm.teacher_responses(model, tok, ROWS[:7], settings, cache=tmp_path)
    assert calls == [2, 1] and seven[:4] == five[:4]
    calls.clear()
    one = lm.teacher_responses(model, tok, ROWS[:2], settings, cache=tmp_path)
    assert not calls and one == five[:2]
    for f in tmp_path.glob("*.json"):
        f.write_text("{ cut")                                                # a damaged cache: regenerated
    calls.clear()
    assert lm.teacher_responses(model, tok, ROWS[:7], settings, cache=tmp_path) == seven and calls == [2, 2, 2, 1]


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
    assert decoder_config.parse([]).mse == "relative"
    with pytest.raises(SystemExit):
        decoder_config.parse(["--mse", "cosine"])


# ---------------------------------------------------------------- configuration, SeqKD decoding, the comparison
def test_the_light_names_equal_the_heavy_modules_lists():
    assert decoder_config.METHODS == lm.METHODS and decoder_config.INSTRUCTION_SETS == instructions.INSTRUCTION_SETS
    assert decoder_config.CONTROLS == lm.CONTROLS
    assert decoder_config.NO_ANSWERS == instructions.TRAIN_ONLY_SETS      # the train sets without answers
    assert decoder_config.MAKD_ASPECTS == tuple(PRESET_TABLE["hierarchical"].layers)
    code = "import sys, makd.experiments.decoder_config; assert 'torch' not in sys.modules, 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bad_option_is_one_clear_error_before_any_model(capsys):
    with pytest.raises(SystemExit) as info:
        decoder_config.parse(["--methods", "sft", "bogus"])
    assert info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    cfg = decoder_config.parse(["--methods", "kd", "makd", "--seeds", "1", "2", "--decoding", "sample"])
    assert cfg.methods == ("kd", "makd") and cfg.seeds == (1, 2) and cfg.size() == {"layer_ratio": 0.5}
    for kw, match in [({"methods": ["distil"]}, "methods must be one of .* got 'distil'"), ({"methods": []}, "at least one"),
                      ({"methods": ["kd", "kd"]}, "twice"), ({"student": "layers:x"}, "layers:K"),
                      ({"seeds": [-1]}, "seeds must be >= 0"), ({"decoding": "beam"}, "greedy"),
                      ({"layer_ratio": 0.5, "rank": 4}, "only one of")]:
        with pytest.raises(ValueError, match=match):
            DecoderConfig(**kw)
    with pytest.raises(TypeError, match="unknown option"):
        decoder.compare(methodz=["kd"])


def test_seqkd_targets_decode_like_the_evaluation_with_its_first_seed():
    sample = GenerationSettings(do_sample=True, seeds=(1, 2), max_new_tokens=7, max_prompt_tokens=40, batch_size=3)
    assert lm.seqkd_decoding(sample) == GenerationSettings(do_sample=True, seeds=(1,), max_new_tokens=7,
                                                           max_prompt_tokens=40, batch_size=3)
    greedy = GenerationSettings.greedy(max_prompt_tokens=256, max_new_tokens=32, batch_size=8)
    # the committed results/decoder/seqkd run's targets: greedy, 32 new tokens (same cache key as before)
    assert lm.seqkd_decoding(greedy) == greedy and not greedy.do_sample


def _tiny_config(tmp_path, **kw):
    return DecoderConfig(teacher="tiny-llama", max_train=8, max_eval=2, max_steps=2, batch_size=4, max_length=48,
                         max_new_tokens=3, logging_steps=1, quiet=True, out=str(tmp_path / "run"), **kw)


def test_compare_methods_gives_seqkd_the_evaluation_setting(tmp_path, monkeypatch):
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _tiny_config(tmp_path, methods=["seqkd"], decoding="sample", seeds=[3, 4])
    seen = []
    monkeypatch.setattr(decoder, "train_student", lambda *a, **k: seen.append(k["seqkd_settings"]) or {"history": []})
    data = decoder.DecoderData(ROWS[:4], ["Say hi."], ["hi"], "human", "x", "x", "x")
    res = decoder.compare_methods(cfg, model, tok, data)
    assert [(s.do_sample, s.seeds) for s in seen] == [(True, (3,))]
    assert res["seqkd"]["eval"]["generation"]["seeds"] == [3, 4]


def test_the_command_and_the_notebook_share_one_comparison(tmp_path, monkeypatch):
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    cfg = _tiny_config(tmp_path, methods=["sft", "makd"], eval_set="chatterbot")
    seen = []
    model, tok = load_model("tiny-llama", head="lm")
    data = decoder.load_data(cfg, model, tok)
    assert len(data.rows) == 8 and len(data.prompts) == 2 and data.reference_kind == "human"
    res = decoder.compare_methods(cfg, model, tok, data, on_result=lambda name, r: seen.append(name))
    assert seen == ["teacher", "sft", "makd"] and set(res) == {"teacher", decoder.UNTRAINED, "sft", "makd"}
    assert res["sft"]["train"]["steps"] == 2 and res["makd"]["params"] == res[decoder.UNTRAINED]["params"]
    assert res["makd"]["params"] < res["teacher"]["params"] and res["teacher"]["response_ce"] > 0
    out = decoder.run(cfg, command="test")
    saved = json.loads((tmp_path / "run" / "makd" / "metrics.json").read_text())
    assert set(out) == {"teacher", "sft", "makd"} and saved["eval"]["rougeL"] == out["makd"]["rougeL"]
    assert saved["seqkd_generation"] == saved["generation"] and saved["record"]["config"]["methods"] == ["sft", "makd"]
    assert json.loads((tmp_path / "run" / "speed.json").read_text())["models"].keys() == {"teacher", "sft", "makd"}


def _records(rows):
    return instructions._records([{"id": str(i), "reference_kind": "human", "category": "", **r}
                                  for i, r in enumerate(rows)])


def test_a_whitened_student_with_a_local_stage_and_the_untrained_control(tmp_path):
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _tiny_config(tmp_path, methods=["untrained", "sft"], weighting="whiten", ranks="auto",
                       calibration_examples=8, local_epochs=2)
    data = decoder.DecoderData(ROWS[:8], ["Say hi."], ["hi"], "human", "x", "x", "x")
    res = decoder.compare_methods(cfg, model, tok, data)
    prepared = res[decoder.UNTRAINED]
    assert prepared["init"]["weighting"] == "whiten" and prepared["init"]["calibration_examples"] == 8
    assert prepared["local"]["steps"] == 2 * len(lm.calibration_batches(
        ROWS[:8], tok, 8, batch_size=4, max_length=48, max_prompt_tokens=256))
    assert res["untrained"]["train"] == {"steps": 0, "seed": cfg.seed}
    assert res["untrained"]["response_ce"] == pytest.approx(prepared["response_ce"])   # the control is not trained
    assert res["sft"]["train"]["steps"] == 2 and res["sft"]["student_init"]["init"]["ranks"] == "auto"
    with pytest.raises(ValueError, match="ranks 'auto' spreads"):
        DecoderConfig(rank=4, ranks="auto")


def test_every_model_reports_its_held_out_wikipedia_perplexity(tmp_path, monkeypatch):
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _tiny_config(tmp_path, methods=["untrained", "sft"], wiki_windows=3, eval_set="chatterbot")
    data = decoder.DecoderData(ROWS[:8], ["Say hi."], ["hi"], "human", "x", "x", "x")
    res = decoder.compare_methods(cfg, model, tok, data)
    for name in ("teacher", decoder.UNTRAINED, "untrained", "sft"):
        w = res[name]["wiki_heldout"]
        assert w["tokens"] == 3 * (cfg.max_length - 1) and math.isfinite(w["ce"]) and w["ce"] > 0, name
        assert w["ppl"] == pytest.approx(math.exp(w["ce"]))
    assert res["untrained"]["wiki_heldout"] == pytest.approx(res[decoder.UNTRAINED]["wiki_heldout"])
    assert res["sft"]["wiki_heldout"]["ce"] != res["untrained"]["wiki_heldout"]["ce"]   # the trained student scored
    off = decoder.compare_methods(dataclasses.replace(cfg, wiki_windows=0, methods=("untrained",)), model, tok, data)
    assert not any("wiki_heldout" in r for r in off.values())
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    decoder.run(dataclasses.replace(cfg, methods=("untrained",)), command="test")
    for name in ("teacher", "untrained"):
        saved = json.loads((tmp_path / "run" / name / "metrics.json").read_text())
        assert saved["wiki_heldout"]["ce"] == pytest.approx(res[name]["wiki_heldout"]["ce"], rel=1e-4)
        held = saved["wiki_heldout_set"]
        assert held["windows"] == 3 and held["window_tokens"] == cfg.max_length and len(held["held_out_titles"]) == 1
        in_repo = str(WIKI_PAGES.relative_to(WIKI_PAGES.parents[3]))           # written relative to the checkout
        assert held["train_articles"] == 5 and held["files"] == {in_repo: wiki.sha256_file(WIKI_PAGES)}


def test_the_wiki_windows_option():
    assert decoder_config.parse([]).wiki_windows == 16
    assert decoder_config.parse(["--wiki-windows", "0"]).wiki_windows == 0
    with pytest.raises(ValueError, match="wiki_windows must be >= 0"):
        DecoderConfig(wiki_windows=-1)


def test_lm_windows_join_the_training_data_with_a_loss_on_every_token(teacher):
    _, tok = teacher
    data, _ = sft_features(ROWS[:3], tok, max_length=48)
    windows = torch.arange(3, 3 + 2 * 5).reshape(2, 5)
    mixed = lm.with_lm_windows(data, windows)
    assert len(mixed) == 5 and mixed[:3]["labels"] == data["labels"]          # the pairs first, unchanged
    for row, want in zip(mixed.select(range(3, 5)), windows.tolist()):
        assert row["input_ids"] == want and row["labels"] == want               # no prompt: every token labelled
    assert lm.with_lm_windows(data, None) is data and lm.with_lm_windows(data, windows[:0]) is data
    with pytest.raises(ValueError, match=r"lm_windows must be \(N, L\) token ids"):
        lm.with_lm_windows(data, windows[0])


@pytest.mark.parametrize("method", ["kd", "makd"])
def test_a_method_trains_on_the_pairs_and_the_text_windows(method, tmp_path):
    model, tok = load_model("tiny-llama", head="lm")
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    windows, _ = wiki.train_windows(tok, 6, 32, path=WIKI_PAGES)
    info = lm.train_student(method, model, student, tok, ROWS[:6], out=tmp_path / method, max_steps=3, lr=1e-3,
                            batch_size=4, max_length=48, logging_steps=1, quiet=True,
                            lm_windows=windows["input_ids"])
    assert (info["pairs"], info["lm_windows"], info["examples"]) == (6, 6, 12) and info["steps"] == 3
    assert info["group_by_length"]                                              # windows batched with windows
    assert all(math.isfinite(e["loss"]) for e in info["history"])


@pytest.mark.parametrize("method,responses,want", [("kd", "teacher", "teacher"), ("makd", "teacher", "teacher"),
                                                     ("kd", "gold", "gold"), ("sft", "teacher", "gold"),
                                                     ("seqkd", "gold", "teacher")])
def test_kd_and_makd_train_on_the_teachers_answers_when_asked(method, responses, want, tmp_path, monkeypatch):
    """--kd-responses teacher: KD and MaKD learn from the teacher's generated answers (SeqKD's cached data);
    SFT keeps the gold answers and SeqKD the teacher's whatever the option says."""
    model, tok = load_model("tiny-llama", head="lm")
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    answers = [f"teacher answer {i} " * 3 for i in range(4)]
    monkeypatch.setattr(lm, "teacher_responses", lambda t, k, rows, *a, **kw: [
        {**r, "output": o} for r, o in zip(rows, answers)])
    fed = []
    real = lm.sft_features
    monkeypatch.setattr(lm, "sft_features", lambda rows, *a, **k: fed.append([r["output"] for r in rows])
                        or real(rows, *a, **k))
    info = lm.train_student(method, model, student, tok, ROWS[:4], out=tmp_path / method, max_steps=1, lr=1e-3,
                            batch_size=4, max_length=48, quiet=True, responses=responses)
    assert fed == [answers if want == "teacher" else [r["output"] for r in ROWS[:4]]]
    assert info["responses"] == want and info["steps"] == 1
    with pytest.raises(ValueError, match="responses must be one of"):
        lm.train_student("kd", model, student, tok, ROWS[:4], out=tmp_path / "x", responses="gloden")


def test_the_kd_responses_option_reaches_train_student_and_is_a_training_option(tmp_path, monkeypatch):
    assert decoder_config.parse([]).kd_responses == "gold"
    assert decoder_config.parse(["--kd-responses", "teacher"]).kd_responses == "teacher"
    with pytest.raises(ValueError, match="kd_responses"):
        DecoderConfig(kd_responses="teachers")
    assert "kd_responses" in decoder_runs.TRAINING_ONLY                  # the teacher and the controls are kept
    seen = []
    monkeypatch.setattr(decoder, "train_student", lambda *a, **k: seen.append(k["responses"]) or {"steps": 1})
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    decoder.run(_tiny_config(tmp_path, methods=["untrained", "kd"], wiki_windows=0, kd_responses="teacher"),
                command="test")
    assert seen == ["teacher"]
    saved = json.loads((tmp_path / "run" / "kd" / "metrics.json").read_text())
    assert saved["record"]["config"]["kd_responses"] == "teacher"


def test_makd_weights_reach_makds_objective_only(tmp_path):
    """MaKD's per-aspect weights replace the preset's ones (1 each); KD keeps its own objective."""
    assert lm.objective_for("makd", 4).weights == {"mha": 1.0, "ffn": 1.0, "attn": 1.0, "hidn": 1.0, "pred": 1.0}
    light = lm.objective_for("makd", 4, weights={"mha": 0.1, "ffn": 0.0})
    assert light.weights == {"mha": 0.1, "attn": 1.0, "hidn": 1.0, "pred": 1.0}   # weight 0: the term is off
    assert lm.objective_for("kd", 4, weights={"mha": 0.1}).weights == {"pred": 1.0}
    model, tok = load_model("tiny-llama", head="lm")
    student = lm.make_student(model, "svd", layer_ratio=0.5)
    info = lm.train_student("makd", model, student, tok, ROWS[:4], out=tmp_path / "makd", max_steps=2, lr=1e-3,
                            batch_size=4, max_length=48, logging_steps=1, quiet=True,
                            weights={"mha": 0, "ffn": 0, "attn": 0.5})
    logged = {k for e in info["history"] for k in e if k.startswith("loss_")}
    assert {"loss_attn", "loss_hidn", "loss_kd"} <= logged and not logged & {"loss_mha", "loss_ffn"}


def test_the_makd_weights_option_is_checked_early_and_reaches_train_student(tmp_path, monkeypatch):
    assert decoder_config.parse([]).makd_weights is None
    assert decoder_config.parse(["--makd-weights", '{"mha": 0.1}']).makd_weights == {"mha": 0.1}
    for bad, why in (({"vr": 1}, "drop \\['vr'\\]"), ({"mha": -1}, "finite number >= 0"),
                     ({"mhx": 1}, "unknown aspect")):
        with pytest.raises(ValueError, match=why):
            DecoderConfig(makd_weights=bad)
    assert "makd_weights" in decoder_runs.TRAINING_ONLY                  # the teacher and the controls are kept
    seen = []
    monkeypatch.setattr(decoder, "train_student", lambda *a, **k: seen.append(k["weights"]) or {"steps": 1})
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    decoder.run(_tiny_config(tmp_path, methods=["untrained", "makd"], wiki_windows=0,
                             makd_weights={"mha": 0.25}), command="test")
    assert seen == [{"mha": 0.25}]
    saved = json.loads((tmp_path / "run" / "makd" / "metrics.json").read_text())
    assert saved["record"]["config"]["makd_weights"] == {"mha": 0.25}


def test_the_wiki_train_windows_option_reaches_every_method_and_the_record(tmp_path, monkeypatch):
    assert decoder_config.parse([]).wiki_train_windows == 0
    assert decoder_config.parse(["--wiki-train-windows", "64"]).wiki_train_windows == 64
    with pytest.raises(ValueError, match="wiki_train_windows must be >= 0"):
        DecoderConfig(wiki_train_windows=-1)
    assert "wiki_train_windows" in decoder_runs.TRAINING_ONLY               # a training option: controls kept
    model, tok = load_model("tiny-llama", head="lm")
    cfg = _tiny_config(tmp_path, methods=["untrained", "sft"], wiki_windows=0, wiki_train_windows=4)
    seen = []
    monkeypatch.setattr(decoder, "train_student", lambda *a, **k: seen.append(k["lm_windows"]) or {"steps": 1})
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    decoder.run(cfg, command="test")
    want, _ = wiki.train_windows(tok, 4, cfg.max_length, path=WIKI_PAGES)
    assert len(seen) == 1 and torch.equal(seen[0], want["input_ids"])          # sft trained on them
    saved = json.loads((tmp_path / "run" / "sft" / "metrics.json").read_text())
    assert saved["wiki_train_set"]["part"] == "train" and saved["wiki_train_set"]["windows"] == 4
    seen.clear()
    decoder.run(dataclasses.replace(cfg, wiki_train_windows=0, resume=False, out=str(tmp_path / "off")), command="t")
    assert seen == [None]
    assert "wiki_train_set" not in json.loads((tmp_path / "off" / "sft" / "metrics.json").read_text())


def test_training_seeds_controls_extra_sets_and_resume(tmp_path, monkeypatch):
    fake = instructions.InstructionData("chatterbot", _records(ROWS), None, _records(ROWS[:3]), "test", "human")
    monkeypatch.setattr(decoder_data, "load_instructions", lambda *a, **k: fake)
    cfg = _tiny_config(tmp_path, methods=["init", "untrained", "sft"], train_seeds=[1, 2], weighting="whiten",
                       calibration_examples=8, local_epochs=1, eval_set="chatterbot", extra_eval=["dolly"],
                       wiki_windows=0)
    assert decoder.run_names(cfg) == ["teacher", "init", "untrained", "sft/seed-1", "sft/seed-2"]
    assert decoder.run_names(dataclasses.replace(cfg, methods=("sft", "kd", "untrained")))[2:] == [
        "sft/seed-1", "kd/seed-1", "sft/seed-2", "kd/seed-2"]   # seed by seed, controls first
    decoder.run(cfg, command="test")
    run = tmp_path / "run"
    saved = {n: json.loads((run / n / "metrics.json").read_text()) for n in decoder.run_names(cfg)}
    assert [saved[f"sft/seed-{s}"]["record"]["seed"] for s in (1, 2)] == [1, 2]
    assert saved["sft/seed-1"]["method"] == "sft" and saved["sft/seed-2"]["train"]["steps"] == 2
    assert saved["init"]["train"] == {"steps": 0, "seed": cfg.seed}
    assert saved["init"]["response_ce"] != pytest.approx(saved["untrained"]["response_ce"])   # local stage moved it
    ev = saved["sft/seed-1"]["eval"]
    assert len(ev["rougeL_per_prompt"]) == ev["n"] == 2 and len(ev["outputs"]) == 2
    assert sum(ev["rougeL_per_prompt"]) / 2 == pytest.approx(ev["rougeL"], abs=1e-3)
    assert saved["teacher"]["eval_sets"]["dolly"]["n"] == 2                               # every model, every set
    # resume: finished models are kept (nothing trained again), a new seed is added
    monkeypatch.setattr(decoder, "train_student", lambda *a, **k: {"steps": 7})
    more = dataclasses.replace(cfg, train_seeds=(1, 2, 3), resume=True)
    decoder.run(more, command="test")
    again = {n: json.loads((run / n / "metrics.json").read_text()) for n in decoder.run_names(more)}
    assert again["sft/seed-1"] == saved["sft/seed-1"] and again["sft/seed-3"]["train"]["steps"] == 7
    with pytest.raises(ValueError, match="other options .*lr"):
        decoder.run(dataclasses.replace(more, lr=1e-3), command="test")
    with pytest.raises(ValueError, match="needs --local-epochs"):
        DecoderConfig(methods=("init",))
