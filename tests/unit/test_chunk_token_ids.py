"""Chunks carry their ids from chunking to the embedder (`Chunk.token_ids`), on the real bundled model: every
carried id list is exactly what tokenising the chunk's text gives, a window cut inside a word carries none,
and the vectors are the same as from the text, without tokenising it again."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from common.settings import Settings
from common.types import Chunk, Document, embedding_text
from ingestion.writing import Pending, chunks_of, write_documents
from workers.embedder import SentenceTransformerEmbedder, load_embedder

WORDS = [
    *("the", "river", "stone", "granite", "quarry", "unbelievably", "extraordinary"),
    *("internationalization", "of", "1,234", "(a)", "x-y"),
]
ODD = [  # text a tokenizer normalises, drops or splits unlike whitespace would suggest
    "Café naïve coöperate ﬁnance ＡＢＣ １２３ e\u0301 x\u200by",
    "日本語のテキストです。漢字とかなの混ざった文。",
    "abc\x1cdef ghi\x00jkl m\u00a0n o\u2028p q\u0085r",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 and İstanbul ǅ ß ΣΑΣ",
    "x-y_z (paren) [br] {c} #tag ##hash ### a##b",
    "a" * 150 + " then words " + "b" * 30 + " end",  # over 100 characters: one [UNK]
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return load_embedder(Settings(device="cpu", cpu_bf16=False))


def prose(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + rng.choice(["", "", "", ".", ",", "!\n"]) for _ in range(words))


def documents() -> Iterator[Document]:
    for i in range(40):
        yield Document(f"p{i}", prose(i, 40 + 37 * i), "A title, naïvely" if i % 2 else "")
    for i, text in enumerate(ODD):
        yield Document(f"odd{i}", " ".join([text] * (3 + 7 * i)), "Ti\u0301tle ﬁ ##x" if i % 2 else "")


def tokenised(embedder: SentenceTransformerEmbedder, chunk: Chunk, settings: Settings) -> list[int]:
    return embedder._encode([embedding_text(chunk, settings.chunk_include_title)])[0][0]


def test_carried_ids_are_exactly_what_the_chunks_text_tokenises_to(
    embedder: SentenceTransformerEmbedder,
) -> None:
    settings = Settings(chunk_tokens=48, chunk_overlap_tokens=8)
    chunks = [chunk for doc in documents() for chunk in chunks_of(doc, embedder, settings)]
    carried = [chunk for chunk in chunks if chunk.token_ids is not None]
    assert len(carried) >= 0.8 * len(chunks)  # whole words are the rule: the saving is real
    assert {chunk.doc_id for chunk in carried} >= {f"odd{i}" for i in range(len(ODD))}
    for chunk in carried:
        assert chunk.token_ids is not None
        assert embedder._wrap is not None
        assert embedder._wrap.ids(chunk.token_ids) == tokenised(embedder, chunk, settings), chunk


def test_a_window_cut_inside_a_word_carries_no_ids(embedder: SentenceTransformerEmbedder) -> None:
    """Words of many WordPiece tokens each, longer than a window: cuts fall inside words, whose tails
    tokenise differently alone (`##…` pieces), so those chunks are left for the embedder to tokenise."""
    settings = Settings(chunk_tokens=24, chunk_overlap_tokens=2)
    text = " ".join(["internationalizationcounterproductiveextraordinarily"] * 12)
    chunks = chunks_of(Document("long", text), embedder, settings)
    assert any(chunk.token_ids is None for chunk in chunks)
    for chunk in chunks:
        if chunk.token_ids is not None:
            assert embedder._wrap is not None
            assert embedder._wrap.ids(chunk.token_ids) == tokenised(embedder, chunk, settings)


def test_given_ids_embed_as_their_texts_without_tokenising_them(
    embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    chunks = [chunk for doc in documents() for chunk in chunks_of(doc, embedder, settings)][:60]
    texts = [embedding_text(chunk, settings.chunk_include_title) for chunk in chunks]
    given: list[Sequence[int] | None] = [chunk.token_ids for chunk in chunks]
    given[3] = None  # one the embedder must tokenise
    expected = embedder.embed_documents(texts)
    asked = spy_encode(embedder, monkeypatch)
    np.testing.assert_allclose(embedder.embed_documents(texts, given), expected, atol=1e-6)
    assert asked == [texts[i] for i, ids in enumerate(given) if ids is None]


def test_ingestion_embeds_the_ids_chunking_made(
    embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    docs = [Document(f"d{i}", prose(100 + i, 300), "Title") for i in range(3)]
    asked = spy_encode(embedder, monkeypatch)
    store = Recorder()
    pending = [Pending(doc, "v1") for doc in docs]
    outcomes = write_documents(pending, collection="c", embedder=embedder, store=store, settings=settings)
    assert [outcome.status for outcome in outcomes] == ["succeeded"] * 3
    assert asked == []  # prose of whole words: nothing tokenised twice
    again = embedder.embed_documents([embedding_text(chunk, True) for chunk in store.chunks])
    np.testing.assert_allclose(store.vectors, again, atol=1e-6)


def spy_encode(embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the embedder tokenises from now on."""
    asked: list[str] = []
    encode = embedder._encode

    def recording(texts: list[str]) -> Any:
        asked.extend(texts)
        return encode(texts)

    monkeypatch.setattr(embedder, "_encode", recording)
    return asked


class Recorder:
    """The part of a VectorStore that `write_documents` calls: what it was asked to write."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.vectors: Any = None

    def insert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Any, hashes: Any, seq: int = 0
    ) -> int:
        self.chunks, self.vectors = list(chunks), vectors
        return len(chunks)
