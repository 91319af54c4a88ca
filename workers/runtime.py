"""Heavy per-process resources (models, Milvus client), built once per process after the fork.

Built by the warm-up when the worker starts (workers/warmup.py: a prefork child before it takes a task,
Celery's `worker_proc_alive_timeout` raised for it; a threads pool in its batcher thread before it consumes),
else on first use. Never at import. A fork resets the cache (checked by pid).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import cached_property
from typing import TYPE_CHECKING, Any

from common.collection_names import CollectionNames
from common.fences import Fences
from common.jobs import JobStore, each
from common.ledger import BatchLedger
from common.liveness import Liveness
from common.locks import DocumentLocks, SerialWrites
from common.metrics import RedisMetrics
from common.redis_client import connect_redis, connect_redis_patient
from common.reports import DocumentReports
from common.retention import UploadRetention
from common.settings import Settings, get_settings
from common.types import UploadStore
from common.webhooks import WebhookTrigger
from store.uploads import upload_store
from workers.app import app

if TYPE_CHECKING:
    from common.types import Embedder, Reranker
    from store.exact import ExactDense
    from store.milvus import MilvusStore
    from workers.batcher import MicroBatcher
    from workers.gate import Gate
    from workers.reliability import Heartbeat
    from workers.retrieval import Question, Retriever
    from workers.token_weights import CollectionIdf


class Runtime:
    """What tasks need, each built on first access."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rerankers: dict[str, Reranker] = {}

    @cached_property
    def jobs(self) -> JobStore:
        """A patient client: a task waits out a short Redis restart instead of losing its work."""
        client = connect_redis_patient(self.settings.redis_url, self.settings.worker_redis_outage_s)
        hooks = each(
            WebhookTrigger(client, _send_task), UploadRetention(client, self.settings.upload_retention_s)
        )
        return JobStore(client, self.settings.job_ttl_s, on_finish=hooks, list_cap=self.settings.job_list_cap)

    @cached_property
    def metrics(self) -> RedisMetrics:
        """Its own client, 1 s timeouts, no retries: a metrics write never waits out a Redis outage."""
        client = connect_redis(self.settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        return RedisMetrics(client)

    @cached_property
    def collection_names(self) -> CollectionNames:
        """Its own client, 1 s timeouts, no retries: the warm-up never waits out a Redis outage."""
        client = connect_redis(self.settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
        return CollectionNames(client)

    @cached_property
    def liveness(self) -> Liveness:
        return Liveness(self.jobs, self.settings.job_heartbeat_timeout_s)

    @cached_property
    def heartbeat(self) -> Heartbeat:
        from workers.reliability import Heartbeat  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        s = self.settings
        return Heartbeat(self.liveness, self.locks, s.job_heartbeat_interval_s, fences=self.fences)

    @cached_property
    def reports(self) -> DocumentReports:
        return DocumentReports(self.jobs.client, self.settings.job_ttl_s)

    @cached_property
    def exact(self) -> ExactDense:
        from store.exact import ExactDense  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        return ExactDense(self.store)

    @cached_property
    def ledger(self) -> BatchLedger:
        return BatchLedger(self.jobs)

    @cached_property
    def locks(self) -> DocumentLocks:
        """Locks outlive their holder's last heartbeat by the heartbeat timeout, then expire."""
        s = self.settings
        return DocumentLocks(
            self.jobs.client, ttl_s=s.job_heartbeat_timeout_s, wait_s=s.task_soft_time_limit_s / 2
        )

    @cached_property
    def milvus_writes(self) -> SerialWrites:
        """The collection's write turn (MILVUS_SERIAL_WRITES), one per Milvus endpoint and collection."""
        s = self.settings
        target = f"{s.milvus_uri}\x00{s.milvus_collection}"
        return SerialWrites(self.locks, target, s.task_soft_time_limit_s / 2)

    @cached_property
    def fences(self) -> Fences:
        """Writer entries, like locks, outlive their holder's last heartbeat by the heartbeat timeout."""
        s = self.settings
        return Fences(self.jobs.client, ttl_s=s.job_ttl_s, writer_ttl_s=s.job_heartbeat_timeout_s)

    @cached_property
    def embedder(self) -> Embedder:
        from workers.device import configure_threads  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it
        from workers.embedder import load_embedder  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        configure_threads(self.settings)
        return load_embedder(self.settings, self.gate)

    @cached_property
    def gate(self) -> Gate:
        """This process's turn-taking with the other workers of its device (workers.gate)."""
        from workers.gate import gate_for  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        return gate_for(self.settings)

    def reranker(self, backend: str) -> Reranker:
        """Each backend loads on its first question, so an unused cross-encoder costs no memory."""
        if backend not in self._rerankers:
            from workers.reranker import load_reranker  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

            self._rerankers[backend] = load_reranker(self.settings, self.embedder, backend)
        return self._rerankers[backend]

    @cached_property
    def retriever(self) -> Retriever:
        from workers.retrieval import Retriever  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        return Retriever(
            self.settings, self.embedder, self.store, self.exact, self.reranker, idf=self.collection_idf.table
        )

    @cached_property
    def collection_idf(self) -> CollectionIdf:
        from workers.token_weights import CollectionIdf  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        s = self.settings
        return CollectionIdf(
            self.store,
            self.embedder,
            sample=s.rerank_idf_sample,
            ttl_s=s.rerank_idf_ttl_s,
            keep=s.rerank_idf_collections,
        )

    @cached_property
    def questions(self) -> MicroBatcher[Question, dict[str, Any]]:
        """The one model thread of this process; ask tasks on a threads pool queue into it."""
        from workers.batcher import MicroBatcher  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        s = self.settings

        def answer(batch: Sequence[Question]) -> list[Any]:
            """Models load in the batcher thread; a batch holds the device's question turn."""
            with self.gate.questions():
                return self.retriever.answer_batch(batch)

        return MicroBatcher(
            answer,
            max_batch=s.ask_batch_size,
            max_wait_s=s.ask_batch_wait_ms / 1000,
            name="ask-batcher",
        )

    @cached_property
    def uploads(self) -> UploadStore:
        """Uploads and batch files: the local directory or the S3 bucket the settings choose."""
        return upload_store(self.settings)

    @cached_property
    def store(self) -> MilvusStore:
        from store.milvus import MilvusStore  # noqa: PLC0415 - heavy (torch, models, pymilvus): loaded by the processes that use it

        store = MilvusStore(self.settings, self.write_turn)
        store.ensure_collection(self.embedder.model_name, self.embedder.dimension)
        return store

    @contextmanager
    def write_turn(self) -> Iterator[None]:
        """One write request to Milvus: in the collection's turn (MILVUS_SERIAL_WRITES), and only while every
        hold of this process still stands (`common.leases`: Redis away longer than their TTL may have let
        another worker take the same documents meanwhile)."""
        with self.milvus_writes.turn() if self.settings.milvus_serial_writes else nullcontext():
            self.locks.check()
            self.fences.check()
            yield


def _send_task(name: str, kwargs: dict[str, Any]) -> Any:
    """Enqueue by name through the worker's own app (its tasks are imported when a worker starts, not with
    the app, so this module may import it)."""
    return app.send_task(name, kwargs=kwargs)


_RUNTIMES: dict[int, Runtime] = {}  # keyed by pid: a forked child never reuses its parent's models
_RUNTIMES_LOCK = threading.Lock()  # task threads of a threads pool must share one Runtime


def runtime() -> Runtime:
    """This process's Runtime, built on first use."""
    pid = os.getpid()
    with _RUNTIMES_LOCK:
        if pid not in _RUNTIMES:
            _RUNTIMES.clear()
            _RUNTIMES[pid] = Runtime(get_settings())
        return _RUNTIMES[pid]
