"""What goes into the collection and comes out of it: row keys, search requests, hits.

Pure functions, kept out of the facade (`store.milvus`) that sends the requests, so that the exact search
(`store.exact`), the chaos checker and the tests build and read rows the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pymilvus import AnnSearchRequest

from common.types import Hit

OUTPUT_FIELDS = ["doc_id", "chunk_index", "title", "text", "metadata", "dense"]


def chunk_pk(collection: str, doc_id: str, index: int, version: str) -> str:
    """Deterministic per version (the document's content hash): a retried write upserts the same rows, and a
    new version is written beside the old one, which is removed only once the new one is whole."""
    return hashlib.sha256(f"{collection}\x00{doc_id}\x00{index}\x00{version}".encode()).hexdigest()[:32]


def dense_request(vectors: npt.NDArray[np.float32], limit: int, ef: int, expr: str) -> AnnSearchRequest:
    """The HNSW leg of a search: cosine over the `dense` field, `ef` raised to the limit where it is below."""
    return AnnSearchRequest(
        data=np.asarray(vectors, dtype=np.float32).tolist(),
        anns_field="dense",
        param={"metric_type": "COSINE", "params": {"ef": max(ef, limit)}},  # HNSW needs ef >= limit
        limit=limit,
        expr=expr,
    )


def bm25_request(texts: Sequence[str], limit: int, expr: str) -> AnnSearchRequest:
    """The BM25 leg: texts already analysed as the collection's analysis reads them (store.analysis)."""
    return AnnSearchRequest(
        data=list(texts), anns_field="sparse", param={"metric_type": "BM25"}, limit=limit, expr=expr
    )


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
