"""Read-only views of what is stored: counts, document lists and single documents, per collection.

Milvus is the source of truth (a document exists exactly when its chunks do), so these pages can never
disagree with search. Documents are represented by their first chunk (chunk_index 0).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from pymilvus.exceptions import MilvusException

from common.errors import ServiceUnavailable
from common.filters import render_filter
from store.connection import milvus_errors
from store.milvus import QUERY_LIMIT, MilvusStore

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def answered(read: Callable[P, R]) -> Callable[P, R]:
    """A read Milvus fails for its own reasons is a 503, never a 500: the request was fine, the store was
    not (milvus-lite, restarted under load, has answered `has_collection` with the path of a data file it
    could not read). Its text stays in the log: it names server paths."""

    @functools.wraps(read)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return read(*args, **kwargs)
        except MilvusException as exc:
            log.warning("Milvus failed a read (%s): %s", read.__name__, exc)
            raise ServiceUnavailable(f"Milvus failed to answer ({read.__name__}); retry") from exc

    return call


DOC_FIELDS = ["doc_id", "title", "metadata", "content_hash"]
CHUNK_FIELDS = ["chunk_index", "text"]


class Catalog:
    def __init__(self, store: MilvusStore) -> None:
        self.store = store

    @answered
    def model(self) -> dict[str, str | None]:
        """The embedding model the stored vectors were built with."""
        return self.store.model_properties()

    @answered
    def counts(self, collection: str) -> dict[str, int]:
        if not self.store.exists():  # no worker has created it yet: nothing is stored
            return {"documents": 0, "chunks": 0}
        return {
            "documents": self.store.count({"collection": collection, "chunk_index": 0}),
            "chunks": self.store.count({"collection": collection}),
        }

    @answered
    def documents(self, collection: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of documents; offset + limit must stay within Milvus's query window."""
        limit = max(0, min(limit, QUERY_LIMIT - offset))
        if limit == 0 or not self.store.exists():
            return []
        with milvus_errors("query"):
            rows = self.store.client.query(
                self.store.name,
                filter=render_filter({"collection": collection, "chunk_index": 0}),
                output_fields=DOC_FIELDS,
                offset=offset,
                limit=limit,
            )
        return [{field: row.get(field) for field in DOC_FIELDS} for row in rows]

    @answered
    def document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """A document with all its chunks in order, or None."""
        if not self.store.exists():
            return None
        with milvus_errors("query"):
            rows = self.store.client.query(
                self.store.name,
                filter=render_filter({"collection": collection, "doc_id": doc_id}),
                output_fields=DOC_FIELDS + CHUNK_FIELDS + ["seq"],
                limit=QUERY_LIMIT,
            )
        rows = current_version(rows)
        if not rows:
            return None
        rows.sort(key=lambda row: row["chunk_index"])
        head = {field: rows[0].get(field) for field in DOC_FIELDS}
        head["chunks"] = [{field: row[field] for field in CHUNK_FIELDS} for row in rows]
        return head


def current_version(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a document's current version: whole (its first chunk is stored) and written by the
    latest-accepted job. For the moment between a replace's write and its prune, and for what a write cut
    short leaves until its document is written again, a reader still sees one whole version."""
    whole = {row["content_hash"]: row["seq"] for row in rows if row["chunk_index"] == 0}
    if not whole:
        return []
    newest = max(whole, key=lambda digest: whole[digest])
    return [row for row in rows if row["content_hash"] == newest]
