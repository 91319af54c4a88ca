"""Answer questions: embed them, search Milvus, rerank the head of the candidates, many at a time.

A batch shares each model call: one forward pass embeds every question, one hybrid search serves
every question with the same collection, filters and stage switches, and one reranker call scores
the candidates of every question that uses that backend. A failure fails only the questions it hit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from common import metrics, tracing
from common.contracts import StageOptions
from common.isolation import isolate
from common.retries import RETRIABLE_ERRORS
from common.settings import Settings
from common.types import Chunk, Embedder, Hit, Ranked, Reranker, SearchOptions, VectorStore, embedding_text
from workers.documents import best_per_document, grouped
from workers.token_weights import Idf


class ExactSearch(Protocol):
    def search(
        self,
        collection: str,
        query_vectors: npt.NDArray[np.float32],
        limit: int,
        filters: dict[str, Any] | None = None,
    ) -> list[list[Hit]]: ...


@dataclass(frozen=True)
class Question:
    """One ask job's input, as the task received it."""

    text: str
    collection: str
    top_k: int
    reranker: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # `StageOptions` as JSON: checked by `stages`
    trace: Any = field(default=None, compare=False)  # the task's trace context (`common.tracing.current`)

    @cached_property
    def stages(self) -> StageOptions:
        """The stage switches, checked once per question; ValidationError (a ValueError) for malformed
        ones, raised again on each read."""
        return StageOptions.model_validate(self.options)


AnswerOrError = dict[str, Any] | Exception
Vector = npt.NDArray[np.float32]
R = TypeVar("R")


