"""The ``wikiprompts`` train set (instruction templates over the Wikipedia train articles, no answers) and the
decoder options around it: which methods it allows, the teacher's answers in its rows, and ``--calibration-set``."""
from __future__ import annotations

from pathlib import Path

import pytest

from makd.assets.models import load_model
from makd.experiments import decoder, decoder_data
from makd.experiments.decoder_config import DecoderConfig, parse
from makd.tasks import instructions, wiki, wiki_prompts

PAGES = Path(__file__).resolve().parent / "fixtures" / "wiki" / "pages.xml"   # 6 articles: 5 train, 1 held out


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAKD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fixture_wiki(monkeypatch):
    """``load_wiki()`` reads the fixture export (5 train articles, 1 held out)."""
    real = wiki.load_wiki
    monkeypatch.setattr(wiki_prompts, "load_wiki", lambda path=None: real(PAGES if path is None else path))
    monkeypatch.setattr(instructions, "load_wiki", lambda path=None: real(PAGES if path is None else path))
    return real(PAGES)


def test_rows_come_from_the_train_articles_in_one_seeded_order(fixture_wiki):
    rows = wiki_prompts.wiki_prompt_rows(seed=0)
    train = {a.title for a in fixture_wiki.train}
    assert rows and {r["id"].split("#")[0] for r in rows} <= train                # never a held-out article
    assert not {r["id"].split("#")[0] for r in rows} & set(fixture_wiki.held_out_titles)
    assert wiki_prompts.wiki_prompt_rows(seed=0) == rows                          # deterministic
    again = wiki_prompts.wiki_prompt_rows(seed=1)
    assert [r["id"] for r in again] != [r["id"] for r in rows] and sorted(r["id"] for r in again) == sorted(
        r["id"] for r in rows)                                                      # same rows, another order
    assert len({r["id"] for r in rows}) == len(rows)
    kinds = {r["category"] for r in rows}
    assert kinds & set(wiki_prompts.PASSAGE_TEMPLATES) and kinds & set(wiki_prompts.TOPIC_TEMPLATES)   # both kinds
    for r in rows:
        assert r["output"] == "" and r["reference_kind"] == "none" and r["instruction"]
        if r["category"] in wiki_prompts.PASSAGE_TEMPLATES:          # a paragraph of the article is the input
            assert r["instruction"] == wiki_prompts.PASSAGE_TEMPLATES[r["category"]]
            assert wiki_prompts.MIN_WORDS <= len(r["input"].split()) <= wiki_prompts.MAX_WORDS
            article = next(a for a in fixture_wiki.train if a.title == r["id"].split("#")[0])
            assert r["input"] in article.text
        else:                                                           # a topic prompt names the title
            title = r["id"].split("#")[0]
            assert r["input"] == "" and title in r["instruction"]
            assert r["instruction"] == wiki_prompts.TOPIC_TEMPLATES[r["category"]].format(title=title)
    topics = {r["id"].split("#")[0] for r in rows if r["category"] in wiki_prompts.TOPIC_TEMPLATES}
    assert topics == {t for t in train if wiki_prompts.topic_title(t)}
    assert sum(r["category"] in wiki_prompts.TOPIC_TEMPLATES for r in rows) == 4 * len(topics)


def test_titles_that_name_no_topic_get_no_topic_prompts():
    assert wiki_prompts.topic_title("Amphibian") and wiki_prompts.topic_title("Abraham Lincoln")
    assert not wiki_prompts.topic_title("A")
    assert not wiki_prompts.topic_title("List of Atlas Shrugged characters")
    assert not wiki_prompts.topic_title("Austin (disambiguation)")
    assert wiki_prompts.paragraphs("Heading\n" + "word " * 39 + "\n" + "word " * 40 + "\n" + "w " * 151) == [
        ("word " * 40).strip()]


def test_the_set_loads_as_a_train_only_proxy_without_answers(fixture_wiki):
    ins = instructions.load_instructions("wikiprompts", seed=3)
    assert len(ins.train) == len(wiki_prompts.wiki_prompt_rows(seed=3)) and len(ins.test) == len(ins.dev) == 0
    assert ins.reference_kind == "none" and ins.is_proxy and "proxy" in ins.notes[0]
    assert list(ins.files) == list(fixture_wiki.files)
    assert "wikiprompts" in instructions.TRAIN_ONLY_SETS and "wikiprompts" not in instructions.INSTRUCTION_SETS
    with pytest.raises(ValueError, match="wikiprompts"):
        instructions.load_instructions("wikiprompt")


