"""Exact dense search by brute force over the stored vectors: the reference HNSW is measured against.

Vectors are read once per (filter, row count) and kept in this worker process; a write that changes the
count reloads them. Meant for evaluation, not for serving large collections.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from common.filters import MAX_IN_VALUES, render_filter
from common.types import Hit
from store.milvus import OUTPUT_FIELDS, MilvusStore, hit_from_row, milvus_errors

PAGE = 4096


class ExactDense:
    def __init__(self, store: MilvusStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[int, list[str], npt.NDArray[np.float32]]] = {}

    def _vectors(self, conditions: dict[str, Any]) -> tuple[list[str], npt.NDArray[np.float32]]:
        expr = render_filter(conditions)
        count = self.store.count(conditions)
        cached = self._cache.get(expr)
        if cached is None or cached[0] != count:
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
            self._cache[expr] = cached = (count, ids, matrix)
        return cached[1], cached[2]

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
