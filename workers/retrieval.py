"""Answer a question: embed it, hybrid-search Milvus, rerank the head of the candidates."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from common.settings import Settings
from common.types import Chunk, Embedder, Hit, Ranked, Reranker, SearchOptions, VectorStore
from ingestion.chunking import embedding_text


class ExactSearch(Protocol):
    def search(
        self, collection: str, query_vector: npt.NDArray[np.float32], limit: int, filters: dict[str, Any]
    ) -> list[Hit]: ...


def search_options(settings: Settings, overrides: dict[str, Any]) -> SearchOptions:
    """Settings' defaults with a request's stage switches on top."""
    return SearchOptions(
        mode=overrides.get("mode", "hybrid"),
        ef=int(overrides.get("ef", settings.search_ef)),
        rrf_k=int(overrides.get("rrf_k", settings.rrf_k)),
        dense_candidates=settings.dense_candidates,
        bm25_candidates=settings.bm25_candidates,
        exact=bool(overrides.get("exact", False)),
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _passage(hit: Hit, ranked: Ranked | None) -> dict[str, Any]:
    scores: dict[str, float | None] = {"fusion": hit.fusion_score, "dense": hit.dense_score}
    if hit.bm25_score is not None:
        scores["bm25"] = hit.bm25_score
    if ranked is not None:
        scores["rerank"] = ranked.model_score
        scores["final"] = ranked.score
    return {
        "doc_id": hit.doc_id,
        "chunk_index": hit.chunk_index,
        "title": hit.title,
        "text": hit.text,
        "metadata": hit.metadata,
        "scores": scores,
    }


def rerank_hits(
    question: str, hits: list[Hit], reranker: Reranker, candidates: int
) -> list[tuple[Hit, Ranked | None]]:
    """Rerank the first `candidates` hits; the rest keep their fused order behind them."""
    head, tail = hits[:candidates], hits[candidates:]
    passages = [embedding_text(Chunk(hit.doc_id, hit.chunk_index, hit.text, hit.title), True) for hit in head]
    ranked = reranker.rerank(question, passages, top_k=len(head))
    reordered: list[tuple[Hit, Ranked | None]] = [(head[r.index], r) for r in ranked]
    return reordered + [(hit, None) for hit in tail]


def answer(
    question: str,
    *,
    collection: str,
    top_k: int,
    rerank: bool,
    filters: dict[str, Any],
    options: dict[str, Any],
    exact: ExactSearch,
    embedder: Embedder,
    store: VectorStore,
    reranker: Reranker | None,
    settings: Settings,
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    vector = embedder.embed_queries([question])[0]
    timings["embed_ms"] = _ms(start)

    use_reranker = reranker if rerank else None
    candidates = int(options.get("candidates", settings.rerank_candidates))
    limit = max(top_k, candidates) if use_reranker else top_k
    search = search_options(settings, options)
    start = time.perf_counter()
    if search.exact:
        hits = exact.search(collection, vector, limit, filters)
    else:
        hits = store.search(collection, question, vector, limit, filters, options=search)
    timings["search_ms"] = _ms(start)

    ranked: list[tuple[Hit, Ranked | None]] = [(hit, None) for hit in hits]
    if use_reranker is not None and hits:
        start = time.perf_counter()
        ranked = rerank_hits(question, hits, use_reranker, candidates)
        timings["rerank_ms"] = _ms(start)
    return {
        "collection": collection,
        "mode": "exact-dense" if search.exact else search.mode,
        "reranker": use_reranker.name if use_reranker else None,
        "passages": [_passage(hit, r) for hit, r in ranked[:top_k]],
        "timings": timings,
    }
