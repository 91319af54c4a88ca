"""MilvusStore behaviour that needs no server: load-on-read after a Milvus restart, error mapping."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import pytest
from pymilvus import MilvusException

from common.errors import Conflict, DocumentError, InvalidRequest, ServiceUnavailable
from common.settings import Settings
from common.types import Chunk
from store import schema
from store.catalog import Catalog
from store.connection import milvus_errors
from store.exact import ExactDense
from store.milvus import QUERY_LIMIT, MilvusStore
from store.schema import ANALYSIS_PROPERTY


class FakeClient:
    def __init__(self, exists: bool, state: str) -> None:
        self._exists, self.state, self.loads = exists, state, 0

    def has_collection(self, name: str) -> bool:
        return self._exists

    def get_load_state(self, name: str) -> dict[str, Any]:
        return {"state": self.state}

    def load_collection(self, name: str) -> None:
        self.loads += 1
        self.state = "Loaded"


def store_with(client: FakeClient, settings: Settings | None = None) -> MilvusStore:
    store = MilvusStore.__new__(MilvusStore)
    store.name, store.client = "quarry_chunks", client  # type: ignore[assignment]
    store.settings = settings or Settings()
    store._analysis = "english"  # what ensure_collection would have read from the collection
    store.write_turn = nullcontext
    store._flushed_at = float("-inf")
    return store


def test_a_released_collection_is_loaded_before_reads() -> None:
    client = FakeClient(exists=True, state="NotLoad")
    assert store_with(client).exists() and client.loads == 1
    assert store_with(client).exists() and client.loads == 1  # already loaded: no second load


def test_a_missing_collection_is_not_created_by_a_read() -> None:
    client = FakeClient(exists=False, state="NotExist")
    assert not store_with(client).exists() and client.loads == 0


def test_a_released_collection_error_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ServiceUnavailable, match="released"), milvus_errors("query"):
        raise MilvusException(101, "Collection 'quarry_chunks' is in state 'released'; call load()")


class FakeMilvus:
    """Enough of MilvusClient for ExactDense: a count, an iterator over all rows, a fetch by pk."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.fetches = rows, 0

    def query(self, name: str, filter: str, output_fields: list[str]) -> list[dict[str, Any]]:
        if output_fields == ["count(*)"]:
            return [{"count(*)": len(self.rows)}]
        self.fetches += 1
        wanted = set(re.findall(r'"([^"]+)"', filter.split(" in ", 1)[1]))
        return [row for row in self.rows if row["pk"] in wanted]

    def query_iterator(self, name: str, batch_size: int, filter: str, output_fields: list[str]) -> Any:
        pages = iter([self.rows, []])

        class It:
            def next(self) -> list[dict[str, Any]]:
                return next(pages)

            def close(self) -> None:
                pass

        return It()


def exact_over(rows: list[dict[str, Any]], max_chunks: int = 200_000) -> tuple[ExactDense, FakeMilvus]:
    client = FakeMilvus(rows)
    return ExactDense(store_with(client, Settings(exact_max_chunks=max_chunks))), client  # type: ignore[arg-type]


def rows_of(n: int, dim: int = 4) -> list[dict[str, Any]]:
    vectors = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    fields = {"chunk_index": 0, "title": "", "text": "", "metadata": {}}
    return [{"pk": f"p{i}", "dense": v.tolist(), "doc_id": f"d{i}", **fields} for i, v in enumerate(vectors)]


def test_exact_search_refuses_a_collection_larger_than_its_memory_bound() -> None:
    exact, client = exact_over(rows_of(50), max_chunks=49)
    with pytest.raises(InvalidRequest, match="at most 49 chunks"):
        exact.search("c", np.ones((1, 4), dtype=np.float32), 5)
    assert client.fetches == 0 and not exact._cache  # nothing was loaded


