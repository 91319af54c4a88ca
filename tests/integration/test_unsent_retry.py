"""A retry that could not be sent (a fault stack of its own: real Redis as the broker, Milvus, Celery
workers and model; its own, so that no message left unacknowledged by an earlier test's outage comes back
here). Redis away past the workers' patience in a batch's body: the retry cannot be published, so the
delivery is rejected, and Celery runs neither `on_retry` nor `after_return`. Celery's reject dropped the
message, and the delivery's heartbeat and lease lived on in its process, refreshed for good: the batch's
next delivery, had there been one, found it run by another, and the job stayed `running`."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from tests.integration.crashpoints import arm, disarm, paused, release
from tests.integration.faultstack import FaultStack, documents, fault_stack, stored_once
from workers.fanout import lease_key

pytestmark = pytest.mark.integration

POINTS = ["before_ledger", "released", "task_start"]


@pytest.fixture(scope="module")
def unsent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """Workers whose Redis commands, and publishing, give up after about a second (WORKER_REDIS_OUTAGE_S)."""
    extra = {"TEST_PAUSE_AT": json.dumps(POINTS), "TEST_PAUSE_S": "120", "WORKER_REDIS_OUTAGE_S": "1"}
    with fault_stack(tmp_path_factory.mktemp("unsent-retry"), extra) as fs:
        for point in POINTS:
            disarm(fs, point)
        yield fs


def test_a_batch_whose_retry_could_not_be_sent_lets_go_and_runs_again(
    unsent: FaultStack,
) -> None:
    """The delivery lets go of its beat and lease however it ended (`release_held`), and its message goes
    back to the queue, so the batch runs again at once."""
    docs = documents("r", 4)
    arm(unsent, "before_ledger")
    job_id = unsent.submit("retry-unsent", docs)
    paused(unsent, "before_ledger")  # written; the ledger's Redis write next
    arm(unsent, "released")
    unsent.stop("redis", signal.SIGKILL)
    release(unsent, "before_ledger")
    paused(unsent, "released")  # the write gave up, the retry found no broker: the delivery ended
    unsent.restart_redis()
    arm(unsent, "task_start")
    release(unsent, "released")
    paused(unsent, "task_start")  # the message is back: its next delivery, before it asks Redis anything
    held = unsent.redis().exists(lease_key(job_id, 0))
    assert (unsent.beats(job_id), held) == ({}, 0)  # before: beaten for and leased by the ended delivery
    release(unsent, "task_start")

    job = unsent.wait_job(job_id)
    assert job["state"] == "succeeded", job  # before: running for good, beaten for by a delivery long gone
    result = job["result"]
    assert (result["succeeded"] + result["skipped"], result["failed"]) == (4, 0), job  # as after a kill
    assert unsent.deliveries(job_id) == [1, 2], unsent.deliveries(job_id)  # the batch, delivered again
    assert unsent.beats(job_id) == {}, unsent.beats(job_id)
    stored_once(unsent, "retry-unsent", docs)
