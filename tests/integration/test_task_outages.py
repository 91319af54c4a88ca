"""A Redis outage met as a task outages or as it stores its result (a fault stack of its own: real Redis,
Milvus, Celery workers and model). Celery's autoretry wraps only a task's body. The `before_start` hooks
(is the job over or cancelled, mark it running, count the delivery, take a batch's lease) ran outside it,
so an outage there, which the body would have retried, failed the job for good with "Redis unreachable".
A question's answer was stored in `on_success`, also outside it, where Celery only logs an error: an
outage there lost the answer, and the job, acknowledged, read as a lost worker."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import port_open
from tests.integration.crashpoints import arm, disarm, paused, release
from tests.integration.faultstack import (
    FaultStack,
    batch_in_write_window,
    documents,
    fault_stack,
    stored_once,
    wait_for,
)

pytestmark = pytest.mark.integration

POINTS = ["task_start", "task_end", "retry_outage"]


def _stack(tmp: Path, broker: dict[str, str]) -> contextlib.AbstractContextManager[FaultStack]:
    """Workers whose Redis commands give up after about a second (WORKER_REDIS_OUTAGE_S), so an outage
    outlasts them at once, well within the broker's 20 s visibility timeout (no redelivery muddles it)."""
    extra = {"TEST_PAUSE_AT": json.dumps(POINTS), "TEST_PAUSE_S": "120", "WORKER_REDIS_OUTAGE_S": "1"}
    return fault_stack(tmp, {**extra, **broker})


@pytest.fixture(scope="module")
def outages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with _stack(tmp_path_factory.mktemp("task-outages"), {}) as fs:
        for point in POINTS:
            disarm(fs, point)
        yield fs


@pytest.fixture(scope="module")
def rabbit_outages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """The same with RabbitMQ as the broker: it stays up while Redis is away, so it takes the
    acknowledgement of a task whose end Redis never got, and nothing delivers that task again."""
    if not port_open("127.0.0.1", 5672) or shutil.which("rabbitmqctl") is None:
        pytest.skip("no RabbitMQ at 127.0.0.1:5672 with rabbitmqctl to give the test a vhost of its own")
    with _private_vhost() as vhost:
        broker = {"BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}"}
        with _stack(tmp_path_factory.mktemp("task-outages-amqp"), broker) as fs:
            for point in POINTS:
                disarm(fs, point)
            yield fs


@contextlib.contextmanager
def _private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own, removed afterwards: Quarry's queue names are fixed, and the
    default vhost may hold another deployment's (or an earlier run's) messages."""
    vhost = f"quarry-test-{uuid.uuid4().hex[:12]}"
    add = ["rabbitmqctl", "-q", "add_vhost", vhost]
    added = subprocess.run(add, check=False, capture_output=True, text=True, timeout=60)
    if added.returncode:
        pytest.skip(f"rabbitmqctl could not add a vhost: {added.stderr.strip()[:200]}")
    try:
        permissions = ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]
        subprocess.run(permissions, check=True, timeout=60)
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, timeout=60)


def _outage_at_the_paused(fs: FaultStack, point: str) -> None:
    """Redis killed while a task waits at `point`, back once the task's next Redis command gave up."""
    paused(fs, point)
    fs.stop("redis", signal.SIGKILL)
    release(fs, point)
    paused(fs, "retry_outage")  # its Redis command gave up; nothing was retried or failed yet
    fs.restart_redis()
    release(fs, "retry_outage")


def test_an_outage_as_a_job_starts_is_retried_like_one_in_its_body(outages: FaultStack) -> None:
    docs = documents("o", 8)
    arm(outages, "task_start")
    arm(outages, "retry_outage")
    job_id = outages.submit("start-outage", docs)
    _outage_at_the_paused(outages, "task_start")  # the coordinator's start, before its first Redis command

    job = outages.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 8, job  # before: failed
    deliveries = outages.redis().hgetall(f"quarry:job:{job_id}:deliveries")
    assert deliveries.get(f"{job_id}:1") == "1" and f"{job_id}:0" not in deliveries, deliveries  # a retry ran
    stored_once(outages, "start-outage", docs)


def test_an_outage_as_a_batch_starts_is_retried_and_its_documents_are_not_failed(outages: FaultStack) -> None:
    docs = documents("b", 8)  # two batches of four, one ingest process: the second outages after the first
    job_id = outages.submit("batch-outage", docs)
    wait_for(lambda: batch_in_write_window(outages, job_id, "batch-outage", docs[:4]), 90, "batch 0")
    arm(outages, "task_start")  # the next task to start is batch 1
    arm(outages, "retry_outage")
    _outage_at_the_paused(outages, "task_start")

    job = outages.wait_job(job_id)
    assert job["state"] == "succeeded", job
    assert (job["result"]["succeeded"], job["result"]["failed"]) == (8, 0), job  # before: batch 1's 4 failed
    assert [1] in outages.attempts(job_id), outages.attempts(job_id)  # batch 1 ran as a retry, never failed
    stored_once(outages, "batch-outage", docs)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_an_outage_as_an_answer_is_stored_is_retried_and_the_question_answered(
    broker: str, request: pytest.FixtureRequest
) -> None:
    outages: FaultStack = request.getfixturevalue("outages" if broker == "redis" else "rabbit_outages")
    docs = documents("e", 3)
    seeded = outages.run("/api/v1/documents", json={"collection": "end-outage", "documents": docs})
    assert seeded["state"] == "succeeded", seeded
    arm(outages, "task_end")
    arm(outages, "retry_outage")
    response = outages.post("/api/v1/ask", json={"collection": "end-outage", "question": "glacier ice"})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    _outage_at_the_paused(outages, "task_end")  # answered, the answer not stored yet

    job = outages.wait_job(job_id)
    assert job["state"] == "succeeded", job  # before, with RabbitMQ: failed as a lost worker
    assert {p["doc_id"] for p in job["result"]["passages"]} <= {d["id"] for d in docs}, job
    assert job["result"]["passages"], job
    deliveries = outages.redis().hgetall(f"quarry:job:{job_id}:deliveries")
    assert deliveries.get(f"{job_id}:1") == "1", deliveries  # answered again by a retry
