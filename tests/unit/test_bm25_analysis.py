"""The worker-side English analysis of BM25 text (`store.analysis`): documents and questions alike."""

from __future__ import annotations

import pytest
from snowballstemmer.english_stemmer import EnglishStemmer

from store import analysis
from store.analysis import STOP_WORDS, analyse


def test_english_stems_so_inflections_meet() -> None:
    # The example milvus-lite's own `stemmer` filter failed: nothing of one matched the other.
    assert (
        analyse("run dog jumped", "english") == analyse("running dogs jumping", "english") == "run dog jump"
    )


def test_english_drops_stop_words_and_possessives_and_lowercases() -> None:
    assert analyse("The Cell's Response to IL-6 is NOT an Effect of Glucocorticoids", "english") == (
        "cell respons il 6 effect glucocorticoid"
    )
    assert all(analyse(word, "english") == "" for word in STOP_WORDS)


def test_standard_leaves_the_text_to_milvus() -> None:
    text = "Running dogs, the cat's H2O — ünïcödé"
    assert analyse(text, "standard") == text


@pytest.mark.parametrize("text", ["", "   ", "—", "😀 ∑", "a the of"])
def test_text_without_words_analyses_to_nothing(text: str) -> None:
    assert analyse(text, "english") == ""


def test_unicode_words_are_kept_whole() -> None:
    assert analyse("Über naïve café Straße 東京", "english") == "über naïv café straße 東京"


def test_one_word_has_one_form_however_it_is_encoded() -> None:
    # decomposed accents, fullwidth letters and ligatures: what different parsers hand over for one word
    assert (
        analyse("nai\u0308ve ｆｉｎｅ ﬁsh", "english")
        == analyse("naïve fine fish", "english")
        == "naïv fine fish"
    )


def test_the_c_stemmer_runs_and_stems_as_the_pure_python_one() -> None:
    """Collections stored with one stemmer are asked with the other after an upgrade: they must agree
    (checked on all 36,168 SciFact words when PyStemmer was added; here, words that exercise each step)."""
    words = [
        "running",
        "dogs",
        "generously",
        "consolidation",
        "hopefulness",
        "ünïcödé",
        "caresses",
        "ponies",
        "cats",
        "agreed",
        "sky",
    ]
    assert analysis._STEMMER.__class__.__module__ == "Stemmer"  # PyStemmer, not the pure-Python fallback
    pure = EnglishStemmer()
    assert [analysis._STEMMER.stemWord(word) for word in words] == [pure.stemWord(word) for word in words]