def test_exact_search_keeps_at_most_its_bound_dropping_the_least_recently_used() -> None:
    exact, _ = exact_over(rows_of(30), max_chunks=70)
    query = np.ones((1, 4), dtype=np.float32)
    for filters in ({"doc_id": "d1"}, {"doc_id": "d2"}, {"doc_id": "d1"}, {"doc_id": "d3"}):
        exact.search("c", query, 5, filters)  # the fake counts every row for any filter: 30 each
    kept = list(exact._cache)
    assert len(kept) == 2 and sum(entry[0] for entry in exact._cache.values()) <= 70
    assert 'doc_id == "d1"' in kept[0] and 'doc_id == "d3"' in kept[1]  # d2 was the least recently used


def test_exact_search_of_an_empty_collection_is_empty_not_a_crash() -> None:
    exact, _ = exact_over([])
    assert exact.search("c", np.ones((2, 4), dtype=np.float32), 10) == [[], []]


def test_exact_search_fetches_a_big_batch_in_pieces_the_filter_accepts() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1500, 16)).astype(np.float32)
    rows = [
        {
            "pk": f"p{i}",
            "dense": v.tolist(),
            "doc_id": f"d{i}",
            "chunk_index": 0,
            "title": "",
            "text": "",
            "metadata": {},
        }
        for i, v in enumerate(vectors)
    ]
    exact, client = exact_over(rows)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    distinct = {int(i) for q in queries for i in np.argsort(-(vectors @ q))[:100]}
    assert 1000 < len(distinct) <= 2000
    found = exact.search("c", queries, 100)
    assert client.fetches == 2  # more than 1,000 distinct ids: two fetches of at most 1,000
    for query, hits in zip(queries, found, strict=True):
        expected = np.argsort(-(vectors @ query))[:100]
        assert [h.doc_id for h in hits] == [f"d{i}" for i in expected]


class RecordingClient:
    """Records upserts (of MILVUS_WRITE_BATCH rows each); a query fails once, as after a Milvus restart."""

    def __init__(self) -> None:
        self.upserts: list[list[dict[str, Any]]] = []
        self.loads, self.queries = 0, 0

    def upsert(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.upserts.append(rows)

    def load_collection(self, name: str) -> None:
        self.loads += 1

    def query(self, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.queries += 1
        if self.queries == 1:
            raise MilvusException(101, "Collection 'quarry_chunks' is in state 'released'; call load()")
        return [{"doc_id": "a", "content_hash": "h", "seq": 7}]


def test_first_chunks_are_written_last_so_a_cut_write_never_looks_complete() -> None:
    client = RecordingClient()
    store = store_with(client)  # type: ignore[arg-type]
    store.settings = Settings(milvus_write_batch=3)
    chunks = [Chunk(doc, i, f"text {i}", "title") for doc in ("a", "b") for i in range(3)]
    store.insert("c", chunks, np.zeros((6, 2), dtype=np.float32), {"a": "ha", "b": "hb"})
    order = [(row["doc_id"], row["chunk_index"]) for rows in client.upserts for row in rows]
    assert order == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 0), ("b", 0)]


def test_a_read_after_a_milvus_restart_loads_the_collection_and_reads_again() -> None:
    client = RecordingClient()
    assert store_with(client).document_versions("c", ["a"]) == {"a": {"h": 7}}  # type: ignore[arg-type]
    assert (client.loads, client.queries) == (1, 2)


class ManyVersionsClient(RecordingClient):
    """Answers a query with as many rows as it allows, as Milvus does when more match."""

    def query(self, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.limit = kwargs["limit"]
        return [{"doc_id": "a", "content_hash": f"h{i}", "seq": i} for i in range(self.limit)]


def test_a_version_lookup_cut_short_by_the_query_limit_fails_instead_of_leaving_versions_out() -> None:
    """A version left out would read as absent, and settling would prune every row of its document."""
    client = ManyVersionsClient()
    with pytest.raises(DocumentError, match="too many stored versions"):
        store_with(client).document_versions("c", ["a", "b"])  # type: ignore[arg-type]
    assert client.limit == QUERY_LIMIT  # not a few per document: a document may hold several versions


class BrokenClient(FakeClient):
    """milvus-lite after a restart under load: an internal error that names one of its data files."""

    def has_collection(self, name: str) -> bool:
        raise MilvusException(1, "/srv/milvus/collections/quarry/partitions/_pk_7/delta/delta_000534.parquet")


def test_a_read_milvus_fails_on_its_own_is_unavailable_and_names_no_server_path() -> None:
    catalog = Catalog(store_with(BrokenClient(exists=True, state="Loaded")))  # type: ignore[arg-type]
    for read in (lambda: catalog.counts("c"), lambda: catalog.document("c", "d"), catalog.model):
        with pytest.raises(ServiceUnavailable) as raised:
            read()
        assert "/srv" not in raised.value.detail and "retry" in raised.value.detail


class Described:
    def __init__(self, properties: dict[str, str]) -> None:
        self.properties = properties

    def describe_collection(self, name: str) -> dict[str, Any]:
        return {"properties": self.properties}


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({}, "standard"),
        ({ANALYSIS_PROPERTY: "english"}, "english"),
        ({ANALYSIS_PROPERTY: "standard"}, "standard"),
    ],
)
def test_a_collection_keeps_the_bm25_analysis_it_was_built_with(
    properties: dict[str, str], expected: str
) -> None:
    """Built before the record existed: Milvus's own analysis, whatever BM25_ANALYSIS says now."""
    assert schema.analysis(Described(properties), "c") == expected  # type: ignore[arg-type]


