"""Answer a question: embed it, hybrid-search Milvus, rerank the head of the candidates."""

from __future__ import annotations

import time
from typing import Any

from common.settings import Settings
from common.types import Chunk, Embedder, Hit, Ranked, Reranker, VectorStore
from ingestion.chunking import embedding_text


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _passage(hit: Hit, ranked: Ranked | None) -> dict[str, Any]:
    scores: dict[str, float | None] = {"fusion": hit.fusion_score, "dense": hit.dense_score}
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
    limit = max(top_k, settings.rerank_candidates) if use_reranker else top_k
    start = time.perf_counter()
    hits = store.search(collection, question, vector, limit, filters)
    timings["search_ms"] = _ms(start)

    ranked: list[tuple[Hit, Ranked | None]] = [(hit, None) for hit in hits]
    if use_reranker is not None and hits:
        start = time.perf_counter()
        ranked = rerank_hits(question, hits, use_reranker, settings.rerank_candidates)
        timings["rerank_ms"] = _ms(start)
    return {
        "collection": collection,
        "reranker": use_reranker.name if use_reranker else None,
        "passages": [_passage(hit, r) for hit, r in ranked[:top_k]],
        "timings": timings,
    }
