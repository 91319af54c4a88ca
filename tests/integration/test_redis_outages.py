"""Redis killed or emptied of a message under real workers (a fault stack of its own: real Redis, Milvus,
Celery workers and model): the coordinator, heartbeats and the broker's lost messages. Every job ends once,
with each document's rows as a clean run leaves them.

The lost-reply tests of the same writes, one Redis command at a time, are in test_redis_faults.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.processes import celery_argv, start_redis
from store.rows import chunk_pk
from tests.integration.crashpoints import arm, disarm, paused, release
from tests.integration.faultstack import FaultStack, batch_in_write_window, documents, fault_stack, wait_for
from workers.reconciler import unacked_ids

pytestmark = pytest.mark.integration

COORDINATOR_POINTS = ["split", "before_enqueue", "before_batch"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A fault stack whose coordinator can pause inside its split, with a soft time limit a test can reach."""
    extra = {
        "TEST_PAUSE_AT": json.dumps(COORDINATOR_POINTS),
        "TEST_PAUSE_S": "120",
        "TASK_SOFT_TIME_LIMIT_S": "25",
        "TASK_TIME_LIMIT_S": "90",
        # The reconciler looks every second for queued jobs whose message is in no broker structure.
        "SWEEP_INTERVAL_S": "1",
        "REQUEUE_AFTER_S": "3",
    }
    with fault_stack(tmp_path_factory.mktemp("redis-faults-stack"), extra) as fs:
        for point in COORDINATOR_POINTS:
            disarm(fs, point)
        yield fs


def _batch_files(fs: FaultStack, job_id: str) -> dict[str, int]:
    """The job's batch files and their inodes (a rewrite renames a new file into place)."""
    folder = fs.tmp / "data" / "uploads" / job_id / "batches"
    return {path.name: path.stat().st_ino for path in folder.glob("*.jsonl")} if folder.is_dir() else {}


def _same_rows_as_clean(fs: FaultStack, collection: str, clean: str) -> None:
    clean_count, clean_rows = fs.chunks(clean)
    count, rows = fs.chunks(collection)
    assert count == len(rows) == len({row["pk"] for row in rows}) == clean_count, (count, clean_count)
    expected = {chunk_pk(collection, r["doc_id"], r["chunk_index"], r["content_hash"]) for r in clean_rows}
    assert {row["pk"] for row in rows} == expected


def _reports_once(fs: FaultStack, job_id: str, docs: list[dict[str, Any]]) -> None:
    page = fs.get(f"/api/v1/jobs/{job_id}/documents", params={"limit": 100}).json()
    ids = [item["doc_id"] for item in page["items"]]
    assert page["total"] == len(ids) == len(set(ids)) == len(docs), page


def test_a_soft_time_limit_in_the_coordinator_fails_the_job_and_removes_its_batch_files(
    faults: FaultStack,
) -> None:
    arm(faults, "split")
    job_id = faults.submit("soft-limit", documents("s", 12))
    paused(faults, "split")  # one batch file written; the coordinator waits here past its soft limit
    assert _batch_files(faults, job_id)
    job = faults.wait_job(job_id, timeout_s=60)
    assert job["state"] == "failed", job
    assert "time limit (TASK_SOFT_TIME_LIMIT_S=25 s)" in job["error"], job
    assert not _batch_files(faults, job_id)  # its partial batch files are gone
    assert faults.deliveries(job_id) == [1]  # no batch ran, the coordinator was not delivered again


def test_a_coordinator_killed_after_its_split_resumes_without_parsing_again(faults: FaultStack) -> None:
    docs = documents("k", 12)
    clean = faults.run("/api/v1/documents", json={"collection": "resume-clean", "documents": docs})
    assert clean["state"] == "succeeded", clean
    arm(faults, "before_enqueue")
    job_id = faults.submit("resume", docs)
    pid = paused(faults, "before_enqueue")  # every batch file written, nothing queued
    files = _batch_files(faults, job_id)
    assert len(files) == 3
    os.kill(pid, signal.SIGKILL)

    job = faults.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 12, job
    assert _batch_files(faults, job_id) == files  # the same files: the redelivery did not split again
    assert faults.deliveries(job_id) == [1, 1, 1, 2]  # the coordinator twice, each batch once
    _same_rows_as_clean(faults, "resume", "resume-clean")
    _reports_once(faults, job_id, docs)


