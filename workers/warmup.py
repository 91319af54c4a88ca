"""Workers load and warm their models when they start, not on their first task, then say they are ready.

The warm-up runs where the tasks will run, before the worker takes any:
- **prefork pools** (the ingest worker): in each child process at `worker_process_init`. The parent hands a
  child no task before the child reports it is up, which it does right after this signal; Celery kills a
  child that takes longer than `worker_proc_alive_timeout` (raised in celeryconfig for a model load).
- **threads and solo pools** (the ask worker): in the worker process at `celeryd_after_setup` (logging
  is set up, the consumer not started yet: no question is taken before the models are warm), the models
  built and exercised in the micro-batcher's thread (`MicroBatcher.run_alone`), the one thread that uses them.
- **no model queue** (parse, webhooks): nothing to load; ready once consuming (`worker_ready`).

Warm means: the embedder loaded and run once on a passage and once on a question; for questions also the
default reranker run twice on a question's worth of candidates (`warm_candidates`) and a search sent to
Milvus (a collection name no client can have, so it reads nothing). Then the worker announces itself for
its queues (common.readiness), which `GET /readyz` reads.
A model that fails to load leaves the worker not ready until it restarts (its tasks try the load again and
report the failure); Milvus unreachable at start only leaves the connection to the first task (`/readyz`
reports Milvus itself).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    celeryd_after_setup,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from common.contracts import ASK_QUEUE, INGEST_QUEUE, StageOptions
from common.readiness import Announcer, ReadyWorkers
from common.redis_client import connect_redis
from workers.gate import pool_size
from workers.retrieval import search_options
from workers.runtime import Runtime, runtime

log = logging.getLogger(__name__)

MODEL_QUEUES = frozenset({INGEST_QUEUE, ASK_QUEUE})
WARM_QUESTION = "When do the workers load their models?"
WARM_PASSAGE = "Workers load and warm their models when they start, so the first question runs at full speed."
WARM_COLLECTION = "__warm-up__"  # outside the API's collection names: the warm search reads nothing


WARM_RERANKS = 2
WARM_SHAPE_GROUPS = 8  # questions' worth of stored chunks reranked at start (`_warm_shapes`)


def warm_candidates(n: int) -> list[str]:
    """A question's worth of candidates, short to long (1 to 12 passages' length): a reranker's first real
    question, with its big batches, otherwise ran ~1.5x slower than the next ones on the stack (bf16 CPU)."""
    return [" ".join([WARM_PASSAGE] * (1 + i % 12)) for i in range(n)]


class WarmChildren:
    """How many of a prefork pool's children have warmed, in memory shared by the fork (made in the
    worker's main process before its pool starts). A child says it is ready only once the whole pool is
    warm: otherwise /readyz said ready while a sibling still loaded its model on the same cores, and the
    first question after ready ran slower than the next ones. A child that replaces a dead one counts
    too, so the pool is not held back by the loss of a child."""

    def __init__(self, pool_size: int) -> None:
        self.pool_size = max(1, pool_size)
        self._count = multiprocessing.get_context("fork").Value("i", 0)

    def add(self) -> None:
        with self._count.get_lock():
            self._count.value += 1

    def all_warm(self) -> bool:
        return bool(self._count.value >= self.pool_size)


@dataclass
class Plan:
    """What this worker consumes and how it runs tasks, as seen at start (inherited by forked children)."""

    queues: frozenset[str] = frozenset()
    prefork: bool = False
    warmed: bool = False  # in this process: its model queues are warm (threads and solo pools)
    children: WarmChildren | None = None  # prefork: the pool's warm-up, shared by its children


_plan = Plan()
_announcers: dict[int, Announcer] = {}  # by pid: a forked child never stops its parent's entry


def exercise(rt: Runtime, *, questions: bool) -> dict[str, float]:
    """Load and run what a first task would; seconds per step. Call it in the thread tasks will use."""
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        embedder = rt.embedder
    with _timed(timings, "passes"):
        embedder.embed_documents([WARM_PASSAGE])
        embedder.tokens(WARM_PASSAGE)  # chunking's tokenizer
        vectors = embedder.embed_queries([WARM_QUESTION]) if questions else None
    backend = rt.settings.reranker_backend
    if questions and backend != "none":
        with _timed(timings, "reranker"):
            reranker = rt.reranker(backend)
            for _ in range(WARM_RERANKS):
                reranker.rerank_batch([(WARM_QUESTION, warm_candidates(rt.settings.rerank_candidates))])
    with _timed(timings, "milvus"):
        _connect(rt, vectors)
    names = _registered(rt) if questions and backend != "none" else []
    if questions and backend == "maxsim" and rt.settings.rerank_idf:
        with _timed(timings, "idf"):
            _warm_idf(rt, names[: rt.settings.rerank_idf_warm])
    if names:
        with _timed(timings, "shapes"):
            _warm_shapes(rt, backend, names[0])
    return timings


def _registered(rt: Runtime) -> list[str]:
    """The registered collections, in name order (what the warm-ups read); none when Redis is away."""
    try:
        return sorted(rt.collection_names.names())
    except Exception as exc:  # Redis away: the first question of each collection builds what it needs
        log.warning("warm-up: registered collections not read (%s); token IDF not built", exc)
        return []


def _warm_idf(rt: Runtime, names: list[str]) -> None:
    """Build the token IDF of up to `rerank_idf_warm` registered collections: the first reranked question
    of a collection would otherwise read and tokenize a sample of its chunks (measured: +0.6 s)."""
    try:
        for name in names:
            rt.collection_idf.table(name)
    except Exception as exc:  # Milvus away: the first question of each collection builds it
        log.warning("warm-up: token IDF not built (%s); the first question of a collection builds it", exc)


def _warm_shapes(rt: Runtime, backend: str, collection: str) -> None:
    """Rerank `WARM_SHAPE_GROUPS` questions' worth of a registered collection's real chunks: oneDNN builds a
    kernel for each new input shape on first use, and the warm-up's own passages do not have a question's
    shapes (measured on a bf16 CPU: 30 new chunks took 152-195 ms the first time, 144-161 ms again; the first
    question after ready took 386 ms, 197 ms when asked again)."""
    try:
        size = rt.settings.rerank_candidates
        texts = rt.store.sample_texts(collection, WARM_SHAPE_GROUPS * size)
        reranker = rt.reranker(backend)
        for start in range(0, len(texts), size):
            reranker.rerank_batch([(WARM_QUESTION, texts[start : start + size])])
    except Exception as exc:  # Milvus away: a question's first shapes build their kernels
        log.warning("warm-up: no stored passages reranked (%s); first questions build their kernels", exc)


def _connect(rt: Runtime, vectors: npt.NDArray[np.float32] | None) -> None:
    """Connect to Milvus (and for questions send one search); unreachable: the first task connects."""
    try:
        if vectors is None:
            rt.store  # noqa: B018 - builds the cached client and checks the collection
            return
        options = search_options(rt.settings, StageOptions())
        rt.retriever  # noqa: B018 - the question pipeline, built where it runs
        rt.store.search(WARM_COLLECTION, [WARM_QUESTION], vectors, 1, options=options)
    except Exception as exc:  # Milvus down at start: /readyz says so; the models are what was to warm
        log.warning("warm-up: Milvus not reached (%s); the first task connects", exc)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - start, 3)


def warm(rt: Runtime, queues: Collection[str]) -> bool:
    """Warm this process for its model queues; whether it is warm (a failure is logged, never raised).

    No time limit of its own: a first start may download a model for minutes, and the worker could not
    answer sooner anyway; a stalled download fails by the hub client's own timeouts."""
    if not MODEL_QUEUES & set(queues):
        return True
    start = time.perf_counter()
    try:
        if ASK_QUEUE in queues:  # models are built and used in the micro-batcher's thread only
            timings = rt.questions.run_alone(lambda: exercise(rt, questions=True)).result()
        else:
            timings = exercise(rt, questions=False)
    except Exception:
        log.exception("warm-up failed: models load on the first task, and this worker is not ready")
        return False
    steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in timings.items())
    total = time.perf_counter() - start
    log.info(
        "warm-up done in %.2f s (%s) for %s", total, steps, ", ".join(sorted(MODEL_QUEUES & set(queues)))
    )
    return True


