"""Job records in Redis: written when a job is submitted, updated by the worker, read in one round trip.

Celery reports unknown ids as PENDING and loses track of jobs whose process died, so Quarry keeps its own
record per job and only consults Celery's result backend (in the same round trip) to notice failures that
Celery recorded from the parent process (hard time limit). Running tasks beat in the record
(`common.liveness`); a running job with a stale beat reads as failed, its worker lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.errors import ServiceUnavailable

KEY_PREFIX = "quarry:job:"
CELERY_META_PREFIX = "celery-task-meta-"
BEAT_FIELD = "beat:"  # + task id: the running task's last heartbeat, removed when the task ends


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


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
    created_at: str = field(default_factory=now_iso)
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat_at: str | None = None  # last sign of life of a task running for the job

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in fields.items()}


def _decode(job_id: str, raw: dict[bytes, bytes]) -> JobRecord:
    values = {key.decode(): json.loads(value) for key, value in raw.items()}
    values["job_id"] = job_id
    values["state"] = JobState(values.get("state", "queued"))
    known = JobRecord.__dataclass_fields__
    return JobRecord(**{name: value for name, value in values.items() if name in known})


def _celery_failure(meta_raw: bytes | None) -> str | None:
    """The failure reason Celery stored for a task, if it stored one."""
    if not meta_raw:
        return None
    meta = json.loads(meta_raw)
    if state_from_celery(str(meta.get("status", ""))) is not JobState.FAILED:
        return None
    result = meta.get("result") or {}
    message = result.get("exc_message") if isinstance(result, dict) else result
    if isinstance(message, list):
        message = " ".join(str(part) for part in message)
    kind = result.get("exc_type", "Error") if isinstance(result, dict) else "Error"
    return f"{kind}: {message}" if message else str(kind)


class JobStore:
    """All reads and writes of job records; every Redis failure surfaces as ServiceUnavailable."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def key(job_id: str) -> str:
        return KEY_PREFIX + job_id

    @staticmethod
    def channel(job_id: str) -> str:
        return KEY_PREFIX + job_id + ":events"

    def create(
        self, job_id: str, kind: str, total: int, request: dict[str, Any], owner: str | None = None
    ) -> JobRecord:
        """Record a job before it is queued; `request` (the task's kwargs) is kept for retries."""
        record = JobRecord(job_id=job_id, kind=kind, progress={"done": 0, "total": total}, owner=owner)
        fields = record.to_json()
        fields.pop("job_id")
        self.write(job_id, {**fields, "request": request})
        return record

    def request(self, job_id: str) -> dict[str, Any] | None:
        with redis_errors():
            raw = self.client.hget(self.key(job_id), "request")
        return json.loads(raw) if raw else None

    def cancel(self, job_id: str) -> None:
        """Ask for cancellation; a job not yet started ends now, a running one at its next checkpoint."""
        self.write(job_id, {"cancel_requested": True})
        record = self.get(job_id)
        if record is not None and record.state is JobState.QUEUED:
            self.mark_cancelled(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with redis_errors():
            return bool(self.client.hget(self.key(job_id), "cancel_requested") == b"true")

    def check_cancelled(self, job_id: str) -> None:
        """Called by tasks between units of work."""
        if self.cancel_requested(job_id):
            raise JobCancelled(job_id)

    def mark_cancelled(self, job_id: str) -> None:
        self._finish(job_id, {"state": JobState.CANCELLED.value, "error": "cancelled by request"})

    def get(self, job_id: str) -> JobRecord | None:
        """One round trip: the record and Celery's own meta, reconciled."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.key(job_id))
            pipe.get(CELERY_META_PREFIX + job_id)
            raw, meta = pipe.execute()
        if not raw:
            return None
        record = _decode(job_id, raw)
        if not record.state.terminal:
            reason = _celery_failure(meta)
            if reason:
                record.state, record.error = JobState.FAILED, reason
        if record.state is JobState.RUNNING:
            lost = lost_worker(raw, time.time())
            if lost:
                record.state, record.error = JobState.FAILED, lost
        return record

    def mark_running(self, job_id: str) -> None:
        self.write(job_id, {"state": JobState.RUNNING.value, "started_at": now_iso(), "error": None})

    def set_progress(self, job_id: str, progress: dict[str, int]) -> None:
        """`progress` has at least done and total; ingest jobs add succeeded/failed/skipped/chunks."""
        self.write(job_id, {"progress": progress})

    def mark_succeeded(self, job_id: str, result: Any) -> None:
        self._finish(job_id, {"state": JobState.SUCCEEDED.value, "result": result, "error": None})

    def mark_failed(self, job_id: str, error: str) -> None:
        self._finish(job_id, {"state": JobState.FAILED.value, "error": error})

    def note_retry(self, job_id: str, error: str) -> None:
        self.write(job_id, {"error": f"retrying after: {error}"})

    def wait(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """Return as soon as the job is terminal, or after `timeout_s` with its current record."""
        deadline = time.monotonic() + timeout_s
        with redis_errors(), self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(self.channel(job_id))
            record = self.get(job_id)
            while record is not None and not record.state.terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                pubsub.get_message(timeout=min(remaining, 1.0))
                record = self.get(job_id)
            return record

    def _finish(self, job_id: str, fields: dict[str, Any]) -> None:
        self.write(job_id, {**fields, "finished_at": now_iso()})
        with redis_errors():
            self.client.publish(self.channel(job_id), fields["state"])

    def write(self, job_id: str, fields: dict[str, Any]) -> None:
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.key(job_id), mapping=_encode(fields))  # type: ignore[arg-type]
            pipe.expire(self.key(job_id), self.ttl_s)
            pipe.execute()


@contextmanager
def redis_errors() -> Iterator[None]:
    """The one place a Redis failure becomes ServiceUnavailable (503 in the API, a retry in a task)."""
    try:
        yield
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis unreachable: {exc}") from exc


def connect_redis(url: str, **options: Any) -> redis.Redis:
    """A client with timeouts, so a dead Redis fails fast instead of hanging a request."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30, **options
    )


def connect_redis_patient(url: str, outage_s: float) -> redis.Redis:
    """For workers: a command waits out a Redis restart of about `outage_s` instead of failing the task.

    The API keeps `connect_redis` and answers 503 at once; a worker in the middle of a batch would
    otherwise lose work it already did (embedded, written to Milvus) to a short outage.
    """
    retries = int(outage_s) + 4  # backoff reaches its 1 s cap after ~4 tries
    return connect_redis(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def lost_worker(raw: dict[bytes, bytes], now: float) -> str | None:
    """Why a running job is lost: one of its tasks stopped beating (its worker vanished), else None.

    Each beat carries its own deadline, so readers (the API) need no setting to judge it. A task whose
    child process died and whose message went back to the queue has no beat until it runs again.
    """
    for name, value in raw.items():
        if not name.startswith(BEAT_FIELD.encode()):
            continue
        beat = json.loads(value)
        if beat["until"] < now:
            return (
                f"worker lost: no heartbeat since {beat['at']} from {beat.get('host')} "
                f"(pid {beat.get('pid')}); the worker stopped or was killed while running this job"
            )
    return None