def test_a_siblings_stale_beat_never_settles_the_job_as_lost(faults: FaultStack) -> None:
    """Right after a Redis outage a task's beat reads stale while its worker is alive (no beat could be
    written); a batch starting then must not store the job as "worker lost" on that read."""
    docs = documents("g", 12)
    job_id = faults.submit("stale", docs)
    wait_for(lambda: batch_in_write_window(faults, job_id, "stale", docs[:4]), 90, "batch 0")
    stale = {"at": "2020-01-01T00:00:00.000Z", "until": time.time() - 1, "host": "elsewhere", "pid": 1}
    faults.redis().hset(f"quarry:job:{job_id}", "beat:a-sibling-after-an-outage", json.dumps(stale))

    job = wait_for(lambda: _ended_in_redis(faults, job_id), 120, "the job's stored end")
    assert job == "succeeded", job  # today's code stored `failed` (worker lost) here
    assert faults.get(f"/api/v1/jobs/{job_id}").json()["result"]["succeeded"] == 12


def _ended_in_redis(fs: FaultStack, job_id: str) -> str | None:
    state = json.loads(fs.redis().hget(f"quarry:job:{job_id}", "state") or "null")
    return state if state in ("succeeded", "failed", "cancelled") else None


def test_redis_sigkilled_with_jobs_queued_and_running_every_job_ends_once(faults: FaultStack) -> None:
    docs = {f"kill{i}": documents(f"x{i}", 8) for i in range(3)}
    clean = faults.run("/api/v1/documents", json={"collection": "kill-clean", "documents": docs["kill0"]})
    assert clean["state"] == "succeeded", clean
    jobs = {name: faults.submit(name, batch) for name, batch in docs.items()}
    asks = [faults.post("/api/v1/ask", json={"question": f"how do glaciers {i} change?"}) for i in range(3)]
    assert all(response.status_code == 202 for response in asks)
    wait_for(lambda: batch_in_write_window(faults, jobs["kill0"], "kill0", docs["kill0"][:4]), 90, "a batch")

    faults.stop("redis", signal.SIGKILL)  # batches running and queued, asks queued or answering
    time.sleep(10)  # longer than the heartbeat timeout (8 s): every beat is stale when Redis is back
    start_redis(faults.sup, faults.redis_url, faults.tmp / "redis")

    for name, job_id in jobs.items():
        job = faults.wait_job(job_id, timeout_s=180)
        assert job["state"] == "succeeded", (name, job.get("error"), job)
        assert job["result"]["failed"] == 0 and job["result"]["succeeded"] + job["result"]["skipped"] == 8
        _reports_once(faults, job_id, docs[name])
    _same_rows_as_clean(faults, "kill0", "kill-clean")
    for name in ("kill1", "kill2"):
        count, rows = faults.chunks(name)
        assert count == len({row["pk"] for row in rows}) == len(rows) > 0
        assert {row["doc_id"] for row in rows} == {doc["id"] for doc in docs[name]}
    for response in asks:
        ask = faults.wait_job(response.json()["job_id"], timeout_s=120)
        assert ask["state"] == "succeeded" or ask["error"], ask  # ended, and a failure says why


