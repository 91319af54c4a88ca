"""The reconciler (workers.reconciler) against a real redis-server used as Celery's broker: messages are
sent by Celery and taken by kombu exactly as the workers do; the lost message is made the way kombu's
BRPOP loses one (popped from the queue list, never recorded in `unacked`).

What runs the re-sent job to its end, once, is shown on the whole stack in
`test_redis_faults.py::test_a_queued_jobs_lost_message_is_sent_again_and_the_job_ends_once`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from celeryconfig import make_celery
from common.contracts import ASK_QUEUE, ASK_TASK
from common.job_schema import QUEUED_INDEX
from common.jobs import JobStore
from common.settings import Settings
from devstack.private import private_redis
from workers.reconciler import Reconciler, message_ids

pytestmark = pytest.mark.integration

REQUEST = {"question": "how do glaciers change?", "collection": "default", "top_k": 3}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server: job records and broker in one, like the default deployment."""
    with private_redis(tmp_path_factory.mktemp("reconciler")) as address:
        yield address


class Sent:
    """The reconciler's `send`: through a real Celery app, and counted."""

    def __init__(self, url: str) -> None:
        self.celery = make_celery(Settings(redis_url=url))
        self.ids: list[str] = []

    def __call__(self, task: str, task_id: str, kwargs: dict[str, Any]) -> None:
        self.celery.send_task(task, kwargs=kwargs, task_id=task_id)
        self.ids.append(task_id)


@pytest.fixture
def env(url: str) -> Iterator[tuple[redis.Redis, JobStore, Sent]]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client, JobStore(client, ttl_s=600), Sent(url)
    client.flushdb()


def _submit(jobs: JobStore, sent: Sent, *, queued_at: float) -> str:
    """What the API does: record the job (listed as queued), then send its message."""
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "ask", 1, REQUEST)
    jobs.client.zadd(QUEUED_INDEX, {jobs.key(job_id): queued_at}, xx=True)  # as if recorded back then
    sent.celery.send_task(ASK_TASK, kwargs=REQUEST, task_id=job_id)
    return job_id


def _lose(client: redis.Redis) -> dict[str, Any]:
    """Kombu's first half of taking a message: RPOP from the queue list. The second half (HSET unacked)
    never happens: the message is now in no Redis structure."""
    raw = client.rpop(ASK_QUEUE)
    assert raw is not None
    return dict(json.loads(raw))


def test_the_index_lists_a_job_from_its_record_until_it_starts_or_ends(env: Any) -> None:
    client, jobs, _ = env
    started, cancelled = uuid.uuid4().hex, uuid.uuid4().hex
    for job_id in (started, cancelled):
        jobs.create(job_id, "ask", 1, REQUEST)
    assert {key.decode() for key in client.zrange(QUEUED_INDEX, 0, -1)} == {
        jobs.key(started),
        jobs.key(cancelled),
    }
    assert jobs.mark_running(started)
    jobs.cancel(cancelled)
    assert client.zcard(QUEUED_INDEX) == 0  # the state move took each out, in the same script


def test_a_lost_message_is_sent_again_once_with_the_same_task_id(env: Any) -> None:
    client, jobs, sent = env
    now = time.time()
    lost, waiting = _submit(jobs, sent, queued_at=now - 600), _submit(jobs, sent, queued_at=now - 600)
    assert _lose(client)["headers"]["id"] == lost  # the oldest message: the one a worker takes first
    reconciler = Reconciler(client, client, sent, requeue_after_s=300)

    assert reconciler.sweep(now) == []  # first look: maybe only between BRPOP and HSET
    assert reconciler.sweep(now + 1) == [lost]  # still missing: sent again
    assert sent.ids == [lost]
    assert message_ids(client.lrange(ASK_QUEUE, 0, -1)) == {lost, waiting}  # back in its queue
    message = json.loads(client.lindex(ASK_QUEUE, 0))
    assert message["headers"]["task"] == ASK_TASK
    assert json.loads(jobs.client.hget(jobs.key(lost), "request")) == REQUEST
    assert reconciler.sweep(now + 2) == [] and reconciler.sweep(now + 3) == []  # not twice
    assert client.zscore(QUEUED_INDEX, jobs.key(lost)) == pytest.approx(now + 1)  # looked at again later


def test_a_message_taken_by_a_worker_and_not_yet_acknowledged_is_not_sent_again(env: Any, url: str) -> None:
    """Taken the way a worker takes it (kombu: RPOP, then recorded in `unacked`), job still queued."""
    client, jobs, sent = env
    job_id = _submit(jobs, sent, queued_at=time.time() - 600)
    with Connection(url) as conn:
        queue = conn.SimpleQueue(ASK_QUEUE)
        message = queue.get(timeout=5)
        assert message.headers["id"] == job_id and client.hlen("unacked") == 1
        reconciler = Reconciler(client, client, sent, requeue_after_s=300)
        assert reconciler.sweep(time.time()) == [] and reconciler.sweep(time.time()) == []
        message.ack()
        queue.close()
    assert sent.ids == []


def test_a_delivered_or_recent_job_is_not_sent_again(env: Any) -> None:
    client, jobs, sent = env
    delivered, recent = (
        _submit(jobs, sent, queued_at=time.time() - 600),
        _submit(jobs, sent, queued_at=time.time()),
    )
    client.delete(ASK_QUEUE)  # both messages lost
    client.hset(jobs.key(delivered) + ":deliveries", f"{delivered}:0", 1)
    reconciler = Reconciler(client, client, sent, requeue_after_s=300)
    assert reconciler.sweep(time.time()) == [] and reconciler.sweep(time.time()) == []
    assert sent.ids == [] and client.zcard(QUEUED_INDEX) == 2  # both still queued, still listed
    assert client.zscore(QUEUED_INDEX, jobs.key(recent)) is not None


def test_two_sweepers_send_a_lost_message_once(env: Any) -> None:
    client, jobs, sent = env
    now = time.time()
    lost = _submit(jobs, sent, queued_at=now - 600)
    _lose(client)
    sweepers = [Reconciler(client, client, sent, requeue_after_s=300) for _ in range(4)]
    for sweeper in sweepers:
        assert sweeper.sweep(now) == []
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.sweep(now + 1))) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(len, results)) == [0, 0, 0, 1] and sent.ids == [lost]
    assert client.llen(ASK_QUEUE) == 1


def test_an_expired_record_leaves_the_index(env: Any) -> None:
    client, jobs, sent = env
    gone = _submit(jobs, sent, queued_at=time.time() - 600)
    client.delete(jobs.key(gone))
    Reconciler(client, client, sent, requeue_after_s=300).sweep(time.time())
    assert client.zcard(QUEUED_INDEX) == 0 and sent.ids == []
