"""Batched answering with fakes behind the project's own interfaces: grouping, order, failure isolation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from common.settings import Settings
from common.types import Hit, Ranked, SearchOptions
from workers.documents import grouped
from workers.retrieval import Question, Retriever


class FakeEmbedder:
    model_name, dimension, max_tokens = "fake", 2, 32

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(len(texts))
        return np.array([[1.0, float(i)] for i in range(len(texts))], dtype=np.float32)


class FakeStore:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, list[str], dict[str, Any], SearchOptions | None]] = []
        self.fail_on = fail_on

    def search(
        self,
        collection: str,
        query_texts: Sequence[str],
        query_vectors: npt.NDArray[np.float32],
        limit: int,
        filters: dict[str, Any] | None = None,
        *,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        self.calls.append((collection, list(query_texts), filters or {}, options))
        if collection == self.fail_on:
            raise ConnectionError("milvus down")
        return [
            [Hit(f"{text}-{n}", 0, f"passage {n} for {text}", "", {}) for n in range(limit)]
            for text in query_texts
        ]


class ReverseReranker:
    name = "reverse"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def rerank(self, query: str, passages: Sequence[str], top_k: int) -> list[Ranked]:
        return self.rerank_batch([(query, passages)])[0][:top_k]

    def rerank_batch(
        self, items: Sequence[tuple[str, Sequence[str]]], idf: Sequence[Any] | None = None
    ) -> list[list[Ranked]]:
        self.batches.append(len(items))
        return [[Ranked(i, float(i), float(i)) for i in reversed(range(len(p)))] for _, p in items]


def make(store: FakeStore, reranker: ReverseReranker) -> Retriever:
    def rerankers(name: str) -> ReverseReranker:
        if name != "reverse":
            raise OSError(f"cannot load {name}")
        return reranker

    return Retriever(Settings(rerank_candidates=3), FakeEmbedder(), store, exact=None, rerankers=rerankers)  # type: ignore[arg-type]


def test_one_embed_one_search_one_rerank_per_batch_in_order() -> None:
    store, reranker = FakeStore(), ReverseReranker()
    questions = [Question(f"q{i}", "c", top_k=2, reranker="reverse") for i in range(3)]
    results = make(store, reranker).answer_batch(questions)
    assert len(store.calls) == 1 and store.calls[0][1] == ["q0", "q1", "q2"]
    assert reranker.batches == [3]
    for i, result in enumerate(results):
        assert isinstance(result, dict)
        assert [p["doc_id"] for p in result["passages"]] == [f"q{i}-2", f"q{i}-1"]  # head of 3, reversed
        assert result["timings"]["batch_size"] == 3 and result["reranker"] == "reverse"


def test_questions_with_other_filters_or_switches_search_separately() -> None:
    store = FakeStore()
    questions = [
        Question("a", "c", top_k=1),
        Question("b", "c", top_k=1, filters={"doc_id": "x"}),
        Question("c", "c", top_k=1, options={"mode": "bm25"}),
        Question("d", "c", top_k=1),
    ]
    results = make(store, ReverseReranker()).answer_batch(questions)
    assert sorted(len(call[1]) for call in store.calls) == [1, 1, 2]
    assert [r["passages"][0]["doc_id"] for r in results if isinstance(r, dict)] == [
        "a-0",
        "b-0",
        "c-0",
        "d-0",
    ]
    assert not any("rerank_ms" in r["timings"] for r in results if isinstance(r, dict))


def test_a_failure_fails_only_the_questions_it_touched() -> None:
    store = FakeStore(fail_on="broken")
    questions = [
        Question("a", "broken", top_k=1),
        Question("b", "ok", top_k=1, reranker="missing"),
        Question("c", "ok", top_k=1, reranker="reverse"),
    ]
    retriever = make(store, ReverseReranker())
    results = retriever.answer_batch(questions)
    assert isinstance(results[0], ConnectionError)
    assert isinstance(results[1], OSError) and "cannot load missing" in str(results[1])
    assert isinstance(results[2], dict) and results[2]["passages"][0]["doc_id"] == "c-2"
    with pytest.raises(ConnectionError):
        retriever.answer(questions[0])


class PoisonEmbedder(FakeEmbedder):
    """Refuses any call that holds a lone surrogate, as the real tokenizer does (a TypeError)."""

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if any("\ud800" in text for text in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return super().embed_queries(texts)


class PoisonStore(FakeStore):
    def search(
        self, collection: str, query_texts: Sequence[str], *args: Any, **kwargs: Any
    ) -> list[list[Hit]]:
        if "poison" in query_texts:
            raise ValueError("the store refused one query of the request")
        return super().search(collection, query_texts, *args, **kwargs)


class PoisonReranker(ReverseReranker):
    def rerank_batch(
        self, items: Sequence[tuple[str, Sequence[str]]], idf: Sequence[Any] | None = None
    ) -> list[list[Ranked]]:
        if any(query == "rerank-poison" for query, _ in items):
            raise RuntimeError("the reranker choked on one question")
        return super().rerank_batch(items)


def test_a_question_that_breaks_a_shared_call_fails_alone_at_every_stage() -> None:
    store, reranker = PoisonStore(), PoisonReranker()
    good = [Question(f"q{i}", "c", top_k=1, reranker="reverse") for i in range(5)]
    bad = [
        Question("bad \ud800", "c", top_k=1, reranker="reverse"),
        Question("poison", "c", top_k=1, reranker="reverse"),
        Question("rerank-poison", "c", top_k=1, reranker="reverse"),
        Question("bad options", "c", top_k=1, options={"ef": "many"}),
    ]
    batch = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3], good[4]]
    retriever = Retriever(
        Settings(rerank_candidates=3),
        PoisonEmbedder(),
        store,
        exact=None,
        rerankers=lambda _: reranker,  # type: ignore[arg-type]
    )
    results = retriever.answer_batch(batch)
    by_text = dict(zip([q.text for q in batch], results, strict=True))
    for question in good:
        result = by_text[question.text]
        assert isinstance(result, dict), result
        assert result["passages"][0]["doc_id"] == f"{question.text}-2"
        assert result["timings"]["batch_size"] == len(batch)
    assert isinstance(by_text["bad \ud800"], TypeError)
    assert isinstance(by_text["poison"], ValueError)
    assert isinstance(by_text["rerank-poison"], RuntimeError)
    assert isinstance(by_text["bad options"], ValueError)


def test_an_outage_fails_the_group_unsplit() -> None:
    store = FakeStore(fail_on="down")
    questions = [Question(f"q{i}", "down", top_k=1) for i in range(8)]
    results = make(store, ReverseReranker()).answer_batch(questions)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert len(store.calls) == 1  # not bisected: an outage fails every half alike


class ChunkyStore(FakeStore):
    """Several chunks of one document among the hits, as a real collection returns them."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []

    def search(
        self, collection: str, query_texts: Sequence[str], *args: Any, **kwargs: Any
    ) -> list[list[Hit]]:
        self.calls.append((collection, list(query_texts), {}, kwargs.get("options")))
        self.limits.append(args[1])
        order = [("A", 0), ("A", 1), ("B", 0), ("A", 2), ("C", 3), ("B", 1), ("D", 0), ("A", 3)]
        hits = [Hit(doc, index, f"{doc}{index}", f"title {doc}", {}) for doc, index in order]
        return [hits for _ in query_texts]


