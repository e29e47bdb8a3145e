"""The Wikipedia text of decoder distillation (makd.tasks.wiki) and held-out perplexity (makd.tasks.metrics):
each markup rule of the cleaner, the loader on a tiny export (namespaces, redirects), the split by article, the
causal-LM windows, and the perplexity against the model's own loss; the real asset behind ``-m assets``."""
from __future__ import annotations

import bz2
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from makd.assets import fetch as assets
from makd.assets.models import load_model
from makd.core.errors import DataError
from makd.tasks import wiki
from makd.tasks.metrics import lm_perplexity

PAGES = Path(__file__).resolve().parent / "fixtures" / "wiki" / "pages.xml"   # 6 articles, 2 redirects, 1 ns 4, 1 stub


# ---------------------------------------------------------------- the cleaner, one rule at a time
@pytest.mark.parametrize("markup, text", [
    ("a {{cite web|url=x|title={{lang|fr|y}}}} b", "a b"),                          # templates, nested
    ("{{Infobox|x=1}}\nFirst.", "First."),
    ("a {{unclosed b", "a unclosed b"),                                              # unclosed: the opener alone
    ("x\n{| class=\"wikitable\"\n|-\n| 1 || {{flag|2}}\n{|\n| inner\n|}\n|}\ny", "x\ny"),  # tables, nested
    ("a<ref>Smith, p. 3.</ref> b<ref name=\"s\" /> c<ref name=\"t\">T</ref>.", "a b c."),  # refs, both forms
    ("a <!-- hidden\nnote --> b", "a b"),                                             # comments, multi-line
    ("a [[File:X.jpg|thumb|The [[bridge]], 1900]] b", "a b"),                         # files (caption links too)
    ("a [[Image:Y.png|left|[a] b]] c", "a c"),
    ("text\n[[Category:Towns]]\n[[de:Stadt]]", "text"),                               # categories, interlanguage
    ("the [[river Beta|Beta]] and [[town]]s", "the Beta and towns"),                  # links
    ("'''Alpha''' is ''very'' '''''old'''''", "Alpha is very old"),                   # bold / italic
    ("== History ==\nOld.\n=== Trade ===\nGrain.", "History\nOld.\nTrade\nGrain."),   # headings
    ("see [http://example.org the site] and [https://x.org]", "see the site and"),    # external links
    ("* one\n# two\n: three", "one\ntwo\nthree"),                                     # list markers
    ("a   b\t c\n\n\n d  ,e", "a b c\nd,e"),                                          # whitespace
    ("x &amp; y&nbsp;z <small>s</small> <math>{{a}}\\frac{1}{2}</math>__NOTOC__", "x & y z s"),
    ("Body.\n== See also ==\n* [[Other]]\n== References ==\nR.", "Body."),            # trailing sections cut
    ("the word ({{IPA|x}}; {{lang|y}}) is old", "the word is old"),                  # brackets left empty
])
def test_the_cleaner_applies_each_rule(markup, text):
    assert wiki.clean_wikitext(markup) == text


# ---------------------------------------------------------------- the loader
def _bz2_copy(tmp_path: Path) -> Path:
    path = tmp_path / "pages.xml.bz2"
    path.write_bytes(bz2.compress(PAGES.read_bytes()))
    return path


def test_the_loader_keeps_main_namespace_articles_and_skips_the_rest(tmp_path):
    articles, skipped = wiki.read_articles(_bz2_copy(tmp_path))
    assert [a.title for a in articles] == ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"]
    assert skipped == {"redirect": 2, "other_namespace": 1, "too_short": 1}   # <redirect>, '#redirect', ns 4, stub
    alpha = articles[0].text
    assert alpha.startswith("Alpha is a small town on the river Beta. ") and "\nHistory\n" in alpha
    for junk in ("{{", "[[", "<ref", "'''", "wikitable", "Category", "References", "example.org", "hidden"):
        assert junk not in alpha, junk
    assert all(len(a.text) >= wiki.MIN_CHARS for a in articles)
    assert wiki.read_articles(PAGES)[0] == articles                            # plain XML reads the same
    assert len(wiki.read_articles(PAGES, min_chars=10)[0]) == 7                # the stub is kept below its size


