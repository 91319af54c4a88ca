"""The warm-up: models built and run where tasks will use them (the micro-batcher's thread for questions),
what each kind of worker warms, and a failure that leaves the worker not ready instead of crashing it."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from celery.concurrency.prefork import TaskPool
from celery.concurrency.thread import TaskPool as ThreadPool

from common.types import Tokens
from workers.batcher import MicroBatcher
from workers.warmup import WARM_COLLECTION, WARM_RERANKS, WARM_SHAPE_GROUPS, WarmChildren, is_prefork, warm


class FakeEmbedder:
    def __init__(self, calls: list[tuple[str, str]]) -> None:
        self.calls = calls

    def _seen(self, what: str) -> None:
        self.calls.append((what, threading.current_thread().name))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        self._seen("documents")
        return np.ones((len(texts), 4), dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        self._seen("queries")
        return np.ones((len(texts), 4), dtype=np.float32)

    splits_at_word_edges = False

    def tokens(self, text: str) -> Tokens:
        self._seen("spans")
        return Tokens([(0, len(text))])


class FakeRuntime:
    """What `warm` touches of a Runtime, recording which thread touched it."""

    def __init__(self, backend: str = "maxsim", store_fails: bool = False, load_fails: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.settings = SimpleNamespace(
            reranker_backend=backend,
            search_ef=64,
            rrf_k=60,
            dense_candidates=10,
            bm25_candidates=10,
            rerank_candidates=30,
            rerank_idf=True,
            rerank_idf_warm=2,
        )
        self.registered = {"c", "a", "b"}
        self.collection_names = SimpleNamespace(names=lambda: set(self.registered))
        self.collection_idf = SimpleNamespace(table=lambda name: self._seen(f"idf {name}"))
        self.reranked: list[int] = []  # passages per warm rerank
        self.questions: MicroBatcher[int, int] = MicroBatcher(
            list, max_batch=4, max_wait_s=0, name="ask-batcher"
        )
        self._store_fails, self._load_fails = store_fails, load_fails
        self.stored = 100  # chunks of each collection

    def _seen(self, what: str) -> None:
        self.calls.append((what, threading.current_thread().name))

    @property
    def embedder(self) -> FakeEmbedder:
        self._seen("load")
        if self._load_fails:
            raise OSError("model not found")
        return FakeEmbedder(self.calls)

    def reranker(self, backend: str) -> Any:
        self._seen(f"reranker {backend}")

        def rerank_batch(items: Sequence[tuple[str, Sequence[str]]]) -> None:
            self._seen("rerank")
            self.reranked.extend(len(passages) for _, passages in items)

        return SimpleNamespace(rerank_batch=rerank_batch)

    @property
    def store(self) -> Any:
        self._seen("store")
        if self._store_fails:
            raise ConnectionError("Milvus unreachable")

        def search(collection: str, *args: Any, **kwargs: Any) -> list[Any]:
            self._seen(f"search {collection}")
            return [[]]

        def sample_texts(collection: str, limit: int) -> list[str]:
            self._seen(f"sample {collection}")
            return [f"chunk {i} of {collection}" for i in range(min(limit, self.stored))]

        return SimpleNamespace(search=search, sample_texts=sample_texts)

    @property
    def retriever(self) -> Any:
        self._seen("retriever")
        return object()


def test_questions_warm_every_model_in_the_batcher_thread() -> None:
    rt = FakeRuntime()
    assert warm(rt, {"ask"})  # type: ignore[arg-type]
    names = [what for what, _ in rt.calls]
    assert names[:4] == ["load", "documents", "spans", "queries"]
    assert {"reranker maxsim", "rerank", "retriever", f"search {WARM_COLLECTION}"} <= set(names)
    # A question's worth of candidates, more than once; then the stored chunks of the first registered
    # collection, a question's worth at a time (100 stored: 30, 30, 30, 10).
    assert rt.reranked == [30] * WARM_RERANKS + [30, 30, 30, 10]
    assert [what for what in names if what.startswith("sample")] == ["sample a"]
    assert {thread for _, thread in rt.calls} == {"ask-batcher"}
    assert [what for what in names if what.startswith("idf")] == ["idf a", "idf b"]  # RERANK_IDF_WARM=2


def test_stored_chunks_are_reranked_in_question_sized_groups_up_to_the_limit() -> None:
    rt = FakeRuntime()
    rt.stored = 1_000
    assert warm(rt, {"ask"})  # type: ignore[arg-type]
    assert rt.reranked[WARM_RERANKS:] == [30] * WARM_SHAPE_GROUPS
    empty = FakeRuntime()
    empty.registered = set()  # nothing stored yet: nothing more to rerank
    assert warm(empty, {"ask"})  # type: ignore[arg-type]
    assert empty.reranked == [30] * WARM_RERANKS


def test_the_token_idf_is_not_built_when_the_reranker_does_not_weigh_by_it() -> None:
    rt = FakeRuntime()
    rt.settings.rerank_idf = False
    assert warm(rt, {"ask"})  # type: ignore[arg-type]
    assert not [what for what, _ in rt.calls if what.startswith("idf")]


def test_a_registry_out_of_reach_leaves_the_worker_warm_and_ready(caplog: pytest.LogCaptureFixture) -> None:
    rt = FakeRuntime()

    def down() -> set[str]:
        raise ConnectionError("Redis unreachable")

    rt.collection_names = SimpleNamespace(names=down)
    assert warm(rt, {"ask"})  # type: ignore[arg-type]
    assert "token IDF not built" in caplog.text


def test_ingest_warms_the_embedder_and_milvus_in_the_calling_thread_without_questions() -> None:
    rt = FakeRuntime()
    assert warm(rt, {"ingest"})  # type: ignore[arg-type]
    names = [what for what, _ in rt.calls]
    assert names == ["load", "documents", "spans", "store"]
    assert {thread for _, thread in rt.calls} == {threading.current_thread().name}


def test_no_reranker_is_loaded_when_reranking_is_off() -> None:
    rt = FakeRuntime(backend="none")
    assert warm(rt, {"ask"})  # type: ignore[arg-type]
    assert not [what for what, _ in rt.calls if what.startswith("rerank")]


def test_a_worker_without_a_model_queue_loads_nothing() -> None:
    rt = FakeRuntime()
    assert warm(rt, {"parse", "webhooks"})  # type: ignore[arg-type]
    assert rt.calls == []


def test_milvus_unreachable_still_leaves_the_models_warm() -> None:
    rt = FakeRuntime(store_fails=True)
    assert warm(rt, {"ingest"})  # type: ignore[arg-type]


def test_a_model_that_fails_to_load_leaves_the_worker_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    assert not warm(FakeRuntime(load_fails=True), {"ask"})  # type: ignore[arg-type]
    assert "warm-up failed" in caplog.text


@pytest.mark.parametrize(
    ("pool", "prefork"), [(TaskPool, True), (ThreadPool, False), ("prefork", True), ("threads", False)]
)
def test_prefork_pools_are_told_apart(pool: Any, prefork: bool) -> None:
    assert is_prefork(pool) is prefork


def test_a_prefork_pool_is_warm_once_every_child_is_and_a_replacement_counts() -> None:
    children = WarmChildren(2)
    assert not children.all_warm()
    pids = []
    for _ in range(2):  # each child, forked after the count was made, adds itself
        pid = os.fork()
        if pid == 0:
            children.add()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    assert children.all_warm()  # both children's adds reached the parent's memory
    children.add()  # a replacement for a dead child: still warm, never less
    assert children.all_warm() and WarmChildren(0).pool_size == 1