def search_options(settings: Settings, stages: StageOptions) -> SearchOptions:
    """Settings' defaults with a request's stage switches on top."""
    return SearchOptions(
        mode=stages.mode or "hybrid",
        ef=stages.ef or settings.search_ef,
        rrf_k=stages.rrf_k or settings.rrf_k,
        dense_candidates=settings.dense_candidates,
        bm25_candidates=settings.bm25_candidates,
        exact=stages.exact,
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


def passage_text(hit: Hit) -> str:
    """What the reranker reads: the same title-prefixed text the chunk was embedded from."""
    return embedding_text(Chunk(hit.doc_id, hit.chunk_index, hit.text, hit.title), True)


def reorder(hits: list[Hit], candidates: int, ranking: list[Ranked]) -> list[tuple[Hit, Ranked | None]]:
    """The reranked head first, then the rest of the candidates in their fused order."""
    head, tail = hits[:candidates], hits[candidates:]
    return [(head[r.index], r) for r in ranking] + [(hit, None) for hit in tail]


def _each(
    indices: Sequence[int],
    run: Callable[[Sequence[int]], Sequence[R]],
    outcomes: dict[int, AnswerOrError],
    what: str,
) -> dict[int, R]:
    """`run` over the questions at `indices` as one call; the results of those that succeeded, by index.

    A question that makes the call fail fails alone (`isolate` narrows it down) with its own exception in
    `outcomes`; an outage (Milvus unreachable) fails all of them alike, unsplit, and their tasks retry.
    """
    try:
        results: Sequence[R | Exception] = isolate(indices, run, what=what)
    except RETRIABLE_ERRORS as exc:
        results = [exc] * len(indices)
    good: dict[int, R] = {}
    for i, result in zip(indices, results, strict=True):
        if isinstance(result, Exception):
            outcomes[i] = result
        else:
            good[i] = result
    return good


class Retriever:
    """The question-answering pipeline over one worker's models and Milvus client."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        store: VectorStore,
        exact: ExactSearch,
        rerankers: Callable[[str], Reranker],
        *,
        idf: Callable[[str], Idf | None] | None = None,
    ) -> None:
        self.settings = settings
        self._idf = idf
        self._embedder = embedder
        self._store = store
        self._exact = exact
        self._rerankers = rerankers

    def answer(self, question: Question) -> dict[str, Any]:
        """One question alone (a batch of one); raises what the batch reported for it."""
        outcome = self.answer_batch([question])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def answer_batch(self, questions: Sequence[Question]) -> list[AnswerOrError]:
        """One result or one exception per question, in the order given."""
        outcomes: dict[int, AnswerOrError] = {}
        timings: dict[str, float] = {"batch_size": len(questions)}
        options = self._options(questions, outcomes)
        traces = [question.trace for question in questions]
        start = time.perf_counter()
        with tracing.stage("embed", traces):
            vectors = self._embed(questions, list(options), outcomes)
        timings["embed_ms"] = _ms(start)
        start = time.perf_counter()
        with tracing.stage("search", traces):
            hits = self._search(questions, options, vectors, outcomes)
        chunks = dict(hits)  # every chunk found: a grouped result lists each document's best passages
        hits = {i: best_per_document(h) if self.per_document(questions[i]) else h for i, h in hits.items()}
        timings["search_ms"] = _ms(start)
        start = time.perf_counter()
        reranking = any(q.reranker for q in questions)
        with tracing.stage("rerank", traces if reranking else []):
            ranked = self._rerank(questions, hits, outcomes)
        if reranking:
            timings["rerank_ms"] = _ms(start)
        metrics.emit(metrics.batch("questions", len(questions)), *metrics.stage_timings("ask", timings))
        for i, question in enumerate(questions):
            if i not in outcomes:
                result = self._result(question, options[i], ranked[i], timings)
                if self.per_document(question):
                    result["documents"] = grouped(result["passages"], chunks[i], _passage)
                outcomes[i] = result
        return [outcomes[i] for i in range(len(questions))]

    def limit(self, question: Question) -> int:
        """How many hits to fetch: enough for the reranker's candidates when it runs; with `documents`,
        every fused candidate (several chunks of a document collapse into one)."""
        wanted = max(question.top_k, self.candidates(question)) if question.reranker else question.top_k
        if self.per_document(question):
            return max(wanted, self.settings.dense_candidates, self.settings.bm25_candidates)
        return wanted

    def per_document(self, question: Question) -> bool:
        """Each document once, at its best chunk, before the reranker (`documents` switch)."""
        documents = question.stages.documents
        return self.settings.search_documents if documents is None else documents

    def _idf_of(self, question: Question) -> Idf | None:
        """The question's collection's token IDF when its `idf` switch is on (MaxSim weighs tokens by it)."""
        idf = question.stages.idf
        on = self.settings.rerank_idf if idf is None else idf
        return self._idf(question.collection) if on and self._idf is not None else None

    def candidates(self, question: Question) -> int:
        return question.stages.candidates or self.settings.rerank_candidates

    def _options(
        self, questions: Sequence[Question], outcomes: dict[int, AnswerOrError]
    ) -> dict[int, SearchOptions]:
        """Each question's search options; malformed switches fail their own question only."""
        options = {}
        for i, question in enumerate(questions):
            try:
                options[i] = search_options(self.settings, question.stages)
            except (TypeError, ValueError) as exc:
                outcomes[i] = exc
        return options

    def _embed(
        self, questions: Sequence[Question], indices: list[int], outcomes: dict[int, AnswerOrError]
    ) -> dict[int, Vector]:
        """One forward pass for the batch; a question the tokenizer or model refuses fails alone."""

        def run(part: Sequence[int]) -> list[Vector]:
            return list(self._embedder.embed_queries([questions[i].text for i in part]))

        return _each(indices, run, outcomes, "question embedding")

    def _search(
        self,
        questions: Sequence[Question],
        options: dict[int, SearchOptions],
        vectors: dict[int, Vector],
        outcomes: dict[int, AnswerOrError],
    ) -> dict[int, list[Hit]]:
        """One store call per group of questions that share collection, filters and search options; a
        failure is narrowed down to the questions that caused it."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i in vectors:
            q = questions[i]
            groups[repr((q.collection, sorted(q.filters.items()), options[i], self.limit(q)))].append(i)
        hits: dict[int, list[Hit]] = {}
        for members in groups.values():
            first, opts = questions[members[0]], options[members[0]]

            def run(
                part: Sequence[int], first: Question = first, opts: SearchOptions = opts
            ) -> list[list[Hit]]:
                matrix = np.stack([vectors[i] for i in part])
                limit, filters = self.limit(first), first.filters
                if opts.exact:
                    return self._exact.search(first.collection, matrix, limit, filters)
                texts = [questions[i].text for i in part]
                return self._store.search(first.collection, texts, matrix, limit, filters, options=opts)

            hits.update(_each(members, run, outcomes, "search"))
        return hits

    def _rerank(
        self, questions: Sequence[Question], hits: dict[int, list[Hit]], outcomes: dict[int, AnswerOrError]
    ) -> dict[int, list[tuple[Hit, Ranked | None]]]:
        """One reranker call per backend over the candidate heads of all its questions."""
        ranked: dict[int, list[tuple[Hit, Ranked | None]]] = {
            i: [(hit, None) for hit in found] for i, found in hits.items()
        }
        by_backend: dict[str, list[int]] = defaultdict(list)
        for i, found in hits.items():
            backend = questions[i].reranker
            if backend and found:
                by_backend[backend].append(i)
        for backend, members in by_backend.items():
            try:
                reranker = self._rerankers(backend)
            except Exception as exc:  # a model that cannot load fails its questions, not by halves
                outcomes.update({i: exc for i in members})
                continue

            def run(part: Sequence[int], reranker: Reranker = reranker) -> list[list[Ranked]]:
                items = [
                    (questions[i].text, [passage_text(h) for h in hits[i][: self.candidates(questions[i])]])
                    for i in part
                ]
                return reranker.rerank_batch(items, [self._idf_of(questions[i]) for i in part])

            rankings = _each(members, run, outcomes, "rerank")
            for i, ranking in rankings.items():
                ranked[i] = reorder(hits[i], self.candidates(questions[i]), ranking)
        return ranked

    def _result(
        self,
        question: Question,
        opts: SearchOptions,
        ranked: list[tuple[Hit, Ranked | None]],
        timings: dict[str, float],
    ) -> dict[str, Any]:
        return {
            "collection": question.collection,
            "mode": "exact-dense" if opts.exact else opts.mode,
            "reranker": self._rerankers(question.reranker).name if question.reranker else None,
            "passages": [_passage(hit, r) for hit, r in ranked[: question.top_k]],
            "timings": dict(timings),
        }
