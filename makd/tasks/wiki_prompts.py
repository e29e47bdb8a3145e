"""An embedded PROXY instruction set with diverse prompts and no answers: ``wikiprompts``.

The embedded ChatterBot pairs (the default proxy for Dolly) are short chit-chat; the evaluation set (Self-Instruct's
user-oriented tasks) asks for summaries, explanations, lists, rewrites. This set gives a decoder distillation such
prompts over real text, with the answers left to the teacher: instruction templates filled from the Wikipedia
articles of the ``wiki`` asset (:mod:`makd.tasks.wiki`), the TRAIN articles only (split by article, so the
held-out articles behind every model's perplexity are never in a prompt). It is our construction, not the paper's
data (MaKD trains on Dolly), and it has no reference answers (``reference_kind`` "none"): a decoder comparison
trains on the teacher's generated answers (SeqKD's data; KD and MaKD with ``--kd-responses teacher``), never on
gold ones.

Rows (:func:`wiki_prompt_rows`), one schema with :mod:`makd.tasks.instructions`:

- every paragraph of :data:`MIN_WORDS`–:data:`MAX_WORDS` words of a train article (the cleaned text's lines) gets
  one :data:`PASSAGE_TEMPLATES` instruction with the paragraph as its ``input``;
- every train article whose title names a topic (not a list, a disambiguation page or a one-letter title) gets
  each :data:`TOPIC_TEMPLATES` instruction with its title filled in and no input;

the template of a paragraph is drawn with ``seed``, then all rows are shuffled with ``seed`` (the first N of a run
span many articles and templates). ``category`` is the template's name, ``id`` the article title and a counter.
Measured on the pinned asset: 93 train articles, 3,351 paragraphs of 40–150 words (median 78) and 86 topic titles
-> 3,695 rows.
"""
from __future__ import annotations

import numpy as np

from makd.tasks.wiki import load_wiki

MIN_WORDS, MAX_WORDS = 40, 150     # a paragraph's words: shorter lines are headings or fragments, longer ones rare
PASSAGE_TEMPLATES = {              # name -> instruction; the paragraph is the input
    "summarize": "Summarize the following text in one or two sentences.",
    "explain": "Explain the following text in simple words.",
    "title": "Suggest a short title for the following paragraph.",
    "question": "Write a question that the following paragraph answers, and answer it.",
    "facts": "List three key facts from the following text.",
    "concise": "Rewrite the following text to be more concise.",
    "main_point": "What is the main point of the following paragraph?",
}
TOPIC_TEMPLATES = {                # name -> instruction with {title}; no input
    "paragraph": "Write a short paragraph about {title}.",
    "what_is": "What is {title}? Answer in a few sentences.",
    "three_facts": "Give me three interesting facts about {title}.",
    "teach": "How would you explain {title} to a student who has never heard of it?",
}


def topic_title(title: str) -> bool:
    """Whether a title names a topic a prompt can ask about: not a list, a disambiguation page or one letter."""
    return len(title) > 1 and not title.startswith("List of") and "(disambiguation)" not in title


def paragraphs(text: str) -> list[str]:
    """The lines of an article's plain text with :data:`MIN_WORDS` to :data:`MAX_WORDS` words, in order."""
    return [line.strip() for line in text.split("\n") if MIN_WORDS <= len(line.split()) <= MAX_WORDS]


def wiki_prompt_rows(seed: int = 0, path=None) -> list[dict]:
    """The rows of ``wikiprompts`` from the train articles of the ``wiki`` asset (or the export at ``path``), in
    one seeded order: {id, instruction, input, output "", reference_kind "none", category}."""
    rng = np.random.default_rng(seed)
    names = list(PASSAGE_TEMPLATES)
    rows = []
    for article in load_wiki(path).train:
        for i, text in enumerate(paragraphs(article.text)):
            name = names[int(rng.integers(len(names)))]
            rows.append({"id": f"{article.title}#p{i}", "instruction": PASSAGE_TEMPLATES[name], "input": text,
                         "output": "", "reference_kind": "none", "category": name})
        if topic_title(article.title):
            rows += [{"id": f"{article.title}#{name}", "instruction": template.format(title=article.title),
                      "input": "", "output": "", "reference_kind": "none", "category": name}
                     for name, template in TOPIC_TEMPLATES.items()]
    return [rows[i] for i in rng.permutation(len(rows))]
