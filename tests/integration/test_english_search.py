"""English BM25 on the real stack: the worker's analysis of documents and questions meets in milvus-lite,
which cannot stem by itself; the collection records it; `documents` returns each document once."""

from __future__ import annotations

from typing import Any

import pytest

from common.settings import Settings
from store.connection import connect
from store.schema import ANALYSIS_PROPERTY
from tests.integration.conftest import Stack

DOCS = [
    {"id": "dogs", "title": "Dogs", "text": "Running dogs were jumping over the fences of the farms."},
    {"id": "cats", "title": "Cats", "text": "A cat sleeps on a warm windowsill most of the afternoon."},
    {
        "id": "long",
        "title": "Glaciers",
        "text": " ".join(
            f"Glaciers advance and retreat, part {n} of a long text about ice." for n in range(60)
        ),
    },
]


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> dict[str, Any]:
    job = stack.run("/api/v1/documents", json={"documents": DOCS, "collection": "analysed"})
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 3, job
    return job


def ask(stack: Stack, question: str, **options: Any) -> dict[str, Any]:
    body = {"question": question, "collection": "analysed", "top_k": 5, **options}
    job = stack.run("/api/v1/ask", json=body)
    assert job["state"] == "succeeded", job
    return dict(job["result"])


def test_bm25_meets_other_inflections_of_the_same_words(stack: Stack, loaded: dict[str, Any]) -> None:
    # milvus-lite's own analysis found nothing of "running dogs jumping" for these words
    passages = ask(stack, "a dog runs and jumped a fence", mode="bm25", rerank=False)["passages"]
    assert [p["doc_id"] for p in passages] == ["dogs"]
    assert passages[0]["text"] == DOCS[0]["text"]  # the stems feed BM25 only: the passage is as written


def test_a_question_of_stop_words_only_finds_nothing_by_bm25(stack: Stack, loaded: dict[str, Any]) -> None:
    assert ask(stack, "what is it that there was?", mode="bm25", rerank=False)["passages"] == []


def test_the_collection_records_its_analysis(stack: Stack, loaded: dict[str, Any]) -> None:
    client = connect(stack.env["MILVUS_URI"], timeout_s=10)
    try:
        properties = client.describe_collection(stack.env["MILVUS_COLLECTION"])["properties"]
    finally:
        client.close()
    assert properties[ANALYSIS_PROPERTY] == "english"


def test_the_bm25_index_is_built_with_the_configured_k1_and_b(stack: Stack, loaded: dict[str, Any]) -> None:
    # passed flat, milvus-lite dropped them and scored with its own k1 1.5 (the settings say 1.2)
    settings = Settings()
    client = connect(stack.env["MILVUS_URI"], timeout_s=10)
    try:
        index = client.describe_index(stack.env["MILVUS_COLLECTION"], "sparse")
    finally:
        client.close()
    built = index.get("params", index)
    assert float(built["bm25_k1"]) == settings.bm25_k1 and float(built["bm25_b"]) == settings.bm25_b


def test_documents_rank_each_document_once_with_its_best_passages(
    stack: Stack, loaded: dict[str, Any]
) -> None:
    plain = ask(stack, "how do glaciers advance and retreat?")
    assert [p["doc_id"] for p in plain["passages"]][:2] == ["long", "long"]  # several chunks of one
    grouped = ask(stack, "how do glaciers advance and retreat?", documents=True)
    assert grouped["passages"][0]["doc_id"] == "long"
    assert len({p["doc_id"] for p in grouped["passages"]}) == len(grouped["passages"])
    first = grouped["documents"][0]
    assert first["doc_id"] == "long" and first["title"] == "Glaciers" and 1 < len(first["passages"]) <= 3
    assert first["passages"][0] == grouped["passages"][0]
    assert first["score"] == grouped["passages"][0]["scores"]["final"]
    assert {p["doc_id"] for p in first["passages"]} == {"long"}


def test_idf_weighting_is_a_switch_of_each_ask(stack: Stack, loaded: dict[str, Any]) -> None:
    # weighted by the collection's token IDF (the default) and not: both rerank the same candidates
    weighted = ask(stack, "glaciers and ice", idf=True)["passages"]
    plain = ask(stack, "glaciers and ice", idf=False)["passages"]
    assert weighted[0]["doc_id"] == "long" == plain[0]["doc_id"]
    assert {p["doc_id"] for p in weighted} == {p["doc_id"] for p in plain}