def test_methods_that_need_answers_are_refused_before_any_model():
    with pytest.raises(ValueError, match="no answers, so SFT has nothing to imitate: drop sft"):
        DecoderConfig(train_set="wikiprompts", methods=("sft", "seqkd"))
    with pytest.raises(ValueError, match="add --kd-responses teacher"):
        DecoderConfig(train_set="wikiprompts", methods=("kd",))
    assert DecoderConfig(train_set="wikiprompts", methods=("untrained", "seqkd")).train_set == "wikiprompts"
    ok = parse(["--train-set", "wikiprompts", "--kd-responses", "teacher", "--methods", "kd", "makd",
                "--calibration-set", "chatterbot"])
    assert ok.calibration_set == "chatterbot" and ok.kd_responses == "teacher"
    with pytest.raises(ValueError, match="calibration_set"):
        DecoderConfig(calibration_set="selfinst")
    # a mixed-in set without answers is refused the same way; a set mixed with itself is a mistake
    with pytest.raises(ValueError, match="mix_train_set wikiprompts has no answers, so SFT"):
        DecoderConfig(mix_train_set="wikiprompts", methods=("sft",))
    with pytest.raises(ValueError, match="mix_train_set wikiprompts has no answers for KD"):
        DecoderConfig(mix_train_set="wikiprompts", methods=("makd",))
    with pytest.raises(ValueError, match="mix_train_set is the train set itself"):
        DecoderConfig(mix_train_set="chatterbot")
    assert parse(["--train-set", "wikiprompts", "--mix-train-set", "chatterbot", "--kd-responses", "teacher",
                  "--methods", "makd"]).mix_train_set == "chatterbot"


def test_rows_get_the_teachers_answers_and_calibration_its_own_set(fixture_wiki, monkeypatch, tmp_path):
    """wikiprompts rows carry the teacher's generated answers (SeqKD's cache: one generation per prompt); with
    --calibration-set the student is calibrated on that set's first rows (its own answers)."""
    model, tok = load_model("tiny-llama", head="lm")
    chat = [{"id": str(i), "instruction": f"Hi {i}", "input": "", "output": f"hello {i}", "reference_kind": "human",
             "category": ""} for i in range(6)]
    real = instructions.load_instructions

    def load(name, *a, **k):
        if name == "chatterbot":
            return instructions.InstructionData("chatterbot", instructions._records(chat), None,
                                                instructions._records(chat[:2]), "test", "human")
        return real(name, *a, **k)
    monkeypatch.setattr(decoder_data, "load_instructions", load)
    calls = []
    from makd.experiments import decoder_methods
    monkeypatch.setattr(decoder_methods, "generate", lambda t, k, prompts, s, seed=0: calls.append(len(prompts))
                        or {"texts": [f"answer {i}" for i in range(len(prompts))]})
    cfg = DecoderConfig(teacher="tiny-llama", train_set="wikiprompts", methods=("seqkd",), max_train=5,
                        calibration_examples=3, eval_set="chatterbot", max_new_tokens=3, out=str(tmp_path / "r"))
    data = decoder_data.load_data(cfg, model, tok)
    assert len(data.rows) == 5 and [r["output"] for r in data.rows] == [f"answer {i}" for i in range(5)]
    assert data.calibration == data.rows and calls == [5]
    assert any("teacher's generated answers" in n for n in data.notes)
    again = decoder_data.load_data(cfg, model, tok)                      # cached: no second generation
    assert again.rows == data.rows and calls == [5]
    other = decoder_data.load_data(DecoderConfig(**{**cfg.to_dict(), "calibration_set": "chatterbot"}), model, tok)
    assert [r["output"] for r in other.calibration] == [f"hello {i}" for i in range(3)]
    assert other.rows == data.rows and any("calibration and the layer-local stage" in n for n in other.notes)
    # the prepared student is calibrated on data.calibration: the rows the cache key hashes
    seen = []
    monkeypatch.setattr(decoder, "cached_prepare", lambda c, rows, *a: seen.append(rows) or (_ for _ in ()).throw(
        RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        decoder.compare_methods(cfg, model, tok, other, wiki={}, lm_text={}, done={"teacher": {"eval": {
            "rougeL": 1.0}}})
    assert seen == [other.calibration]
    # --mix-train-set: the other set's first rows appended (its own answers), calibration and the CE rows unchanged
    mixed = decoder_data.load_data(DecoderConfig(**{**cfg.to_dict(), "mix_train_set": "chatterbot"}), model, tok)
    assert mixed.rows[:5] == data.rows and [r["output"] for r in mixed.rows[5:]] == [f"hello {i}" for i in range(5)]
    assert mixed.calibration == data.rows and mixed.train_set == "wikiprompts+chatterbot" and calls == [5]
    assert any("shuffled together" in n for n in mixed.notes)


@pytest.mark.assets
def test_the_embedded_articles_give_the_documented_rows():
    rows = wiki_prompts.wiki_prompt_rows()
    cats = [r["category"] for r in rows]
    assert len(rows) == 3695 and sum(c in wiki_prompts.TOPIC_TEMPLATES for c in cats) == 4 * 86
    held_out = set(wiki.load_wiki().held_out_titles)
    assert not {r["id"].split("#")[0] for r in rows} & held_out
