from __future__ import annotations

import json

import pytest

from common.errors import InvalidRequest
from common.isolation import describe
from common.job_record import (
    JobRecord,
    JobState,
    celery_end,
    decode_record,
    encode_fields,
    state_from_celery,
)


@pytest.mark.parametrize(
    ("celery", "quarry"),
    [
        ("PENDING", JobState.QUEUED),
        ("RECEIVED", JobState.QUEUED),
        ("STARTED", JobState.RUNNING),
        ("RETRY", JobState.RUNNING),
        ("SUCCESS", JobState.SUCCEEDED),
        ("FAILURE", JobState.FAILED),
        ("REVOKED", JobState.FAILED),
        ("PROGRESS", JobState.RUNNING),
    ],
)
def test_celery_states_map_to_job_states(celery: str, quarry: JobState) -> None:
    assert state_from_celery(celery) is quarry


def test_terminal_states() -> None:
    assert {state for state in JobState if state.terminal} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }


def test_record_round_trips_through_redis_encoding() -> None:
    record = JobRecord(job_id="j", kind="ask", state=JobState.SUCCEEDED, result={"passages": [1, "é"]})
    fields = record.to_json()
    fields.pop("job_id")
    raw = {k.encode(): v.encode() for k, v in encode_fields(fields).items()}
    assert decode_record("j", raw) == record


def test_worker_lost_failure_recorded_by_celery_is_noticed() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "WorkerLostError",
            "exc_message": ["Worker exited prematurely: signal 9 (SIGKILL)."],
        },
    }
    end = celery_end(json.dumps(meta).encode())
    assert end == (JobState.FAILED, "WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL).")
    assert celery_end(json.dumps({"status": "STARTED"}).encode()) is None
    assert celery_end(None) is None


def test_a_domain_failure_recorded_by_celery_reads_as_the_task_records_it() -> None:
    """Celery stores a failure before the task's own `on_failure` writes the record: a poll in between
    must read the text the job ends with (a domain error's own words), not another."""
    detail = "quarry.delete: malformed task payload (doc_ids: Input should be a valid list)"
    meta = {"status": "FAILURE", "result": {"exc_type": "InvalidRequest", "exc_module": "common.errors"}}
    meta["result"]["exc_message"] = [detail]  # type: ignore[index]
    assert celery_end(json.dumps(meta).encode()) == (JobState.FAILED, detail)
    assert detail == describe(InvalidRequest(detail))


def test_a_task_stopped_at_a_cancellation_checkpoint_reads_cancelled_before_its_hook_runs() -> None:
    """Celery stores JobCancelled as a FAILURE; `on_failure` then records the job cancelled. A read in
    between must say cancelled (the end the job gets), never failed."""
    cancelled = {"exc_type": "JobCancelled", "exc_module": "common.job_record", "exc_message": ["j"]}
    meta = json.dumps({"status": "FAILURE", "result": cancelled}).encode()
    assert celery_end(meta) == (JobState.CANCELLED, "cancelled by request")
    other = {"exc_type": "JobCancelled", "exc_module": "somewhere.else", "exc_message": ["j"]}
    assert celery_end(json.dumps({"status": "FAILURE", "result": other}).encode()) == (
        JobState.FAILED,
        "JobCancelled: j",
    )
    assert celery_end(json.dumps({"status": "SUCCESS", "result": cancelled}).encode()) is None
    assert celery_end(None) is None
