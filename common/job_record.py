"""A job's record as clients read it: its states, the record itself, and how its fields are stored in the
job's Redis hash (each field JSON, `common.job_schema` names them) and read back.

Celery's own end of a task (`celery_end`) is read beside the record: Celery records a hard time limit from
the parent process, where no Quarry code runs, and any failure before the task's hooks write the record
(`common.jobs.JobStore` reconciles the two).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from common.errors import QuarryError
from common.job_schema import declared

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


OPEN_STATES: tuple[str, ...] = (JobState.QUEUED, JobState.RUNNING)
CANCELLED = {"state": JobState.CANCELLED.value, "error": "cancelled by request"}


class JobCancelled(Exception):
    """Raised inside a task when a client cancelled its job; the job ends `cancelled`, not `failed`."""


_CELERY_STATES = {
    "PENDING": JobState.QUEUED,
    "RECEIVED": JobState.QUEUED,
    "STARTED": JobState.RUNNING,
    "RETRY": JobState.RUNNING,
    "SUCCESS": JobState.SUCCEEDED,
    "FAILURE": JobState.FAILED,
    "REVOKED": JobState.FAILED,
    "REJECTED": JobState.FAILED,
}


def state_from_celery(celery_state: str) -> JobState:
    """Quarry's state for a Celery state; unknown custom states count as running."""
    return _CELERY_STATES.get(celery_state.upper(), JobState.RUNNING)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    job_id: str
    kind: str
    state: JobState = JobState.QUEUED
    progress: dict[str, int] = field(default_factory=lambda: {"done": 0, "total": 0})
    result: Any = None
    error: str | None = None
    owner: str | None = None  # the API key's name; None when the API is open
    collection: str | None = None  # the collection it works on
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None  # last sign of life of a task running for the job
    callback: dict[str, Any] | None = None  # webhook: {"url", "state", "attempts", ...} (common.webhooks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in fields.items()}


def decode_record(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    """The client's view of a stored record; a field the schema does not declare is a bug, logged."""
    values = {key.decode(): json.loads(value) for key, value in raw.items()}
    unknown = sorted(name for name in values if not declared(name))
    if unknown:
        log.warning("job %s: fields %s are not declared in common.job_schema", job_id, unknown)
    values["job_id"] = job_id
    values["state"] = JobState(values.get("state", "queued"))
    known = JobRecord.__dataclass_fields__
    return JobRecord(**{name: value for name, value in values.items() if name in known})


def celery_end(meta_raw: bytes | None) -> tuple[JobState, str] | None:
    """The end Celery stored for a task whose record is still open: Celery stores it before the task's own
    `on_failure` writes the record, so a read in between takes the end the record will get. A task that
    stopped at a cancellation checkpoint (`JobCancelled`) ends cancelled there, not failed: read it so, or a
    client cancelling a running job could be told it failed (seen in CI on a fast machine)."""
    meta = json.loads(meta_raw) if meta_raw else {}
    reason = _failure_reason(meta)
    if reason is None:
        return None
    result = meta.get("result")
    if isinstance(result, dict) and (result.get("exc_module"), result.get("exc_type")) == (
        JobCancelled.__module__,
        JobCancelled.__name__,
    ):
        return JobState.CANCELLED, CANCELLED["error"]
    return JobState.FAILED, reason


def _failure_reason(meta: dict[str, Any]) -> str | None:
    """The failure reason in a task's Celery meta, if it stored a failure."""
    if state_from_celery(str(meta.get("status", ""))) is not JobState.FAILED:
        return None
    result = meta.get("result") or {}
    message = result.get("exc_message") if isinstance(result, dict) else result
    if isinstance(message, list):
        message = " ".join(str(part) for part in message)
    kind = result.get("exc_type", "Error") if isinstance(result, dict) else "Error"
    if message and isinstance(result, dict) and result.get("exc_module") == QuarryError.__module__:
        # A domain error in its own words, as the task records it (`common.isolation.describe`): Celery
        # stores its failure before the task's `on_failure` writes the record, and a poll in between must
        # not read another text than the one the job ends with.
        return str(message)
    return f"{kind}: {message}" if message else str(kind)
