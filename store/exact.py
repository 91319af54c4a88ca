"""Exact dense search by brute force over the stored vectors: the reference HNSW is measured against.

Vectors are read once per (filter, row count) and kept in this worker process, at most `exact_max_chunks`
of them (least recently used dropped first); a write that changes the count reloads them. Meant for
evaluation, not for serving large collections: a larger collection fails the question with the reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidRequest
from common.filters import MAX_IN_VALUES, render_filter
from common.types import Hit
from store.connection import milvus_errors
from store.milvus import MilvusStore
from store.rows import OUTPUT_FIELDS, hit_from_row

PAGE = 4096


class ExactDense:
    """Holds at most `exact_max_chunks` vectors, all filters together, dropping the least recently used."""

    def __init__(self, store: MilvusStore) -> None:
        self.store = store
        self.max_chunks = store.settings.exact_max_chunks
        self._cache: OrderedDict[str, tuple[int, list[str], npt.NDArray[np.float32]]] = OrderedDict()

    def _vectors(self, conditions: dict[str, Any]) -> tuple[list[str], npt.NDArray[np.float32]]:
        expr = render_filter(conditions)
        count = self.store.count(conditions)
        if count > self.max_chunks:
            raise InvalidRequest(
                f"exact search holds at most {self.max_chunks} chunks (EXACT_MAX_CHUNKS) and this collection "
                f'has {count}: search it without "exact" (HNSW)'
            )
        cached = self._cache.pop(expr, None)
        if cached is None or cached[0] != count:
            self._make_room(count)
            ids: list[str] = []
            vectors: list[list[float]] = []
            with milvus_errors("query_iterator"):
                iterator = self.store.client.query_iterator(
                    self.store.name, batch_size=PAGE, filter=expr, output_fields=["pk", "dense"]
                )
                while page := iterator.next():
                    ids += [row["pk"] for row in page]
                    vectors += [row["dense"] for row in page]
                iterator.close()
            matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1 if ids else 0)
            cached = (count, ids, matrix)
        self._cache[expr] = cached  # the most recently used last
        return cached[1], cached[2]

    def _make_room(self, needed: int) -> None:
        while self._cache and sum(entry[0] for entry in self._cache.values()) + needed > self.max_chunks:
            self._cache.popitem(last=False)

    def search(
        self,
        collection: str,
        query_vectors: npt.NDArray[np.float32],
        limit: int,
        filters: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top `limit` chunks by cosine for each query: one count, one matrix product, one fetch."""
        queries = np.asarray(query_vectors, dtype=np.float32)
        ids, matrix = self._vectors({"collection": collection, **(filters or {})})
        if not ids:  # an empty or unknown collection has nothing to rank
            return [[] for _ in range(len(queries))]
        scores = queries @ matrix.T
        tops = [np.argsort(-row)[:limit] for row in scores]
        wanted = sorted({ids[i] for top in tops for i in top})
        rows: list[dict[str, Any]] = []
        with milvus_errors("query"):
            for start in range(0, len(wanted), MAX_IN_VALUES):  # the filter caps `in` lists
                rows += self.store.client.query(
                    self.store.name,
                    filter=render_filter({"pk": wanted[start : start + MAX_IN_VALUES]}),
                    output_fields=["pk", *OUTPUT_FIELDS],
                )
        by_pk = {row["pk"]: row for row in rows}
        return [
            [
                hit_from_row({"entity": by_pk[ids[i]], "distance": float(row[i])}, query, "dense")
                for i in top
                if ids[i] in by_pk
            ]
            for query, row, top in zip(queries, scores, tops, strict=True)
        ]
