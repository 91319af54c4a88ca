"""A small upload on the session stack (`make run`'s two ingest processes, 64 documents per batch): it is cut
into two near-equal batches that both processes embed at once, where one batch kept one process busy and
left the other idle (`INGEST_SMALL_JOB_BATCHES`); a larger upload is cut into plain batches."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from common.job_schema import Field, JobKeys
from tests.integration.conftest import Stack
from tests.integration.faultstack import batch_beats, documents

pytestmark = pytest.mark.integration


def _running_pids(client: redis.Redis, job_id: str) -> set[int]:
    """The processes whose batches of the job beat right now."""
    return {int(beat["pid"]) for beat in batch_beats(client, job_id).values()}


def test_a_small_upload_keeps_both_ingest_processes_busy(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    docs = documents("small", 40)  # under one batch (64): one process only, before
    response = stack.post("/api/v1/documents", json={"collection": "small-job", "documents": docs})
    assert response.status_code == 202, response.text
    job_id, seen, ended = response.json()["job_id"], [], threading.Event()

    def watch() -> None:
        while not ended.is_set():
            seen.append(_running_pids(client, job_id))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    job = stack.wait_job(job_id)
    ended.set()
    watcher.join(5)

    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 40, job
    assert client.hget(JobKeys(job_id).record, Field.BATCHES_TOTAL) == "2"  # 20 + 20
    assert max(len(pids) for pids in seen) == 2, set().union(*seen)  # two processes embedded it at once
    stored = stack.get("/api/v1/collections/small-job").json()
    assert stored["documents"] == 40 and stored["chunks"] == job["result"]["chunks"], stored


def test_an_upload_over_the_spread_is_cut_into_plain_batches(stack: Stack) -> None:
    job = stack.run(
        "/api/v1/documents", json={"collection": "plain-job", "documents": documents("plain", 130)}
    )
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 130, job
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    assert client.hget(JobKeys(job["job_id"]).record, Field.BATCHES_TOTAL) == "3"  # 64 + 64 + 2