def announce(
    queues: Collection[str],
    hostname: str,
    make_registry: Callable[[], ReadyWorkers],
    when: Callable[[], bool] = lambda: True,
) -> None:
    """Start this process's readiness entry for `queues` (its id: hostname and pid), marked while `when`."""
    announcer = Announcer(make_registry(), sorted(queues), f"{hostname}:{os.getpid()}", when=when)
    announcer.start()
    _announcers[os.getpid()] = announcer


def withdraw() -> None:
    """This process stops cleanly: its entry goes now rather than when it lapses."""
    announcer = _announcers.pop(os.getpid(), None)
    if announcer is not None:
        announcer.stop()


def _registry() -> ReadyWorkers:
    """Its own client: short timeouts and no retries, so a refresh never waits out a Redis outage."""
    client = connect_redis(runtime().settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    return ReadyWorkers(client)


def is_prefork(pool_cls: Any) -> bool:
    pool = get_implementation(pool_cls)
    return isinstance(pool, type) and issubclass(pool, PreforkPool)


@celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _warm_worker(sender: str, instance: Any, **_: Any) -> None:
    """Every worker: note the plan. Threads or solo pool: warm here, before the consumer starts."""
    _plan.queues = frozenset(instance.app.amqp.queues.consume_from)
    _plan.prefork = is_prefork(instance.pool_cls)
    if _plan.prefork:
        _plan.children = WarmChildren(pool_size(instance) or 1)  # `auto`: each child counts alone
    else:
        _plan.warmed = warm(runtime(), _plan.queues)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _warm_child(sender: str, **_: Any) -> None:
    """A prefork child: warm before reporting up (no task reaches it before), then announce itself once
    every child of the pool is warm (`WarmChildren`; the last one announces at once, the others at their
    next refresh)."""
    model_queues = MODEL_QUEUES & _plan.queues
    if model_queues and warm(runtime(), model_queues):
        children = _plan.children or WarmChildren(1)
        children.add()
        announce(model_queues, sender, _registry, when=children.all_warm)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(sender: Any, **_: Any) -> None:
    """Consuming: the worker process announces the queues it serves itself (children their own)."""
    queues = _plan.queues if _plan.warmed else _plan.queues - MODEL_QUEUES  # prefork: never warmed here
    if queues:
        announce(queues, sender.hostname, _registry)


worker_process_shutdown.connect(lambda **_: withdraw(), weak=False)
worker_shutdown.connect(lambda **_: withdraw(), weak=False)
