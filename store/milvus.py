"""Milvus facade: one physical collection, tenants as a partition key, dense HNSW + BM25 hybrid search."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, RRFRanker
from pymilvus.exceptions import MilvusException

from common.errors import Conflict, ServiceUnavailable
from common.fields import CHUNK_FIELD_BYTES, DOC_ID_FIELD_BYTES, TITLE_FIELD_BYTES
from common.filters import render_filter
from common.settings import Settings
from common.types import Chunk, Hit, SearchOptions
from ingestion.chunking import embedding_text

OUTPUT_FIELDS = ["doc_id", "chunk_index", "title", "text", "metadata", "dense"]
WRITE_BATCH = 1000
MODEL_PROPERTY = "quarry.embedding_model"
DIMENSION_PROPERTY = "quarry.dimension"
SCHEMA_PROPERTY = "quarry.schema"
SCHEMA_VERSION = "2"
QUERY_LIMIT = 16_384  # Milvus caps offset + limit of one query at 16,384
T = TypeVar("T")
# Reconnect within a second once Milvus is back: gRPC's reconnect backoff otherwise grows towards two
# minutes during an outage, and every retry of a task would fail long after Milvus returned.
GRPC_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 250, "grpc.max_reconnect_backoff_ms": 1000}
_UNAVAILABLE_HINTS = ("connect", "unavailable", "deadline", "timeout", "timed out", "not ready", "released")


def chunk_pk(collection: str, doc_id: str, index: int) -> str:
    """Deterministic id, so a retried or repeated write upserts instead of duplicating."""
    return hashlib.sha256(f"{collection}\x00{doc_id}\x00{index}".encode()).hexdigest()[:32]


@contextmanager
def milvus_errors(action: str) -> Iterator[None]:
    """Map pymilvus failures to domain errors; only unreachability is retriable."""
    try:
        yield
    except MilvusException as exc:
        message = str(exc)
        if any(hint in message.lower() for hint in _UNAVAILABLE_HINTS):
            raise ServiceUnavailable(f"Milvus unavailable during {action}: {message}") from exc
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise ServiceUnavailable(f"Milvus unavailable during {action}: {exc}") from exc


class MilvusStore:
    """VectorStore over pymilvus; works with milvus-lite server, standalone, cluster or Zilliz."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.milvus_collection
        with milvus_errors("connect"):
            self.client = MilvusClient(
                uri=settings.milvus_uri,
                token=settings.milvus_token or "",
                timeout=settings.milvus_timeout_s,
                grpc_options=GRPC_OPTIONS,
            )

    def ensure_collection(self, model_name: str, dimension: int) -> None:
        """Create the collection once (idempotent, safe when two workers race) and check its model."""
        expected = {
            MODEL_PROPERTY: model_name,
            DIMENSION_PROPERTY: str(dimension),
            SCHEMA_PROPERTY: SCHEMA_VERSION,
        }
        with milvus_errors("ensure_collection"):
            if not self.client.has_collection(self.name):
                try:
                    self._create(dimension, expected)
                except MilvusException:
                    if not self.client.has_collection(self.name):
                        raise
            self._check_properties(expected)
            self.client.load_collection(self.name)

    def _create(self, dimension: int, properties: dict[str, str]) -> None:
        # Properties, not the description: milvus-lite does not keep descriptions.
        self.client.create_collection(
            self.name,
            schema=self._schema(dimension),
            index_params=self._index_params(),
            properties=properties,
        )

    def _schema(self, dimension: int) -> Any:
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("collection", DataType.VARCHAR, max_length=64, is_partition_key=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_FIELD_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("title", DataType.VARCHAR, max_length=TITLE_FIELD_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=CHUNK_FIELD_BYTES)
        analyzer = {"type": "standard"}
        schema.add_field(
            "content",
            DataType.VARCHAR,
            max_length=CHUNK_FIELD_BYTES,
            enable_analyzer=True,
            analyzer_params=analyzer,
        )
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_function(
            Function(
                name="content_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["content"],
                output_field_names=["sparse"],
            )
        )
        return schema

    def _index_params(self) -> Any:
        s = self.settings
        params = self.client.prepare_index_params()
        # Nested "params": milvus-lite silently ignores M/efConstruction given flat.
        params.add_index(
            field_name="dense",
            index_type="HNSW",
            metric_type="COSINE",
            params={"params": {"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction}},
        )
        params.add_index(
            field_name="sparse",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"bm25_k1": s.bm25_k1, "bm25_b": s.bm25_b},
        )
        return params

    def _check_properties(self, expected: dict[str, str]) -> None:
        properties = self.client.describe_collection(self.name).get("properties") or {}
        built = {key: properties.get(key) for key in expected}
        if built != expected:
            raise Conflict(
                f"Milvus collection {self.name!r} was built with {built}; this worker needs {expected}. "
                "Ingest into a new MILVUS_COLLECTION, or set EMBEDDING_MODEL back."
            )

    def insert(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        hashes: Mapping[str, str],
    ) -> int:
        """Upsert chunks with their vectors and their document's content hash; the caller flushes.

        First chunks go last: dedup reads a document's hash from its first chunk, so a write cut short
        (Milvus down between two requests) never leaves a document that looks stored but lacks chunks.
        """
        rows = [
            self._row(collection, chunk, vector, hashes[chunk.doc_id])
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        rows.sort(key=lambda row: row["chunk_index"] == 0)  # stable: the order is otherwise kept
        with milvus_errors("insert"):
            for start in range(0, len(rows), WRITE_BATCH):
                self.client.upsert(self.name, rows[start : start + WRITE_BATCH])
        return len(rows)

    def _row(
        self, collection: str, chunk: Chunk, vector: npt.NDArray[np.float32], content_hash: str
    ) -> dict[str, Any]:
        return {
            "content_hash": content_hash,
            "pk": chunk_pk(collection, chunk.doc_id, chunk.index),
            "collection": collection,
            "doc_id": chunk.doc_id,
            "chunk_index": chunk.index,
            "title": chunk.title,
            "text": chunk.text,
            "content": embedding_text(chunk, self.settings.chunk_include_title),
            "metadata": chunk.metadata,
            "dense": vector.astype(np.float32).tolist(),
        }

    def delete(self, collection: str, doc_ids: Sequence[str] | None = None) -> int:
        conditions: dict[str, Any] = {"collection": collection}
        if doc_ids is not None:
            conditions["doc_id"] = list(doc_ids)
        with milvus_errors("delete"):
            result = self.client.delete(self.name, filter=render_filter(conditions))
        return int(result.get("delete_count", 0)) if isinstance(result, dict) else len(result)

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

    def count(self, conditions: dict[str, Any]) -> int:
        """Rows matching `conditions` (rendered by the one filter function)."""
        with milvus_errors("count"):
            rows = self.client.query(self.name, filter=render_filter(conditions), output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def document_hashes(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        """Content hash of each stored document (read from its first chunk): what dedup compares."""
        if not doc_ids:
            return {}
        expr = render_filter({"collection": collection, "doc_id": list(doc_ids), "chunk_index": 0})
        rows = self._read(
            "query",
            lambda: self.client.query(
                self.name,
                filter=expr,
                output_fields=["doc_id", "content_hash"],
                limit=len(doc_ids),
                consistency_level="Strong",  # a write from a moment ago must count, or it is embedded twice
            ),
        )
        return {row["doc_id"]: row["content_hash"] for row in rows}

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

    def flush(self) -> None:
        """Milvus-lite searches unflushed rows very slowly: flush once at the end of each write task."""
        with milvus_errors("flush"):
            self.client.flush(self.name)

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
        if opts.mode == "bm25":
            request = self._bm25_request(query_texts, max(limit, opts.bm25_candidates), expr)
        else:
            request = self._dense_request(query_vectors, max(limit, opts.dense_candidates), opts.ef, expr)

        def run() -> Any:
            if opts.mode == "hybrid":
                bm25 = self._bm25_request(query_texts, max(limit, opts.bm25_candidates), expr)
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

    @staticmethod
    def _dense_request(vectors: npt.NDArray[np.float32], limit: int, ef: int, expr: str) -> AnnSearchRequest:
        return AnnSearchRequest(
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            anns_field="dense",
            param={"metric_type": "COSINE", "params": {"ef": max(ef, limit)}},  # HNSW needs ef >= limit
            limit=limit,
            expr=expr,
        )

    @staticmethod
    def _bm25_request(texts: Sequence[str], limit: int, expr: str) -> AnnSearchRequest:
        return AnnSearchRequest(
            data=list(texts), anns_field="sparse", param={"metric_type": "BM25"}, limit=limit, expr=expr
        )

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


def hit_from_row(raw: dict[str, Any], query_vector: npt.NDArray[np.float32], mode: str) -> Hit:
    entity = raw.get("entity", raw)
    vector = np.asarray(entity.get("dense", []), dtype=np.float32)
    dense_score = float(vector @ query_vector) if vector.size == query_vector.size else None
    score = float(raw["distance"])
    return Hit(
        doc_id=entity["doc_id"],
        chunk_index=int(entity["chunk_index"]),
        text=entity["text"],
        title=entity.get("title") or "",
        metadata=entity.get("metadata") or {},
        fusion_score=score if mode == "hybrid" else None,
        dense_score=dense_score,
        bm25_score=abs(score) if mode == "bm25" else None,
    )
