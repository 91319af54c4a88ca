"""Redis writes of the workers under a lost reply, on a real redis-server: each must stay right when the
workers' patient client (`connect_redis_patient`) sends it again.

`LostReplyProxy` lets Redis run the command and cuts the connection before its answer reaches the client,
so the client's retry runs the same script a second time; each test asserts the job still ends, once, with
its end published and its hooks (webhook trigger, upload retention) run once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.job_record import JobState
from common.job_schema import Field
from common.jobs import JobStore
from common.ledger import _FINISH, BatchLedger
from common.liveness import _COUNT, Liveness
from common.redis_client import connect_redis_patient
from common.reports import DocumentReports, Outcome
from common.transitions import _MOVE
from common.webhooks import WebhookTrigger
from devstack.private import private_redis
from tests.integration.lostreply import LostReplyProxy
from workers.fanout import finish_batch
from workers.runtime import Runtime

pytestmark = pytest.mark.integration


def _sha(script: str) -> bytes:
    """What an EVALSHA of `script` carries on the wire."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server (the proxy cuts its connections; nobody else's tests see it)."""
    with private_redis(tmp_path_factory.mktemp("redis-faults")) as url:
        direct = redis.Redis.from_url(url)
        for script in (_MOVE, _FINISH, _COUNT):  # loaded: the armed EVALSHA runs (no NOSCRIPT round)
            direct.script_load(script)
        yield url


@pytest.fixture
def proxy(server: str) -> Iterator[LostReplyProxy]:
    lost = LostReplyProxy(upstream_port=int(server.rsplit(":", 1)[1].split("/", maxsplit=1)[0]))
    yield lost
    lost.close()


class Ends:
    """An `on_finish` hook that counts the ends it is told about, and a subscriber to end events."""

    def __init__(self, url: str, job_id: str) -> None:
        self.hooks: list[str] = []
        self.published: list[bytes] = []
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(JobStore.channel(job_id))
        self._pubsub.get_message(timeout=1)  # the subscription is confirmed before anything ends

    def __call__(self, job_id: str) -> None:
        self.hooks.append(job_id)

    def drain(self) -> list[bytes]:
        """The ends published (the channel also wakes followers at a start and at progress)."""
        while message := self._pubsub.get_message(timeout=0.5):
            self.published.append(message["data"])
        return [data for data in self.published if data not in (b"running", b"progress")]


def _stores(server: str, proxy: LostReplyProxy) -> tuple[JobStore, str, Ends]:
    job_id = uuid.uuid4().hex
    ends = Ends(server, job_id)
    client = connect_redis_patient(proxy.url, outage_s=5)
    return JobStore(client, ttl_s=600, on_finish=ends), job_id, ends


