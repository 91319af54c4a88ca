"""A Redis outage met as a task starts (a fault stack of its own: real Redis, Milvus, Celery workers and
model). Celery's autoretry wraps only a task's body; the `before_start` hooks (is the job over or
cancelled, mark it running, count the delivery, take a batch's lease) ran outside it, so an outage there,
which the body would have retried, failed the job for good with "Redis unreachable"."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from devstack.processes import start_redis
from tests.integration.conftest import healthy
from tests.integration.crashpoints import arm, disarm, paused, release
from tests.integration.faultstack import FaultStack, batch_in_write_window, documents, fault_stack, wait_for

pytestmark = pytest.mark.integration

POINTS = ["task_start", "start_outage"]


@pytest.fixture(scope="module")
def starts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """Workers whose Redis commands give up after about a second (WORKER_REDIS_OUTAGE_S), so an outage
    outlasts them at once, well within the broker's 20 s visibility timeout (no redelivery muddles it)."""
    extra = {"TEST_PAUSE_AT": json.dumps(POINTS), "TEST_PAUSE_S": "120", "WORKER_REDIS_OUTAGE_S": "1"}
    with fault_stack(tmp_path_factory.mktemp("start-outage"), extra) as fs:
        for point in POINTS:
            disarm(fs, point)
        yield fs


def _outage_at_the_paused_start(fs: FaultStack) -> None:
    """Redis killed while a task waits at the start of its `before_start`, back once that gave up."""
    paused(fs, "task_start")  # before the task's first Redis command
    fs.stop("redis", signal.SIGKILL)
    release(fs, "task_start")
    paused(fs, "start_outage")  # its first Redis command gave up; nothing was retried or failed yet
    start_redis(fs.sup, fs.redis_url, fs.tmp / "redis")
    wait_for(lambda: healthy(fs.url), 30, "the API to reach Redis again")
    release(fs, "start_outage")


def _stored_once(fs: FaultStack, collection: str, docs: list[dict[str, str]]) -> None:
    count, rows = fs.chunks(collection)
    assert count == len(rows) == len({row["pk"] for row in rows}) > len(docs)
    assert {row["doc_id"] for row in rows} == {doc["id"] for doc in docs}


def test_an_outage_as_a_job_starts_is_retried_like_one_in_its_body(starts: FaultStack) -> None:
    docs = documents("o", 8)
    for point in POINTS:
        arm(starts, point)
    job_id = starts.submit("start-outage", docs)
    _outage_at_the_paused_start(starts)  # the coordinator's start

    job = starts.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 8, job  # before: failed
    deliveries = starts.redis().hgetall(f"quarry:job:{job_id}:deliveries")
    assert deliveries.get(f"{job_id}:1") == "1" and f"{job_id}:0" not in deliveries, deliveries  # a retry ran
    _stored_once(starts, "start-outage", docs)


def test_an_outage_as_a_batch_starts_is_retried_and_its_documents_are_not_failed(starts: FaultStack) -> None:
    docs = documents("b", 8)  # two batches of four, one ingest process: the second starts after the first
    job_id = starts.submit("batch-outage", docs)
    wait_for(lambda: batch_in_write_window(starts, job_id, "batch-outage", docs[:4]), 90, "batch 0")
    for point in POINTS:
        arm(starts, point)  # the next task to start is batch 1
    _outage_at_the_paused_start(starts)

    job = starts.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert (job["result"]["succeeded"], job["result"]["failed"]) == (8, 0), job  # before: batch 1's 4 failed
    assert [1] in starts.attempts(job_id), starts.attempts(job_id)  # batch 1 ran as a retry, never failed
    _stored_once(starts, "batch-outage", docs)
