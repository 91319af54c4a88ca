"""Job state moves on a real Redis (the Lua guard): the first end is final, a start never reopens it."""

from __future__ import annotations

import json
import uuid

import redis

from common.job_record import JobState
from common.job_schema import JobKeys
from common.jobs import JobStore
from tests.integration.conftest import Stack


def _store(stack: Stack) -> JobStore:
    return JobStore(redis.Redis.from_url(stack.redis_url), ttl_s=60)


def test_a_cancelled_job_is_neither_started_nor_ended_again(stack: Stack) -> None:
    jobs, job_id = _store(stack), uuid.uuid4().hex
    jobs.create(job_id, "ask", 1, {})
    jobs.cancel(job_id)
    assert not jobs.mark_running(job_id)
    jobs.mark_succeeded(job_id, {"passages": []})
    record = jobs.get(job_id)
    assert record is not None and record.state is JobState.CANCELLED and record.result is None


def test_a_running_job_ends_once_and_keeps_its_ttl(stack: Stack) -> None:
    jobs, job_id = _store(stack), uuid.uuid4().hex
    jobs.create(job_id, "ask", 1, {})
    assert jobs.mark_running(job_id) and jobs.mark_running(job_id)  # a retry starts it again
    jobs.cancel(job_id)  # running: only asked to stop at its next checkpoint
    assert jobs.get(job_id).state is JobState.RUNNING  # type: ignore[union-attr]
    jobs.mark_succeeded(job_id, {"passages": [1]})
    jobs.mark_failed(job_id, "late failure of a redelivered copy")
    record = jobs.get(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED and record.error is None
    assert 0 < jobs.client.ttl(jobs.key(job_id)) <= 60


def test_a_missing_record_is_not_recreated(stack: Stack) -> None:
    jobs, job_id = _store(stack), uuid.uuid4().hex
    assert not jobs.mark_running(job_id)
    jobs.mark_failed(job_id, "nothing to fail")
    assert not jobs.client.exists(jobs.key(job_id))


def test_a_running_job_whose_task_stopped_for_its_cancel_reads_cancelled_until_its_hook_writes_it(
    stack: Stack,
) -> None:
    """Between Celery storing the coordinator's JobCancelled and `on_failure` recording the end, the job
    reads cancelled, as it ends (in CI a DELETE answered `failed` in that window)."""
    jobs, job_id = _store(stack), uuid.uuid4().hex
    jobs.create(job_id, "ingest", 1, {})
    assert jobs.mark_running(job_id)
    jobs.cancel(job_id)
    result = {"exc_type": "JobCancelled", "exc_module": "common.job_record", "exc_message": [job_id]}
    jobs.client.set(JobKeys(job_id).celery_meta, json.dumps({"status": "FAILURE", "result": result}))
    record = jobs.get(job_id)
    assert record is not None and (record.state, record.error) == (JobState.CANCELLED, "cancelled by request")
    jobs.mark_cancelled(job_id)  # the hook: the stored end is the one read before
    ended = jobs.get(job_id)
    assert ended is not None and (ended.state, ended.error) == (record.state, record.error)