def test_documents_rank_each_document_once_at_its_best_chunk_before_the_reranker() -> None:
    store, reranker = ChunkyStore(), ReverseReranker()
    question = Question("q", "c", top_k=3, reranker="reverse", options={"documents": True})
    result = make(store, reranker).answer(question)
    assert store.limits == [100]  # every fused candidate is fetched: chunks collapse into documents
    # the reranker saw A, B, C (three documents, not A0, A1, B0) and reversed them
    assert [(p["doc_id"], p["chunk_index"]) for p in result["passages"]] == [("C", 3), ("B", 0), ("A", 0)]
    documents = result["documents"]
    assert [d["doc_id"] for d in documents] == ["C", "B", "A"]
    assert [(p["doc_id"], p["chunk_index"]) for p in documents[2]["passages"]] == [
        ("A", 0),
        ("A", 1),
        ("A", 2),
    ]
    assert documents[0]["score"] == result["passages"][0]["scores"]["final"]
    assert documents[1]["title"] == "title B" and len(documents[1]["passages"]) == 2


def test_chunks_stay_the_default_and_list_no_documents() -> None:
    store = ChunkyStore()
    result = make(store, ReverseReranker()).answer(Question("q", "c", top_k=3))
    assert store.limits == [3]
    assert [p["doc_id"] for p in result["passages"]] == ["A", "A", "B"] and "documents" not in result


@pytest.mark.parametrize("mode", ["dense", "bm25"])
def test_a_grouped_document_without_fusion_or_rerank_scores_by_its_searchs_own_score(mode: str) -> None:
    passage = {
        "doc_id": "A",
        "chunk_index": 0,
        "title": "",
        "metadata": {},
        "scores": {"fusion": None, "dense": 0.5, **({"bm25": 7.0} if mode == "bm25" else {})},
    }
    documents = grouped([passage], [], lambda hit, ranked: {})
    assert documents[0]["score"] == (7.0 if mode == "bm25" else 0.5)