def test_a_retried_state_move_still_publishes_the_end_and_runs_its_hooks(
    server: str, proxy: LostReplyProxy
) -> None:
    jobs, job_id, ends = _stores(server, proxy)
    jobs.create(job_id, "ask", 1, {})
    proxy.arm(_sha(_MOVE))
    assert jobs.mark_running(job_id)  # its repeat finds `running`, written by its own first try
    proxy.arm(_sha(_MOVE))
    jobs.mark_succeeded(job_id, {"answer": 42})
    assert len(proxy.dropped) == 2 and proxy.seen[_sha(_MOVE)] == 2  # sent, lost, sent again
    record = jobs.get(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED and record.result == {"answer": 42}
    assert ends.hooks == [job_id]
    assert ends.drain() == [b"succeeded"]
    jobs.mark_failed(job_id, "a late second end")  # still guarded: moves nothing, notifies nobody
    assert ends.hooks == [job_id] and jobs.get(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_a_retried_last_batch_still_finalizes_the_job_once(server: str, proxy: LostReplyProxy) -> None:
    jobs, job_id, ends = _stores(server, proxy)
    rt = _runtime(jobs)
    jobs.create(job_id, "ingest", 2, {})
    assert jobs.mark_running(job_id)
    rt.ledger.start(job_id, batches=2, total=2)
    finish_batch(rt, job_id, 0, [Outcome("a", "succeeded", chunks=3)], "c")
    proxy.arm(_sha(_FINISH))
    finish_batch(rt, job_id, 1, [Outcome("b", "succeeded", chunks=2)], "c")
    assert len(proxy.dropped) == 1 and proxy.seen[_sha(_FINISH)] == 2

    record = jobs.get(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED, record
    assert record.progress == {"done": 2, "total": 2, "succeeded": 2, "failed": 0, "skipped": 0, "chunks": 5}
    assert ends.hooks == [job_id] and ends.drain() == [b"succeeded"]
    finish_batch(rt, job_id, 1, [Outcome("b", "succeeded", chunks=2)], "c")  # a redelivery: counts nothing
    assert jobs.get(job_id).progress["chunks"] == 5 and ends.hooks == [job_id]  # type: ignore[union-attr]
    assert rt.store.flushes >= 1  # the job's end flushed its rows


class _Flushes:
    """The vector store of `_runtime`: these tests need only the job-end flush, counted."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def _runtime(jobs: JobStore) -> Runtime:
    """The real fan-out functions over these stores (no models, no Milvus needed)."""
    rt = Runtime.__new__(Runtime)
    rt.__dict__.update(
        jobs=jobs, ledger=BatchLedger(jobs), reports=DocumentReports(jobs.client, 600), store=_Flushes()
    )
    return rt


def test_a_retried_delivery_count_counts_one_delivery_once(server: str, proxy: LostReplyProxy) -> None:
    jobs, job_id, _ = _stores(server, proxy)
    liveness = Liveness(jobs, timeout_s=10)
    jobs.create(job_id, "ingest", 1, {})
    proxy.arm(_sha(_COUNT))
    assert liveness.count_delivery(job_id, "task", 0) == 1
    assert proxy.seen[_sha(_COUNT)] == 2 and len(proxy.dropped) == 1
    assert liveness.count_delivery(job_id, "task", 0) == 2  # the next delivery, not the third
    assert liveness.count_delivery(job_id, "task", 1) == 1  # a Celery retry is a new attempt


def test_a_retried_webhook_claim_still_queues_the_webhook(server: str, proxy: LostReplyProxy) -> None:
    sent: list[dict[str, Any]] = []
    client = connect_redis_patient(proxy.url, outage_s=5)
    trigger = WebhookTrigger(client, lambda name, kwargs: sent.append(kwargs))
    jobs, job_id = JobStore(client, ttl_s=600, on_finish=trigger), uuid.uuid4().hex
    jobs.create(job_id, "ask", 1, {}, callback_url="https://example.org/hook")
    proxy.arm(b"HSETNX")
    jobs.mark_failed(job_id, "boom")
    assert len(proxy.dropped) == 1 and proxy.seen[b"HSETNX"] == 2
    stored = redis.Redis.from_url(server).hget(JobStore.key(job_id), Field.CALLBACK_EVENT)
    event_id = json.loads(stored or b"null")
    assert sent == [{"job_id": job_id, "event_id": event_id}]
    trigger(job_id)  # a second end of the same job claims nothing and sends nothing
    assert len(sent) == 1


def test_concurrent_last_batches_under_lost_replies_end_the_job_once(
    server: str, proxy: LostReplyProxy
) -> None:
    """Both of a job's batches end at once and both lose their ledger reply: the job still ends, once."""
    jobs, job_id, ends = _stores(server, proxy)
    rt = _runtime(jobs)
    jobs.create(job_id, "ingest", 2, {})
    rt.ledger.start(job_id, batches=2, total=2)
    proxy.arm(_sha(_FINISH))
    threads = [
        threading.Thread(target=finish_batch, args=(rt, job_id, i, [Outcome(f"d{i}", "succeeded")], "c"))
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert jobs.get(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    assert ends.hooks == [job_id] and ends.drain() == [b"succeeded"]