def test_a_queued_jobs_lost_message_is_sent_again_and_the_job_ends_once(faults: FaultStack) -> None:
    """The gap the SIGKILL test above found, made exactly: a job recorded as queued whose message was
    popped from its queue list (kombu's BRPOP) and never recorded in `unacked` (the taker died) is in no
    broker structure. The parse workers' sweeper (workers.reconciler) sends it again; it runs once."""
    for worker in ("ask-worker", "parse-worker", "ingest-worker"):
        faults.stop(worker)  # graceful: nothing of theirs stays unacknowledged
    broker = faults.redis()
    docs = documents("lost", 6)
    ingest_id = faults.submit("lost", docs)
    ask = faults.post("/api/v1/ask", json={"question": "how do tides change?", "collection": "lost"})
    assert ask.status_code == 202, ask.text
    ask_id = ask.json()["job_id"]
    try:
        for queue, job_id in (("parse", ingest_id), ("ask", ask_id)):
            popped = json.loads(broker.rpop(queue) or "{}")  # taken, then lost with its taker
            assert popped["headers"]["id"] == job_id and broker.llen(queue) == 0
        assert not unacked_ids(broker.hvals("unacked")) & {ingest_id, ask_id}  # in no broker structure
    finally:
        faults.sup.start("parse-worker", celery_argv("parse", 1))
        faults.start_ingest_worker()
        faults.sup.start("ask-worker", celery_argv("ask", 4, threads=True, name="ask"))

    job = faults.wait_job(ingest_id, timeout_s=120)  # today: queued forever
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 6, job
    assert set(faults.deliveries(ingest_id)) == {1}  # the coordinator and each batch, once
    _reports_once(faults, ingest_id, docs)
    answer = faults.wait_job(ask_id, timeout_s=120)
    assert answer["state"] == "succeeded", answer
    assert faults.deliveries(ask_id) == [1]
    assert not broker.zscore("quarry:jobs:queued", f"quarry:job:{ingest_id}")


def test_a_running_jobs_lost_batch_message_is_sent_again_and_the_job_ends_once(faults: FaultStack) -> None:
    """The same gap for a batch (workers.lost_batches): its message popped and lost, the job would stay
    `running` forever with one batch never counted."""
    docs = documents("lostb", 12)  # three batches of four
    arm(faults, "before_batch")
    job_id = faults.submit("lostbatch", docs)
    paused(faults, "before_batch")  # batch 0 holds the only worker; batches 1 and 2 wait in the list
    broker = faults.redis()
    wait_for(lambda: broker.llen("ingest") == 2, 30, "batches 1 and 2 queued")
    popped = json.loads(broker.rpop("ingest") or "{}")  # the oldest waiting: taken, then lost
    _, kwargs, _ = json.loads(base64.b64decode(popped["body"]))
    assert (kwargs["job_id"], kwargs["index"]) == (job_id, 1)
    release(faults, "before_batch")

    job = faults.wait_job(job_id, timeout_s=120)  # today: running forever
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 12, job
    assert faults.deliveries(job_id) == [1, 1, 1, 1]  # the coordinator and each batch, once
    _reports_once(faults, job_id, docs)
    count, rows = faults.chunks("lostbatch")
    assert count == len({row["pk"] for row in rows}) and {row["doc_id"] for row in rows} == {
        d["id"] for d in docs
    }


def test_redis_killed_while_a_coordinator_sends_its_batches_delays_them_and_fails_nothing(
    faults: FaultStack,
) -> None:
    """The coordinator's sends wait a Redis restart out, as its Redis commands do. Before, Celery's publish
    gave up after about 0.6 s and the whole job failed with its upload split and nothing run: what a CI run
    of the SIGKILL test above once showed, whose kill can land in a coordinator's sends."""
    docs = documents("fan", 8)
    arm(faults, "before_enqueue")
    job_id = faults.submit("fanout-outage", docs)
    paused(faults, "before_enqueue")  # the split recorded, no batch sent yet
    faults.stop("redis", signal.SIGKILL)
    release(faults, "before_enqueue")
    time.sleep(3)  # the outage: longer than Celery's own publish retries
    start_redis(faults.sup, faults.redis_url, faults.tmp / "redis")

    job = faults.wait_job(job_id, timeout_s=120)
    assert job["state"] == "succeeded", (job.get("error"), job)
    assert job["result"]["succeeded"] == 8 and job["result"]["failed"] == 0, job
    _reports_once(faults, job_id, docs)
    count, rows = faults.chunks("fanout-outage")
    assert count == len({row["pk"] for row in rows}) and {row["doc_id"] for row in rows} == {
        d["id"] for d in docs
    }
