"""Scripts queued in pipelines survive a Redis whose script cache emptied while the pipeline was sent.

Found by the SIGKILL test in test_redis_faults: redis-py loads a pipeline's scripts once, before sending;
a Redis killed and restarted during the send has no cached script when the patient client's retry sends
the pipeline again, and an EVALSHA there fails with NOSCRIPT (a batch's first heartbeat failed its job).
Here the cache is flushed right before every pipeline is sent, which is that restart made exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from common.fences import Fences
from common.job_schema import BEAT_PREFIX, JobKeys
from common.jobs import JobStore
from common.liveness import Liveness
from common.locks import DocumentLocks
from common.redis_client import connect_redis_patient
from devstack.private import private_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    with private_redis(tmp_path) as url:
        flusher = redis.Redis.from_url(url)
        send = Pipeline._execute_pipeline
        flushes: list[int] = []

        def restarted_before_send(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
            flusher.script_flush()  # what a Redis restarted after the scripts were loaded holds
            flushes.append(1)
            return send(self, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "_execute_pipeline", restarted_before_send)
        yield connect_redis_patient(url, outage_s=5)
        assert flushes, "no pipeline was sent: the test tested nothing"


def test_a_heartbeat_is_written_after_the_script_cache_emptied(client: redis.Redis) -> None:
    jobs = JobStore(client, ttl_s=60)
    jobs.create("j1", "ingest", 1, {})
    Liveness(jobs, timeout_s=8).beat({"j1": ["t1"]}, {"host": "h", "pid": 1})
    beat = client.hget(JobKeys("j1").record, BEAT_PREFIX + "t1")
    assert beat is not None and json.loads(beat)["host"] == "h"


def test_document_locks_are_taken_refreshed_and_released_after_the_script_cache_emptied(
    client: redis.Redis,
) -> None:
    locks = DocumentLocks(client, ttl_s=30, wait_s=1)
    key = DocumentLocks.key("c", "a")
    with locks.hold("c", ["a"], owner="batch-1"):
        assert client.get(key) == b"batch-1"
        client.pexpire(key, 1_000)
        locks.refresh()  # the heartbeat's extension, also a pipeline of scripts
        assert client.pttl(key) > 10_000
    assert client.get(key) is None


def test_a_tombstone_is_written_after_the_script_cache_emptied(client: redis.Redis) -> None:
    fences = Fences(client, ttl_s=60, writer_ttl_s=10)
    fences.tombstone("c", ["a", "b"], seq=7)
    assert fences.floors("c", ["a", "b", "z"]) == {"a": 7, "b": 7, "z": 0}
