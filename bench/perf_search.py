"""HNSW against exact search: recall@10 and search latency at several `ef` values, in process.

Recall@10 is the share of the exact (brute-force) top 10 chunks that HNSW also returns in its top 10,
averaged over the questions. Latency is one dense search call per question against the live Milvus.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from common.types import SearchOptions
from workers.runtime import Runtime

K = 10


def run(rt: Runtime, collection: str, questions: Sequence[str], efs: Sequence[int]) -> dict[str, Any]:
    """The worker's own embedder, Milvus client and exact reference (its Runtime)."""
    settings, store = rt.settings, rt.store
    vectors = rt.embedder.embed_queries(questions)
    truth = [{(h.doc_id, h.chunk_index) for h in hits} for hits in rt.exact.search(collection, vectors, K)]
    rows = []
    for ef in efs:
        options = SearchOptions(
            mode="dense", ef=ef, rrf_k=settings.rrf_k, dense_candidates=K, bm25_candidates=K
        )
        recalls, times = [], []
        for text, vector, expected in zip(questions, vectors, truth, strict=True):
            start = time.perf_counter()
            hits = store.search(collection, [text], vector[None, :], K, options=options)[0]
            times.append((time.perf_counter() - start) * 1000)
            recalls.append(len(expected & {(h.doc_id, h.chunk_index) for h in hits}) / max(1, len(expected)))
        rows.append(
            {
                "ef": ef,
                "default": ef == settings.search_ef,
                "recall_at_10": statistics.fmean(recalls),
                "p50_ms": statistics.median(times),
            }
        )
    return {"collection": collection, "questions": len(questions), "levels": rows}