def test_an_unknown_bm25_analysis_is_refused() -> None:
    with pytest.raises(Conflict, match="unknown BM25 analysis"):
        schema.analysis(Described({ANALYSIS_PROPERTY: "klingon"}), "c")  # type: ignore[arg-type]


def test_chunks_are_written_with_their_collections_analysis() -> None:
    client = RecordingClient()
    store = store_with(client)  # type: ignore[arg-type]
    store.insert(
        "c", [Chunk("a", 0, "Running dogs jumped", "The Dogs")], np.zeros((1, 4), np.float32), {"a": "h"}
    )
    row = client.upserts[0][0]
    assert row["content"] == "dog run dog jump" and row["text"] == "Running dogs jumped"


class TurnClient(RecordingClient):
    """Records each call and whether the write turn was held during it."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.calls: list[tuple[str, bool]] = []

    def upsert(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.calls.append(("upsert", self.holding))

    def delete(self, name: str, **kwargs: Any) -> dict[str, int]:
        self.calls.append(("delete", self.holding))
        return {"delete_count": 0}

    def flush(self, name: str) -> None:
        self.calls.append(("flush", self.holding))

    def query(self, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(("query", self.holding))
        return []


def test_each_write_request_and_no_read_runs_in_the_write_turn() -> None:
    client = TurnClient()
    turns: list[str] = []

    @contextmanager
    def turn() -> Iterator[None]:
        turns.append("taken")
        client.holding = True
        try:
            yield
        finally:
            client.holding = False

    store = store_with(client)  # type: ignore[arg-type]
    store.settings, store.write_turn = Settings(milvus_write_batch=2), turn
    store.insert("c", [Chunk("a", i, f"t {i}") for i in range(3)], np.zeros((3, 4), np.float32), {"a": "h"})
    store.flush()
    store.prune("c", {"a": {"h"}})
    store.delete("c", ["b"], before_seq=9)
    store.document_versions("c", ["a"])
    assert client.calls == [
        ("upsert", True),
        ("upsert", True),
        ("flush", True),
        ("delete", True),
        ("delete", True),
        ("query", False),
    ]
    assert len(turns) == 5  # one turn per request: other workers write in between


def test_batches_flush_once_per_interval_and_an_interval_of_zero_flushes_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fewer, larger segments: milvus-lite indexed, merged and indexed again one segment per flushed batch."""
    now = [100.0]
    monkeypatch.setattr("store.milvus.time.monotonic", lambda: now[0])
    client = TurnClient()
    store = store_with(client, Settings(milvus_flush_interval_s=10))  # type: ignore[arg-type]
    for step in (0.0, 4.0, 5.9, 0.2, 9.0):  # flushes at 100 and 110.1 (10.1 s later), not in between
        now[0] += step
        store.flush_due()
    assert [call for call, _ in client.calls] == ["flush", "flush"]
    every = TurnClient()
    store = store_with(every, Settings(milvus_flush_interval_s=0))  # type: ignore[arg-type]
    for _ in range(3):
        store.flush_due()
    assert len(every.calls) == 3
