"""One bad document fails alone: checked when parsed, and narrowed down when a shared call still fails.

Fakes stand behind the project's own interfaces (Embedder, VectorStore); the integration tests run the
same cases through the real model and Milvus.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from common.errors import ServiceUnavailable
from common.reports import Outcome
from common.settings import Settings
from common.types import Chunk, Document, Tokens
from ingestion.formats.common import Failure, item_id
from ingestion.pipeline import ingest_documents
from ingestion.validation import checked, document_problem


class FakeEmbedder:
    model_name, dimension, max_tokens = "fake", 2, 512
    splits_at_word_edges = False

    def __init__(self, poison: str = "") -> None:
        self.poison, self.calls = poison, 0

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for word in text.split(" "):
            spans.append((start, start + len(word)))
            start += len(word) + 1
        return [span for span in spans if span[1] > span[0]]

    def tokens(self, text: str) -> Tokens:
        return Tokens(self.token_spans(text))

    def embed_documents(
        self, texts: Sequence[str], token_ids: Sequence[Sequence[int] | None] | None = None
    ) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.poison and any(self.poison in text for text in texts):
            raise RuntimeError("the model refused one text of the batch")
        return np.ones((len(texts), 2), dtype=np.float32)


class FakeStore:
    def __init__(self, poison: str = "", down: bool = False) -> None:
        self.poison, self.down = poison, down
        self.rows: dict[str, int] = {}
        self.inserts = 0

    def document_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        if self.down:
            raise ServiceUnavailable("Milvus unavailable during query")
        return {}

    def prune(self, collection: str, keep: Mapping[str, Collection[str]]) -> None:
        pass

    def insert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Any, hashes: Mapping[str, str], seq: int = 0
    ) -> int:
        self.inserts += 1
        if any(self.poison and self.poison in chunk.doc_id for chunk in chunks):
            raise ValueError(f"VARCHAR field 'doc_id' of {self.poison!r} refused")  # a MilvusException here
        for chunk in chunks:
            self.rows[chunk.doc_id] = self.rows.get(chunk.doc_id, 0) + 1
        return len(chunks)

    def delete(
        self, collection: str, doc_ids: Sequence[str] | None = None, before_seq: int | None = None
    ) -> int:
        return 0

    def flush(self) -> None:
        pass

    def flush_due(self) -> None:
        pass


def run(items: list[Document | Failure], embedder: FakeEmbedder, store: FakeStore) -> dict[str, Outcome]:
    outcomes = ingest_documents(
        items,
        collection="c",
        on_duplicate="skip",
        embedder=embedder,
        store=store,
        settings=Settings(),  # type: ignore[arg-type]
    )
    assert [o.doc_id for o in outcomes] == [item_id(i) for i in items]
    return {outcome.doc_id: outcome for outcome in outcomes}


DEEP: list[Any] = [1]
for _ in range(20):
    DEEP = [DEEP]
DOCS = [Document(f"d{i}", f"document number {i} has some words") for i in range(9)]


def test_a_document_the_model_refuses_fails_alone_with_its_own_reason() -> None:
    docs = [*DOCS[:4], Document("bad", "this one holds POISON for the model"), *DOCS[4:]]
    embedder, store = FakeEmbedder(poison="POISON"), FakeStore()
    outcomes = run(list(docs), embedder, store)
    assert outcomes["bad"].status == "failed"
    assert (
        outcomes["bad"].reason
        == "bad: could not be embedded (RuntimeError: the model refused one text of the batch)"
    )
    assert all(outcomes[doc.id].status == "succeeded" for doc in DOCS)
    assert set(store.rows) == {doc.id for doc in DOCS}
    assert embedder.calls <= 1 + 2 * 4  # one call, then halves down to the culprit (log2 10 < 4 levels)


def test_a_document_the_store_refuses_fails_alone_and_the_batch_is_embedded_once() -> None:
    docs = [*DOCS[:6], Document("refused-id", "stored nowhere"), *DOCS[6:]]
    embedder, store = FakeEmbedder(), FakeStore(poison="refused")
    outcomes = run(list(docs), embedder, store)
    assert outcomes["refused-id"].status == "failed" and "could not be written" in str(
        outcomes["refused-id"].reason
    )
    assert all(outcomes[doc.id].status == "succeeded" and outcomes[doc.id].chunks == 1 for doc in DOCS)
    assert embedder.calls == 1  # vectors are kept while the write is narrowed down
    assert store.inserts > 1


def test_an_outage_is_not_split_it_raises_for_the_task_to_retry() -> None:
    with pytest.raises(ServiceUnavailable):
        run(list(DOCS), FakeEmbedder(), FakeStore(down=True))


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (Document("bad\x01id", "text"), "control character"),
        (Document("x" * 513, "text"), "at most 512 bytes"),
        (Document("é" * 300, "text"), "at most 512 bytes"),  # 600 bytes of UTF-8
        (Document("s\ud800", "text"), "surrogate"),
        (Document("ok", "text \udfff"), "surrogate"),
        (Document("ok", "text", title="T" * 2049), "title"),
        (Document("ok", "text", title="\ud800"), "surrogate"),
        (Document("ok", "text", metadata={"k": "v" * 20_000}), "bytes of JSON"),
        (Document("ok", "text", metadata={"k": "\ud800"}), "surrogate"),
        (Document("ok", "text", metadata={"k": float("nan")}), "not plain JSON"),
        (Document("ok", "text", metadata={"k": DEEP}), "nested"),
        (Document("ok", "   "), "empty"),
    ],
)
def test_a_document_the_store_would_refuse_is_named_when_parsed(doc: Document, problem: str) -> None:
    reason = document_problem(doc, Settings().max_metadata_bytes)
    assert reason is not None and problem in reason
    (item,) = checked([doc], Settings().max_metadata_bytes)
    assert isinstance(item, Failure) and problem in item.reason
    item.doc_id.encode("utf-8")  # the report id is storable even when the id was not


def test_a_repeated_id_fails_as_a_copy_and_every_report_id_is_unique() -> None:
    items: list[Document | Failure] = [
        Document("a", "first"),
        Document("a", "second"),
        Failure("a", "a line that did not parse"),
        Document("b", "fine"),
    ]
    out = list(checked(items, 1024))
    assert [item_id(i) for i in out] == [
        "a",
        "a (copy 2)",
        "a (copy 3)",
        "b",
    ]
    assert isinstance(out[1], Failure) and "duplicate document id 'a'" in out[1].reason
    assert isinstance(out[0], Document) and out[0].text == "first"
