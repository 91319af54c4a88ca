"""Retrieval metrics with the BEIR / pytrec_eval (trec_eval) definitions, kept dependency-free.

Conventions, so numbers are comparable with BEIR runs:
- a ranking is a list of document ids, best first; duplicates (several chunks of one document)
  are removed keeping the first occurrence *before* cutting at k;
- a judgment with relevance <= 0 is not relevant; queries with no relevant document are skipped;
- nDCG uses gain = rel (trec_eval's ndcg_cut, not 2^rel - 1) and discount log2(rank + 1) with
  1-based ranks; the ideal DCG sorts the query's judged relevance values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]
"""query id -> {document id -> graded relevance}."""

Run = Mapping[str, Sequence[str]]
"""query id -> ranked document ids, best first (may contain duplicates)."""


def dedupe(doc_ids: Iterable[str]) -> list[str]:
    """Collapse chunk-level hits to documents: a document ranks at its best chunk's position."""
    seen: set[str] = set()
    out: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in seen:
            seen.add(doc_id)
            out.append(doc_id)
    return out


def _relevant(rels: Mapping[str, int]) -> set[str]:
    """Relevant ids of one query; a score of 0 (or below) is a judged non-relevant document."""
    return {doc_id for doc_id, rel in rels.items() if rel > 0}


def _dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain of gains listed in rank order (rank 1 is discounted by log2 2 = 1)."""
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains, as trec_eval's ndcg_cut.k; 0.0 if nothing is relevant."""
    ideal = _dcg(sorted((r for r in rels.values() if r > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    top = dedupe(ranking)[:k]
    return _dcg(max(rels.get(doc_id, 0), 0) for doc_id in top) / ideal


def recall_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Share of the query's relevant documents found in the top k (trec_eval recall.k)."""
    relevant = _relevant(rels)
    if not relevant:
        return 0.0
    return len(relevant.intersection(dedupe(ranking)[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top k, else 0 (BEIR's MRR@k)."""
    relevant = _relevant(rels)
    for rank, doc_id in enumerate(dedupe(ranking)[:k], start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


METRICS: dict[str, Callable[[Sequence[str], Mapping[str, int]], float]] = {
    "ndcg@10": lambda ranking, rels: ndcg_at_k(ranking, rels, 10),
    "recall@10": lambda ranking, rels: recall_at_k(ranking, rels, 10),
    "recall@100": lambda ranking, rels: recall_at_k(ranking, rels, 100),
    "mrr@10": lambda ranking, rels: mrr_at_k(ranking, rels, 10),
}
"""The metrics the harness reports, by name, each as a function of (ranking, relevance map)."""


def evaluate(run: Run, qrels: Qrels) -> tuple[dict[str, float], int]:
    """Mean of each metric over the judged queries that have a relevant document.

    A judged query absent from `run` (e.g. its request failed) counts as an empty ranking, so a
    failure lowers the score instead of silently shrinking the denominator. Returns the means
    (fractions in [0, 1]) and the number of queries averaged.
    """
    qids = [qid for qid, rels in qrels.items() if _relevant(rels)]
    if not qids:
        return {name: 0.0 for name in METRICS}, 0
    totals = dict.fromkeys(METRICS, 0.0)
    for qid in qids:
        ranking = run.get(qid, ())
        for name, metric in METRICS.items():
            totals[name] += metric(ranking, qrels[qid])
    return {name: total / len(qids) for name, total in totals.items()}, len(qids)


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation, as numpy's default; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
