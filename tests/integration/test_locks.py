"""Per-document locks on a real Redis, and two identical uploads submitted at the same moment."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from common.errors import ServiceUnavailable
from common.locks import DocumentLocks
from tests.integration.conftest import Stack


def test_a_held_document_waits_for_its_holder(stack: Stack) -> None:
    locks = DocumentLocks(redis.Redis.from_url(stack.redis_url), ttl_s=30, wait_s=10)
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with locks.hold("c", ["a", "b"]):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with locks.hold("c", ["b", "z"]):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    with locks.hold("other", ["a"]):  # other collections are independent
        pass


def test_waiting_is_bounded(stack: Stack) -> None:
    locks = DocumentLocks(redis.Redis.from_url(stack.redis_url), ttl_s=30, wait_s=0.3)
    with locks.hold("c", ["x"]), pytest.raises(ServiceUnavailable), locks.hold("c", ["x"]):
        pass


def test_identical_uploads_at_the_same_moment_embed_once(stack: Stack) -> None:
    docs = [{"id": f"same-{i}", "text": f"Identical upload number {i} about comets."} for i in range(20)]

    def post() -> str:
        response = stack.post("/api/v1/documents", json={"collection": "twins", "documents": docs})
        return str(response.json()["job_id"])

    with ThreadPoolExecutor(2) as pool:
        job_ids = list(pool.map(lambda _: post(), range(2)))
    results = [stack.wait_job(job_id)["result"] for job_id in job_ids]
    assert sorted(r["succeeded"] for r in results) == [0, 20]
    assert sorted(r["skipped"] for r in results) == [0, 20]
    assert stack.get("/api/v1/collections/twins").json()["documents"] == 20


def test_a_redelivered_batch_takes_over_the_locks_of_its_killed_predecessor(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    locks = DocumentLocks(client, ttl_s=30, wait_s=0.3)
    key = locks.key("c", "owned")
    client.set(key, "batch-7.jsonl", px=30_000)  # held by a delivery whose process was killed
    with pytest.raises(ServiceUnavailable), locks.hold("c", ["owned"]):
        pass  # anybody else waits
    with locks.hold("c", ["owned"], owner="batch-7.jsonl"):
        assert client.get(key) == b"batch-7.jsonl"
    assert client.get(key) is None


def test_held_locks_live_as_long_as_their_holder_refreshes_them(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    locks = DocumentLocks(client, ttl_s=3, wait_s=0.1)
    with locks.hold("c", ["refreshed"]):
        key = locks.key("c", "refreshed")
        time.sleep(1.0)  # unrefreshed, at most 2,000 ms would be left now
        locks.refresh()
        assert int(client.pttl(key)) > 2400
    client.set(key, "someone-else", px=1000)
    locks.refresh()  # refreshes only what this process holds
    assert int(client.pttl(key)) <= 1000


def test_a_lease_is_one_deliverys_until_it_gives_it_back(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    # A TTL well above the bounded wait (which may overrun its 0.3 s by one poll, up to 0.3 s more) and
    # the sleep: the key must still be there to be refreshed, however slowly this machine runs the test.
    locks, other = (DocumentLocks(client, ttl_s=3, wait_s=0.1) for _ in range(2))
    key = "quarry:job:leased:lease:0"
    client.delete(key)
    assert locks.take(key, "host:1:task-a", wait_s=0)
    assert not other.take(key, "host:2:task-a", wait_s=0.3)  # a second copy of the batch waits, bounded
    time.sleep(0.6)  # unrefreshed, at most 2,100 ms would be left now
    locks.refresh()  # the holder's heartbeat keeps it
    assert int(client.pttl(key)) > 2400
    other.give_back(key, "host:2:task-a")  # only its own token releases it
    assert client.get(key) == b"host:1:task-a"
    other.give_back(key, "host:1:task-a")  # as the main process does for a child that died
    assert other.take(key, "host:2:task-a", wait_s=0)
    locks.refresh()  # the dead holder's process no longer extends what it lost
    assert client.get(key) == b"host:2:task-a"
    other.give_back(key, "host:2:task-a")
    assert client.get(key) is None
