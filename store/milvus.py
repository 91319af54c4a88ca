"""Milvus facade: one physical collection, tenants as a partition key, dense HNSW + BM25 hybrid search."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pymilvus import RRFRanker
from pymilvus.exceptions import MilvusException

from common.errors import DocumentError
from common.faultpoints import fault_point
from common.filters import literal, render_filter
from common.settings import Settings
from common.tracing import traced
from common.types import BM25Analysis, Chunk, Hit, SearchOptions, embedding_text
from store import schema
from store.analysis import analyse
from store.connection import connect, milvus_errors
from store.rows import OUTPUT_FIELDS, bm25_request, chunk_pk, dense_request, hit_from_row
from store.schema import DIMENSION_PROPERTY, MODEL_PROPERTY

QUERY_LIMIT = 16_384  # Milvus caps offset + limit of one query at 16,384
T = TypeVar("T")
WriteTurn = Callable[[], AbstractContextManager[object]]  # held around each write request (common.locks)


class MilvusStore:
    """VectorStore over pymilvus; works with milvus-lite server, standalone, cluster or Zilliz."""

    def __init__(self, settings: Settings, write_turn: WriteTurn = nullcontext) -> None:
        """`write_turn` orders write requests across processes where the server needs it (milvus-lite)."""
        self.settings = settings
        self.write_turn = write_turn
        self.name = settings.milvus_collection
        with milvus_errors("connect"):
            # Keepalive the server accepts, a channel of this store's own, a fresh one after a GOAWAY.
            self.client = connect(settings)
        self._analysis: BM25Analysis | None = None
        self._flushed_at = float("-inf")  # time.monotonic() of this process's last flush

    @property
    def analysis(self) -> BM25Analysis:
        """How the collection's BM25 reads text (read once: it is fixed at creation)."""
        if self._analysis is None:
            with milvus_errors("describe_collection"):
                self._analysis = schema.analysis(self.client, self.name)
        return self._analysis

    @traced("milvus.ensure_collection")
    def ensure_collection(self, model_name: str, dimension: int) -> None:
        """Create the collection once (idempotent, safe when two workers race) and check its model."""
        expected = schema.properties(model_name, dimension)
        with milvus_errors("ensure_collection"):
            if not self.client.has_collection(self.name):
                try:
                    schema.create(self.client, self.name, expected, self.settings)
                except MilvusException:
                    if not self.client.has_collection(self.name):
                        raise
            schema.check(self.client, self.name, expected)
            self.client.load_collection(self.name)

    @traced("milvus.insert")
    def insert(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        hashes: Mapping[str, str],
        seq: int = 0,
    ) -> int:
        """Upsert chunks with their vectors, their document's content hash and the job's `seq`; the caller
        flushes and then prunes the versions this one replaces (`prune`).

        First chunks go last: a version counts as stored once its first chunk is (`document_versions`), so a
        write cut short (a kill between two requests) leaves a version that is never taken for whole.
        """
        rows = [
            self._row(collection, chunk, vector, hashes[chunk.doc_id], seq)
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        rows.sort(key=lambda row: row["chunk_index"] == 0)  # stable: the order is otherwise kept
        with milvus_errors("insert"):
            size = self.settings.milvus_write_batch
            for start in range(0, len(rows), size):
                fault_point(self.settings, "between_upserts" if start else "before_upsert")
                with self.write_turn():
                    self.client.upsert(self.name, rows[start : start + size])
        return len(rows)

    def _row(
        self, collection: str, chunk: Chunk, vector: npt.NDArray[np.float32], content_hash: str, seq: int
    ) -> dict[str, Any]:
        return {
            "content_hash": content_hash,
            "seq": seq,
            "pk": chunk_pk(collection, chunk.doc_id, chunk.index, content_hash),
            "collection": collection,
            "doc_id": chunk.doc_id,
            "chunk_index": chunk.index,
            "title": chunk.title,
            "text": chunk.text,
            "content": analyse(embedding_text(chunk, self.settings.chunk_include_title), self.analysis),
            "metadata": chunk.metadata,
            "dense": vector.astype(np.float32).tolist(),
        }

    @traced("milvus.delete")
    def delete(
        self, collection: str, doc_ids: Sequence[str] | None = None, before_seq: int | None = None
    ) -> int:
        """Every version of these documents (None: the collection) written by jobs before `before_seq`."""
        conditions: dict[str, Any] = {"collection": collection}
        if doc_ids is not None:
            conditions["doc_id"] = list(doc_ids)
        expr = render_filter(conditions)
        if before_seq is not None:
            expr += f" and seq < {int(before_seq)}"
        with milvus_errors("delete"), self.write_turn():
            result = self.client.delete(self.name, filter=expr)
        return int(result.get("delete_count", 0)) if isinstance(result, dict) else len(result)

    @traced("milvus.prune")
    def prune(self, collection: str, keep: Mapping[str, Collection[str]]) -> None:
        """Delete each document's rows of any version but those in `keep` (none kept: all its rows).

        Runs after a batch's write, so a replaced version goes only once its successor is stored, and rows of
        a version whose write was cut short (a kill, a failed request) never outlive the batch that saw them.
        """
        clauses = [
            f"(doc_id == {literal(doc_id)} and content_hash not in [{', '.join(map(literal, sorted(kept)))}])"
            if kept
            else f"doc_id == {literal(doc_id)}"
            for doc_id, kept in keep.items()
        ]
        if not clauses:
            return
        expr = f"collection == {literal(collection)} and ({' or '.join(clauses)})"
        with milvus_errors("prune"), self.write_turn():
            self.client.delete(self.name, filter=expr)

    def exists(self) -> bool:
        """Whether the collection exists, loaded for reads: a restarted Milvus leaves it released."""
        with milvus_errors("has_collection"):
            if not self.client.has_collection(self.name):
                return False
            if "Loaded" not in str(self.client.get_load_state(self.name).get("state", "")):
                self.client.load_collection(self.name)
        return True

    def model_properties(self) -> dict[str, str | None]:
        """The embedding model the stored vectors were built with (None before the first ingest)."""
        if not self.exists():
            return {"embedding_model": None, "dimension": None}
        with milvus_errors("describe_collection"):
            properties = self.client.describe_collection(self.name).get("properties") or {}
        return {
            "embedding_model": properties.get(MODEL_PROPERTY),
            "dimension": properties.get(DIMENSION_PROPERTY),
        }

    @traced("milvus.count")
    def count(self, conditions: dict[str, Any]) -> int:
        """Rows matching `conditions` (rendered by the one filter function)."""
        with milvus_errors("count"):
            rows = self.client.query(self.name, filter=render_filter(conditions), output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    @traced("milvus.document_versions")
    def document_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each document's stored versions, {content hash: seq}, read from first chunks (a version is whole
        once its first chunk is stored). Usually one; two when a kill fell between a write and its prune."""
        if not doc_ids:
            return {}
        expr = render_filter({"collection": collection, "doc_id": list(doc_ids), "chunk_index": 0})
        rows = self._read(
            "query",
            lambda: self.client.query(
                self.name,
                filter=expr,
                output_fields=["doc_id", "content_hash", "seq"],
                limit=QUERY_LIMIT,
                consistency_level="Strong",  # a write from a moment ago must count, or it is embedded twice
            ),
        )
        if len(rows) >= QUERY_LIMIT:  # cut short: a version left out would be taken for absent and pruned
            raise DocumentError("the documents hold too many stored versions to read in one query")
        found: dict[str, dict[str, int]] = {}
        for row in rows:
            found.setdefault(row["doc_id"], {})[row["content_hash"]] = int(row["seq"])
        return found

    @traced("milvus.sample_texts")
    def sample_texts(self, collection: str, limit: int) -> list[str]:
        """Up to `limit` of the collection's chunks as the reranker reads them (title first), for statistics
        such as token IDF: whichever rows Milvus returns first, not a random draw."""
        expr = render_filter({"collection": collection})
        fields = ["doc_id", "chunk_index", "title", "text"]
        rows = self._read(
            "query",
            lambda: self.client.query(
                self.name, filter=expr, output_fields=fields, limit=min(limit, QUERY_LIMIT)
            ),
        )
        return [
            embedding_text(Chunk(r["doc_id"], int(r["chunk_index"]), r["text"], r.get("title") or ""), True)
            for r in rows
        ]

    def _read(self, action: str, call: Callable[[], T]) -> T:
        """A read that survives a Milvus restart, which leaves the collection released: load, read again."""
        with milvus_errors(action):
            try:
                return call()
            except MilvusException as exc:
                if not any(hint in str(exc).lower() for hint in ("released", "not loaded")):
                    raise
                self.client.load_collection(self.name)
                return call()

    @traced("milvus.flush")
    def flush(self) -> None:
        """Seal what was written into segments, which searches read by their indexes; milvus-lite searches
        rows not yet flushed by brute force, rebuilding their arrays for every search (Milvus flushes by
        itself too)."""
        with milvus_errors("flush"), self.write_turn():
            self.client.flush(self.name)
        self._flushed_at = time.monotonic()

    def flush_due(self) -> None:
        """Flush if `milvus_flush_interval_s` has passed since this process last did. A flush per batch made
        a segment per batch, each indexed, then merged and indexed again, on the cores the model needs:
        flushing every 5 batches or more cost milvus-lite about a fifth less CPU, every 2-4 more than every
        batch (its compaction merges the same rows again; docs/benchmarks.md). The rows are durable and
        readable before."""
        if time.monotonic() - self._flushed_at >= self.settings.milvus_flush_interval_s:
            self.flush()

    @traced("milvus.search")
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
        """Hits per query: dense HNSW, BM25, or hybrid fused by RRF in Milvus; one request for all queries."""
        if not query_texts:
            return []
        opts = options or self.default_options()
        expr = render_filter({"collection": collection, **(filters or {})})
        # A question of stop words only analyses to nothing; its raw words match no stem, and no Milvus
        # is asked to search for an empty text.
        bm25_texts = [analyse(text, self.analysis) or text for text in query_texts]
        if opts.mode == "bm25":
            request = bm25_request(bm25_texts, max(limit, opts.bm25_candidates), expr)
        else:
            request = dense_request(query_vectors, max(limit, opts.dense_candidates), opts.ef, expr)

        def run() -> Any:
            if opts.mode == "hybrid":
                bm25 = bm25_request(bm25_texts, max(limit, opts.bm25_candidates), expr)
                ranker = RRFRanker(opts.rrf_k)
                return self.client.hybrid_search(
                    self.name, [request, bm25], ranker, limit=limit, output_fields=OUTPUT_FIELDS
                )
            return self.client.search(
                self.name,
                data=request.data,
                anns_field=request.anns_field,
                search_params=request.param,
                limit=limit,
                filter=expr,
                output_fields=OUTPUT_FIELDS,
            )

        rows = list(self._read("search", run) or [])
        rows += [[] for _ in range(len(query_texts) - len(rows))]
        return [
            [hit_from_row(raw, vector, opts.mode) for raw in row]
            for row, vector in zip(rows, query_vectors, strict=True)
        ]

    def default_options(self) -> SearchOptions:
        s = self.settings
        return SearchOptions(
            ef=s.search_ef,
            rrf_k=s.rrf_k,
            dense_candidates=s.dense_candidates,
            bm25_candidates=s.bm25_candidates,
        )

    def ping(self) -> str:
        with milvus_errors("ping"):
            return str(self.client.get_server_version())
