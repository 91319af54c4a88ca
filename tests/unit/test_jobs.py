from __future__ import annotations

import json

import pytest

from common.jobs import JobRecord, JobState, _celery_failure, _decode, _encode, state_from_celery


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
    raw = {k.encode(): v.encode() for k, v in _encode(fields).items()}
    assert _decode("j", raw) == record


def test_worker_lost_failure_recorded_by_celery_is_noticed() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "WorkerLostError",
            "exc_message": ["Worker exited prematurely: signal 9 (SIGKILL)."],
        },
    }
    reason = _celery_failure(json.dumps(meta).encode())
    assert reason == "WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL)."
    assert _celery_failure(json.dumps({"status": "STARTED"}).encode()) is None
    assert _celery_failure(None) is None