def test_a_file_that_is_not_an_export_is_one_data_error(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<mediawiki><page><title>x</title>")
    with pytest.raises(DataError, match="bad.xml: not a readable MediaWiki XML export"):
        wiki.read_articles(bad)
    empty = tmp_path / "empty.xml"
    empty.write_text("<mediawiki><siteinfo/></mediawiki>")
    with pytest.raises(DataError, match="no main-namespace article"):
        wiki.read_articles(empty)


# ---------------------------------------------------------------- the split by article
ARTICLES = [wiki.Article(f"title {i}", f"text {i}") for i in range(40)]


def test_the_split_is_by_article_seeded_and_deterministic():
    train, held = wiki.split_articles(ARTICLES, held_out=0.1, seed=0)
    assert len(held) == 4 and len(train) == 36                                 # 10 % of 40 articles
    assert not {a.title for a in train} & {a.title for a in held}              # no title on both sides
    assert sorted(train + held, key=ARTICLES.index) == ARTICLES                # every article once, file order
    assert wiki.split_articles(ARTICLES, held_out=0.1, seed=0) == (train, held)
    others = [wiki.split_articles(ARTICLES, held_out=0.1, seed=s)[1] for s in (1, 2, 3)]
    assert any(o != held for o in others)                                      # the seed decides
    with pytest.raises(ValueError, match="fraction"):
        wiki.split_articles(ARTICLES, held_out=1.0)
    with pytest.raises(ValueError, match="2 distinct titles"):
        wiki.split_articles(ARTICLES[:1])


def test_load_wiki_records_the_held_out_titles_and_the_file(tmp_path):
    split = wiki.load_wiki(_bz2_copy(tmp_path))
    assert split.held_out_titles == [a.title for a in split.held_out] and len(split.held_out) == 1
    info = split.describe()
    assert info["train_articles"] + info["held_out_articles"] == 6 and info["skipped"]["redirect"] == 2
    assert list(split.files.values()) == [assets.file_sha256(tmp_path / "pages.xml.bz2")]


# ---------------------------------------------------------------- windows and perplexity
@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama", head="lm")


def test_windows_have_the_right_length_and_never_span_two_articles(llama):
    _, tok = llama
    texts = [a.text for a in wiki.read_articles(PAGES)[0]]
    w = wiki.lm_windows(texts, tok, max_length=32)
    assert w["input_ids"].shape[1] == 32 and torch.equal(w["labels"], w["input_ids"])
    assert bool(w["attention_mask"].all())
    for k, text in enumerate(texts):                       # the windows of text k: its tokens, cut every 32
        ids = tok(text, add_special_tokens=False)["input_ids"]
        mine = w["input_ids"][w["text"] == k]
        assert len(mine) == len(ids) // 32 and mine.flatten().tolist() == ids[:len(mine) * 32]
    taken = wiki.take_windows(w, 5)
    assert len(taken["input_ids"]) == 5 and taken["text"].tolist() == sorted(taken["text"].tolist())
    assert torch.equal(taken["input_ids"][0], w["input_ids"][0]) and torch.equal(taken["input_ids"][-1],
                                                                                 w["input_ids"][-1])
    assert len(wiki.take_windows(w, 10_000)["input_ids"]) == len(w["input_ids"])
    with pytest.raises(ValueError, match="shorter than one window"):
        wiki.take_windows(wiki.lm_windows(["tiny"], tok, max_length=32), 2)


def test_perplexity_of_one_window_is_exp_of_the_models_own_loss():
    model = tiny_model("llama")
    ids = torch.randint(1, 99, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    res = lm_perplexity(model, {"input_ids": ids, "labels": ids}, batch_size=1)
    assert res["ce"] == pytest.approx(loss, rel=1e-5) and res["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert res["tokens"] == 23


def test_perplexity_weights_windows_by_their_tokens():
    model = tiny_model("gpt2")
    ids = torch.randint(1, 99, (3, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, 6:] = -100                                   # window 1 scores 5 tokens, the others 15
    res = lm_perplexity(model, {"input_ids": ids, "labels": labels}, batch_size=2)
    with torch.no_grad():
        losses = [float(model(input_ids=ids[i:i + 1], labels=labels[i:i + 1]).loss) for i in range(3)]
    assert res["tokens"] == 35
    assert res["ce"] == pytest.approx((15 * losses[0] + 5 * losses[1] + 15 * losses[2]) / 35, rel=1e-5)
    assert lm_perplexity(model, {"input_ids": ids, "labels": labels}, batch_size=3)["ce"] == pytest.approx(res["ce"])
    model.train()
    lm_perplexity(model, {"input_ids": ids}, batch_size=3)
    assert model.training                                  # the mode is restored
    with pytest.raises(ValueError, match="no token to score"):
        lm_perplexity(model, {"input_ids": ids, "labels": torch.full_like(ids, -100)})


def test_heldout_windows_describe_what_they_score(llama, tmp_path):
    _, tok = llama
    windows, info = wiki.heldout_windows(tok, 3, 32, path=_bz2_copy(tmp_path))
    assert windows["input_ids"].shape == (3, 32) and info["windows"] == 3 and info["window_tokens"] == 32
    assert info["articles_scored"] == 1 and len(info["held_out_titles"]) == 1 and info["windows_available"] >= 3
    assert info["part"] == "held_out"


def test_train_windows_come_from_the_train_articles_only(llama, tmp_path):
    _, tok = llama
    path = _bz2_copy(tmp_path)
    split = wiki.load_wiki(path)
    windows, info = wiki.train_windows(tok, 40, 32, path=path)
    assert info["part"] == "train" and info["windows"] == len(windows["input_ids"]) <= 40
    assert info["articles_scored"] > 1                                          # spread over the train articles
    train_ids = wiki.lm_windows([a.text for a in split.train], tok, 32)["input_ids"].tolist()
    held_ids = wiki.lm_windows([a.text for a in split.held_out], tok, 32)["input_ids"].tolist()
    assert all(w in train_ids for w in windows["input_ids"].tolist())
    assert not any(w in held_ids for w in windows["input_ids"].tolist())
    with pytest.raises(ValueError, match="part must be 'train' or 'held_out'"):
        wiki.split_windows("test", tok, 3, 32, path=path)


# ---------------------------------------------------------------- the real asset
@pytest.mark.assets
def test_the_embedded_articles_clean_and_split_as_documented():
    if not assets.is_cached("wiki"):
        pytest.skip("the embedded 'wiki' asset is not cached: run `python -m makd fetch-assets wiki`")
    split = wiki.load_wiki()
    info = split.describe()
    assert info["skipped"] == {"redirect": 99, "other_namespace": 1, "too_short": 2}
    assert (info["train_articles"], info["held_out_articles"]) == (93, 11)   # the module docstring's counts
    assert (info["train_chars"], info["held_out_chars"]) == (2_532_574, 264_627)
    assert "Anarchism" in {a.title for a in split.train} and len(set(split.held_out_titles)) == 11
    for a in split.train + split.held_out:
        for junk in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|"):
            assert junk not in a.text, (a.title, junk)
