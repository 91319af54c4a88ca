"""Job records in Redis: written when a job is submitted, updated by the worker, read in one round trip.

Celery reports unknown ids as PENDING and loses track of jobs whose process died, so Quarry keeps its own
record per job and only consults Celery's result backend (in the same round trip) to notice failures that
Celery recorded from the parent process (hard time limit). Running tasks beat in the record
(`common.liveness`); a running job with a stale beat reads as failed, its worker lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import redis

from common.beats import lost_worker
from common.job_record import (
    CANCELLED,
    OPEN_STATES,
    JobCancelled,
    JobRecord,
    JobState,
    celery_end,
    decode_record,
    encode_fields,
    now_iso,
)
from common.job_schema import CREATED_INDEX, QUEUED_INDEX, Field, JobKeys, list_index
from common.redis_client import redis_errors, started_at
from common.transitions import StateGuard

log = logging.getLogger(__name__)


def each(*hooks: Callable[[str], None]) -> Callable[[str], None]:
    """One `on_finish` that calls every hook in turn (hooks never raise: the end is recorded already)."""

    def call(job_id: str) -> None:
        for hook in hooks:
            hook(job_id)

    return call


class JobStore:
    """All reads and writes of job records; every Redis failure surfaces as ServiceUnavailable."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int,
        on_finish: Callable[[str], None] | None = None,
        *,
        list_cap: int = 100_000,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.list_cap = list_cap  # jobs each list index keeps at most (the oldest go first)
        self.on_finish = on_finish  # called with the job id after every terminal write (webhooks)
        self._guard = StateGuard(client)  # a move out of `queued` leaves its index, into `running` joins one

    @staticmethod
    def key(job_id: str) -> str:
        return JobKeys(job_id).record

    @staticmethod
    def channel(job_id: str) -> str:
        return JobKeys(job_id).events

    def create(
        self,
        job_id: str,
        kind: str,
        total: int,
        request: dict[str, Any],
        owner: str | None = None,
        *,
        callback_url: str | None = None,
    ) -> JobRecord:
        """Record a job before it is queued; `request` (the task's kwargs) is kept for retries, and for
        `workers.reconciler`, which re-sends a queued job's lost message (listed in QUEUED_INDEX)."""
        collection = request.get("collection")
        record = JobRecord(
            job_id=job_id,
            kind=kind,
            progress={"done": 0, "total": total},
            owner=owner,
            collection=collection if isinstance(collection, str) else None,
        )
        if callback_url:
            record.callback = {"url": callback_url, "state": "pending", "attempts": 0, "last_status": None}
        fields = record.to_json()
        fields.pop("job_id")
        created_ms = datetime.fromisoformat(record.created_at).timestamp() * 1000  # created_after compares it
        self.write(job_id, {**fields, Field.REQUEST: request}, index=QUEUED_INDEX, listed=(owner, created_ms))
        return record

    def request(self, job_id: str) -> dict[str, Any] | None:
        with redis_errors():
            raw = self.client.hget(self.key(job_id), Field.REQUEST)
        return json.loads(raw) if raw else None

    def cancel(self, job_id: str) -> None:
        """Ask for cancellation; a job not yet started ends now, a running one at its next checkpoint."""
        self.write(job_id, {Field.CANCEL_REQUESTED: True})
        self._finish(job_id, CANCELLED, allowed=(JobState.QUEUED,))  # a started job stops at a checkpoint

    def cancel_requested(self, job_id: str) -> bool:
        with redis_errors():
            return bool(self.client.hget(self.key(job_id), Field.CANCEL_REQUESTED) == b"true")

    def check_cancelled(self, job_id: str) -> None:
        """Called by tasks between units of work."""
        if self.cancel_requested(job_id):
            raise JobCancelled(job_id)

    def mark_cancelled(self, job_id: str) -> None:
        self._finish(job_id, CANCELLED)

    def get(self, job_id: str, *, beats_of: Collection[str] | None = None) -> JobRecord | None:
        """One round trip: the record and Celery's own meta, reconciled.

        With `beats_of`, only those tasks' heartbeats can make the job read lost: what a task of the job
        asks before it runs (`workers.tasks`), so it never settles the job on a sibling's stale beat. A beat
        may be stale only because Redis was away (no beat could be written) and its worker beats again a
        moment later; a task's own stale beat, from a delivery of the same attempt, is certain.
        """
        return self.get_many([job_id], beats_of=beats_of)[0]

    def get_many(
        self, job_ids: list[str], *, beats_of: Collection[str] | None = None
    ) -> list[JobRecord | None]:
        """`get` for many jobs in one round trip (None: expired), in the order given."""
        if not job_ids:
            return []
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self.key(job_id))
                pipe.get(JobKeys(job_id).celery_meta)
            replies = pipe.execute()
        return [
            self._reconciled(job_id, raw, meta, beats_of)
            for job_id, raw, meta in zip(job_ids, replies[::2], replies[1::2], strict=True)
        ]

    def _reconciled(
        self, job_id: str, raw: dict[bytes, bytes], meta: bytes | None, beats_of: Collection[str] | None
    ) -> JobRecord | None:
        if not raw:
            return None
        record = decode_record(job_id, raw)
        if not record.state.terminal:
            end = celery_end(meta)
            if end:
                record.state, record.error = end
        if record.state is JobState.RUNNING and lost_worker(raw, time.time(), beats_of):
            lost = lost_worker(raw, time.time(), beats_of, self._up_since())  # rare: a stale beat
            if lost:
                record.state, record.error = JobState.FAILED, lost
                if beats_of is None:  # a reader may act on this end: store it, so it stays the end
                    self.settle(record)
        return record

    def _up_since(self) -> float:
        """When Redis (re)started: no worker could beat before, so no beat is judged stale until a whole
        beat timeout after that (a SIGKILLed Redis restarted from its AOF holds only old beats)."""
        with redis_errors():
            info = self.client.info("server")
        return started_at(time.time(), info)

    def mark_running(self, job_id: str) -> bool:
        """False when the job ended meanwhile (cancelled while queued): the task must not run it."""
        fields = {"state": JobState.RUNNING.value, "started_at": now_iso(), "error": None}
        with redis_errors():
            moved = self._guard.move(self.key(job_id), self.ttl_s, OPEN_STATES, encode_fields(fields))
        if moved:
            self._announce(job_id, JobState.RUNNING.value)
        return moved

    def set_progress(self, job_id: str, progress: dict[str, int]) -> None:
        """`progress` has at least done and total; ingest jobs add succeeded/failed/skipped/chunks."""
        self.write(job_id, {"progress": progress})
        self._announce(job_id, "progress")

    def _announce(self, job_id: str, change: str) -> None:
        """Wake whoever follows the job (`wait`, the events stream): only a wake-up, since they read the
        record for what changed (and read it anyway every so often), so a failed publish is only logged."""
        try:
            self.client.publish(self.channel(job_id), change)
        except redis.RedisError as exc:
            log.warning("change of job %s stored but not published: %s", job_id, exc)

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

    def _finish(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        stamp: bool = True,
        allowed: tuple[str, ...] = OPEN_STATES,
    ) -> None:
        """End the job unless it already ended: the first end is final (and notified once).

        Once the end is stored, its hooks must run: a later attempt finds the job ended and moves nothing,
        so a failed publish (only a wake-up: waiters read the record every second anyway) must not skip them.
        """
        encoded = encode_fields({**fields, "finished_at": now_iso()} if stamp else fields)
        with redis_errors():
            if not self._guard.move(self.key(job_id), self.ttl_s, allowed, encoded):
                return
        self._announce(job_id, fields["state"])
        if self.on_finish is not None:
            self.on_finish(job_id)

    def settle(self, record: JobRecord) -> None:
        """Store an end that was only derived at read time (worker lost), so it is final and notified.

        Called by the first read that derives it, and when the broker hands a lost job's task to a worker
        again; nothing for a stored end. A batch still running elsewhere then ends nothing. The job
        reads as before (`finished_at` stays unset: when the vanished worker stopped is not known).
        """
        if record.state.terminal:  # `_finish` moves only an open stored state: a stored end stays as it is
            fields = {"state": record.state.value, "error": record.error or "worker lost"}
            self._finish(record.job_id, fields, stamp=False)

    def write(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        index: str | None = None,
        listed: tuple[str | None, float] | None = None,
    ) -> None:
        """`listed` (owner, None when open; creation in ms) also lists a new job (`common.job_list`)."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.key(job_id), mapping=encode_fields(fields))  # type: ignore[arg-type]
            pipe.expire(self.key(job_id), self.ttl_s)
            if index is not None:  # in the same transaction: never a job missing from its index
                pipe.zadd(index, {self.key(job_id): time.time()})
            if listed is not None:
                owner, created_ms = listed
                for listing in {CREATED_INDEX, list_index(owner)}:
                    self._list(pipe, listing, job_id, created_ms)
            pipe.execute()

    def _list(self, pipe: redis.client.Pipeline, listing: str, job_id: str, created_ms: float) -> None:
        """Add a job to a list index, which stays bounded: entries older than the TTL (their records are
        gone) and the oldest beyond `list_cap` leave it, and it expires a TTL after its newest job."""
        pipe.zadd(listing, {job_id: created_ms})
        pipe.zremrangebyscore(listing, "-inf", f"({created_ms - self.ttl_s * 1000}")
        pipe.zremrangebyrank(listing, 0, -(self.list_cap + 1))
        pipe.expire(listing, self.ttl_s)
