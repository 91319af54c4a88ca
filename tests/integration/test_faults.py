"""Faults on real Redis, Milvus, Celery workers and the API: killed workers, Redis and Milvus outages.

These tests kill and restart processes, so they run on a stack of their own (`faultstack`), never on
the shared `stack`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import requests

from devstack.private import VISIBILITY_S
from devstack.processes import start_milvus, start_redis
from store.rows import chunk_pk
from tests.integration.conftest import healthy
from tests.integration.faultstack import (
    FaultStack,
    batch_in_write_window,
    documents,
    fault_stack,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with fault_stack(tmp_path_factory.mktemp("faults")) as stack:
        yield stack


def test_a_killed_child_is_redelivered_and_the_job_ends_with_every_chunk_once(faults: FaultStack) -> None:
    docs = documents("doc", 12)  # three batches of four
    clean = faults.run("/api/v1/documents", json={"collection": "clean", "documents": docs})
    assert clean["state"] == "succeeded" and clean["result"]["succeeded"] == 12, clean

    job_id = faults.submit("killed", docs)
    beat = wait_for(lambda: batch_in_write_window(faults, job_id, "killed", docs[4:8]), 90, "batch 1")
    assert beat["pid"] != faults.proc("ingest-worker").pid  # the pool's child, not the worker itself
    os.kill(beat["pid"], signal.SIGKILL)

    job = faults.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert job["result"]["failed"] == 0
    assert job["result"]["succeeded"] + job["result"]["skipped"] == 12
    assert faults.deliveries(job_id) == [1, 1, 1, 2]  # coordinator, three batches, batch 1 twice

    clean_count, clean_rows = faults.chunks("clean")
    count, rows = faults.chunks("killed")
    assert count == len(rows) == len({row["pk"] for row in rows}) == clean_count == len(clean_rows)
    expected = {
        chunk_pk("killed", row["doc_id"], row["chunk_index"], row["content_hash"]) for row in clean_rows
    }
    assert {row["pk"] for row in rows} == expected
    assert {row["doc_id"] for row in rows} == {doc["id"] for doc in docs}


def test_a_task_whose_worker_always_dies_fails_after_max_deliveries(faults: FaultStack) -> None:
    docs = documents("doomed", 2)  # one batch
    job_id = faults.submit("doomed", docs)
    killed: list[int] = []

    def kill_each_delivery() -> bool:
        for beat in faults.beats(job_id).values():
            if beat["pid"] not in killed:
                os.kill(beat["pid"], signal.SIGKILL)
                killed.append(beat["pid"])
        body = faults.get(f"/api/v1/jobs/{job_id}").json()
        assert body["state"] in ("queued", "running", "failed"), body
        return bool(body["state"] == "failed")

    wait_for(kill_each_delivery, 90, "the job to give up")
    job = faults.wait_job(job_id)
    assert len(killed) == 2 and job["state"] == "failed"
    assert "worker lost 2 times" in job["error"]
    report = faults.get(f"/api/v1/jobs/{job_id}/documents").json()["items"]
    assert [item["status"] for item in report] == ["failed", "failed"]
    assert all("given up after 2 deliveries" in item["reason"] for item in report)
    time.sleep(2)
    assert faults.deliveries(job_id) == [1, 3]  # no endless loop: the third delivery failed it
    assert faults.get(f"/api/v1/jobs/{job_id}").json()["state"] == "failed"


@pytest.fixture
def steady(faults: FaultStack) -> None:
    """Documents stored before Milvus goes down."""
    job = faults.run("/api/v1/documents", json={"collection": "steady", "documents": documents("s", 2)})
    assert job["state"] == "succeeded", job


@pytest.fixture
def milvus_down(faults: FaultStack, steady: None) -> Iterator[None]:
    """Milvus stopped for the test (after `steady` stored documents), running again after it."""
    faults.stop("milvus")
    wait_for(lambda: not faults.milvus_port_open(), 20, "Milvus to stop")
    try:
        yield
    finally:
        if not faults.milvus_port_open():
            start_milvus(faults.sup, faults.milvus_uri, faults.tmp / "milvus")


def test_milvus_down_tasks_retry_then_fail_and_nothing_is_half_written(
    faults: FaultStack, steady: None, milvus_down: None
) -> None:
    health = faults.get("/healthz")
    assert health.status_code == 503
    checks = health.json()["checks"]
    assert not checks["milvus"]["ok"] and checks["redis"]["ok"] and checks["broker"]["ok"]
    docs = documents("lost", 3)
    ingest_id = faults.submit("outage", docs)
    ask = faults.post("/api/v1/ask", json={"question": "glaciers", "collection": "steady"})
    assert ask.status_code == 202

    ingest, answer = faults.wait_job(ingest_id), faults.wait_job(ask.json()["job_id"])
    assert ingest["state"] == "failed" and "Milvus unavailable" in ingest["error"], ingest
    assert answer["state"] == "failed" and "Milvus unavailable" in answer["error"], answer
    report = faults.get(f"/api/v1/jobs/{ingest_id}/documents").json()["items"]
    assert {item["status"] for item in report} == {"failed"} and len(report) == 3
    assert faults.attempts(ingest_id) == [[0, 1, 2]]  # the first try and TASK_MAX_RETRIES=2 retries

    start_milvus(faults.sup, faults.milvus_uri, faults.tmp / "milvus")
    wait_for(lambda: healthy(faults.url), 60, "Milvus back in /healthz", every_s=1)
    time.sleep(2)  # the workers' gRPC channels retry within 1 s (store.connection); two quick
    # retries of 0-2 s would not cover that, the default five retries of 2-60 s do
    assert faults.chunks("outage") == (0, [])  # the failed documents left nothing behind
    retry = faults.run(f"/api/v1/jobs/{ingest_id}/retry")
    assert retry["state"] == "succeeded" and retry["result"]["succeeded"] == 3, retry
    again = faults.run("/api/v1/ask", json={"question": "glaciers", "collection": "steady", "top_k": 1})
    assert again["state"] == "succeeded" and again["result"]["passages"], again


def _is_503_problem(response: requests.Response, mentions: str) -> bool:
    body = response.json()
    return (
        response.status_code == 503
        and response.headers["Content-Type"] == "application/problem+json"
        and body["status"] == 503
        and mentions in body["detail"]
        and "Traceback" not in response.text
    )


def test_redis_restart_mid_job_answers_503_meanwhile_and_the_job_completes(faults: FaultStack) -> None:
    docs = documents("r", 12)
    job_id = faults.submit("redis-outage", docs)
    wait_for(lambda: batch_in_write_window(faults, job_id, "redis-outage", docs[:4]), 90, "batch 0")
    faults.stop("redis")

    assert _is_503_problem(faults.get(f"/api/v1/jobs/{job_id}"), "Redis")
    assert _is_503_problem(faults.get(f"/api/v1/jobs/{job_id}", params={"wait": 5}), "Redis")
    posted = faults.post("/api/v1/documents", json={"collection": "x", "documents": [{"text": "hi"}]})
    assert _is_503_problem(posted, "unreachable")
    assert _is_503_problem(faults.post("/api/v1/ask", json={"question": "hi"}), "unreachable")
    health = faults.get("/healthz")
    assert health.status_code == 503 and not health.json()["checks"]["redis"]["ok"]
    time.sleep(2)

    start_redis(faults.sup, faults.redis_url, faults.tmp / "redis")
    job = faults.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 12, job
    count, rows = faults.chunks("redis-outage")
    assert count == len({row["pk"] for row in rows}) and {row["doc_id"] for row in rows} == {
        doc["id"] for doc in docs
    }
    after = faults.run("/api/v1/documents", json={"collection": "after", "documents": documents("a", 2)})
    assert after["state"] == "succeeded", after


def test_a_vanished_worker_hands_its_batch_on_and_the_next_worker_ends_the_job(faults: FaultStack) -> None:
    """The whole ingest worker SIGKILLed mid-batch (nothing left to requeue its message): once its heartbeat
    is stale the sweeper puts the message back in the queue, long before the broker's visibility timeout;
    the job waits `running` (never `failed`) for a worker, and the next one ends it with every chunk once."""
    docs = documents("v", 8)
    job_id = faults.submit("vanish", docs)
    wait_for(lambda: batch_in_write_window(faults, job_id, "vanish", docs[:4]), 90, "batch 0")
    faults.stop("ingest-worker", signal.SIGKILL)  # the whole worker: no process is left to requeue
    killed_at = time.monotonic()

    client = faults.redis()
    handed_on = lambda: not client.hlen("unacked") and client.llen("ingest") == 2  # noqa: E731
    wait_for(handed_on, 30, "batch 0 back in the queue beside batch 1")
    assert time.monotonic() - killed_at < VISIBILITY_S
    waiting = faults.get(f"/api/v1/jobs/{job_id}").json()
    assert waiting["state"] == "running" and "went back to the queue" in waiting["error"], waiting

    faults.start_ingest_worker()
    job = faults.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["failed"] == 0, job
    assert job["result"]["succeeded"] + job["result"]["skipped"] == 8
    assert faults.deliveries(job_id) == [1, 1, 2]  # coordinator, batch 1 once, batch 0 twice
    count, rows = faults.chunks("vanish")
    assert count == len(rows) == len({row["pk"] for row in rows})
    per_doc: dict[str, list[int]] = {}
    for row in rows:
        per_doc.setdefault(row["doc_id"], []).append(row["chunk_index"])
    assert per_doc.keys() == {doc["id"] for doc in docs}
    assert all(sorted(ix) == list(range(len(ix))) for ix in per_doc.values()), per_doc  # whole, once
