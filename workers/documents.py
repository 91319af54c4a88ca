"""Documents, not only chunks: each document once, ranked by its best chunk, with its best passages.

A collection holds chunks, and a long document has many; a client that searches documents wants each once.
Collapsing happens before the reranker (`workers.retrieval`), so its candidates are distinct documents.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from common.types import Hit, Ranked

Passage = Callable[[Hit, Ranked | None], dict[str, Any]]


def best_per_document(hits: list[Hit]) -> list[Hit]:
    """Each document once, where its best chunk ranked (hits come best first)."""
    first: dict[str, Hit] = {}
    for hit in hits:
        first.setdefault(hit.doc_id, hit)
    return list(first.values())


def grouped(
    best: list[dict[str, Any]], chunks: list[Hit], render: Passage, per_document: int = 3
) -> list[dict[str, Any]]:
    """The result's documents in rank order, each with its score and best passages: the one ranked (and
    reranked) for it first, then its other chunks among those found, in the order they were found
    (`render` makes a passage of a hit, as the result's own passages are made)."""
    more: dict[str, list[Hit]] = defaultdict(list)
    for hit in chunks:
        more[hit.doc_id].append(hit)
    documents = []
    for passage in best:
        doc_id, scores = passage["doc_id"], passage["scores"]
        others = [h for h in more[doc_id] if h.chunk_index != passage["chunk_index"]][: per_document - 1]
        documents.append(
            {
                "doc_id": doc_id,
                "title": passage["title"],
                "metadata": passage["metadata"],
                "score": _score(scores),
                "passages": [passage, *(render(hit, None) for hit in others)],
            }
        )
    return documents


def _score(scores: dict[str, float | None]) -> float | None:
    """What ranked the passage: the reranker's final score, else the fused, BM25 or dense one (a passage
    carries `fusion` and `dense` always, None where its search had none)."""
    return next(
        (scores[name] for name in ("final", "fusion", "bm25", "dense") if scores.get(name) is not None), None
    )
