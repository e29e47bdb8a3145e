"""The tiny presets' tokenizers: real, deterministic tokenizers made from a built-in English text (smoke tests only).

``tiny-bert`` gets an uncased WordPiece whose vocabulary is built in Python (:func:`wordpiece_vocab`: the
`tokenizers` WordPiece trainer gives another vocabulary in every process); ``tiny-gpt2`` / ``tiny-llama`` a
byte-level BPE from the `tokenizers` trainer (the same in every process) with a ChatML-style chat template.
Used by :mod:`makd.assets.builders`.
"""
from __future__ import annotations


_TINY_TEXT = """\
The teacher is a large language model and the student is a small one. Knowledge distillation trains the
student to imitate the teacher: its outputs, its attention maps and its hidden states. A weight matrix can
be written as the product of three matrices with the singular value decomposition; keeping the largest
singular values gives a low-rank approximation with fewer parameters. The film was a delight from start to
finish, with sharp dialogue and a moving score. The plot is thin and the jokes fall flat, but the actors do
their best. What is the capital of France? Paris is the capital and the largest city of France. How many
days are there in a week? There are seven days in a week. Please write a short poem about the sea. The
river flows to the sea, the wind moves over the hills, and the birds sing in the morning light. She opened
the window, looked at the garden and smiled. Numbers such as 1, 2, 3, 10, 42 and 2026 appear in text too.
Questions, answers, reviews, stories and instructions: each sentence helps the tokenizer learn common words.
"""


def wordpiece_vocab(lines: list[str], normalizer, pre_tokenizer, specials: list[str]) -> dict[str, int]:
    """A WordPiece vocabulary built deterministically in Python: the special tokens, the printable lower-case
    ASCII characters alone and as ``##`` continuations (any word splits into them), then every word of ``lines``
    by count (ties alphabetically). The `tokenizers` WordPiece trainer is not used: its vocabulary changes from
    one process to the next (435-438 tokens on the same text), and so did the tiny-bert built from it."""
    from collections import Counter
    counts = Counter(w for line in lines for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = list(dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars),
                                 *sorted(counts, key=lambda w: (-counts[w], w))]))
    return {t: i for i, t in enumerate(tokens)}


def tiny_tokenizer(kind: str):
    """A real, deterministic tokenizer made from a built-in English text.

    kind ``"bert"``: uncased WordPiece (vocabulary of 261 from :func:`wordpiece_vocab`) with [PAD] [UNK] [CLS]
    [SEP] [MASK] and ``[CLS] A [SEP] B [SEP]``;
    kind ``"decoder"``: byte-level BPE (500, `tokenizers` trainer: same vocabulary in every process) with <|endoftext|> (bos) <|im_end|> (eos) <|pad|> <|im_start|> and a
    ChatML-style chat template (the format of SmolLM2-Instruct).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    lines = _TINY_TEXT.splitlines()
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
        tk = Tokenizer(models.WordPiece(vocab=wordpiece_vocab(lines, normalizer, pre, specials),
                                        unk_token="[UNK]"))
        tk.normalizer, tk.pre_tokenizer = normalizer, pre
        cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tk.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=128,
                                       model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    if kind != "decoder":
        raise ValueError(f"kind must be 'bert' or 'decoder', got {kind!r}")
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(lines, trainer)
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>"],
                                   model_max_length=128, chat_template=template,
                                   model_input_names=["input_ids", "attention_mask"])
