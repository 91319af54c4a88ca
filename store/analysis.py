"""What Milvus's BM25 reads: a chunk's text (and a question) as its collection's analysis leaves it.

Milvus standalone can stem English in its own analyzer, but milvus-lite accepts only the `standard` and
`jieba` tokenizers (a `stemmer` filter is accepted there and does nothing). So the English analysis runs
in the worker, the same way for documents and questions: NFKC-normalise and lowercase, split into words,
drop the possessive `'s` and English stop words (Lucene's EnglishAnalyzer set), Snowball English stems.
The BM25 field then holds the stems separated by spaces, which Milvus's `standard` tokenizer splits back
into the same terms, on every Milvus. A collection records the analysis it was built with (`store.schema`),
so documents written and questions asked later are analysed alike even when the setting changes; one
without the record (built before this existed) keeps `standard`, Milvus's own analysis of the raw text.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import get_args

import snowballstemmer

from common.types import BM25Analysis

ANALYSES: tuple[BM25Analysis, ...] = get_args(BM25Analysis)
# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, the set its published BEIR BM25 baselines use.
_LUCENE_STOP = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then there"
)
STOP_WORDS = frozenset(f"{_LUCENE_STOP} these they this to was will with".split())
_WORD = re.compile(r"\w+(?:'\w+)*")
_STEMMER = snowballstemmer.stemmer("english")  # PyStemmer's C stemmer when installed (requirements.txt)


@lru_cache(maxsize=200_000)  # a corpus repeats its words: stemming each once makes analysis ~10x faster
def _stem(word: str) -> str:
    return str(_STEMMER.stemWord(word))


def analyse(text: str, analysis: BM25Analysis) -> str:
    """`text` as the BM25 field of a collection with `analysis` holds it (raw text for `standard`)."""
    if analysis == "standard":
        return text
    folded = unicodedata.normalize("NFKC", text).lower()  # one form per word: composed, no ligatures
    words = [_strip_possessive(word) for word in _WORD.findall(folded)]
    kept = [word for word in words if word and word not in STOP_WORDS]
    return " ".join(map(_stem, kept))


def _strip_possessive(word: str) -> str:
    return word[:-2] if word.endswith("'s") else word.replace("'", "")
