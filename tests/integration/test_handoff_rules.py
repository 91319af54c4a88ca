"""The hand-off of a vanished worker's tasks (`workers.handoff`) on a real Redis, with kombu's real restore:
only a stale beat whose message is unacknowledged is handed on, once, to the head of its queue; a fresh
beat, a beat renewed meanwhile and a task whose message is elsewhere are left alone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu.connection import Connection

from common.job_schema import RUNNING_INDEX
from tests.integration.conftest import TEST_REDIS_DB
from workers.handoff import Handoff, restorer

pytestmark = pytest.mark.integration
DB = 5 if TEST_REDIS_DB != 5 else 4  # 6-12: other modules' databases
URL = f"redis://127.0.0.1:6379/{DB}"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {URL}: {exc}")
    client.flushdb()
    yield client
    client.flushdb()


def _beat(until: float) -> str:
    return json.dumps(
        {"at": "2026-01-01T00:00:00.000Z", "until": until, "timeout": 8, "host": "w1", "pid": 7}
    )


def _taken(client: redis.Redis, tag: str, task_id: str, queue: str = "ingest") -> None:
    """A message as kombu's Redis transport records one a worker took and has not acknowledged."""
    message = {"body": "", "headers": {"id": task_id, "task": "quarry.ingest_batch"}, "properties": {}}
    client.hset("unacked", tag, json.dumps([message, "", queue]))
    client.zadd("unacked_index", {tag: time.time()})


def _running(client: redis.Redis, job_id: str, beats: dict[str, str]) -> None:
    key = f"quarry:job:{job_id}"
    client.hset(key, mapping={"state": json.dumps("running"), **{f"beat:{t}": v for t, v in beats.items()}})
    client.zadd(RUNNING_INDEX, {key: time.time()})


def test_only_a_stale_beat_with_its_message_unacknowledged_is_handed_on_once(client: redis.Redis) -> None:
    now = time.time()
    _running(client, "j1", {"dead": _beat(now - 1), "alive": _beat(now + 5), "requeued": _beat(now - 1)})
    _taken(client, "tag-dead", "dead")
    _taken(client, "tag-alive", "alive")
    client.lpush("ingest", json.dumps({"headers": {"id": "waiting"}}))  # `requeued`: its child died, not here
    notes: list[tuple[str, str]] = []
    restore = restorer(lambda: Connection(URL))
    first = Handoff(client, client, restore, lambda job, note: notes.append((job, note)))
    second = Handoff(client, client, restore, lambda job, note: notes.append((job, note)))

    assert first.sweep(now) == ["dead"]
    assert second.sweep(now) == []  # the beat is gone: another sweeper hands on nothing twice

    assert client.hkeys("unacked") == [b"tag-alive"] and client.zrange("unacked_index", 0, -1) == [
        b"tag-alive"
    ]
    head = json.loads(client.lindex("ingest", -1))  # BRPOP takes from this end: it runs next
    assert head["headers"]["id"] == "dead" and head["headers"]["redelivered"] is True
    assert client.llen("ingest") == 2
    fields = set(client.hkeys("quarry:job:j1"))
    assert b"beat:dead" not in fields and {b"beat:alive", b"beat:requeued"} <= fields
    assert notes == [("j1", notes[0][1])] and "went back to the queue" in notes[0][1] and "w1" in notes[0][1]


def test_a_beat_renewed_after_the_read_is_not_handed_on(client: redis.Redis) -> None:
    now = time.time()
    _running(client, "j2", {"slow": _beat(now - 1)})
    _taken(client, "tag-slow", "slow")
    handoff = Handoff(client, client, restorer(lambda: Connection(URL)), lambda job, note: None)
    records = handoff._running()
    client.hset("quarry:job:j2", "beat:slow", _beat(now + 5))  # it beat again: alive after all
    handoff._running = lambda: records  # type: ignore[method-assign]  # the sweep judges what it read before

    assert handoff.sweep(now) == []
    assert client.hkeys("unacked") == [b"tag-slow"] and client.llen("ingest") == 0
